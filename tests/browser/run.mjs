// The browser scenarios: `node tests/browser/run.mjs <scenario>`, each run by
// one test in tests/api/browser.rs (which sets up the database and the
// environment). Real tidings, real PostgreSQL, real headless Chromium.
// Exit status 0 = the scenario's guarantee held; any failure says which.

import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { PNG } from 'pngjs';

import {
  ARTIFACTS,
  RESTORED,
  atExit,
  Tidings,
  bellState,
  bellUntil,
  check,
  checkEqual,
  checkNoPageErrors,
  cleanUp,
  database,
  eventually,
  launchBrowser,
  openPage,
  sleep,
  token,
} from './harness.mjs';

/** The longest any scenario may take, start to finish. */
const SCENARIO_TIMEOUT_MS = 120_000;

const titles = (state) => state.items.map((item) => item.title);
const ids = (state) => state.items.map((item) => item.id);
const distinct = (values) => new Set(values).size === values.length;

/** Opens the demo page for `recipient` (a token in the address, as the logged link has). */
async function demoPage(context, server, recipient) {
  const page = await openPage(context, `${server.url}/?access_token=${token(recipient)}`);
  await bellUntil(page, 'the bell is live', (s) => s.status === 'live');
  return page;
}

/** Inserts with SQL and measures commit -> badge and list showing it (for
 * the log only: the latency depends on the machine, so it is no pass mark). */
async function insertAndMeasure(db, page, recipient, title, expectUnread) {
  await db.insert(recipient, 'test.live', { title });
  const committed = Date.now();
  await bellUntil(
    page,
    `"${title}" shown with ${expectUnread} unread`,
    (s) => s.unread === expectUnread && s.badge === String(expectUnread) && s.items[0]?.title === title,
    { timeout: 10_000 },
  );
  return Date.now() - committed;
}

const scenarios = {
  /** 1. The printed demo link works; SQL inserts show up live, each once, in order. */
  async live() {
    const server = await Tidings.start({ devMode: true });
    const db = await database();
    const browser = await launchBrowser();
    const page = await openPage(await browser.newContext(), server.demoUrl());
    await bellUntil(page, 'the bell is live', (s) => s.status === 'live');
    check(!page.url().includes('access_token'), 'the token is taken out of the address bar');

    const latencies = [];
    for (let n = 1; n <= 3; n++) {
      latencies.push(await insertAndMeasure(db, page, 'demo', `Live ${n}`, n));
    }
    await db.insertAll('demo', [
      { kind: 'test.batch', payload: { title: 'Batch A' } },
      { kind: 'test.batch', payload: { title: 'Batch B' } },
    ]);
    const committed = Date.now();
    const batch = await bellUntil(page, 'a committed batch is shown', (s) => s.unread === 5);
    latencies.push(Date.now() - committed);
    checkEqual(titles(batch), ['Batch B', 'Batch A', 'Live 3', 'Live 2', 'Live 1'], 'each once, newest first');
    check(distinct(ids(batch)), 'no notification twice');
    console.log(`commit -> badge and list (reported, not asserted): ${latencies.join(' ms, ')} ms`);

    // Dev mode: the page's form publishes with the logged token.
    check(await page.isVisible('#publish'), 'the publish form is shown in demo mode');
    await page.fill('input[name=title]', 'From the form');
    await page.click('#publish button[type=submit]');
    await bellUntil(page, 'the published notification is shown', (s) => s.items[0]?.title === 'From the form');
    checkEqual(await db.count('demo'), 6, 'six notifications in the table');
    checkNoPageErrors(page);
  },

  /** 2. tidings restarts under an open page: the page reconnects and shows each row once. */
  async restart() {
    const server = await Tidings.start();
    const db = await database();
    const browser = await launchBrowser();
    const page = await demoPage(await browser.newContext(), server, 'rita');
    await insertAndMeasure(db, page, 'rita', 'Before 1', 1);
    await insertAndMeasure(db, page, 'rita', 'Before 2', 2);

    await server.stop();
    await bellUntil(page, 'the bell shows the connection is lost', (s) => s.status !== 'live');
    for (let n = 1; n <= 3; n++) await db.insert('rita', 'test.down', { title: `While down ${n}` });
    await sleep(1500); // a few of the browser's reconnect attempts fail
    await server.start();

    const expected = ['While down 3', 'While down 2', 'While down 1', 'Before 2', 'Before 1'];
    await bellUntil(
      page,
      'every row inserted while tidings was down is shown',
      (s) => s.status === 'live' && s.items.length >= expected.length && s.unread >= expected.length,
      { timeout: 20_000 },
    );
    await insertAndMeasure(db, page, 'rita', 'After', 6);
    await sleep(1000); // room for a duplicate to show up, if one were coming
    const state = await bellState(page);
    checkEqual(titles(state), ['After', ...expected], 'each row exactly once, newest first');
    check(distinct(ids(state)), 'no notification twice');
    checkEqual(state.unread, 6, 'unread count');
    checkNoPageErrors(page);
  },

  /** 3. A reload loses nothing and doubles nothing, also for rows committed during it. */
  async reload() {
    const server = await Tidings.start();
    const db = await database();
    const browser = await launchBrowser();
    const page = await demoPage(await browser.newContext(), server, 'rob');
    check(!(await page.isVisible('#publish')), 'no publish form outside demo mode');
    for (let n = 1; n <= 3; n++) await insertAndMeasure(db, page, 'rob', `Old ${n}`, n);
    const shadow = (selector) => `tidings-bell >> ${selector}`;
    await page.click(shadow('.bell'));
    await page.click(shadow('.item[data-id] >> text=Old 2'));
    await bellUntil(page, 'the clicked one is read', (s) => s.unread === 2);

    // Rows committed while the page reloads (before, during and after its
    // inbox load) must each show up once.
    const reloading = page.reload();
    await db.insert('rob', 'test.reload', { title: 'During reload 1' });
    await reloading;
    await db.insert('rob', 'test.reload', { title: 'During reload 2' });
    await bellUntil(page, 'the reloaded page is live', (s) => s.status === 'live');
    await db.insert('rob', 'test.reload', { title: 'After reload' });
    const expected = ['After reload', 'During reload 2', 'During reload 1', 'Old 3', 'Old 2', 'Old 1'];
    await bellUntil(page, 'every row shown after the reload', (s) => s.items.length >= expected.length);
    await sleep(1000);
    const state = await bellState(page);
    checkEqual(titles(state), expected, 'nothing lost, nothing doubled');
    check(distinct(ids(state)), 'no notification twice');
    checkEqual(state.unread, 5, 'unread count (one was read before the reload)');
    checkEqual(
      state.items.filter((item) => !item.unread).map((item) => item.title),
      ['Old 2'],
      'the read mark survives the reload',
    );
    checkNoPageErrors(page);
  },

  /** 4. Tabs share one stream; a read mark in one tab reaches the others. */
  async tabs() {
    const server = await Tidings.start();
    const db = await database();
    const browser = await launchBrowser();
    const context = await browser.newContext();
    const tabs = [];
    for (let n = 0; n < 3; n++) tabs.push(await demoPage(context, server, 'tess'));
    const streams = () => server.metric('tidings_open_streams');
    await eventually('exactly one stream open for three tabs', async () => (await streams()) === 1);
    await sleep(1000);
    checkEqual(await streams(), 1, 'still exactly one stream for three tabs');

    await db.insert('tess', 'test.tabs', { title: 'For every tab' });
    for (const tab of tabs) {
      await bellUntil(tab, 'each tab shows the new one', (s) => s.unread === 1 && s.items.length === 1);
    }
    const [first, second, third] = tabs;
    await first.click('tidings-bell >> .bell');
    await first.click('tidings-bell >> .item');
    await bellUntil(second, "the other tab's badge drops", (s) => s.unread === 0 && s.badge === '');
    await bellUntil(third, "the third tab's badge drops", (s) => s.unread === 0 && s.badge === '');

    // The leader tab closes: another takes the stream over, from where it stood.
    const states = await Promise.all(tabs.map(bellState));
    checkEqual(states.filter((s) => s.leader).length, 1, 'exactly one leader tab');
    const leader = tabs[states.findIndex((s) => s.leader)];
    const rest = tabs.filter((tab) => tab !== leader);
    await leader.close();
    await db.insert('tess', 'test.tabs', { title: 'After the handover' });
    for (const tab of rest) {
      await bellUntil(
        tab,
        'a remaining tab shows the one inserted after the leader closed',
        (s) => s.items.length === 2 && s.unread === 1 && s.status === 'live',
      );
    }
    await eventually('one stream again after the handover', async () => (await streams()) === 1);
    const after = await Promise.all(rest.map(bellState));
    checkEqual(after.filter((s) => s.leader).length, 1, 'one new leader');
    for (const state of after) checkEqual(titles(state), ['After the handover', 'For every tab'], 'no doubles');
    checkNoPageErrors(...rest);
  },

  /** 5. Payload text is shown as text: markup in it is never parsed. */
  async injection() {
    const server = await Tidings.start();
    const db = await database();
    const browser = await launchBrowser();
    const page = await demoPage(await browser.newContext(), server, 'ivy');
    const title = '<img src=x onerror="window.__pwned = 1">';
    const body = '<b>bold</b><script>window.__pwned = 2</script>';
    const kind = '<svg onload="window.__pwned = 3">';
    await db.insert('ivy', kind, { title, body, url: 'javascript:window.__pwned = 4' });
    await bellUntil(page, 'the notification is shown', (s) => s.unread === 1);
    await page.click('tidings-bell >> .bell');
    await page.click('tidings-bell >> .item');
    await bellUntil(page, 'clicking it marks it read', (s) => s.unread === 0);
    const shown = await page.evaluate(() => {
      const root = document.querySelector('tidings-bell').shadowRoot;
      const entry = root.querySelector('.item');
      return {
        title: entry.querySelector('.title').textContent,
        body: entry.closest('li').querySelector('.body').textContent,
        kind: entry.closest('li').querySelector('.kind').textContent,
        announced: root.querySelector('.announcer').textContent,
        tag: entry.tagName,
        markup: root.querySelectorAll('.list img, .list b, .list script, .list svg, .announcer *').length,
        pwned: window.__pwned ?? null,
      };
    });
    checkEqual(shown.title, title, 'the title is the payload text');
    checkEqual(shown.body, body, 'the body is the payload text');
    checkEqual(shown.kind, kind, 'the kind is text');
    checkEqual(shown.announced, `New notification: ${title}`, 'the live region announces text');
    checkEqual(shown.markup, 0, 'no element made from payload markup');
    checkEqual(shown.tag, 'BUTTON', 'a javascript: URL is not made a link');
    checkEqual(shown.pwned, null, 'no payload script ran');
    checkNoPageErrors(page);
  },

  /**
   * 6. The open bell, reached by keyboard, as a picture (test artifacts),
   * and the open panel on a phone (360 px) and a desktop (1280 px), light
   * and dark.
   */
  async screenshot() {
    const server = await Tidings.start();
    const db = await database();
    const browser = await launchBrowser();
    mkdirSync(ARTIFACTS, { recursive: true });
    const shots = [];
    for (const colorScheme of ['light', 'dark']) {
      const context = await browser.newContext({ viewport: { width: 900, height: 560 }, colorScheme });
      const recipient = `sam-${colorScheme}`;
      await db.insert(recipient, 'invoice.paid', { title: 'Invoice #1042 paid', body: '€ 420.00 from ACME Ltd.', url: '/invoices/1042' });
      await db.insert(recipient, 'comment.created', { text: 'Looks good to me, ship it!' });
      await db.insert(recipient, 'deploy.finished', { service: 'api', version: '2.4.1' });
      const page = await demoPage(context, server, recipient);
      await bellUntil(page, 'three unread', (s) => s.unread === 3);
      // Keyboard: Tab to the bell, Enter opens, arrows move, Escape closes.
      await page.focus('tidings-bell >> .bell');
      await page.keyboard.press('Enter');
      await page.waitForSelector('tidings-bell >> .panel', { state: 'visible' });
      await page.keyboard.press('ArrowDown');
      await page.keyboard.press('ArrowDown');
      const focused = await page.evaluate(() => document.querySelector('tidings-bell').shadowRoot.activeElement?.closest('li').textContent ?? '');
      check(focused.includes('Looks good to me'), `ArrowDown moves through the list (focused: ${focused})`);
      await page.keyboard.press('Escape');
      await page.waitForSelector('tidings-bell >> .panel', { state: 'hidden' });
      const bellFocused = await page.evaluate(() => document.querySelector('tidings-bell').shadowRoot.activeElement?.classList.contains('bell'));
      check(bellFocused, 'Escape closes the list and puts focus back on the bell');
      await page.keyboard.press('Enter');
      await page.waitForSelector('tidings-bell >> .panel', { state: 'visible' });
      // Mark one read so the picture shows both states.
      await page.click('tidings-bell >> .item >> text=Deploy finished');
      await bellUntil(page, 'one read', (s) => s.unread === 2);
      await page.mouse.move(0, 0);
      await page.locator('tidings-bell >> .bell').blur();

      const file = path.join(ARTIFACTS, `bell-open-${colorScheme}.png`);
      await page.screenshot({ path: file, clip: { x: 420, y: 0, width: 480, height: 400 } });
      shots.push(file);
      checkNoPageErrors(page);
      await context.close();
    }
    shots.push(...(await panelPictures(browser, server, db)));
    for (const file of shots) {
      const colours = distinctColours(readFileSync(file));
      console.log(`${file}: ${colours} distinct colours`);
      check(colours >= 16, `${file} is not blank (${colours} distinct colours)`);
    }
    writeFileSync(path.join(ARTIFACTS, 'README.txt'), 'Screenshots of the open <tidings-bell>, written by `cargo test --test api browser`.\n');
  },

  /** 7. An expired or rejected token is renewed and the stream resumes where it stopped. */
  async token() {
    const server = await Tidings.start();
    const db = await database();
    const browser = await launchBrowser();
    const page = await openPage(await browser.newContext(), `${server.url}/`);
    let minted = 0;
    await page.exposeFunction('mintToken', () => {
      minted += 1;
      return token('tom', { secret: server.secret });
    });
    await page.evaluate(() => {
      document.querySelector('tidings-bell').getToken = () => window.mintToken();
    });
    await bellUntil(page, 'the bell is live with a token from getToken', (s) => s.status === 'live');
    await insertAndMeasure(db, page, 'tom', 'First', 1);

    // A new secret: every token the page holds is now refused.
    await server.stop();
    server.secret = `${server.secret}-rotated`;
    await db.insert('tom', 'test.token', { title: 'While down' });
    await server.start();
    await db.insert('tom', 'test.token', { title: 'After restart' });
    await bellUntil(
      page,
      'the bell renewed its token and caught up',
      (s) => s.status === 'live' && s.items.length === 3,
      { timeout: 20_000 },
    );
    const state = await bellState(page);
    checkEqual(titles(state), ['After restart', 'While down', 'First'], 'resumed from the last event, once each');
    check(minted >= 2, `getToken was asked again (${minted} times)`);
    checkNoPageErrors(page);
  },

  /** 9. Tabs of different users never share a stream, also when their tokens come from getToken. */
  async users() {
    const server = await Tidings.start();
    const db = await database();
    const browser = await launchBrowser();
    const context = await browser.newContext();
    const users = { una: 'For Una', val: 'For Val' };
    const tabs = {};
    for (const user of Object.keys(users)) {
      const page = await openPage(context, `${server.url}/`);
      await page.exposeFunction('mintToken', () => token(user, { secret: server.secret }));
      await page.evaluate(() => {
        document.querySelector('tidings-bell').getToken = () => window.mintToken();
      });
      await bellUntil(page, `${user}'s bell is live`, (s) => s.status === 'live');
      tabs[user] = page;
    }
    await eventually('one stream per user', async () => (await server.metric('tidings_open_streams')) === 2);

    for (const [user, title] of Object.entries(users)) await db.insert(user, 'test.users', { title });
    for (const [user, title] of Object.entries(users)) {
      await bellUntil(tabs[user], `${user} sees their own`, (s) => titles(s).includes(title));
    }
    await sleep(500);
    for (const [user, title] of Object.entries(users)) {
      checkEqual(titles(await bellState(tabs[user])), [title], `${user} sees nothing of the other user`);
    }
    checkNoPageErrors(...Object.values(tabs));
  },

  /** 8. A page ahead of the log (the database was restored) is reset to it. */
  async reset() {
    check(RESTORED.url && RESTORED.name, 'a second database (RESTORED_DATABASE_URL) is given');
    const server = await Tidings.start();
    const db = await database();
    const restored = await database(RESTORED.name);
    const browser = await launchBrowser();
    const page = await demoPage(await browser.newContext(), server, 'rex');
    for (let n = 1; n <= 3; n++) await insertAndMeasure(db, page, 'rex', `Lost ${n}`, n);

    // The "backup" holds only the first of them, under another title.
    await restored.insert('rex', 'test.reset', { title: 'Restored' });
    await server.stop();
    server.databaseUrl = RESTORED.serviceUrl;
    await server.start();
    await bellUntil(
      page,
      'the bell shows the restored inbox',
      (s) => s.status === 'live' && s.items.length === 1 && s.items[0].title === 'Restored',
      { timeout: 20_000 },
    );
    await restored.insert('rex', 'test.reset', { title: 'After restore' });
    await bellUntil(page, 'and follows it from there', (s) => s.items.length === 2);
    await sleep(500);
    const state = await bellState(page);
    checkEqual(titles(state), ['After restore', 'Restored'], 'the restored log, each once');
    checkEqual(state.unread, 2, 'unread count of the restored log');
    checkNoPageErrors(page);
  },

  /**
   * 10. A host app on another origin loads the client both ways the README
   * shows, and the bell finds tidings where the module came from.
   */
  async origin() {
    // The host app: another origin (another port), on loopback as tidings
    // is, since Chromium keeps pages from elsewhere off loopback addresses.
    let page = '';
    const app = http.createServer((request, response) => {
      response.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
      response.end(page);
    });
    await new Promise((resolve) => app.listen(0, '127.0.0.1', resolve));
    atExit(() => new Promise((resolve) => app.close(resolve)));
    const origin = `http://127.0.0.1:${app.address().port}`;
    process.env.TIDINGS_CORS_ORIGINS = origin;
    const server = await Tidings.start();
    delete process.env.TIDINGS_CORS_ORIGINS;
    page = `<!doctype html>
<script type="module" src="${server.url}/tidings.js"></script>
<script type="module">
  import { connect } from '${server.url}/tidings.js';
  window.imported = typeof connect;
</script>
<tidings-bell token="${token('olga')}"></tidings-bell>`;
    const db = await database();
    const browser = await launchBrowser();
    const tab = await openPage(await browser.newContext(), `${origin}/`);
    await bellUntil(tab, 'the bell is live, talking to tidings, not to the host app', (s) => s.status === 'live');
    check(await tab.evaluate(() => window.imported === 'function'), 'connect is imported');
    await insertAndMeasure(db, tab, 'olga', 'Across origins', 1);
    checkNoPageErrors(tab);
  },

  /**
   * 11. tidings.d.ts declares exactly what the module running in the
   * browser has, and the README's usage type-checks against it.
   */
  async types() {
    // Loaded here only, so that the other scenarios run without it.
    const ts = (await import('typescript')).default;
    const server = await Tidings.start();
    const declarations = await (await fetch(`${server.url}/tidings.d.ts`)).text();
    const client = await (await fetch(`${server.url}/tidings.js`)).text();
    const file = fileURLToPath(new URL('../../web/tidings.d.ts', import.meta.url));
    checkEqual(declarations, readFileSync(file, 'utf8'), '/tidings.d.ts is web/tidings.d.ts');
    const declared = declaredApi(ts, declarations);

    const browser = await launchBrowser();
    const context = await browser.newContext();
    // web/ as written, unjoined, as if served at /unjoined/.
    const web = fileURLToPath(new URL('../../web/', import.meta.url));
    await context.route('**/unjoined/**', (route) => {
      const file = path.join(web, new URL(route.request().url()).pathname.replace('/unjoined/', ''));
      return route.fulfill({ path: file, contentType: 'text/javascript' });
    });
    const page = await demoPage(context, server, 'tina');
    const running = await page.evaluate(async () => {
      const client = await import('/tidings.js');
      const unjoined = await import('/unjoined/tidings.js');
      const feed = document.querySelector('tidings-bell').feed;
      const members = (object) => Object.getOwnPropertyNames(object).filter((name) => name !== 'constructor');
      return {
        exports: Object.keys(client),
        unjoined: Object.keys(unjoined),
        feed: [...Object.keys(feed), ...members(Object.getPrototypeOf(feed))],
        bell: members(client.TidingsBell.prototype),
        observed: client.TidingsBell.observedAttributes,
        defined: customElements.get('tidings-bell') === client.TidingsBell,
      };
    });
    const sorted = (names) => [...new Set(names)].sort();
    const found = (pattern) => sorted([...client.matchAll(pattern)].map((match) => match[1]));
    checkEqual(sorted(running.exports), declared.exports, 'the module exports what is declared');
    checkEqual(sorted(running.unjoined), declared.exports, 'web/tidings.js loads unjoined, with the same exports');
    checkEqual(sorted(running.feed), declared.Feed, 'a feed has the declared members');
    checkEqual(sorted(running.bell), declared.TidingsBell, "the element's properties and methods");
    check(running.defined, 'the declared TidingsBell is the <tidings-bell> defined');
    checkEqual(
      declared.TidingsBellAttributes.filter((name) => !running.observed.includes(name)),
      ['align', 'show-kind'],
      'every attribute the element observes is declared (align and show-kind are read by its CSS only)',
    );
    checkEqual(
      declared.TidingsBellStateAttributes,
      found(/this\.(?:set|toggle)Attribute\('([\w-]+)'/g),
      'the attributes it sets on itself',
    );
    checkEqual(declared.TidingsBellEventMap, found(/new CustomEvent\('([\w:-]+)'/g), 'the events it dispatches');
    checkEqual(
      declared.ConnectOptions,
      sorted([...found(/\boptions\.(\w+)/g), ...found(/this\.#on\.(\w+)/g)]),
      'the options connect() reads',
    );

    // The same check as `npx tsc -p types` in tests/browser.
    const unreadable = (diagnostic) => {
      throw new Error(ts.flattenDiagnosticMessageText(diagnostic.messageText, '\n'));
    };
    const config = ts.getParsedCommandLineOfConfigFile(
      fileURLToPath(new URL('types/tsconfig.json', import.meta.url)),
      {},
      { ...ts.sys, onUnRecoverableConfigFileDiagnostic: unreadable },
    );
    const host = ts.createCompilerHost(config.options);
    const program = ts.createProgram(config.fileNames, config.options, host);
    const problems = ts.getPreEmitDiagnostics(program).map((d) => ts.formatDiagnostic(d, host));
    checkEqual(problems, [], 'types/usage.ts type-checks against tidings.d.ts');
    checkNoPageErrors(page);
  },

  /**
   * 12. A page of another origin cannot use the tidings_token cookie to
   * mark read - neither with a form nor with fetch - while a page of
   * tidings' own origin and one of a listed origin can. The pages are on
   * other ports of the same loopback address: the same site, so Chromium
   * attaches a SameSite=Lax cookie, as it would for a sibling subdomain.
   */
  async forgery() {
    const listed = await hostApp(() => '<!doctype html><title>listed</title>');
    let forged = '';
    const foreign = await hostApp(() => forged);
    process.env.TIDINGS_CORS_ORIGINS = listed.origin;
    const server = await Tidings.start();
    delete process.env.TIDINGS_CORS_ORIGINS;
    const readAll = `${server.url}/v1/notifications/read-all`;
    const unread = async () => {
      const headers = { Authorization: `Bearer ${token('vera')}` };
      return (await (await fetch(`${server.url}/v1/notifications`, { headers })).json()).unread_count;
    };
    const db = await database();
    await db.insert('vera', 'test.forgery', { title: 'one' });
    await db.insert('vera', 'test.forgery', { title: 'two' });
    const browser = await launchBrowser();
    const context = await browser.newContext();
    await context.addCookies([{ name: 'tidings_token', value: token('vera'), url: server.url, sameSite: 'Lax' }]);

    // The forger: a form posted on load, and a fetch that needs no answer.
    forged = `<!doctype html>
<form id="f" method="POST" action="${readAll}" enctype="text/plain"></form>
<script>
  fetch('${readAll}', { method: 'POST', credentials: 'include', mode: 'no-cors' })
    .finally(() => document.getElementById('f').submit());
</script>`;
    const attacked = await context.newPage();
    const answers = [];
    attacked.on('response', (response) => {
      if (response.url() === readAll) answers.push(`${response.request().resourceType()} ${response.status()}`);
    });
    await attacked.goto(`${foreign.origin}/`);
    await eventually('the forged fetch and form were answered', () => answers.length === 2);
    checkEqual(answers.sort(), ['document 403', 'fetch 403'], 'the forged requests are refused');
    checkEqual(await unread(), 2, 'nothing marked read by the foreign page');

    // The listed origin's page, and tidings' own origin.
    const host = await openPage(context, `${listed.origin}/`);
    const status = (page, url) => page.evaluate((u) => fetch(u, { method: 'POST', credentials: 'include' }).then((r) => r.status), url);
    checkEqual(await status(host, readAll), 204, 'the listed origin marks read with the cookie');
    checkEqual(await unread(), 0, 'marked read by the listed origin');
    await db.insert('vera', 'test.forgery', { title: 'three' });
    const own = await openPage(context, `${server.url}/healthz`);
    checkEqual(await status(own, '/v1/notifications/read-all'), 204, 'tidings\' own origin marks read with the cookie');
    checkEqual(await unread(), 0, 'marked read by tidings\' own origin');
    checkNoPageErrors(host, own);
  },

  /**
   * 13. Behind nginx configured as docs/deployment.md shows (started by the
   * test), a native EventSource - no tidings.js - keeps its stream through a
   * restart of tidings: while tidings is down, nginx answers each reconnect
   * with a short 200 stream saying `retry:`, where a 502 would close the
   * EventSource for good.
   */
  async proxy() {
    const proxyUrl = process.env.PROXY_URL;
    check(proxyUrl && process.env.TIDINGS_PORT, 'PROXY_URL and TIDINGS_PORT are set by the test');
    const server = await Tidings.start({ port: Number(process.env.TIDINGS_PORT) });
    const db = await database();
    const browser = await launchBrowser();
    const page = await openPage(await browser.newContext(), `${proxyUrl}/healthz`);
    await page.evaluate((url) => {
      const source = new EventSource(url);
      window.watched = { source, seen: [], opens: 0, closed: false };
      source.addEventListener('open', () => { window.watched.opens += 1; });
      source.addEventListener('error', () => {
        if (source.readyState === EventSource.CLOSED) window.watched.closed = true;
      });
      source.addEventListener('notification', (e) => window.watched.seen.push(Number(e.lastEventId)));
    }, `/v1/stream?access_token=${token('nora')}`);
    const watched = () => page.evaluate(() => {
      const { source, seen, opens, closed } = window.watched;
      return { seen, opens, closed, state: source.readyState };
    });
    await eventually('the stream is open through nginx', async () => (await watched()).state === 1);
    for (let n = 1; n <= 2; n++) await db.insert('nora', 'test.proxy', { title: `Before ${n}` });
    await eventually('both rows before the restart', async () => (await watched()).seen.length === 2);

    await server.stop();
    for (let n = 1; n <= 3; n++) await db.insert('nora', 'test.proxy', { title: `While down ${n}` });
    await sleep(5000); // the stream's end, then a few of nginx's retry answers
    const down = await watched();
    check(!down.closed && down.state !== 2, `the EventSource is still reconnecting (state ${down.state})`);
    check(down.opens >= 3, `nginx answered its reconnects with 200 (${down.opens} opens in all)`);
    await server.start();
    await db.insert('nora', 'test.proxy', { title: 'After' });

    await eventually('every row, after the restart', async () => (await watched()).seen.length >= 6, { timeout: 20_000 });
    await sleep(1000); // room for a duplicate to show up, if one were coming
    const final = await watched();
    checkEqual(final.seen, [1, 2, 3, 4, 5, 6], 'each row exactly once, in order');
    checkEqual(final.state, 1, 'the stream is open');
    checkNoPageErrors(page);
  },

  /**
   * 14. All of history: the list says when older notifications exist,
   * loads them when scrolled to its end or with "Load older" (also with
   * no IntersectionObserver, by keyboard), and says when all are loaded.
   */
  async history() {
    const server = await Tidings.start();
    const db = await database();
    const numbered = (count) =>
      Array.from({ length: count }, (_, n) => ({ kind: 'test.history', payload: { title: `N${n + 1}` } }));
    const newestFirst = (count) => Array.from({ length: count }, (_, n) => `N${count - n}`);
    await db.insertAll('hana', numbered(60));
    await db.insertAll('hugo', numbered(130));
    const browser = await launchBrowser();

    const page = await demoPage(await browser.newContext(), server, 'hana');
    const first = await bellUntil(page, 'the first page', (s) => s.items.length === 50);
    checkEqual([first.unread, first.badge], [60, '60'], 'the badge counts all 60');
    check(first.older && first.end === '', 'the list offers older ones instead of ending');
    checkEqual(first.beyond, '10 more unread', 'the list says how many unread are not shown yet');
    await page.click('tidings-bell >> .bell');
    await page.evaluate(() => {
      const scroller = document.querySelector('tidings-bell').shadowRoot.querySelector('.scroller');
      scroller.scrollTop = scroller.scrollHeight;
    });
    const all = await bellUntil(page, 'scrolling to the end loads the rest', (s) => s.items.length === 60);
    checkEqual(titles(all), newestFirst(60), 'all 60, newest first, each once');
    check(distinct(ids(all)), 'no notification twice');
    check(!all.older && all.beyond === '', 'nothing more is offered');
    checkEqual(all.end, 'No older notifications', 'the list says it holds everything');
    await db.insert('hana', 'test.history', { title: 'N61' });
    const grown = await bellUntil(page, 'a new one on top of them all', (s) => s.items.length === 61);
    checkEqual(titles(grown), newestFirst(61), 'a new one keeps the older pages');
    check(!grown.older && grown.end !== '', 'still everything');
    checkNoPageErrors(page);

    // Without IntersectionObserver: the button, by keyboard.
    const context = await browser.newContext();
    await context.addInitScript(() => {
      delete window.IntersectionObserver;
    });
    const keys = await demoPage(context, server, 'hugo');
    await bellUntil(keys, 'the first page', (s) => s.items.length === 50 && s.older);
    await keys.click('tidings-bell >> .bell');
    for (const count of [100, 130]) {
      await keys.focus('tidings-bell >> .older');
      await keys.keyboard.press('Enter');
      await bellUntil(keys, `${count} listed after "Load older"`, (s) => s.items.length === count);
    }
    const loaded = await bellState(keys);
    checkEqual(titles(loaded), newestFirst(130), 'all 130, newest first, each once');
    check(!loaded.older && loaded.end === 'No older notifications', 'the button gives way to the end');
    checkEqual([loaded.unread, loaded.badge], [130, '99+'], 'the badge still counts all');
    checkNoPageErrors(keys);
  },

  /**
   * 15. Failures are said, with what to do: a refused token, an origin
   * tidings does not allow, a server that is down (Retry recovers), a read
   * mark that did not stick (the row goes back to unread). "No
   * notifications yet" only for an inbox that was loaded and is empty;
   * Refresh is busy (aria-busy, disabled) while it loads.
   */
  async errors() {
    const server = await Tidings.start();
    const db = await database();
    const browser = await launchBrowser();
    const open = (page) => page.click('tidings-bell >> .bell');

    // A token tidings refuses, then one it accepts.
    const refused = await openPage(await browser.newContext(), `${server.url}/?access_token=${token('eve', { secret: 'not-the-secret' })}`);
    await open(refused);
    const signIn = await bellUntil(refused, 'a refused token is said', (s) => s.problem !== '');
    check(signIn.problem.includes('Sign in again'), `it says to sign in again: ${signIn.problem}`);
    check(await refused.isVisible('tidings-bell >> .retry'), 'with a Retry button');
    checkEqual([signIn.empty, signIn.items.length], ['', 0], 'no "No notifications yet" for an inbox never loaded');
    await refused.evaluate((valid) => {
      document.querySelector('tidings-bell').token = valid;
    }, token('eve'));
    const signedIn = await bellUntil(refused, 'the accepted token loads the inbox', (s) => s.status === 'live' && s.problem === '');
    checkEqual(signedIn.empty, 'No notifications yet', 'an empty inbox, loaded, says so');
    checkNoPageErrors(refused);

    // A page of an origin tidings does not list (no --cors-origin).
    const app = await hostApp(() => `<!doctype html>
<script type="module" src="${server.url}/tidings.js"></script>
<tidings-bell token="${token('eve')}"></tidings-bell>`);
    const foreign = await openPage(await browser.newContext(), `${app.origin}/`);
    await foreign.waitForFunction(() => customElements.get('tidings-bell'));
    await open(foreign);
    const refusedOrigin = await bellUntil(foreign, 'a refused origin is said', (s) => s.problem !== '');
    check(refusedOrigin.problem.includes('does not allow this site'), `it names the origin refusal: ${refusedOrigin.problem}`);
    checkEqual(refusedOrigin.empty, '', 'no "No notifications yet" for an inbox never loaded');

    // tidings goes away under a loaded page.
    await db.insert('eve', 'test.errors', { title: 'Unread one' });
    const page = await demoPage(await browser.newContext(), server, 'eve');
    await bellUntil(page, 'one unread', (s) => s.unread === 1);
    await open(page);
    await page.evaluate(() => {
      const refresh = document.querySelector('tidings-bell').shadowRoot.querySelector('.refresh');
      window.refreshStates = [];
      new MutationObserver(() => {
        window.refreshStates.push(`${refresh.getAttribute('aria-busy')} ${refresh.disabled}`);
      }).observe(refresh, { attributes: true, attributeFilter: ['aria-busy', 'disabled'] });
    });
    await server.stop();
    await page.click('tidings-bell >> .item >> text=Unread one');
    const unmarked = await bellUntil(page, 'the failed read mark is said', (s) => s.notice !== '');
    check(unmarked.notice.includes('“Unread one” could not be marked as read'), `it names the row: ${unmarked.notice}`);
    checkEqual(unmarked.items.map((item) => item.unread), [true], 'the row is back to unread');
    check(!(await page.isVisible('tidings-bell >> .item.pending')), 'and no longer shown as pending');

    await page.click('tidings-bell >> .refresh');
    const down = await bellUntil(page, 'the failed refresh is said', (s) => s.problem !== '');
    check(down.problem.includes('could not be reached'), `it says tidings could not be reached: ${down.problem}`);
    checkEqual(down.items.length, 1, 'the list loaded before stays');
    await eventually('Refresh is usable again', () => page.isEnabled('tidings-bell >> .refresh'));
    const states = await page.evaluate(() => window.refreshStates);
    check(states.includes('true true'), `Refresh was busy and disabled while loading: ${states}`);
    checkEqual(states.at(-1), 'false false', 'and is neither once it failed');

    await server.start();
    await page.click('tidings-bell >> .retry');
    const recovered = await bellUntil(page, 'Retry recovers', (s) => s.problem === '' && s.status === 'live');
    checkEqual(recovered.unread, 1, 'the unread count is as before');
    await page.click('tidings-bell >> .item >> text=Unread one');
    await bellUntil(page, 'marking read works again', (s) => s.unread === 0 && s.notice === '');
    checkNoPageErrors(page);
  },

  /**
   * 16. A click on a row is a cancelable, bubbling, composed
   * `tidings:click` carrying the notification: a router that cancels it
   * navigates without a page load; uncancelled, the link is followed.
   */
  async router() {
    const server = await Tidings.start();
    const db = await database();
    await db.insert('rui', 'task.assigned', { title: 'Followed', url: '/healthz' });
    const routed = await db.insert('rui', 'task.assigned', { title: 'Routed', url: '/tasks/7', task: 7 });
    const browser = await launchBrowser();
    const page = await demoPage(await browser.newContext(), server, 'rui');
    await bellUntil(page, 'two unread', (s) => s.unread === 2);
    await page.evaluate(() => {
      window.sameDocument = true;
      window.clicks = [];
      document.addEventListener('tidings:click', (event) => {
        const { bubbles, composed, cancelable, detail } = event;
        window.clicks.push({ bubbles, composed, cancelable, detail, target: event.target.tagName });
        if (detail.payload.task) {
          event.preventDefault();
          history.pushState(null, '', new URL(detail.url).pathname);
        }
      });
    });
    await page.click('tidings-bell >> .bell');
    await page.click('tidings-bell >> .item >> text=Routed');
    await bellUntil(page, 'the routed one is marked read', (s) => s.unread === 1);
    const [click] = await page.evaluate(() => window.clicks);
    checkEqual(
      [click.bubbles, click.composed, click.cancelable, click.target],
      [true, true, true, 'TIDINGS-BELL'],
      'a bubbling, composed, cancelable event from the bell',
    );
    const { detail } = click;
    checkEqual(
      [detail.id, detail.seq, detail.kind, detail.payload, detail.read_at, detail.url],
      [Number(routed.id), Number(routed.seq), 'task.assigned', { url: '/tasks/7', task: 7, title: 'Routed' }, null, `${server.url}/tasks/7`],
      'the detail is the notification (unread when clicked; payload keys in jsonb order) and its link',
    );
    check(!Number.isNaN(Date.parse(detail.created_at)), 'with its creation time');
    checkEqual(new URL(page.url()).pathname, '/tasks/7', 'the router navigated');
    check(await page.evaluate(() => window.sameDocument === true), 'without loading a page');

    await page.click('tidings-bell >> .item >> text=Followed');
    await page.waitForURL(`${server.url}/healthz`);
    checkNoPageErrors(page);
  },

  /** 17. The kind line (`task.assigned`) is shown only while `show-kind` is set. */
  async kind() {
    const server = await Tidings.start();
    const db = await database();
    await db.insert('kim', 'task.assigned', { title: 'Review the draft' });
    const browser = await launchBrowser();
    const page = await demoPage(await browser.newContext(), server, 'kim');
    await bellUntil(page, 'one unread', (s) => s.unread === 1);
    await page.click('tidings-bell >> .bell');
    await page.waitForSelector('tidings-bell >> .item', { state: 'visible' });
    const kindShown = () => page.isVisible('tidings-bell >> .kind');
    check(!(await kindShown()), 'no kind line by default');
    await page.evaluate(() => document.querySelector('tidings-bell').toggleAttribute('show-kind', true));
    check(await kindShown(), 'show-kind shows it');
    checkEqual(await page.textContent('tidings-bell >> .kind'), 'task.assigned', 'as the kind');
    await page.evaluate(() => document.querySelector('tidings-bell').removeAttribute('show-kind'));
    check(!(await kindShown()), 'and hides it again when removed');
    checkNoPageErrors(page);
  },

  /**
   * 18. On a 360 px wide touch screen the open panel fits the viewport
   * (anchored either way), and every control is at least 44 px tall.
   */
  async mobile() {
    const server = await Tidings.start();
    const db = await database();
    const notifications = Array.from({ length: 60 }, (_, n) => ({
      kind: 'test.mobile',
      payload: { title: `A rather long title that has to wrap on a phone, number ${n + 1}`, body: 'Body text' },
    }));
    await db.insertAll('mia', notifications);
    const browser = await launchBrowser();
    const context = await browser.newContext({ viewport: { width: 360, height: 640 }, hasTouch: true, isMobile: true });
    const page = await demoPage(context, server, 'mia');
    check(await page.evaluate(() => matchMedia('(pointer: coarse)').matches), 'the page has a coarse pointer');
    await bellUntil(page, 'the first page', (s) => s.items.length === 50 && s.older);
    const geometry = () =>
      page.evaluate(() => {
        const root = document.querySelector('tidings-bell').shadowRoot;
        const panel = root.querySelector('.panel').getBoundingClientRect();
        const controls = [...root.querySelectorAll('button, a[href], [tabindex]')].map((control) => ({
          name: `${control.className} ${control.textContent.trim().slice(0, 30)}`,
          shown: control.getClientRects().length > 0,
          height: control.getBoundingClientRect().height,
          minHeight: parseFloat(getComputedStyle(control).minHeight) || 0,
        }));
        const page = document.documentElement;
        return { left: panel.left, right: panel.right, viewport: page.clientWidth, scrollWidth: page.scrollWidth, controls };
      });
    for (const align of [null, 'start']) {
      await page.evaluate((value) => {
        const bell = document.querySelector('tidings-bell');
        bell.toggle(false);
        if (value) bell.setAttribute('align', value);
      }, align);
      await page.tap('tidings-bell >> .bell');
      await page.waitForSelector('tidings-bell >> .panel', { state: 'visible' });
      const shape = await geometry();
      const where = `anchored ${align ?? 'end'}`;
      check(shape.left >= 0 && shape.right <= shape.viewport, `${where}: the panel (${shape.left}..${shape.right}) is inside the ${shape.viewport} px viewport`);
      checkEqual(shape.scrollWidth, shape.viewport, `${where}: the page does not scroll sideways`);
      for (const control of shape.controls) {
        const tall = control.shown ? control.height : control.minHeight;
        check(tall >= 44, `${where}: ${control.name} is at least 44 px tall (${tall})`);
      }
      check(shape.controls.filter((control) => control.shown).length >= 50, 'the rows and buttons were measured');
    }
    checkNoPageErrors(page);
  },

  /**
   * 19. Keyboard: the list is one Tab stop, Up/Down/Home/End move in it
   * and it remembers where; the focus ring is drawn whole; Escape closes
   * and returns to the bell; Tab out of the panel closes it. Each row is
   * named by its title, state and time only.
   */
  async keyboard() {
    const server = await Tidings.start();
    const db = await database();
    for (const title of ['First', 'Second', 'Third']) {
      await db.insert('kai', 'test.keys', { title, body: `The body of ${title}, which is not part of the name` });
    }
    const browser = await launchBrowser();
    const page = await demoPage(await browser.newContext(), server, 'kai');
    await bellUntil(page, 'three unread', (s) => s.unread === 3);
    const focused = () =>
      page.evaluate(() => {
        const bell = document.querySelector('tidings-bell');
        const inside = bell.shadowRoot.activeElement;
        if (!inside) return { outside: document.activeElement?.tagName ?? '' };
        return { className: inside.className, title: inside.querySelector('.title')?.textContent ?? '', open: bell.hasAttribute('open') };
      });
    const press = async (key) => {
      await page.keyboard.press(key);
      return focused();
    };

    await page.focus('tidings-bell >> .bell');
    await page.keyboard.press('Enter');
    await page.waitForSelector('tidings-bell >> .panel', { state: 'visible' });
    checkEqual((await press('Tab')).className, 'action refresh', 'Tab goes to Refresh');
    checkEqual((await press('Tab')).className, 'action mark-all', 'then to Mark all read');
    checkEqual((await press('Tab')).title, 'Third', 'then into the list, at its first row');
    checkEqual((await press('ArrowDown')).title, 'Second', 'ArrowDown moves down');
    checkEqual((await press('End')).title, 'First', 'End goes to the last row');
    checkEqual((await press('ArrowDown')).title, 'First', 'and stays there');
    checkEqual((await press('Home')).title, 'Third', 'Home goes to the first row');
    checkEqual((await press('ArrowUp')).title, 'Third', 'and stays there');
    checkEqual((await press('ArrowDown')).title, 'Second', 'ArrowDown again');
    checkEqual((await press('Shift+Tab')).className, 'action mark-all', 'Shift+Tab leaves the list');
    checkEqual((await press('Tab')).title, 'Second', 'Tab comes back to the row it left');

    const ring = await page.evaluate(() => {
      const root = document.querySelector('tidings-bell').shadowRoot;
      const row = root.activeElement.closest('li');
      const style = getComputedStyle(row);
      const grow = parseFloat(style.outlineOffset) + parseFloat(style.outlineWidth);
      const box = row.getBoundingClientRect();
      const clip = root.querySelector('.scroller').getBoundingClientRect();
      return {
        style: style.outlineStyle,
        inside: box.left - grow >= clip.left && box.right + grow <= clip.right && box.top - grow >= clip.top && box.bottom + grow <= clip.bottom,
      };
    });
    check(ring.style !== 'none', 'the focused row has a focus ring');
    check(ring.inside, 'the ring is inside the scrolling list, not clipped by it');

    const tree = await page.locator('tidings-bell').ariaSnapshot();
    for (const title of ['First', 'Second', 'Third']) {
      check(tree.includes(`button "${title}, unread, now"`), `the row's name is its title, state and time:\n${tree}`);
    }
    check(!tree.includes('which is not part of the name"'), 'the body is not in the name');

    const escaped = await press('Escape');
    checkEqual([escaped.className, escaped.open], ['bell', false], 'Escape closes the panel and returns to the bell');
    await page.keyboard.press('Enter');
    await page.waitForSelector('tidings-bell >> .panel', { state: 'visible' });
    await press('Tab');
    const fromButton = await press('Escape');
    checkEqual([fromButton.className, fromButton.open], ['bell', false], 'also from a button in the panel');

    // Something focusable after the bell, as most pages have.
    await page.evaluate(() => document.querySelector('main').prepend(Object.assign(document.createElement('button'), { textContent: 'After' })));
    await page.keyboard.press('Enter');
    await page.waitForSelector('tidings-bell >> .panel', { state: 'visible' });
    for (let n = 0; n < 3; n++) await press('Tab');
    const away = await press('Tab');
    checkEqual(away.outside, 'BUTTON', 'Tab from the list leaves the bell');
    check(!(await page.isVisible('tidings-bell >> .panel')), 'focus leaving the panel closes it');
    checkNoPageErrors(page);
  },

  /**
   * 20. axe-core finds no violations in the bell, closed and open, light
   * and dark: inside its shadow root too.
   */
  async audit() {
    const server = await Tidings.start();
    const db = await database();
    const notifications = Array.from({ length: 55 }, (_, n) => ({
      kind: 'test.audit',
      payload: n % 3 ? { title: `Notification ${n + 1}`, body: 'With a body. '.repeat(n), url: '/healthz' } : { amount: n, currency: 'EUR' },
    }));
    const axeSource = readFileSync(createRequire(import.meta.url).resolve('axe-core/axe.min.js'), 'utf8');
    const browser = await launchBrowser();
    for (const colorScheme of ['light', 'dark']) {
      const recipient = `ada-${colorScheme}`;
      await db.insertAll(recipient, notifications);
      const context = await browser.newContext({ colorScheme, bypassCSP: true });
      const page = await demoPage(context, server, recipient);
      await bellUntil(page, 'the first page', (s) => s.items.length === 50 && s.older);
      await page.evaluate(axeSource);
      const audit = async (what) => {
        const result = await page.evaluate(() => axe.run({ include: [['tidings-bell']] }, { resultTypes: ['violations', 'passes'] }));
        const violations = result.violations.map(
          (v) => `${v.id} (${v.impact}): ${v.help}\n    ${v.nodes.map((n) => `${JSON.stringify(n.target)} ${n.failureSummary}`).join('\n    ')}`,
        );
        checkEqual(violations, [], `no axe violations: ${what}, ${colorScheme}`);
        const inShadow = result.passes.some((rule) => rule.nodes.some((node) => Array.isArray(node.target[0]) || node.target.length > 1));
        check(inShadow, `the audit reached into the shadow root: ${what}`);
        console.log(`${what}, ${colorScheme}: ${result.passes.length} rules passed, none violated`);
      };
      await audit('closed bell');
      await page.click('tidings-bell >> .bell');
      await page.evaluate(() => document.querySelector('tidings-bell').feed.markRead(document.querySelector('tidings-bell').feed.items[0].id));
      await bellUntil(page, 'one read', (s) => s.items.some((item) => !item.unread));
      await page.focus('tidings-bell >> .item >> nth=0');
      check(await page.isVisible('tidings-bell >> .expand >> nth=0'), 'a long body offers to show more');
      await audit('open panel');
      await page.evaluate(() => document.querySelector('tidings-bell').setAttribute('lang', 'ar'));
      await audit('open panel in Arabic');
      checkNoPageErrors(page);
      await context.close();
    }
  },

  /**
   * 21. Languages: the words follow `lang` (German, Arabic written right to
   * left) or the page's language, `strings` replaces any of them, payload
   * text finds its own direction, a cut never splits an emoji, and a long
   * body can be read in full.
   */
  async languages() {
    const server = await Tidings.start();
    const db = await database();
    const family = '👨‍👩‍👧‍👦';
    const flags = '🇩🇪🇸🇦'.repeat(150);
    await db.insert('lea', 'test.lang', { title: 'مرحبا بالعالم', body: 'نص عربي' });
    await db.insert('lea', 'test.lang', { title: family.repeat(200), body: flags });
    const browser = await launchBrowser();
    const page = await demoPage(await browser.newContext(), server, 'lea');
    await bellUntil(page, 'two unread', (s) => s.unread === 2);
    await page.click('tidings-bell >> .bell');
    const words = () =>
      page.evaluate(() => {
        const bell = document.querySelector('tidings-bell');
        const root = bell.shadowRoot;
        const text = (selector) => root.querySelector(selector).textContent;
        return {
          heading: text('.heading'),
          refresh: text('.refresh'),
          status: text('.status'),
          bell: root.querySelector('.bell').getAttribute('aria-label'),
          row: root.querySelector('.item').getAttribute('aria-label'),
          time: text('.time'),
          dir: root.querySelector('.panel').dir,
          lang: root.querySelector('.panel').lang,
        };
      });
    const english = await words();
    checkEqual([english.heading, english.refresh, english.dir], ['Notifications', 'Refresh', 'ltr'], 'English on an English page');

    await page.evaluate(() => document.querySelector('tidings-bell').setAttribute('lang', 'de'));
    const german = await words();
    checkEqual(
      [german.heading, german.refresh, german.status, german.bell, german.time, german.dir],
      ['Benachrichtigungen', 'Aktualisieren', 'Live', 'Benachrichtigungen, 2 ungelesen', 'jetzt', 'ltr'],
      'German from lang="de"',
    );
    check(german.row.endsWith(', ungelesen, jetzt'), `a row's name in German: ${german.row}`);

    await page.evaluate(() => {
      document.querySelector('tidings-bell').removeAttribute('lang');
      document.documentElement.lang = 'ar';
    });
    const arabic = await words();
    checkEqual(
      [arabic.heading, arabic.refresh, arabic.dir, arabic.lang],
      ['الإشعارات', 'تحديث', 'rtl', 'ar'],
      "Arabic, right to left, from the page's language",
    );
    const shape = await page.evaluate(() => {
      const panel = document.querySelector('tidings-bell').shadowRoot.querySelector('.panel').getBoundingClientRect();
      return { left: panel.left, right: panel.right, width: document.documentElement.clientWidth };
    });
    check(shape.left >= 0 && shape.right <= shape.width, 'the right-to-left panel stays in the viewport');

    await page.evaluate(() => {
      document.querySelector('tidings-bell').strings = { heading: 'صندوق الوارد', refresh: 'Reload' };
    });
    const replaced = await words();
    checkEqual([replaced.heading, replaced.refresh, replaced.status], ['صندوق الوارد', 'Reload', 'مباشر'], 'strings replaces the words given, the rest stay');
    await page.evaluate(() => {
      document.documentElement.lang = 'en';
      document.querySelector('tidings-bell').strings = null;
    });
    checkEqual((await words()).heading, 'Notifications', 'and back to English');

    const shown = await page.evaluate(() => {
      const root = document.querySelector('tidings-bell').shadowRoot;
      const rows = [...root.querySelectorAll('.row')];
      return rows.map((row) => ({
        title: row.querySelector('.title').textContent,
        titleDir: row.querySelector('.title').dir,
        body: row.querySelector('.body').textContent,
        bodyDir: row.querySelector('.body').dir,
        expand: row.querySelector('.expand')?.textContent ?? null,
      }));
    });
    checkEqual(shown.map((row) => [row.titleDir, row.bodyDir]), [['auto', 'auto'], ['auto', 'auto']], 'titles and bodies have dir="auto"');
    const segments = (text) => [...new Intl.Segmenter('en', { granularity: 'grapheme' }).segment(text)].map((s) => s.segment);
    const cutTitle = segments(shown[0].title);
    checkEqual(cutTitle.at(-1), '…', 'a long title is cut');
    check(cutTitle.slice(0, -1).every((segment) => segment === family), 'between whole emoji (no family split)');
    const cutBody = segments(shown[0].body);
    check(cutBody.at(-1) === '…' && cutBody.slice(0, -1).every((flag) => ['🇩🇪', '🇸🇦'].includes(flag)), 'a long body is cut between whole flags');
    checkEqual(shown[0].expand, 'Show more', 'with a button to read it all');
    checkEqual(shown[1].expand, null, 'a short body has none');

    await page.click('tidings-bell >> .expand');
    const expanded = await page.evaluate(() => {
      const root = document.querySelector('tidings-bell').shadowRoot;
      const expand = root.querySelector('.expand');
      return { body: root.querySelector('.body').textContent, state: expand.getAttribute('aria-expanded'), text: expand.textContent };
    });
    checkEqual(expanded, { body: flags, state: 'true', text: 'Show less' }, 'the whole body, once expanded');
    checkEqual((await bellState(page)).unread, 2, 'expanding is not reading: nothing marked read');
    checkNoPageErrors(page);
  },
};

/** The open panel at 360 and 1280 px wide, light and dark: the files written. */
async function panelPictures(browser, server, db) {
  const files = [];
  for (const colorScheme of ['light', 'dark']) {
    const recipient = `pia-${colorScheme}`;
    await db.insertAll(recipient, [
      { kind: 'deploy.finished', payload: { service: 'api', version: '2.4.1' } },
      { kind: 'comment.created', payload: { title: 'Lena commented on “Q3 plan”', body: 'Looks good to me. One question on the hiring numbers before we ship it. '.repeat(4), url: '/plans/q3' } },
      { kind: 'invoice.paid', payload: { title: 'Invoice #1042 paid', body: '€ 420.00 from ACME Ltd.', url: '/invoices/1042' } },
      { kind: 'task.assigned', payload: { title: 'You were assigned “Review the draft” 📝', url: '/tasks/7' } },
    ]);
    for (const width of [360, 1280]) {
      const context = await browser.newContext({ viewport: { width, height: 640 }, colorScheme });
      const page = await demoPage(context, server, recipient);
      await bellUntil(page, 'four listed', (s) => s.items.length === 4);
      if (width === 360) await page.evaluate(() => document.querySelector('tidings-bell').feed.markRead(document.querySelector('tidings-bell').feed.items.at(-1).id));
      await bellUntil(page, 'the oldest read on the phone', (s) => width !== 360 || !s.items.at(-1).unread);
      await page.click('tidings-bell >> .bell');
      await page.waitForSelector('tidings-bell >> .panel', { state: 'visible' });
      await page.mouse.move(0, 0);
      const file = path.join(ARTIFACTS, `panel-${width}-${colorScheme}.png`);
      await page.screenshot({ path: file });
      files.push(file);
      checkNoPageErrors(page);
      await context.close();
    }
  }
  return files;
}

/** A host app's page on another port of loopback, answering `page()` to every request. */
async function hostApp(page) {
  const app = http.createServer((request, response) => {
    response.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    response.end(page());
  });
  await new Promise((resolve) => app.listen(0, '127.0.0.1', resolve));
  atExit(() => new Promise((resolve) => app.close(resolve)));
  return { origin: `http://127.0.0.1:${app.address().port}` };
}

/**
 * The names tidings.d.ts declares: the module's value exports, and the
 * members of its interfaces and classes (statics and the typing overloads
 * of inherited addEventListener/removeEventListener left out).
 */
function declaredApi(ts, text) {
  const source = ts.createSourceFile('tidings.d.ts', text, ts.ScriptTarget.Latest, true);
  const exported = (node) => node.modifiers?.some((m) => m.kind === ts.SyntaxKind.ExportKeyword);
  const isStatic = (node) => node.modifiers?.some((m) => m.kind === ts.SyntaxKind.StaticKeyword);
  const inherited = ['addEventListener', 'removeEventListener'];
  const api = { exports: [] };
  for (const statement of source.statements) {
    if (ts.isExportAssignment(statement)) api.exports.push('default');
    if ((ts.isFunctionDeclaration(statement) || ts.isClassDeclaration(statement)) && exported(statement)) {
      api.exports.push(statement.name.text);
    }
    if (ts.isVariableStatement(statement) && exported(statement)) {
      for (const declaration of statement.declarationList.declarations) api.exports.push(declaration.name.text);
    }
    if (ts.isInterfaceDeclaration(statement) || ts.isClassDeclaration(statement)) {
      api[statement.name.text] = statement.members
        .filter((member) => member.name && !isStatic(member) && !inherited.includes(member.name.text))
        .map((member) => member.name.text);
    }
  }
  for (const [key, names] of Object.entries(api)) api[key] = [...new Set(names)].sort();
  return api;
}

/** How many colours a PNG uses (a blank or one-colour picture has one or two). */
function distinctColours(buffer) {
  const png = PNG.sync.read(buffer);
  const colours = new Set();
  for (let i = 0; i < png.data.length; i += 4) {
    colours.add((png.data[i] << 16) | (png.data[i + 1] << 8) | png.data[i + 2]);
  }
  return colours.size;
}

async function main() {
  const name = process.argv[2];
  const scenario = scenarios[name];
  if (!scenario) {
    console.error(`usage: node run.mjs <${Object.keys(scenarios).join('|')}>`);
    process.exit(2);
  }
  const timer = setTimeout(async () => {
    console.error(`scenario ${name} did not finish within ${SCENARIO_TIMEOUT_MS} ms`);
    await cleanUp();
    process.exit(1);
  }, SCENARIO_TIMEOUT_MS);
  let failed = false;
  try {
    await scenario();
    console.log(`scenario ${name}: passed`);
  } catch (error) {
    failed = true;
    console.error(`scenario ${name}: FAILED\n${error.stack ?? error}`);
  } finally {
    clearTimeout(timer);
    if (failed) for (const server of Tidings.all) console.error(`--- tidings log (${server.url}), last lines:\n${server.log.split('\n').slice(-25).join('\n')}`);
    await cleanUp();
  }
  process.exit(failed ? 1 : 0);
}

main();
