// tidings/feed.js - the feed behind connect(): the recipient's inbox, kept
// current by one stream that all tabs of a browser share. It owns the
// connection (load, stream, resume, reconnect), the sharing among tabs,
// tokens and HTTP. It must never touch the document beyond reading
// `document.baseURI`: showing things is the bell's (or the host app's) job.
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
/** The inbox's largest page (`limit` above it is a 400). */
const MAX_PAGE = 500;

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

/** Applies a read event to the items it names. */
function applyRead(items, read) {
  const ids = new Set(read.ids ?? []);
  for (const item of items) {
    if (ids.has(item.id) && !item.read_at) item.read_at = read.created_at;
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function backoff(attempt) {
  const ceiling = Math.min(MAX_BACKOFF_MS, 1000 * 2 ** Math.min(attempt, 5));
  return ceiling / 2 + Math.random() * (ceiling / 2);
}

/**
 * What `connect()` returns. `home` is where tidings is unless `options.url`
 * says otherwise: the entry module passes the directory it was loaded
 * from, the one place that knows it.
 */
export class Feed {
  /** Newest first: the first `limit`, and every older page loaded since. */
  items = [];
  /** Whether `items` reach back to the recipient's oldest notification. */
  complete = false;
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
  /** How many items stay when new ones push the oldest out: grows with each older page. */
  #capacity;
  #loadingOlder = null;
  /** Read events applied while an older page loads: that page may predate them. */
  #readsDuringPage = null;
  #onOnline = () => this.#backOnline();
  #onOffline = () => this.#setStatus('offline');

  constructor(options, home) {
    this.#base = new URL(options.url ?? home, document.baseURI);
    if (!this.#base.pathname.endsWith('/')) this.#base.pathname += '/';
    this.#token = options.token || null;
    this.#getToken = options.getToken || null;
    this.#limit = Math.min(Math.max(1, Math.floor(options.limit ?? 50) || 50), MAX_PAGE);
    this.#capacity = this.#limit;
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

  /**
   * Appends the next older page to `items` (nothing once `complete`).
   * Resolves when it is applied; calls made meanwhile share the request.
   */
  loadOlder() {
    if (this.complete || this.#closed || !this.#ready) return Promise.resolve();
    this.#loadingOlder ??= this.#loadPage().finally(() => {
      this.#loadingOlder = null;
      this.#readsDuringPage = null;
    });
    return this.#loadingOlder;
  }

  async #loadPage() {
    const before = this.items.at(-1)?.seq;
    if (before === undefined) return;
    this.#readsDuringPage = [];
    const ask = Math.min(this.#limit + 1, MAX_PAGE);
    const response = await this.#request(`v1/notifications?limit=${ask}&before=${before}`);
    const page = await response.json();
    // A reload or a new notification pushing the oldest out has changed
    // where this page would go: dropped, the next call asks again.
    if (this.#closed || this.items.at(-1)?.seq !== before) return;
    const older = page.items.slice(0, this.#limit).map((item) => ({ ...item }));
    for (const read of this.#readsDuringPage) applyRead(older, read);
    this.items.push(...older);
    this.complete = page.items.length < ask;
    this.#capacity = Math.max(this.#capacity, this.items.length);
    this.#changed();
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

  /** The newest page, as long as what is shown (up to the largest page the inbox gives). */
  async #load() {
    const keep = Math.min(Math.max(this.#limit, this.items.length), MAX_PAGE);
    // One more than kept: whether it comes says if older ones exist.
    const ask = Math.min(keep + 1, MAX_PAGE);
    const response = await this.#request(`v1/notifications?limit=${ask}`);
    const inbox = await response.json();
    this.items = inbox.items.slice(0, keep).map((item) => ({ ...item }));
    this.complete = inbox.items.length < ask;
    this.#capacity = Math.max(this.#limit, this.items.length);
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
    // A list that holds everything keeps doing so (up to a page's worth):
    // dropping its oldest would take back what the user saw complete.
    if (this.complete) this.#capacity = Math.max(this.#capacity, Math.min(this.items.length, MAX_PAGE));
    if (this.items.length > this.#capacity) {
      this.items.length = this.#capacity;
      this.complete = false;
    }
    this.unreadCount += 1;
    this.#on.onNotification?.(item);
  }

  #read(data) {
    const ids = new Set(data.ids ?? []);
    applyRead(this.items, data);
    this.#readsDuringPage?.push(data);
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
