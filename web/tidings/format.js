// tidings/format.js - what a notification says and when, as plain text:
// the title, body and link taken from its payload, and relative times. It
// must never produce markup or a link other than http(s): whatever it
// returns is payload text, to be set with textContent only.

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

export function ago(iso) {
  const seconds = (Date.parse(iso) - Date.now()) / 1000;
  if (!Number.isFinite(seconds)) return '';
  for (const [unit, size] of UNITS) {
    if (Math.abs(seconds) >= size) return relative.format(Math.round(seconds / size), unit);
  }
  return relative.format(0, 'second');
}
