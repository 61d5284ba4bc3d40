// tidings/bell.js - the <tidings-bell> element: a bell with the unread
// count that opens the inbox, built on connect() like any host app would
// use it. It owns the element's markup, keyboard handling, rendering and
// events. It must never put payload text through innerHTML: only the fixed
// TEMPLATE is parsed as markup, payload text is only ever set as text.
//
// `connect` comes from the entry module, which imports this one: a cycle
// that is safe because connect is a function declaration (bound before any
// module's code runs) and the bell calls it only from an element's
// callbacks, never while this module is evaluated.

import { connect } from '../tidings.js';
import { TidingsError, claimsOf } from './feed.js';
import { STRINGS, ago, clip, content, describe, fill, language } from './format.js';
import { STYLE } from './styles.js';

const TEMPLATE = `
<button class="bell" part="button" type="button" aria-expanded="false" aria-controls="panel">
  <svg viewBox="0 0 24 24" aria-hidden="true"><path d="M6 8a6 6 0 0 1 12 0c0 7 3 9 3 9H3s3-2 3-9"/><path d="M10.3 21a1.94 1.94 0 0 0 3.4 0"/></svg>
  <span class="badge" part="badge" hidden></span>
  <span class="dot" part="dot"></span>
</button>
<div class="panel" part="panel" id="panel" role="region" aria-labelledby="heading" hidden>
  <div class="header" part="header">
    <h2 class="heading" id="heading" data-text="heading"></h2>
    <span class="status" part="status"></span>
  </div>
  <div class="actions" part="actions">
    <button class="action refresh" part="refresh" type="button" data-text="refresh"></button>
    <button class="action mark-all" part="mark-all" type="button" data-text="markAll"></button>
  </div>
  <div class="problem" part="problem" hidden>
    <p class="problem-text" part="problem-text"></p>
    <button class="action retry" part="retry" type="button" data-text="retry"></button>
  </div>
  <p class="notice" part="notice" hidden></p>
  <div class="scroller" part="scroller" aria-busy="true">
    <ul class="list" part="list" aria-labelledby="heading"></ul>
    <p class="loading" part="loading" data-text="loading"></p>
    <p class="empty" part="empty" data-text="empty" hidden></p>
    <div class="more" part="more">
      <span class="beyond" part="beyond"></span>
      <button class="action older" part="older" type="button" data-text="older" hidden></button>
      <span class="end" part="end" data-text="end" hidden></span>
    </div>
  </div>
</div>
<div class="announcer sr-only" part="announcer" aria-live="polite"></div>
`;

/** How much of a long body a row shows until it is expanded. */
const BODY_PREVIEW = 200;

/**
 * `auth` for a refused token (also one the host app's token-url refused),
 * `unreachable` where fetch itself failed: offline, or a CORS refusal,
 * which a page is not allowed to tell apart. Anything else `failed`.
 */
function kindOf(error) {
  if (error instanceof TidingsError && (error.status === 401 || error.status === 403)) return 'auth';
  if (error instanceof TypeError) return 'unreachable';
  return 'failed';
}

function element(tag, className, part, text) {
  const node = document.createElement(tag);
  node.className = className;
  node.setAttribute('part', part);
  if (text !== undefined) node.textContent = text;
  return node;
}

/**
 * <tidings-bell token="..."> (or token-url="/my/token", or a `getToken`
 * property): a bell with the unread count, opening the inbox.
 */
export class TidingsBell extends HTMLElement {
  static observedAttributes = ['token', 'token-url', 'url', 'limit', 'auth', 'lang'];

  #feed = null;
  #token = null;
  #getToken = null;
  #nodes = new Map();
  #pendingReads = new Set();
  #ticker = 0;
  #connectQueued = false;
  #olderInView = false;
  /** Whether the inbox has been loaded: only then is an empty list "no notifications". */
  #loaded = false;
  /** The load problem shown (`{ text, retry }`: what it says, what Retry does), or null. */
  #problem = null;
  /** What the last failed action says, or null. */
  #notice = null;
  #overrides = {};
  #words = STRINGS.en;
  #language = language('en');
  #langObserver = null;
  #observer = null;
  #ui;
  #closeOutside = (event) => {
    if (!this.#ui.panel.hidden && !event.composedPath().includes(this)) this.#setOpen(false);
  };

  constructor() {
    super();
    const root = this.attachShadow({ mode: 'open' });
    const style = document.createElement('style');
    style.textContent = STYLE;
    const template = document.createElement('template');
    template.innerHTML = TEMPLATE; // fixed markup; payload text never goes through innerHTML
    root.append(style, template.content);
    const $ = (selector) => root.querySelector(selector);
    this.#ui = {
      bell: $('.bell'),
      badge: $('.badge'),
      panel: $('.panel'),
      status: $('.status'),
      refresh: $('.refresh'),
      markAll: $('.mark-all'),
      scroller: $('.scroller'),
      list: $('.list'),
      empty: $('.empty'),
      loading: $('.loading'),
      problem: $('.problem'),
      problemText: $('.problem-text'),
      retry: $('.retry'),
      notice: $('.notice'),
      more: $('.more'),
      beyond: $('.beyond'),
      older: $('.older'),
      end: $('.end'),
      announcer: $('.announcer'),
    };
    this.#wire();
  }

  /** The JWT to use; prefer `getToken` for tokens that expire. */
  get token() {
    return this.#token;
  }
  set token(value) {
    const previous = this.#token;
    this.#token = value || null;
    // A renewed token for the same recipient keeps the feed; another
    // recipient (say, after a new login) needs a feed of its own.
    const sameRecipient = previous && value && claimsOf(previous).sub === claimsOf(value).sub;
    if (this.#feed && sameRecipient) this.#feed.setToken(this.#token);
    else this.#reconnect();
  }

  /** `async () => token`: called at start and whenever the token expires. */
  get getToken() {
    return this.#getToken;
  }
  set getToken(fn) {
    this.#getToken = typeof fn === 'function' ? fn : null;
    // The feed always asks the current one: a framework that passes a new
    // function on every render must not cost a reconnect each time.
    if (!this.#feed) this.#reconnect();
  }

  /**
   * Every word the element shows, in its language (the `lang` attribute,
   * else the closest `lang` above it, else the browser's). Setting it
   * replaces some or all of them: `{ heading: 'Inbox' }`.
   */
  get strings() {
    return { ...this.#words };
  }
  set strings(value) {
    this.#overrides = value && typeof value === 'object' ? { ...value } : {};
    this.#speak();
  }

  /** The feed behind the bell (`items`, `unreadCount`, `markRead`, ...). */
  get feed() {
    return this.#feed;
  }

  connectedCallback() {
    // A framework may have set properties before this class was defined.
    for (const name of ['token', 'getToken', 'strings']) {
      if (Object.hasOwn(this, name)) {
        const value = this[name];
        delete this[name];
        this[name] = value;
      }
    }
    if (this.hasAttribute('token') && !this.#token) this.#token = this.getAttribute('token');
    if (!this.#feed) this.#reconnect();
    this.#ticker = setInterval(() => this.#tick(), 30_000);
    document.addEventListener('pointerdown', this.#closeOutside);
    this.#watchEnd();
    // Apps that switch language at run time change <html lang>.
    this.#langObserver = new MutationObserver(() => this.#speak());
    this.#langObserver.observe(document.documentElement, { attributes: true, attributeFilter: ['lang'] });
    this.#speak();
  }

  disconnectedCallback() {
    clearInterval(this.#ticker);
    removeEventListener('resize', this.#fit);
    this.#observer?.disconnect();
    this.#observer = null;
    this.#langObserver?.disconnect();
    document.removeEventListener('pointerdown', this.#closeOutside);
    this.#feed?.close();
    this.#feed = null;
    this.#setOpen(false);
  }

  attributeChangedCallback(name, old, value) {
    if (old === value) return;
    if (name === 'token') this.token = value;
    else if (name === 'lang') this.#speak();
    else this.#reconnect();
  }

  /** Opens or closes the list. */
  toggle(open = this.#ui.panel.hidden) {
    this.#setOpen(open);
  }

  /** `key`'s words in the element's language, `{name}`s filled in. */
  #t(key, values) {
    return fill(this.#words[key] ?? STRINGS.en[key] ?? key, values);
  }

  /** Takes up the current language and strings, and says everything again in them. */
  #speak() {
    const tag = this.closest('[lang]')?.getAttribute('lang') || document.documentElement.lang || navigator.language;
    this.#language = language(tag);
    this.#words = { ...STRINGS[this.#language.base], ...this.#overrides };
    const { bell, panel, announcer } = this.#ui;
    for (const node of [bell, panel, announcer]) node.lang = this.#language.locale;
    panel.dir = this.#language.dir;
    for (const node of this.shadowRoot.querySelectorAll('[data-text]')) node.textContent = this.#t(node.dataset.text);
    this.#showProblem(this.#problem);
    this.#notify(this.#notice);
    this.#setStatus(this.getAttribute('status') || 'connecting', { quiet: true });
    for (const node of this.#nodes.values()) node.querySelector('.expand')?.replaceChildren(this.#expandText(node));
    this.#tick(true);
  }

  /** (Re)connects once the current task's attribute and property changes are all in. */
  #reconnect() {
    if (this.#connectQueued) return;
    this.#connectQueued = true;
    queueMicrotask(() => {
      this.#connectQueued = false;
      this.#feed?.close();
      this.#feed = null;
      this.#connect();
    });
  }

  #tokenSource() {
    if (this.#getToken) return this.#getToken;
    const tokenUrl = this.getAttribute('token-url');
    if (!tokenUrl) return null;
    return async () => {
      const response = await fetch(tokenUrl, { credentials: 'include' });
      if (!response.ok) throw new TidingsError(response.status, `token-url ${tokenUrl}`);
      const text = (await response.text()).trim();
      return text.startsWith('{') ? JSON.parse(text).token : text;
    };
  }

  #connect() {
    if (this.#feed || !this.isConnected) return;
    const renewable = this.#tokenSource() !== null;
    if (!this.#token && !renewable && this.getAttribute('auth') !== 'cookie') return;
    const limit = Number(this.getAttribute('limit')) || undefined;
    this.#nodes.clear();
    this.#ui.list.replaceChildren();
    this.#loaded = false;
    this.#setBusy(true);
    this.#setStatus('connecting');
    this.#feed = connect({
      url: this.getAttribute('url') || undefined,
      token: this.#token,
      getToken: renewable ? () => this.#tokenSource()?.() ?? this.#token : undefined,
      limit,
      onChange: () => this.#render(),
      onStatus: (status) => this.#setStatus(status),
      onInbox: () => this.#inboxLoaded(),
      onNotification: (item) => this.#announce(item),
      onError: (error) => this.#failed(error),
    });
  }

  #inboxLoaded() {
    this.#loaded = true;
    this.#setBusy(false);
    this.#showProblem(null);
  }

  #error(error) {
    this.dispatchEvent(new CustomEvent('tidings-error', { detail: error }));
  }

  /** A load failed: say why and offer Retry. */
  #failed(error, what = 'failed') {
    this.#error(error);
    const kind = kindOf(error);
    const key = kind === 'failed' ? what : kind;
    this.#showProblem({ text: () => this.#t(key), retry: what === 'olderFailed' ? 'older' : 'load' });
  }

  /** Shows `problem` (or nothing, for null); announces it when it says something new. */
  #showProblem(problem) {
    const { problem: box, problemText, announcer } = this.#ui;
    const text = problem?.text() ?? '';
    if (text && text !== problemText.textContent) announcer.textContent = text;
    this.#problem = problem;
    box.hidden = !text;
    problemText.textContent = text;
    this.#render();
  }

  /** What an action (a read mark) could not do; it stays until the next action or closing. */
  #notify(notice) {
    const { notice: box, announcer } = this.#ui;
    const text = notice?.() ?? '';
    if (text && text !== box.textContent) announcer.textContent = text;
    this.#notice = notice;
    box.hidden = !text;
    box.textContent = text;
  }

  #retry() {
    const problem = this.#problem?.retry;
    this.#showProblem(null);
    if (problem === 'older') this.#loadOlder();
    // A feed that never loaded (or gave up on a refused token) starts
    // over, asking token-url or getToken again.
    else if (!this.#loaded || this.#feed?.status === 'offline') this.#reconnect();
    else this.#refresh();
  }

  #refresh() {
    const feed = this.#feed;
    if (!feed) return;
    this.#setBusy(true);
    feed
      .refresh()
      .then(
        () => this.#showProblem(null),
        (error) => this.#failed(error),
      )
      .finally(() => this.#setBusy(false));
  }

  /** Busy while the inbox loads: Refresh cannot be pressed again meanwhile. */
  #setBusy(busy) {
    const { refresh, scroller } = this.#ui;
    refresh.disabled = busy;
    refresh.setAttribute('aria-busy', String(busy));
    scroller.setAttribute('aria-busy', String(busy));
  }

  /** Scrolling to the end of the list loads the next older page. */
  #watchEnd() {
    if (this.#observer || !('IntersectionObserver' in globalThis)) return;
    const { scroller, more } = this.#ui;
    this.#observer = new IntersectionObserver(
      (entries) => {
        this.#olderInView = entries.at(-1).isIntersecting;
        if (this.#olderInView) this.#loadOlder();
      },
      { root: scroller, rootMargin: '0px 0px 80px 0px' },
    );
    this.#observer.observe(more);
  }

  #loadOlder() {
    const { feed } = this;
    if (!feed || feed.complete || this.#ui.panel.hidden) return;
    const before = feed.items.length;
    feed.loadOlder().then(
      // The end of a short page may still be in view: no new intersection
      // would ever be reported for it.
      () => this.#olderInView && feed.items.length > before && feed === this.feed && this.#loadOlder(),
      (error) => this.#failed(error, 'olderFailed'),
    );
  }

  #wire() {
    const { bell, refresh, markAll, list, older, retry } = this.#ui;
    older.addEventListener('click', () => this.#loadOlder());
    bell.addEventListener('click', () => this.toggle());
    refresh.addEventListener('click', () => this.#refresh());
    retry.addEventListener('click', () => this.#retry());
    markAll.addEventListener('click', () => this.#markAllRead());
    list.addEventListener('click', (event) => {
      const expand = event.target.closest('.expand');
      if (expand) {
        this.#toggleBody(expand.closest('li'));
        return;
      }
      const entry = event.target.closest('.item');
      if (!entry) return;
      const id = Number(entry.dataset.id);
      if (!this.#routed(id, entry, event)) event.preventDefault();
      this.#markRead(id);
    });
    this.addEventListener('keydown', (event) => this.#key(event));
    list.addEventListener('focusin', (event) => this.#rove(event.target.closest('.item, .expand')));
    // Tabbing (or clicking) away from the panel closes it; focus going
    // nowhere (another window) does not.
    this.addEventListener('focusout', (event) => {
      const to = event.relatedTarget;
      if (!this.#ui.panel.hidden && to && to !== this && !this.contains(to)) this.#setOpen(false);
    });
  }

  #key(event) {
    const { bell, panel } = this.#ui;
    if (event.key === 'Escape' && !panel.hidden) {
      event.preventDefault();
      this.#setOpen(false);
      bell.focus();
      return;
    }
    const rovers = this.#rovers();
    const active = this.shadowRoot.activeElement;
    const at = rovers.indexOf(active);
    // From the open bell's button the arrows go into the list, as in a menu.
    const fromBell = active === bell && !panel.hidden;
    if ((at < 0 && !fromBell) || !rovers.length) return;
    if (!['ArrowDown', 'ArrowUp', 'Home', 'End'].includes(event.key)) return;
    const next = {
      ArrowDown: Math.min(at + 1, rovers.length - 1),
      ArrowUp: Math.max(at - 1, 0),
      Home: 0,
      End: rovers.length - 1,
    }[event.key];
    event.preventDefault();
    rovers[next].focus();
  }

  /** The list's controls, in order: one Tab stop, moved between with the arrow keys. */
  #rovers() {
    return [...this.#ui.list.querySelectorAll('.item, .expand')];
  }

  /** Makes `target` (or the one before, or the first) the list's Tab stop. */
  #rove(target) {
    const rovers = this.#rovers();
    const current = target ?? rovers.find((node) => node.tabIndex === 0) ?? rovers[0];
    for (const node of rovers) node.tabIndex = node === current ? 0 : -1;
  }

  #setOpen(open) {
    if (!open) this.#notify(null);
    this.#ui.panel.hidden = !open;
    this.#ui.bell.setAttribute('aria-expanded', String(open));
    this.toggleAttribute('open', open);
    if (open) addEventListener('resize', this.#fit);
    else removeEventListener('resize', this.#fit);
    this.#fit();
    if (open) this.#tick();
  }

  /**
   * Keeps the open panel inside the viewport: anchored to a bell near a
   * narrow screen's edge, it would stick out on the other side.
   */
  #fit = () => {
    const { panel } = this.#ui;
    panel.style.translate = '';
    if (panel.hidden) return;
    const margin = 8;
    const width = document.documentElement.clientWidth;
    const { left, right } = panel.getBoundingClientRect();
    let shift = Math.min(0, width - margin - right);
    if (left + shift < margin) shift = margin - left;
    if (shift) panel.style.translate = `${shift}px 0`;
  };

  /**
   * Tells the host app first (`tidings:click`, cancelable), so a
   * single-page app can route instead of the link loading a page. A click
   * with a modifier key (a new tab or window) is left to the browser.
   * False when the app took it over.
   */
  #routed(id, entry, click) {
    const item = this.#feed?.items.find((candidate) => candidate.id === id);
    if (!item || click.ctrlKey || click.metaKey || click.shiftKey || click.altKey) return true;
    const detail = { ...structuredClone(item), url: entry.href ?? '' };
    const options = { detail, bubbles: true, composed: true, cancelable: true };
    return this.dispatchEvent(new CustomEvent('tidings:click', options));
  }

  #markRead(id) {
    const item = this.#feed?.items.find((candidate) => candidate.id === id);
    if (!item || item.read_at) return;
    this.#notify(null);
    this.#pendingReads.add(id);
    this.#render();
    this.#feed.markRead(id).catch((error) => {
      // Back to unread, and said so: a mark that silently did not stick
      // would come back unread on the next load.
      this.#pendingReads.delete(id);
      this.#render();
      this.#error(error);
      const { title } = describe(item);
      this.#notify(() => this.#actionText(error, this.#t('readFailed', { title })));
    });
  }

  #markAllRead() {
    this.#notify(null);
    this.#feed?.markAllRead().catch((error) => {
      this.#error(error);
      this.#notify(() => this.#actionText(error, this.#t('markAllFailed')));
    });
  }

  #actionText(error, what) {
    const kind = kindOf(error);
    if (kind === 'auth') return `${what} ${this.#t('auth')}`;
    if (kind === 'unreachable') return `${what} ${this.#t('actionUnreachable')}`;
    return `${what} ${this.#t('tryAgain')}`;
  }

  #setStatus(status, { quiet = false } = {}) {
    // Streaming again: whatever failed on the way has passed.
    if (status === 'live' && this.#problem?.retry === 'load') this.#showProblem(null);
    this.#ui.status.textContent = this.#t(status);
    this.#label(status);
    if (quiet) return;
    this.setAttribute('status', status);
    this.dispatchEvent(new CustomEvent('tidings-status', { detail: status }));
  }

  #announce(item) {
    this.#ui.announcer.textContent = this.#t('announce', { title: describe(item).title });
    this.dispatchEvent(new CustomEvent('tidings-notification', { detail: item }));
  }

  #label(status = this.getAttribute('status')) {
    const count = this.#feed?.unreadCount ?? 0;
    const state = status && status !== 'live' ? `, ${this.#t(status)}` : '';
    this.#ui.bell.setAttribute('aria-label', `${this.#t('bell', { count })}${state}`);
  }

  #render() {
    const feed = this.#feed;
    const { badge, list, empty, markAll, loading } = this.#ui;
    loading.hidden = this.#loaded || this.#problem !== null;
    empty.hidden = !this.#loaded || !feed || feed.items.length > 0;
    if (!feed) return;
    badge.textContent = feed.unreadCount > 99 ? '99+' : String(feed.unreadCount);
    badge.hidden = feed.unreadCount === 0;
    this.setAttribute('unread', String(feed.unreadCount));
    markAll.disabled = feed.unreadCount === 0;
    this.#footer(feed);
    this.#label();
    // Update in place and only insert new rows: a row never moves, so the
    // one with keyboard focus keeps it.
    const keep = new Set(feed.items.map((item) => item.id));
    for (const [id, node] of this.#nodes) {
      if (!keep.has(id)) {
        node.remove();
        this.#nodes.delete(id);
      }
    }
    let cursor = list.firstElementChild;
    for (const item of feed.items) {
      if (item.read_at) this.#pendingReads.delete(item.id);
      let node = this.#nodes.get(item.id);
      if (node && node.created !== item.created_at) {
        // The id now names another notification: a restored database
        // hands out ids again.
        if (node === cursor) cursor = cursor.nextElementSibling;
        node.remove();
        node = null;
      }
      if (!node) {
        node = this.#row(item);
        this.#nodes.set(item.id, node);
      }
      this.#update(node, item);
      if (node === cursor) cursor = cursor.nextElementSibling;
      else list.insertBefore(node, cursor);
    }
    this.#rove();
  }

  /** Says whether more exist below, and how many of them are unread. */
  #footer(feed) {
    const { older, end, beyond } = this.#ui;
    const shownUnread = feed.items.filter((item) => !item.read_at).length;
    const more = this.#loaded && !feed.complete;
    const unreadBelow = more ? Math.max(0, feed.unreadCount - shownUnread) : 0;
    older.hidden = !more;
    end.hidden = !this.#loaded || !feed.complete || feed.items.length === 0;
    beyond.hidden = unreadBelow === 0;
    beyond.textContent = unreadBelow ? this.#t('beyond', { count: unreadBelow }) : '';
  }

  /**
   * The link (or button) shows the title only and is named by the title,
   * state and time (a name that contains what it shows, WCAG 2.5.3); the
   * body beside it is its description. A click anywhere on the row reaches
   * the link all the same (styles.js stretches it).
   */
  #row(item) {
    const { title, body, url } = content(item);
    const li = element('li', 'row', 'row');
    const entry = element(url ? 'a' : 'button', 'item', 'item');
    if (url) entry.href = url;
    else entry.type = 'button';
    entry.dataset.id = String(item.id);
    entry.tabIndex = -1;
    const time = element('time', 'time', 'time');
    time.dateTime = item.created_at;
    // Payload text may be in any script: each paragraph finds its own direction.
    entry.append(element('span', 'title', 'title', clip(title, 140)));
    entry.firstChild.dir = 'auto';
    li.append(entry, time);
    if (body) li.append(...this.#body(li, entry, item.id, body));
    li.append(element('span', 'kind', 'kind', item.kind));
    li.created = item.created_at;
    return li;
  }

  /** The body, shortened when long, with a button that shows it in full. */
  #body(li, entry, id, body) {
    const text = element('p', 'body', 'body', clip(body, BODY_PREVIEW));
    text.id = `body-${id}`;
    text.dir = 'auto';
    entry.setAttribute('aria-describedby', text.id);
    if (text.textContent === body) return [text];
    li.full = body;
    const expand = element('button', 'action expand', 'expand');
    expand.type = 'button';
    expand.tabIndex = -1;
    expand.setAttribute('aria-expanded', 'false');
    expand.setAttribute('aria-controls', text.id);
    expand.append(this.#expandText(li));
    return [text, expand];
  }

  #expandText(li) {
    return this.#t(li.classList.contains('expanded') ? 'showLess' : 'showMore');
  }

  #toggleBody(li) {
    const expanded = li.classList.toggle('expanded');
    li.querySelector('.body').textContent = expanded ? li.full : clip(li.full, BODY_PREVIEW);
    const expand = li.querySelector('.expand');
    expand.setAttribute('aria-expanded', String(expanded));
    expand.textContent = this.#expandText(li);
  }

  #update(li, item) {
    const entry = li.firstElementChild;
    const unread = !item.read_at;
    const pending = unread && this.#pendingReads.has(item.id);
    for (const node of [li, entry]) {
      node.classList.toggle('unread', unread);
      node.classList.toggle('pending', pending);
    }
    entry.setAttribute('part', unread ? 'item unread' : 'item');
    const time = li.querySelector('.time');
    const { locale } = this.#language;
    time.textContent = ago(item.created_at, locale);
    time.title = new Date(item.created_at).toLocaleString(locale);
    const title = entry.querySelector('.title').textContent;
    const state = unread ? this.#t('unread') : '';
    entry.setAttribute('aria-label', [title, state, time.textContent].filter(Boolean).join(', '));
  }

  #tick(always = false) {
    if (this.#ui.panel.hidden && !always) return;
    for (const [id, node] of this.#nodes) {
      const item = this.#feed?.items.find((candidate) => candidate.id === id);
      if (item) this.#update(node, item);
    }
  }
}
