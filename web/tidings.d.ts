// TypeScript declarations for tidings.js, the browser client tidings serves
// at /tidings.js; tidings serves these beside it at /tidings.d.ts, so they
// always match the client that is running. The API is documented in the
// README ("In the browser").
//
// In an app that imports the client by its URL, keep a copy of this file
// (say, src/types/tidings.d.ts) and map the URL to it in tsconfig.json:
//
//   "paths": { "https://tidings.example.com/tidings.js": ["./src/types/tidings.d.ts"] }
//
// Deno reads it straight from tidings:
//
//   // @ts-types="https://tidings.example.com/tidings.d.ts"
//   import { connect } from 'https://tidings.example.com/tidings.js';
//
// This file must never declare anything the module does not have: the
// browser tests compare it with the module running in Chromium.

/** Whether the feed is streaming: shown by the bell, reported by `onStatus`. */
export type FeedStatus = 'connecting' | 'live' | 'reconnecting' | 'offline';

/** Whatever JSON the publisher stored. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** One notification, as the inbox lists it and `notification` events add it. */
export interface InboxItem {
  /** Global id: what read marks name. */
  id: number;
  /** Position in this recipient's log: 1, 2, 3, ... */
  seq: number;
  kind: string;
  payload: Json;
  /** RFC 3339. */
  created_at: string;
  /** When it was first marked read (RFC 3339), or null while unread. */
  read_at: string | null;
}

/** `GET /v1/notifications`, as `onInbox` receives it. */
export interface Inbox {
  items: InboxItem[];
  /** All unread notifications of the recipient, not just these items. */
  unread_count: number;
  /** The recipient's latest seq as of this list: the stream goes on from here. */
  position: number;
}

/** A `read` event: notifications marked read, in this tab or any other. */
export interface ReadEvent {
  seq: number;
  recipient: string;
  /** Only those that were unread until then. */
  ids: number[];
  /** RFC 3339. */
  created_at: string;
}

/**
 * Where a fresh token comes from: called at start and whenever the current
 * one is refused or about to expire. Nothing (null, undefined, '') means
 * no token: requests then go with cookies.
 */
export type TokenSource = () =>
  | string
  | null
  | undefined
  | PromiseLike<string | null | undefined>;

export interface ConnectOptions {
  /** The JWT; prefer `getToken` for tokens that expire. */
  token?: string | null;
  /** Asked for a token whenever the current one is missing, refused or expiring. */
  getToken?: TokenSource | null;
  /** Where tidings is (default: where tidings.js came from). */
  url?: string | URL;
  /** How many notifications the first load and each `loadOlder()` bring (default 50, at most 500). */
  limit?: number;
  /** `false`: this tab opens a stream of its own instead of sharing one (default true). */
  shared?: boolean;
  /** After every change to `items`, `unreadCount` or `position`. */
  onChange?: (feed: Feed) => void;
  /** A new notification arrived (also in another tab). */
  onNotification?: (item: InboxItem) => void;
  /** Notifications were marked read (also in another tab). */
  onRead?: (event: ReadEvent) => void;
  onStatus?: (status: FeedStatus) => void;
  /** The inbox was (re)loaded. */
  onInbox?: (inbox: Inbox) => void;
  /** A failed request or token renewal: a `TidingsError` for an HTTP answer. */
  onError?: (error: unknown) => void;
}

/** What `connect()` returns: the recipient's inbox, kept current by the stream. */
export interface Feed {
  /** Newest first: the first `limit`, and every older page loaded since. */
  items: InboxItem[];
  /** Whether `items` reach back to the recipient's oldest notification. */
  complete: boolean;
  /** All unread, also those beyond `limit`. */
  unreadCount: number;
  /** The highest seq applied (-1 before the first load). */
  position: number;
  status: FeedStatus;
  /** Whether this tab holds the shared stream (the others follow it). */
  readonly leader: boolean;
  /** Marks one notification read; every tab sees it when the read event streams in. */
  markRead(id: number): Promise<void>;
  /** Marks everything up to now read. */
  markAllRead(): Promise<void>;
  /** Reloads the inbox (the stream stays open); resolves when it is applied. */
  refresh(): Promise<void>;
  /** Appends the next older page to `items` (nothing once `complete`); resolves when it is applied. */
  loadOlder(): Promise<void>;
  /** Uses `token` (for the same recipient) from now on. */
  setToken(token: string | null | undefined): void;
  /** Closes the stream, hands it to another tab, stops all timers. */
  close(): void;
}

/** Opens a feed: the recipient's inbox, kept current by the stream. */
export declare function connect(options?: ConnectOptions): Feed;

/** An HTTP answer other than 2xx from tidings, with its problem document's detail. */
export declare class TidingsError extends Error {
  constructor(status: number, detail?: string);
  status: number;
}

/** A JWT's claims, unverified (the server verifies): whatever the token says. */
export interface Claims {
  sub?: string;
  exp?: number;
  [claim: string]: unknown;
}

/** The claims of a JWT, unverified; `{}` for anything that is not one. */
export declare function claimsOf(token: string): Claims;

/** What a notification says, as text (never markup); `url` is http(s) or ''. */
export declare function describe(item: Pick<InboxItem, 'kind' | 'payload'>): {
  title: string;
  body: string;
  url: string;
};

/** The attributes `<tidings-bell>` reads. */
export interface TidingsBellAttributes {
  /** The JWT. */
  token?: string;
  /** A URL of your backend answering the token as text or `{"token": "..."}` (sent with cookies). */
  'token-url'?: string;
  /** Where tidings is (default: where tidings.js came from). */
  url?: string;
  /** How many notifications the list loads at a time (default 50, at most 500). */
  limit?: string | number;
  /** Anchor the list at the bell's left edge (default: right edge). */
  align?: 'start';
  /** Present: each row also shows its notification's `kind` (off by default). */
  'show-kind'?: string | boolean;
  /** The language of its words (`en`, `de`, `ar` built in; default: the page's, then the browser's). */
  lang?: string;
  /** No token: rely on the `tidings_token` cookie. */
  auth?: 'cookie';
}

/**
 * Every word `<tidings-bell>` shows. `{count}` and `{title}` are filled in
 * (as text); the built-in languages have all of them.
 */
export interface TidingsStrings {
  heading: string;
  /** The bell button's name: `{count}` unread. */
  bell: string;
  connecting: string;
  live: string;
  reconnecting: string;
  offline: string;
  refresh: string;
  markAll: string;
  loading: string;
  empty: string;
  /** The "Load older" button. */
  older: string;
  /** Everything is loaded. */
  end: string;
  /** `{count}` unread not loaded yet. */
  beyond: string;
  /** A row's state, in its name. */
  unread: string;
  /** Said by the live region: `{title}`. */
  announce: string;
  showMore: string;
  showLess: string;
  retry: string;
  /** A refused token (401/403). */
  auth: string;
  /** A request the browser could not make: offline, or an origin tidings does not allow. */
  unreachable: string;
  failed: string;
  olderFailed: string;
  /** `{title}` could not be marked read. */
  readFailed: string;
  markAllFailed: string;
  actionUnreachable: string;
  tryAgain: string;
}

/** The attributes `<tidings-bell>` sets on itself, for CSS and tests. */
export interface TidingsBellStateAttributes {
  status: FeedStatus;
  /** The unread count, as digits. */
  unread: string;
  /** Present while the list is open. */
  open?: '';
}

/** A row of the bell's list was clicked: the notification as it was, and the link it has. */
export interface TidingsClickDetail extends InboxItem {
  /** The http(s) link taken from the payload, or '' for a row without one. */
  url: string;
}

/** The events `<tidings-bell>` dispatches on itself. */
export interface TidingsBellEventMap extends HTMLElementEventMap {
  'tidings-notification': CustomEvent<InboxItem>;
  'tidings-status': CustomEvent<FeedStatus>;
  'tidings-error': CustomEvent<unknown>;
  /**
   * Bubbles and is composed. `preventDefault()` keeps the bell from
   * following the link (a router navigates instead); the row is marked
   * read either way.
   */
  'tidings:click': CustomEvent<TidingsClickDetail>;
}

/**
 * `<tidings-bell token="...">` (or `token-url="/my/token"`, or a `getToken`
 * property): a bell with the unread count, opening the inbox. Importing
 * tidings.js defines it.
 */
export declare class TidingsBell extends HTMLElement {
  static observedAttributes: string[];
  /** The JWT to use; prefer `getToken` for tokens that expire. */
  get token(): string | null;
  set token(value: string | null | undefined);
  /** Called at start and whenever the token expires; takes precedence over `token-url`. */
  get getToken(): TokenSource | null;
  set getToken(source: TokenSource | null | undefined);
  /** Every word it shows, in its language; setting replaces some or all of them. */
  get strings(): TidingsStrings;
  set strings(value: Partial<TidingsStrings> | null | undefined);
  /** The feed behind the bell, once it has a token (or `auth="cookie"`). */
  get feed(): Feed | null;
  /** Opens or closes the list (toggles without an argument). */
  toggle(open?: boolean): void;
  connectedCallback(): void;
  disconnectedCallback(): void;
  attributeChangedCallback(name: string, old: string | null, value: string | null): void;
  addEventListener<K extends keyof TidingsBellEventMap>(
    type: K,
    listener: (this: TidingsBell, event: TidingsBellEventMap[K]) => unknown,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject,
    options?: boolean | AddEventListenerOptions,
  ): void;
  removeEventListener<K extends keyof TidingsBellEventMap>(
    type: K,
    listener: (this: TidingsBell, event: TidingsBellEventMap[K]) => unknown,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject,
    options?: boolean | EventListenerOptions,
  ): void;
}

declare global {
  interface HTMLElementTagNameMap {
    'tidings-bell': TidingsBell;
  }
}

declare const tidings: {
  connect: typeof connect;
  TidingsBell: typeof TidingsBell;
  TidingsError: typeof TidingsError;
  describe: typeof describe;
};
export default tidings;
