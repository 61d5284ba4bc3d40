// tidings.js - the browser client for tidings, and the <tidings-bell> element
// built on it. Served by tidings at /tidings.js: an ES module with no
// dependencies and no build step.
//
//   import { connect } from 'https://tidings.example.com/tidings.js';
//   const feed = connect({ token, onNotification: (item) => ..., onStatus: (s) => ... });
//
// Importing it also defines <tidings-bell>. The API is documented in the
// README ("In the browser").
//
// How it keeps the "nothing lost, nothing doubled" promise of the server:
// it loads the inbox, then streams from the inbox's `position`; every event
// carries its per-recipient `seq`, and an event whose seq is not above the
// highest one applied is dropped. Tabs of one browser share one stream: a
// Web Lock elects a leader tab that owns the EventSource and relays every
// event over a BroadcastChannel, so many tabs cannot use up the browser's
// six HTTP/1.1 connections per host.

/** Renew a token this long before its `exp`, so reconnects never carry a stale one. */
const RENEW_EARLY_MS = 10_000;
/** How long a lost stream is "reconnecting" before it is shown as "offline". */
const OFFLINE_AFTER_MS = 20_000;
const MAX_BACKOFF_MS = 30_000;

/** Opens a feed: the recipient's inbox, kept current by the stream. */
export function connect(options = {}) {
  return new Feed(options);
}

/** An HTTP answer other than 2xx from tidings, with its problem document's detail. */
export class TidingsError extends Error {
  constructor(status, detail) {
    super(`tidings answered ${status}${detail ? `: ${detail}` : ''}`);
    this.status = status;
  }
}

/** The claims of a JWT, unverified: only to learn `sub` and `exp` (the server verifies). */
export function claimsOf(token) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const bytes = Uint8Array.from(atob(part.padEnd(Math.ceil(part.length / 4) * 4, '=')), (c) =>
      c.charCodeAt(0),
    );
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    return claims && typeof claims === 'object' ? claims : {};
  } catch {
    return {};
  }
}

function expiresSoon(token) {
  const { exp } = claimsOf(token);
  return typeof exp === 'number' && exp * 1000 - RENEW_EARLY_MS < Date.now();
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function backoff(attempt) {
  const ceiling = Math.min(MAX_BACKOFF_MS, 1000 * 2 ** Math.min(attempt, 5));
  return ceiling / 2 + Math.random() * (ceiling / 2);
}

class Feed {
  /** Newest first, at most `limit` of them. */
  items = [];
  unreadCount = 0;
  /** The highest seq applied: everything up to it is reflected here. */
  position = -1;
  /** 'connecting' | 'live' | 'reconnecting' | 'offline' */
  status = 'connecting';

  #base;
  #token;
  #getToken;
  #limit;
  #on;
  #shared;
  #closed = false;
  #ready = false;
  #leader = false;
  #source = null;
  #channel = null;
  #lockAbort = null;
  #releaseLock = null;
  #lostSince = 0;
  #attempt = 0;
  #reopenTimer = 0;
  #gapTimer = 0;
  #lastGapRefresh = 0;
  #stoppedForAuth = false;
  #renewing = null;
  /** Events that arrive while the inbox loads: applied after it, if newer. */
  #pending = null;
  #loading = null;
  #loadAgain = false;
  #onOnline = () => this.#backOnline();
  #onOffline = () => this.#setStatus('offline');

  constructor(options) {
    this.#base = new URL(options.url ?? new URL('.', import.meta.url), document.baseURI);
    if (!this.#base.pathname.endsWith('/')) this.#base.pathname += '/';
    this.#token = options.token || null;
    this.#getToken = options.getToken || null;
    this.#limit = options.limit ?? 50;
    this.#shared = options.shared ?? true;
    this.#on = options;
    addEventListener('online', this.#onOnline);
    addEventListener('offline', this.#onOffline);
    this.#start();
  }

  /**
   * The shared channel is named after the recipient, so a feed that only
   * has `getToken` asks for its token first: tabs of different users must
   * never share a stream. Then it joins the channel before loading, so an
   * event relayed during the load is buffered rather than missed.
   */
  async #start() {
    if (!this.#token && this.#getToken) {
      await this.#currentToken().catch((error) => this.#report(error));
    }
    if (this.#closed) return;
    this.#elect();
    this.#begin();
  }

  /** Whether this tab holds the shared stream (the others follow it). */
  get leader() {
    return this.#leader;
  }

  /** Marks one notification read; every tab sees it when the read event streams in. */
  async markRead(id) {
    await this.#request(`v1/notifications/${encodeURIComponent(id)}/read`, {
      method: 'POST',
      keepalive: true,
    });
    this.#catchUpUnlessLive();
  }

  /** Marks everything up to now read. */
  async markAllRead() {
    await this.#request('v1/notifications/read-all', { method: 'POST' });
    this.#catchUpUnlessLive();
  }

  /** Reloads the inbox (the stream stays open). Resolves when it is applied. */
  refresh() {
    if (this.#loading) {
      this.#loadAgain = true;
      return this.#loading;
    }
    this.#pending = [];
    this.#loading = this.#load().finally(() => {
      const pending = this.#pending;
      this.#pending = null;
      this.#loading = null;
      for (const event of pending) this.#apply(event);
      if (this.#loadAgain && !this.#closed) {
        this.#loadAgain = false;
        this.refresh().catch(() => {});
      }
    });
    return this.#loading;
  }

  /** Uses `token` (for the same recipient) from now on, e.g. after the host app renewed it. */
  setToken(token) {
    this.#token = token || null;
    if (!this.#stoppedForAuth) return;
    this.#stoppedForAuth = false;
    if (this.#ready) this.#reopenNow();
    else this.#begin();
  }

  /** Closes the stream, hands leadership to another tab, stops all timers. */
  close() {
    this.#closed = true;
    // Loads and events still in flight must not reach the host any more
    // (say, the bell switched to another user).
    this.#on = {};
    this.#source?.close();
    this.#source = null;
    clearTimeout(this.#reopenTimer);
    clearTimeout(this.#gapTimer);
    this.#lockAbort?.abort();
    this.#releaseLock?.();
    this.#channel?.close();
    removeEventListener('online', this.#onOnline);
    removeEventListener('offline', this.#onOffline);
  }

  /** The first inbox load (retried until it works), then the stream if this tab leads. */
  async #begin() {
    for (let attempt = 0; !this.#closed; attempt++) {
      try {
        await this.refresh();
        break;
      } catch (error) {
        this.#report(error);
        if (this.#stopIfRefused(error)) return;
        this.#setStatus(attempt >= 2 ? 'offline' : 'reconnecting');
        await sleep(backoff(attempt));
      }
    }
    this.#ready = true;
    if (this.#leader) this.#open();
    // A follower's own load may have overwritten the leader's status.
    else this.#channel?.postMessage({ type: 'hello' });
  }

  async #load() {
    const response = await this.#request(`v1/notifications?limit=${this.#limit}`);
    const inbox = await response.json();
    this.items = inbox.items.map((item) => ({ ...item }));
    this.unreadCount = inbox.unread_count;
    this.position = inbox.position;
    this.#on.onInbox?.(inbox);
    this.#changed();
  }

  // --- sharing one stream among tabs -------------------------------------

  #elect() {
    const canShare = this.#shared && globalThis.navigator?.locks && 'BroadcastChannel' in globalThis;
    if (!canShare) {
      this.#becomeLeader();
      return;
    }
    // With only a cookie, every tab of this browser is the same user; with
    // a token that could not be had (or has no `sub`), nobody knows who.
    const recipient = this.#token ? claimsOf(this.#token).sub : this.#getToken ? null : 'cookie';
    if (typeof recipient !== 'string') {
      this.#becomeLeader();
      return;
    }
    const name = `tidings:${this.#base.href}:${recipient}`;
    this.#channel = new BroadcastChannel(name);
    this.#channel.onmessage = (message) => this.#relayed(message.data);
    this.#channel.postMessage({ type: 'hello' });
    this.#lockAbort = new AbortController();
    navigator.locks
      .request(name, { signal: this.#lockAbort.signal }, () => {
        if (this.#closed) return undefined;
        this.#becomeLeader();
        // Held until this feed closes or the tab goes away.
        return new Promise((release) => {
          this.#releaseLock = release;
        });
      })
      .catch(() => {});
  }

  #becomeLeader() {
    this.#leader = true;
    if (this.#ready) this.#open();
  }

  #relayed(message) {
    if (message?.type === 'hello' && this.#leader) this.#announce();
    if (this.#leader || !message) return;
    if (message.type === 'event') this.#receive(message.name, message.data, message.seq);
    if (message.type === 'status') this.#setStatus(message.status);
  }

  #announce() {
    this.#channel?.postMessage({ type: 'status', status: this.status });
  }

  // --- the stream (leader only) -------------------------------------------

  async #open() {
    if (this.#closed || this.#source) return;
    clearTimeout(this.#reopenTimer);
    this.#stoppedForAuth = false;
    let token;
    try {
      token = await this.#currentToken();
    } catch (error) {
      this.#report(error);
      this.#reopenLater();
      return;
    }
    if (this.#closed || this.#source) return;
    const url = new URL('v1/stream', this.#base);
    if (token) url.searchParams.set('access_token', token);
    url.searchParams.set('last_event_id', String(Math.max(0, this.position)));
    const source = new EventSource(url, { withCredentials: !token });
    this.#source = source;
    source.onopen = () => {
      this.#attempt = 0;
      this.#lostSince = 0;
      this.#setStatus('live');
    };
    source.onerror = () => this.#streamFailed(source, token);
    for (const name of ['notification', 'read', 'reset']) {
      source.addEventListener(name, (event) => this.#streamed(name, event));
    }
  }

  #streamed(name, event) {
    let data;
    try {
      data = JSON.parse(event.data);
    } catch {
      return;
    }
    const seq = Number(event.lastEventId);
    this.#channel?.postMessage({ type: 'event', name, data, seq });
    this.#receive(name, data, seq);
  }

  /**
   * EventSource retries by itself (sending Last-Event-ID) after a network
   * error or the end of a response, but gives up for good on an HTTP error
   * - a 401 for an expired token, a proxy's 502 - and cannot say which.
   */
  #streamFailed(source, token) {
    if (source !== this.#source) return;
    this.#lostSince ||= Date.now();
    const longLost = Date.now() - this.#lostSince > OFFLINE_AFTER_MS;
    this.#setStatus(longLost || navigator.onLine === false ? 'offline' : 'reconnecting');
    // An expiring token is renewed by the probe before reopening; the
    // backoff keeps a client whose clock runs ahead from looping.
    const renew = token && this.#getToken && expiresSoon(token);
    if (source.readyState === EventSource.CLOSED || renew) {
      source.close();
      this.#source = null;
      this.#reopenLater();
    }
  }

  #reopenLater() {
    clearTimeout(this.#reopenTimer);
    const delay = backoff(this.#attempt++);
    this.#reopenTimer = setTimeout(() => this.#probeThenOpen(), delay);
  }

  /** Asks the inbox first: its 401 is visible, unlike the stream's. */
  async #probeThenOpen() {
    if (this.#closed || this.#source) return;
    try {
      await this.#request('v1/notifications?limit=1');
    } catch (error) {
      this.#report(error);
      if (!this.#stopIfRefused(error)) this.#reopenLater();
      return;
    }
    this.#open();
  }

  /**
   * A 401 with no way to get another token: wait for `setToken` (or the
   * network coming back) instead of retrying in vain. With `getToken`, a
   * refusal is retried, since the next token may be accepted.
   */
  #stopIfRefused(error) {
    const refused = error instanceof TidingsError && error.status === 401;
    if (!refused || this.#getToken) return false;
    this.#stoppedForAuth = true;
    this.#setStatus('offline');
    return true;
  }

  #backOnline() {
    if (!this.#leader) this.#channel?.postMessage({ type: 'hello' });
    else if (this.#source?.readyState === EventSource.OPEN) this.#setStatus('live');
    else this.#reopenNow();
  }

  #reopenNow() {
    if (this.#closed || !this.#leader || !this.#ready || this.#source) return;
    this.#attempt = 0;
    this.#probeThenOpen();
  }

  // --- applying events ----------------------------------------------------

  #receive(name, data, seq) {
    if (name === 'reset') {
      // The log is behind where this client stood (say, a restored
      // database): only a fresh inbox is the truth now.
      this.refresh().catch((error) => this.#report(error));
      return;
    }
    if (!Number.isSafeInteger(seq)) return;
    if (this.#pending) {
      this.#pending.push({ name, data, seq });
      return;
    }
    this.#apply({ name, data, seq });
  }

  #apply({ name, data, seq }) {
    if (seq <= this.position) return;
    if (seq > this.position + 1) {
      // Something in between never reached this tab. Dropping this event
      // is safe: it is committed, so the inbox reloaded next has it.
      this.#refreshSoon();
      return;
    }
    this.position = seq;
    if (name === 'notification') this.#added(data);
    if (name === 'read') this.#read(data);
    this.#changed();
  }

  #added(data) {
    const item = {
      id: data.id,
      seq: data.seq,
      kind: data.kind,
      payload: data.payload,
      created_at: data.created_at,
      read_at: null,
    };
    this.items.unshift(item);
    if (this.items.length > this.#limit) this.items.length = this.#limit;
    this.unreadCount += 1;
    this.#on.onNotification?.(item);
  }

  #read(data) {
    const ids = new Set(data.ids ?? []);
    for (const item of this.items) {
      if (ids.has(item.id) && !item.read_at) item.read_at = data.created_at;
    }
    // A read event lists only notifications that were unread until then.
    this.unreadCount = Math.max(0, this.unreadCount - ids.size);
    this.#on.onRead?.(data);
  }

  /** A reload for a gap, at most every few seconds should reloads keep failing. */
  #refreshSoon() {
    if (this.#gapTimer || this.#closed) return;
    const wait = Math.max(0, this.#lastGapRefresh + 3000 - Date.now());
    this.#gapTimer = setTimeout(() => {
      this.#gapTimer = 0;
      this.#lastGapRefresh = Date.now();
      this.refresh().catch((error) => this.#report(error));
    }, wait);
  }

  #changed() {
    this.#on.onChange?.(this);
  }

  #setStatus(status) {
    if (status === this.status) return;
    this.status = status;
    if (this.#leader) this.#announce();
    this.#on.onStatus?.(status);
  }

  #catchUpUnlessLive() {
    // Live: the read event is on its way. Otherwise show the mark now.
    if (this.status !== 'live') this.refresh().catch((error) => this.#report(error));
  }

  #report(error) {
    this.#on.onError?.(error);
  }

  // --- HTTP and tokens ----------------------------------------------------

  async #currentToken() {
    if (this.#getToken && (!this.#token || expiresSoon(this.#token))) {
      // Requests that find the token stale together share one renewal.
      this.#renewing ??= Promise.resolve()
        .then(() => this.#getToken())
        .finally(() => {
          this.#renewing = null;
        });
      this.#token = await this.#renewing;
    }
    return this.#token;
  }

  async #request(path, init = {}, renewed = false) {
    const token = await this.#currentToken();
    const headers = new Headers(init.headers);
    if (token) headers.set('Authorization', `Bearer ${token}`);
    const response = await fetch(new URL(path, this.#base), {
      ...init,
      headers,
      credentials: token ? 'same-origin' : 'include',
    });
    if (response.status === 401 && this.#getToken && !renewed) {
      // Unless a concurrent request has already renewed it.
      if (this.#token === token) this.#token = null;
      return this.#request(path, init, true);
    }
    if (!response.ok) {
      const problem = await response.json().catch(() => ({}));
      throw new TidingsError(response.status, problem.detail);
    }
    return response;
  }
}

// --- <tidings-bell> ---------------------------------------------------------

const STYLE = `
:host {
  --_accent: var(--tidings-accent, #2563eb);
  --_bg: var(--tidings-bg, #ffffff);
  --_fg: var(--tidings-fg, #1f2328);
  --_muted: var(--tidings-muted, #656d76);
  --_border: var(--tidings-border, #d0d7de);
  --_unread-bg: var(--tidings-unread-bg, color-mix(in srgb, var(--_accent) 8%, var(--_bg)));
  --_badge-bg: var(--tidings-badge-bg, #dc2626);
  --_badge-fg: var(--tidings-badge-fg, #ffffff);
  --_radius: var(--tidings-radius, 10px);
  --_width: var(--tidings-width, 360px);
  --_max-height: var(--tidings-max-height, 420px);
  --_shadow: var(--tidings-shadow, 0 10px 30px rgb(0 0 0 / 0.15));
  display: inline-block;
  position: relative;
  font: var(--tidings-font, 14px/1.4 system-ui, sans-serif);
  color: var(--_fg);
}
@media (prefers-color-scheme: dark) {
  :host {
    --_bg: var(--tidings-bg, #1f2328);
    --_fg: var(--tidings-fg, #e6edf3);
    --_muted: var(--tidings-muted, #9198a1);
    --_border: var(--tidings-border, #3d444d);
    --_unread-bg: var(--tidings-unread-bg, color-mix(in srgb, var(--_accent) 16%, var(--_bg)));
  }
}
button { font: inherit; color: inherit; }
:focus-visible { outline: 2px solid var(--_accent); outline-offset: 2px; }
.bell {
  position: relative; display: grid; place-items: center;
  width: 40px; height: 40px; padding: 0; border: 1px solid transparent;
  border-radius: 50%; background: transparent; cursor: pointer;
}
.bell:hover, .bell[aria-expanded="true"] { background: color-mix(in srgb, var(--_fg) 8%, transparent); }
.bell svg { width: 22px; height: 22px; fill: none; stroke: currentColor; stroke-width: 2; stroke-linecap: round; stroke-linejoin: round; }
.badge {
  position: absolute; top: 2px; right: 0; min-width: 18px; height: 18px; padding: 0 5px;
  box-sizing: border-box; border-radius: 9px; background: var(--_badge-bg); color: var(--_badge-fg);
  font-size: 11px; font-weight: 700; line-height: 18px; text-align: center;
}
.dot {
  position: absolute; bottom: 5px; right: 5px; width: 8px; height: 8px; border-radius: 50%;
  border: 2px solid var(--_bg); background: var(--_muted);
}
:host([status="live"]) .dot { background: #16a34a; }
:host([status="reconnecting"]) .dot, :host([status="connecting"]) .dot { background: #d97706; }
.panel {
  position: absolute; z-index: 1000; top: calc(100% + 6px); right: 0;
  width: var(--_width); max-width: calc(100vw - 16px); box-sizing: border-box;
  background: var(--_bg); color: var(--_fg); border: 1px solid var(--_border);
  border-radius: var(--_radius); box-shadow: var(--_shadow); overflow: hidden;
}
:host([align="start"]) .panel { right: auto; left: 0; }
[hidden] { display: none !important; }
.header {
  display: flex; align-items: center; gap: 8px; padding: 10px 12px;
  border-bottom: 1px solid var(--_border);
}
.heading { font-weight: 600; margin: 0; font-size: 1em; flex: 1; }
.status { font-size: 12px; color: var(--_muted); white-space: nowrap; }
.status::before { content: "\\25CF\\00a0"; }
:host([status="live"]) .status::before { color: #16a34a; }
:host([status="reconnecting"]) .status::before, :host([status="connecting"]) .status::before { color: #d97706; }
.actions { display: flex; gap: 4px; padding: 6px 12px; border-bottom: 1px solid var(--_border); justify-content: flex-end; }
.action {
  border: 1px solid var(--_border); border-radius: 6px; background: transparent;
  padding: 2px 8px; font-size: 12px; cursor: pointer;
}
.action:hover:not(:disabled) { border-color: var(--_accent); color: var(--_accent); }
.action:disabled { opacity: 0.5; cursor: default; }
.list { list-style: none; margin: 0; padding: 0; max-height: var(--_max-height); overflow-y: auto; }
.list li + li { border-top: 1px solid var(--_border); }
.item {
  position: relative; display: grid; grid-template-columns: 10px 1fr auto; column-gap: 8px; row-gap: 2px;
  width: 100%; box-sizing: border-box; padding: 10px 12px; border: 0; background: transparent;
  text-align: left; text-decoration: none; color: inherit; cursor: pointer;
}
.item:hover { background: color-mix(in srgb, var(--_fg) 5%, transparent); }
.item.unread { background: var(--_unread-bg); }
.item.unread::before {
  content: ""; grid-column: 1; grid-row: 1; width: 8px; height: 8px; margin-top: 6px; border-radius: 50%;
  background: var(--_accent);
}
.item.pending { opacity: 0.6; }
.title { grid-column: 2; grid-row: 1; font-weight: 600; overflow-wrap: anywhere; }
.item:not(.unread) .title { font-weight: 500; }
.time { grid-column: 3; grid-row: 1; font-size: 12px; color: var(--_muted); white-space: nowrap; }
.body { grid-column: 2 / 4; color: var(--_muted); overflow-wrap: anywhere; }
.kind { grid-column: 2 / 4; font-size: 11px; color: var(--_muted); font-family: ui-monospace, monospace; }
.empty { margin: 0; padding: 24px 12px; text-align: center; color: var(--_muted); }
.sr-only { position: absolute; width: 1px; height: 1px; overflow: hidden; clip-path: inset(50%); white-space: nowrap; }
`;

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
  <ul class="list" part="list" aria-labelledby="heading"></ul>
  <p class="empty" part="empty">No notifications yet</p>
</div>
<div class="announcer sr-only" part="announcer" aria-live="polite"></div>
`;

const STATUS_TEXT = {
  connecting: 'Connecting…',
  live: 'Live',
  reconnecting: 'Reconnecting…',
  offline: 'Offline',
};

/** What a notification says, from its payload, with fallbacks: never markup. */
export function describe(item) {
  const payload = item.payload;
  const fields = payload && typeof payload === 'object' && !Array.isArray(payload) ? payload : {};
  const text = (value) =>
    typeof value === 'string' || typeof value === 'number' ? String(value).trim() : '';
  const pick = (...keys) => keys.map((key) => text(fields[key])).find(Boolean) ?? '';
  const title = pick('title', 'subject', 'summary', 'heading') || humanize(item.kind);
  let body = pick('body', 'text', 'message', 'description', 'content');
  if (!body && payload !== null && typeof payload !== 'object') body = String(payload);
  if (!body && !pick('title', 'subject', 'summary', 'heading')) body = summarize(fields);
  return { title: clip(title, 140), body: clip(body, 300), url: safeUrl(pick('url', 'link', 'href')) };
}

function humanize(kind) {
  const words = String(kind ?? '').replace(/[._-]+/g, ' ').trim();
  return words ? words[0].toUpperCase() + words.slice(1) : 'Notification';
}

/** `amount: 42, currency: EUR` for a payload without the usual fields. */
function summarize(fields) {
  return Object.entries(fields)
    .filter(([, value]) => ['string', 'number', 'boolean'].includes(typeof value))
    .slice(0, 4)
    .map(([key, value]) => `${key}: ${value}`)
    .join(', ');
}

function clip(text, max) {
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

/** Only http(s) links: a payload must not be able to run `javascript:`. */
function safeUrl(raw) {
  if (!raw) return '';
  try {
    const url = new URL(raw, document.baseURI);
    return url.protocol === 'http:' || url.protocol === 'https:' ? url.href : '';
  } catch {
    return '';
  }
}

const relative = new Intl.RelativeTimeFormat(undefined, { numeric: 'auto' });
const UNITS = [
  ['year', 31_536_000],
  ['month', 2_592_000],
  ['week', 604_800],
  ['day', 86_400],
  ['hour', 3_600],
  ['minute', 60],
];

function ago(iso) {
  const seconds = (Date.parse(iso) - Date.now()) / 1000;
  if (!Number.isFinite(seconds)) return '';
  for (const [unit, size] of UNITS) {
    if (Math.abs(seconds) >= size) return relative.format(Math.round(seconds / size), unit);
  }
  return relative.format(0, 'second');
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
  static observedAttributes = ['token', 'token-url', 'url', 'limit', 'auth'];

  #feed = null;
  #token = null;
  #getToken = null;
  #nodes = new Map();
  #pendingReads = new Set();
  #ticker = 0;
  #connectQueued = false;
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
      list: $('.list'),
      empty: $('.empty'),
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
  }

  disconnectedCallback() {
    clearInterval(this.#ticker);
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
    this.#setStatus('connecting');
    this.#feed = connect({
      url: this.getAttribute('url') || undefined,
      token: this.#token,
      getToken: renewable ? () => this.#tokenSource()?.() ?? this.#token : undefined,
      limit,
      onChange: () => this.#render(),
      onStatus: (status) => this.#setStatus(status),
      onNotification: (item) => this.#announce(item),
      onError: (error) => this.#error(error),
    });
  }

  #error(error) {
    this.dispatchEvent(new CustomEvent('tidings-error', { detail: error }));
  }

  #wire() {
    const { bell, refresh, markAll, list } = this.#ui;
    bell.addEventListener('click', () => this.toggle());
    refresh.addEventListener('click', () => {
      if (!this.#feed) return;
      refresh.disabled = true;
      this.#feed
        .refresh()
        .catch((error) => this.#error(error))
        .finally(() => {
          refresh.disabled = false;
        });
    });
    markAll.addEventListener('click', () => this.#feed?.markAllRead().catch((error) => this.#error(error)));
    list.addEventListener('click', (event) => {
      const entry = event.target.closest('.item');
      if (entry) this.#markRead(Number(entry.dataset.id));
    });
    this.addEventListener('keydown', (event) => this.#key(event));
  }

  #key(event) {
    const { bell, list } = this.#ui;
    if (event.key === 'Escape' && !this.#ui.panel.hidden) {
      event.preventDefault();
      this.#setOpen(false);
      bell.focus();
      return;
    }
    const entries = [...list.querySelectorAll('.item')];
    if (!entries.length || !['ArrowDown', 'ArrowUp', 'Home', 'End'].includes(event.key)) return;
    if (this.#ui.panel.hidden) return;
    const at = entries.indexOf(this.shadowRoot.activeElement);
    const next = {
      ArrowDown: Math.min(at + 1, entries.length - 1),
      ArrowUp: Math.max(at - 1, 0),
      Home: 0,
      End: entries.length - 1,
    }[event.key];
    event.preventDefault();
    entries[next].focus();
  }

  #setOpen(open) {
    this.#ui.panel.hidden = !open;
    this.#ui.bell.setAttribute('aria-expanded', String(open));
    this.toggleAttribute('open', open);
    if (open) this.#tick();
  }

  #markRead(id) {
    const item = this.#feed?.items.find((candidate) => candidate.id === id);
    if (!item || item.read_at) return;
    this.#pendingReads.add(id);
    this.#render();
    this.#feed.markRead(id).catch((error) => {
      this.#pendingReads.delete(id);
      this.#render();
      this.#error(error);
    });
  }

  #setStatus(status) {
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
    if (!feed) return;
    const { badge, list, empty, markAll } = this.#ui;
    badge.textContent = feed.unreadCount > 99 ? '99+' : String(feed.unreadCount);
    badge.hidden = feed.unreadCount === 0;
    this.setAttribute('unread', String(feed.unreadCount));
    markAll.disabled = feed.unreadCount === 0;
    empty.hidden = feed.items.length > 0;
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
  }

  #row(item) {
    const { title, body, url } = describe(item);
    const li = document.createElement('li');
    const entry = element(url ? 'a' : 'button', 'item', 'item');
    if (url) entry.href = url;
    else entry.type = 'button';
    entry.dataset.id = String(item.id);
    entry.append(element('span', 'state sr-only', 'state'));
    const time = element('time', 'time', 'time');
    time.dateTime = item.created_at;
    entry.append(element('span', 'title', 'title', title), time);
    if (body) entry.append(element('span', 'body', 'body', body));
    entry.append(element('span', 'kind', 'kind', item.kind));
    li.append(entry);
    li.created = item.created_at;
    return li;
  }

  #update(li, item) {
    const entry = li.firstElementChild;
    const unread = !item.read_at;
    const pending = unread && this.#pendingReads.has(item.id);
    entry.classList.toggle('unread', unread);
    entry.classList.toggle('pending', pending);
    entry.setAttribute('part', unread ? 'item unread' : 'item');
    const time = entry.querySelector('.time');
    time.textContent = ago(item.created_at);
    time.title = new Date(item.created_at).toLocaleString();
    entry.querySelector('.state').textContent = unread ? 'Unread: ' : '';
  }

  #tick() {
    if (this.#ui.panel.hidden) return;
    for (const [id, node] of this.#nodes) {
      const item = this.#feed?.items.find((candidate) => candidate.id === id);
      if (item) this.#update(node, item);
    }
  }
}

if (globalThis.customElements && !customElements.get('tidings-bell')) {
  customElements.define('tidings-bell', TidingsBell);
}

export default { connect, TidingsBell, TidingsError, describe };
