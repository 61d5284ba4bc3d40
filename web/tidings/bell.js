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
import { ago, describe } from './format.js';
import { STYLE } from './styles.js';

const TEMPLATE = `
<button class="bell" part="button" type="button" aria-expanded="false" aria-controls="panel">
  <svg viewBox="0 0 24 24" aria-hidden="true"><path d="M6 8a6 6 0 0 1 12 0c0 7 3 9 3 9H3s3-2 3-9"/><path d="M10.3 21a1.94 1.94 0 0 0 3.4 0"/></svg>
  <span class="badge" part="badge" hidden></span>
  <span class="dot" part="dot"></span>
</button>
<div class="panel" part="panel" id="panel" role="region" aria-labelledby="heading" hidden>
  <div class="header" part="header">
    <h2 class="heading" id="heading">Notifications</h2>
    <span class="status" part="status"></span>
  </div>
  <div class="actions" part="actions">
    <button class="action refresh" part="refresh" type="button">Refresh</button>
    <button class="action mark-all" part="mark-all" type="button">Mark all read</button>
  </div>
  <div class="problem" part="problem" hidden>
    <p class="problem-text" part="problem-text"></p>
    <button class="action retry" part="retry" type="button">Retry</button>
  </div>
  <p class="notice" part="notice" hidden></p>
  <div class="scroller" part="scroller" aria-busy="true">
    <ul class="list" part="list" aria-labelledby="heading"></ul>
    <p class="loading" part="loading">Loading…</p>
    <p class="empty" part="empty" hidden>No notifications yet</p>
    <div class="more" part="more">
      <span class="beyond" part="beyond"></span>
      <button class="action older" part="older" type="button" hidden>Load older</button>
      <span class="end" part="end" hidden>No older notifications</span>
    </div>
  </div>
</div>
<div class="announcer sr-only" part="announcer" aria-live="polite"></div>
`;

/** What went wrong, as the person at the screen can act on it. */
const PROBLEM_TEXT = {
  auth: 'Your sign-in has expired or was not accepted. Sign in again, then retry.',
  unreachable:
    'The notification server could not be reached, or does not allow this site. Check your connection, then retry.',
  failed: 'Notifications could not be loaded. Retry in a moment.',
  older: 'Older notifications could not be loaded. Retry in a moment.',
};

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

const STATUS_TEXT = {
  connecting: 'Connecting…',
  live: 'Live',
  reconnecting: 'Reconnecting…',
  offline: 'Offline',
};

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
  static observedAttributes = ['token', 'token-url', 'url', 'limit', 'auth'];

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
  /** The load problem shown, and what Retry does about it. */
  #problem = null;
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

  /** The feed behind the bell (`items`, `unreadCount`, `markRead`, ...). */
  get feed() {
    return this.#feed;
  }

  connectedCallback() {
    // A framework may have set properties before this class was defined.
    for (const name of ['token', 'getToken']) {
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
  }

  disconnectedCallback() {
    clearInterval(this.#ticker);
    removeEventListener('resize', this.#fit);
    this.#observer?.disconnect();
    this.#observer = null;
    document.removeEventListener('pointerdown', this.#closeOutside);
    this.#feed?.close();
    this.#feed = null;
    this.#setOpen(false);
  }

  attributeChangedCallback(name, old, value) {
    if (old === value) return;
    if (name === 'token') this.token = value;
    else this.#reconnect();
  }

  /** Opens or closes the list. */
  toggle(open = this.#ui.panel.hidden) {
    this.#setOpen(open);
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
    this.#showProblem(PROBLEM_TEXT[kind === 'failed' ? what : kind], what === 'older' ? 'older' : 'load');
  }

  #showProblem(text, retry = 'load') {
    const { problem, problemText } = this.#ui;
    if (text && text !== problemText.textContent) this.#ui.announcer.textContent = text;
    this.#problem = text ? retry : null;
    problem.hidden = !text;
    problemText.textContent = text ?? '';
    this.#render();
  }

  /** What an action (a read mark) could not do; it stays until the next action or closing. */
  #notify(text) {
    const { notice, announcer } = this.#ui;
    notice.hidden = !text;
    notice.textContent = text ?? '';
    if (text) announcer.textContent = text;
  }

  #retry() {
    const problem = this.#problem;
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
      (error) => this.#failed(error, 'older'),
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
      const entry = event.target.closest('.item');
      if (!entry) return;
      const id = Number(entry.dataset.id);
      if (!this.#routed(id, entry, event)) event.preventDefault();
      this.#markRead(id);
    });
    this.addEventListener('keydown', (event) => this.#key(event));
    list.addEventListener('focusin', (event) => this.#rove(event.target.closest('.item')));
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
    return [...this.#ui.list.querySelectorAll('.item')];
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
      this.#notify(this.#actionText(error, `“${describe(item).title}” could not be marked as read.`));
    });
  }

  #markAllRead() {
    this.#notify(null);
    this.#feed?.markAllRead().catch((error) => {
      this.#error(error);
      this.#notify(this.#actionText(error, 'Could not mark all as read.'));
    });
  }

  #actionText(error, what) {
    const kind = kindOf(error);
    if (kind === 'auth') return `${what} ${PROBLEM_TEXT.auth}`;
    if (kind === 'unreachable') return `${what} The notification server could not be reached. Try again.`;
    return `${what} Try again.`;
  }

  #setStatus(status) {
    // Streaming again: whatever failed on the way has passed.
    if (status === 'live' && this.#problem === 'load') this.#showProblem(null);
    this.setAttribute('status', status);
    this.#ui.status.textContent = STATUS_TEXT[status] ?? status;
    this.dispatchEvent(new CustomEvent('tidings-status', { detail: status }));
    this.#label();
  }

  #announce(item) {
    this.#ui.announcer.textContent = `New notification: ${describe(item).title}`;
    this.dispatchEvent(new CustomEvent('tidings-notification', { detail: item }));
  }

  #label() {
    const unread = this.#feed?.unreadCount ?? 0;
    const status = this.getAttribute('status');
    const state = status && status !== 'live' ? `, ${STATUS_TEXT[status] ?? status}` : '';
    this.#ui.bell.setAttribute('aria-label', `Notifications, ${unread} unread${state}`);
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
    beyond.textContent = unreadBelow ? `${unreadBelow} more unread` : '';
  }

  /**
   * The link (or button) shows the title only and is named by the title,
   * state and time (a name that contains what it shows, WCAG 2.5.3); the
   * body beside it is its description. A click anywhere on the row reaches
   * the link all the same (styles.js stretches it).
   */
  #row(item) {
    const { title, body, url } = describe(item);
    const li = element('li', 'row', 'row');
    const entry = element(url ? 'a' : 'button', 'item', 'item');
    if (url) entry.href = url;
    else entry.type = 'button';
    entry.dataset.id = String(item.id);
    entry.tabIndex = -1;
    const time = element('time', 'time', 'time');
    time.dateTime = item.created_at;
    entry.append(element('span', 'title', 'title', title));
    li.append(entry, time);
    if (body) {
      const text = element('p', 'body', 'body', body);
      text.id = `body-${item.id}`;
      entry.setAttribute('aria-describedby', text.id);
      li.append(text);
    }
    li.append(element('span', 'kind', 'kind', item.kind));
    li.created = item.created_at;
    return li;
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
    time.textContent = ago(item.created_at);
    time.title = new Date(item.created_at).toLocaleString();
    const title = entry.querySelector('.title').textContent;
    entry.setAttribute('aria-label', [title, unread ? 'unread' : '', time.textContent].filter(Boolean).join(', '));
  }

  #tick() {
    if (this.#ui.panel.hidden) return;
    for (const [id, node] of this.#nodes) {
      const item = this.#feed?.items.find((candidate) => candidate.id === id);
      if (item) this.#update(node, item);
    }
  }
}
