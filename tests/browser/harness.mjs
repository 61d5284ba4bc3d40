// What the browser scenarios stand on: the real tidings binary (started,
// stopped and restarted on one port), tokens signed like any host app would,
// rows inserted with plain SQL, and headless Chromium. Run through
// `cargo test --test api browser`, which sets the environment read here.
//
// Everything started here is stopped at the end, also on failure, timeout or
// SIGTERM: nothing may outlive a scenario.

import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

import pg from 'pg';
import { chromium } from 'playwright-core';

function required(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run these through \`cargo test --test api browser\``);
  return value;
}

export const SECRET = required('TIDINGS_JWT_SECRET');
const BIN = required('TIDINGS_BIN');
const DATABASE_URL = required('DATABASE_URL');
/** What tidings connects with: its own role's login, where there is one. */
const SERVICE_DATABASE_URL = process.env.SERVICE_DATABASE_URL ?? DATABASE_URL;
/** A second database, for the scenario that "restores" an older one. */
export const RESTORED = {
  url: process.env.RESTORED_DATABASE_URL,
  serviceUrl: process.env.RESTORED_SERVICE_DATABASE_URL ?? process.env.RESTORED_DATABASE_URL,
  name: process.env.RESTORED_PGDATABASE,
};
export const ARTIFACTS = required('BROWSER_ARTIFACTS');
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';

// --- cleanup ------------------------------------------------------------------

const children = new Set();
const closers = [];

/** Runs `fn` on the way out, newest first. */
export function atExit(fn) {
  closers.push(fn);
}

export async function cleanUp() {
  while (closers.length) {
    const close = closers.pop();
    await Promise.race([Promise.resolve().then(close).catch(() => {}), sleep(10_000)]);
  }
  for (const child of children) child.kill('SIGKILL');
}

process.on('exit', () => {
  for (const child of children) child.kill('SIGKILL');
});
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, async () => {
    console.error(`stopped by ${signal}`);
    await cleanUp();
    process.exit(1);
  });
}

// --- small tools --------------------------------------------------------------

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export function check(condition, message) {
  if (!condition) throw new Error(`check failed: ${message}`);
}

export function checkEqual(actual, expected, message) {
  const [a, e] = [JSON.stringify(actual), JSON.stringify(expected)];
  if (a !== e) throw new Error(`check failed: ${message}\n  expected ${e}\n  got      ${a}`);
}

/** Polls `probe` until it returns something truthy, or fails naming `what`. */
export async function eventually(what, probe, { timeout = 10_000, every = 25 } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    last = await probe();
    if (last) return last;
    if (Date.now() > deadline) throw new Error(`not within ${timeout} ms: ${what}`);
    await sleep(every);
  }
}

async function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

// --- tokens, as a host app's backend would sign them ------------------------

export function token(sub, { secret = SECRET, ttlSeconds = 3600, roles } = {}) {
  const part = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const header = part({ alg: 'HS256', typ: 'JWT' });
  const claims = { sub, exp: Math.floor(Date.now() / 1000) + ttlSeconds, ...(roles && { roles }) };
  const body = part(claims);
  const signature = createHmac('sha256', secret).update(`${header}.${body}`).digest('base64url');
  return `${header}.${body}.${signature}`;
}

// --- the database ---------------------------------------------------------------

/** A connection to the scenario's database (libpq's PG* variables), or to the one named. */
export async function database(name = undefined) {
  const client = new pg.Client(name ? { database: name } : {});
  await client.connect();
  atExit(() => client.end());
  return {
    /** One notification, committed when this resolves. */
    async insert(recipient, kind, payload = {}) {
      const { rows } = await client.query(
        'INSERT INTO tidings.notifications (recipient, kind, payload) VALUES ($1, $2, $3) RETURNING id, seq',
        [recipient, kind, payload],
      );
      return rows[0];
    },
    /** Several notifications in one transaction, committed when this resolves. */
    async insertAll(recipient, notifications) {
      await client.query('BEGIN');
      try {
        for (const { kind, payload } of notifications) {
          await client.query(
            'INSERT INTO tidings.notifications (recipient, kind, payload) VALUES ($1, $2, $3)',
            [recipient, kind, payload],
          );
        }
        await client.query('COMMIT');
      } catch (error) {
        await client.query('ROLLBACK');
        throw error;
      }
    },
    async count(recipient) {
      const { rows } = await client.query(
        'SELECT count(*)::int AS n FROM tidings.notifications WHERE recipient = $1',
        [recipient],
      );
      return rows[0].n;
    },
  };
}

// --- tidings ----------------------------------------------------------------------

/** The tidings binary on a fixed port of its own, so a restart keeps the address. */
export class Tidings {
  /** Every server started, for their logs when a scenario fails. */
  static all = [];
  #child = null;
  #stopping = false;
  #log = '';

  constructor(port, { devMode = false, secret = SECRET } = {}) {
    this.port = port;
    this.databaseUrl = SERVICE_DATABASE_URL;
    this.devMode = devMode;
    this.secret = secret;
    // Demo mode keeps its secret in the data directory: one of this
    // server's own, kept across its restarts and removed at the end.
    this.dataDir = mkdtempSync(path.join(os.tmpdir(), 'tidings-browser-'));
    atExit(() => rmSync(this.dataDir, { recursive: true, force: true }));
  }

  /** Starts one on `options.port`, or on a free port. */
  static async start(options) {
    const server = new Tidings(options?.port ?? (await freePort()), options);
    Tidings.all.push(server);
    await server.start();
    atExit(() => server.stop());
    return server;
  }

  get url() {
    return `http://127.0.0.1:${this.port}`;
  }

  get log() {
    return this.#log;
  }

  async start() {
    const env = {
      ...process.env,
      DATABASE_URL: this.databaseUrl,
      TIDINGS_LISTEN: `127.0.0.1:${this.port}`,
      // The browser's reconnect delay: short, so a restart is bridged quickly.
      TIDINGS_RETRY: '500ms',
      RUST_LOG: 'tidings=info',
      NO_COLOR: '1',
      TIDINGS_DATA_DIR: this.dataDir,
    };
    if (this.devMode) delete env.TIDINGS_JWT_SECRET;
    else env.TIDINGS_JWT_SECRET = this.secret;
    this.#stopping = false;
    const child = spawn(BIN, ['serve'], { env, stdio: ['ignore', 'ignore', 'pipe'] });
    this.#child = child;
    children.add(child);
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (text) => {
      this.#log += text;
    });
    child.on('exit', (code, signal) => {
      children.delete(child);
      // Said in the log, so a failure can tell a crash (or a signal from
      // outside) from a stop this scenario asked for.
      if (!this.#stopping) this.#log += `[harness] tidings exited unasked: code ${code}, signal ${signal}\n`;
    });
    await eventually(
      `tidings ready on ${this.url}`,
      async () => {
        if (child.exitCode !== null) throw new Error(`tidings exited (${child.exitCode}):\n${this.#log}`);
        const response = await fetch(`${this.url}/readyz`).catch(() => null);
        return response?.status === 200;
      },
      { timeout: 30_000, every: 50 },
    );
  }

  /** SIGTERM, as a deployment would stop it; waits for the exit. */
  async stop() {
    const child = this.#child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    this.#stopping = true;
    child.kill('SIGTERM');
    const inTime = await Promise.race([exited.then(() => true), sleep(20_000).then(() => false)]);
    if (!inTime) {
      child.kill('SIGKILL');
      throw new Error('tidings did not stop within 20 s of SIGTERM');
    }
  }

  /** The ready-to-open link tidings logs in demo mode. */
  demoUrl() {
    const found = this.#log.match(/open (http:\/\/\S+\?access_token=[\w.-]+)/);
    if (!found) throw new Error(`no demo URL in the log:\n${this.#log}`);
    return found[1];
  }

  /** A sample of a gauge or counter from GET /metrics. */
  async metric(name) {
    const text = await (await fetch(`${this.url}/metrics`)).text();
    const line = text.split('\n').find((l) => l.startsWith(`${name} `));
    return line === undefined ? undefined : Number(line.split(' ')[1]);
  }
}

// --- the browser --------------------------------------------------------------------

export async function launchBrowser() {
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    timeout: 30_000,
    handleSIGTERM: false,
    handleSIGINT: false,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  atExit(() => browser.close());
  return browser;
}

/** Opens `url` in a new tab of `context`, failing on any script error in it. */
export async function openPage(context, url) {
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (error) => errors.push(error));
  page.errors = errors;
  await page.goto(url);
  return page;
}

/** What the page's <tidings-bell> shows, read from its (open) shadow root. */
export function bellState(page) {
  return page.evaluate(() => {
    const bell = document.querySelector('tidings-bell');
    const root = bell.shadowRoot;
    const badge = root.querySelector('[part~="badge"]');
    const shown = (part) => {
      const node = root.querySelector(`[part~="${part}"]`);
      return node && !node.hidden ? node.textContent : '';
    };
    return {
      status: bell.getAttribute('status'),
      unread: Number(bell.getAttribute('unread') ?? 0),
      badge: badge.hidden ? '' : badge.textContent,
      leader: bell.feed?.leader ?? false,
      // What the end of the list says: more to load, or everything loaded.
      older: !root.querySelector('[part~="older"]').hidden,
      end: shown('end'),
      beyond: shown('beyond'),
      // What the panel says instead of (or above) the list.
      loading: shown('loading'),
      empty: shown('empty'),
      problem: shown('problem-text') && shown('problem') ? shown('problem-text') : '',
      notice: shown('notice'),
      items: [...root.querySelectorAll('.item')].map((entry) => ({
        id: Number(entry.dataset.id),
        title: entry.querySelector('.title').textContent,
        unread: entry.classList.contains('unread'),
      })),
    };
  });
}

/** Waits until the bell's state satisfies `test`; the error shows the last state seen. */
export async function bellUntil(page, what, test, { timeout = 10_000 } = {}) {
  let last;
  try {
    return await eventually(
      what,
      async () => {
        last = await bellState(page);
        return test(last) ? last : null;
      },
      { timeout, every: 10 },
    );
  } catch (error) {
    error.message += `\n  last bell state: ${JSON.stringify(last)}`;
    throw error;
  }
}

export function checkNoPageErrors(...pages) {
  for (const page of pages) {
    check(page.errors.length === 0, `no script errors in ${page.url()}: ${page.errors.join('; ')}`);
  }
}
