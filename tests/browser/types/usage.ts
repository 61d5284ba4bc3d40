// The README's "In the browser" usage, written as a TypeScript app would:
// type-checked (never run) against the served /tidings.d.ts by the `types`
// scenario, with the client's URL mapped to the declarations as the file
// itself describes. The @ts-expect-error lines must stay errors.

import tidings, {
  type Feed,
  type FeedStatus,
  type InboxItem,
  TidingsBell,
  TidingsError,
  claimsOf,
  connect,
  describe,
} from 'https://tidings.example.com/tidings.js';

declare function render(items: InboxItem[], unread: number): void;
declare function toast(title: string): void;
declare const token: string;

const feed: Feed = connect({
  token,
  getToken: async () => fetch('/api/tidings-token').then((r) => r.text()),
  url: 'https://tidings.example.com',
  limit: 50,
  shared: true,
  onChange: (f) => render(f.items, f.unreadCount),
  onNotification: (item) => toast(describe(item).title),
  onRead: ({ ids }) => ids.map((id) => id + 1),
  onStatus: (status: FeedStatus) => status === 'live',
  onInbox: (inbox) => inbox.position,
  onError: (error) => {
    if (error instanceof TidingsError) console.log(error.status, error.message);
  },
});
connect();
connect({ url: new URL('https://tidings.example.com/'), getToken: () => null });

export async function use(id: number): Promise<void> {
  await feed.markRead(id);
  await feed.markAllRead();
  await feed.refresh();
  while (!feed.complete) await feed.loadOlder();
  feed.setToken('renewed');
  feed.close();
  const leads: boolean = feed.leader;
  const seq: number = feed.items[0]?.seq ?? feed.position;
  const read: string | null = feed.items[0]?.read_at ?? null;
  console.log(leads, seq, read);
  // @ts-expect-error `leader` is the feed's to say
  feed.leader = true;
  // @ts-expect-error a status the feed never has
  const wrong: FeedStatus = 'closed';
  console.log(wrong);
}

const claims = claimsOf(token);
const sub: string | undefined = claims.sub;
const exp: number | undefined = claims.exp;
console.log(sub, exp);

// The element, as a page gets it from the DOM.
const bell = document.querySelector('tidings-bell');
if (bell) {
  bell.getToken = () => fetch('/api/tidings-token').then((r) => r.text());
  bell.token = token;
  bell.token = null;
  const current: string | null = bell.token;
  bell.strings = { heading: 'Inbox', beyond: '{count} more' };
  const heading: string = bell.strings.heading;
  console.log(heading);
  // @ts-expect-error no such word
  bell.strings = { headline: 'Inbox' };
  bell.toggle();
  bell.toggle(false);
  console.log(current, bell.feed?.unreadCount);
  bell.addEventListener('tidings-notification', (event) => toast(event.detail.kind));
  bell.addEventListener('tidings-status', (event) => {
    const status: FeedStatus = event.detail;
    console.log(status);
  });
  bell.addEventListener('tidings-error', (event) => console.error(event.detail));
  bell.addEventListener('tidings:click', (event) => {
    const { url, seq, read_at }: { url: string; seq: number; read_at: string | null } = event.detail;
    if (url.startsWith(location.origin)) {
      event.preventDefault();
      history.pushState(null, '', new URL(url).pathname);
    }
    console.log(seq, read_at);
  });
  // @ts-expect-error the bell has no such method
  bell.markAllRead();
}
const made: TidingsBell = document.createElement('tidings-bell');
made.setAttribute('token-url', '/api/tidings-token');
console.log(TidingsBell.observedAttributes, tidings.connect === connect, tidings.TidingsBell);
