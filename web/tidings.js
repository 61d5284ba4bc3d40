// tidings.js - the browser client for tidings, and the <tidings-bell> element
// built on it. Served by tidings at /tidings.js: an ES module with no
// dependencies, that a page loads without a build step of its own.
//
//   import { connect } from 'https://tidings.example.com/tidings.js';
//   const feed = connect({ token, onNotification: (item) => ..., onStatus: (s) => ... });
//
// Importing it also defines <tidings-bell>. The API is documented in the
// README ("In the browser"); its TypeScript declarations are in
// tidings.d.ts (served at /tidings.d.ts).
//
// This file is the public face: it says what the module exports and is the
// one place that knows where it was loaded from. The parts live beside it:
//
//   tidings/feed.js    connection, resume, tabs sharing one stream, tokens
//   tidings/bell.js    the <tidings-bell> element
//   tidings/format.js  what a notification says, relative times
//   tidings/styles.js  the element's CSS
//
// tidings serves them joined into this one file (build.rs), so a page makes
// one request and can never mix two versions. Each part is a plain ES module
// too: only `import { names } from './relative.js'` lines and the `export`
// keyword of the parts' declarations are taken out by the join, so what runs
// is what is written here. This file must never export anything not in
// tidings.d.ts.

import { Feed, TidingsError, claimsOf } from './tidings/feed.js';
import { TidingsBell } from './tidings/bell.js';
import { describe } from './tidings/format.js';

/** Opens a feed: the recipient's inbox, kept current by the stream. */
export function connect(options = {}) {
  // Without `url`, tidings is where this module came from.
  return new Feed(options, new URL('.', import.meta.url));
}

if (globalThis.customElements && !customElements.get('tidings-bell')) {
  customElements.define('tidings-bell', TidingsBell);
}

export { TidingsBell, TidingsError, claimsOf, describe };

export default { connect, TidingsBell, TidingsError, describe };
