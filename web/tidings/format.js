// tidings/format.js - what a notification says and when, as plain text:
// the title, body and link taken from its payload, relative times, and the
// element's own words in each language it has. It must never produce
// markup or a link other than http(s): whatever it returns is text, to be
// set with textContent only.

/** What a notification says, from its payload, with fallbacks: never markup. */
export function describe(item) {
  const { title, body, url } = content(item);
  return { title: clip(title, 140), body: clip(body, 300), url };
}

/** describe(), not shortened: the bell shows a long body in full on request. */
export function content(item) {
  const payload = item.payload;
  const fields = payload && typeof payload === 'object' && !Array.isArray(payload) ? payload : {};
  const text = (value) =>
    typeof value === 'string' || typeof value === 'number' ? String(value).trim() : '';
  const pick = (...keys) => keys.map((key) => text(fields[key])).find(Boolean) ?? '';
  const title = pick('title', 'subject', 'summary', 'heading') || humanize(item.kind);
  let body = pick('body', 'text', 'message', 'description', 'content');
  if (!body && payload !== null && typeof payload !== 'object') body = String(payload);
  if (!body && !pick('title', 'subject', 'summary', 'heading')) body = summarize(fields);
  return { title, body, url: safeUrl(pick('url', 'link', 'href')) };
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

const graphemes = 'Segmenter' in Intl ? new Intl.Segmenter(undefined, { granularity: 'grapheme' }) : null;

/**
 * At most `max` user-perceived characters, the last one `…` when cut: cut
 * by grapheme cluster, so an emoji (👨‍👩‍👧 is five code points) or a letter
 * with its accents is never split.
 */
export function clip(text, max) {
  if (text.length <= max) return text;
  if (!graphemes) return `${Array.from(text).slice(0, max - 1).join('')}…`;
  let kept = '';
  let count = 0;
  for (const { segment } of graphemes.segment(text)) {
    if (++count >= max) return `${kept}…`;
    kept += segment;
  }
  return text;
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

const relative = new Map();
const UNITS = [
  ['year', 31_536_000],
  ['month', 2_592_000],
  ['week', 604_800],
  ['day', 86_400],
  ['hour', 3_600],
  ['minute', 60],
];

/** How long ago `iso` was, in the words of `locale` ("5 minutes ago", "vor 5 Minuten"). */
export function ago(iso, locale = undefined) {
  const seconds = (Date.parse(iso) - Date.now()) / 1000;
  if (!Number.isFinite(seconds)) return '';
  const key = locale ?? '';
  if (!relative.has(key)) relative.set(key, new Intl.RelativeTimeFormat(locale, { numeric: 'auto' }));
  const format = relative.get(key);
  for (const [unit, size] of UNITS) {
    if (Math.abs(seconds) >= size) return format.format(Math.round(seconds / size), unit);
  }
  return format.format(0, 'second');
}

/**
 * The element's words, in the languages it has built in. A page replaces
 * any of them through the bell's `strings`; `{name}` is filled in with
 * text (a count, a title), never markup.
 */
export const STRINGS = {
  en: {
    heading: 'Notifications',
    bell: 'Notifications, {count} unread',
    connecting: 'Connecting…',
    live: 'Live',
    reconnecting: 'Reconnecting…',
    offline: 'Offline',
    refresh: 'Refresh',
    markAll: 'Mark all read',
    loading: 'Loading…',
    empty: 'No notifications yet',
    older: 'Load older',
    end: 'No older notifications',
    beyond: '{count} more unread',
    unread: 'unread',
    announce: 'New notification: {title}',
    showMore: 'Show more',
    showLess: 'Show less',
    retry: 'Retry',
    auth: 'Your sign-in has expired or was not accepted. Sign in again, then retry.',
    unreachable:
      'The notification server could not be reached, or does not allow this site. Check your connection, then retry.',
    failed: 'Notifications could not be loaded. Retry in a moment.',
    olderFailed: 'Older notifications could not be loaded. Retry in a moment.',
    readFailed: '“{title}” could not be marked as read.',
    markAllFailed: 'Could not mark all as read.',
    actionUnreachable: 'The notification server could not be reached. Try again.',
    tryAgain: 'Try again.',
  },
  de: {
    heading: 'Benachrichtigungen',
    bell: 'Benachrichtigungen, {count} ungelesen',
    connecting: 'Verbinde…',
    live: 'Live',
    reconnecting: 'Verbinde neu…',
    offline: 'Offline',
    refresh: 'Aktualisieren',
    markAll: 'Alle als gelesen markieren',
    loading: 'Wird geladen…',
    empty: 'Noch keine Benachrichtigungen',
    older: 'Ältere laden',
    end: 'Keine älteren Benachrichtigungen',
    beyond: '{count} weitere ungelesen',
    unread: 'ungelesen',
    announce: 'Neue Benachrichtigung: {title}',
    showMore: 'Mehr anzeigen',
    showLess: 'Weniger anzeigen',
    retry: 'Erneut versuchen',
    auth: 'Ihre Anmeldung ist abgelaufen oder wurde nicht akzeptiert. Melden Sie sich erneut an und versuchen Sie es dann noch einmal.',
    unreachable:
      'Der Benachrichtigungsserver ist nicht erreichbar oder lässt diese Website nicht zu. Prüfen Sie Ihre Verbindung und versuchen Sie es erneut.',
    failed: 'Die Benachrichtigungen konnten nicht geladen werden. Versuchen Sie es gleich noch einmal.',
    olderFailed: 'Ältere Benachrichtigungen konnten nicht geladen werden. Versuchen Sie es gleich noch einmal.',
    readFailed: '„{title}“ konnte nicht als gelesen markiert werden.',
    markAllFailed: 'Nicht alle konnten als gelesen markiert werden.',
    actionUnreachable: 'Der Benachrichtigungsserver ist nicht erreichbar. Versuchen Sie es erneut.',
    tryAgain: 'Versuchen Sie es erneut.',
  },
  ar: {
    heading: 'الإشعارات',
    bell: 'الإشعارات، {count} غير مقروءة',
    connecting: 'جارٍ الاتصال…',
    live: 'مباشر',
    reconnecting: 'جارٍ إعادة الاتصال…',
    offline: 'غير متصل',
    refresh: 'تحديث',
    markAll: 'تعليم الكل كمقروء',
    loading: 'جارٍ التحميل…',
    empty: 'لا توجد إشعارات بعد',
    older: 'تحميل الأقدم',
    end: 'لا توجد إشعارات أقدم',
    beyond: '{count} غير مقروءة أخرى',
    unread: 'غير مقروء',
    announce: 'إشعار جديد: {title}',
    showMore: 'عرض المزيد',
    showLess: 'عرض أقل',
    retry: 'إعادة المحاولة',
    auth: 'انتهت صلاحية تسجيل دخولك أو لم يُقبل. سجّل الدخول مرة أخرى، ثم أعد المحاولة.',
    unreachable: 'تعذّر الوصول إلى خادم الإشعارات، أو أنه لا يسمح لهذا الموقع. تحقّق من اتصالك، ثم أعد المحاولة.',
    failed: 'تعذّر تحميل الإشعارات. أعد المحاولة بعد قليل.',
    olderFailed: 'تعذّر تحميل الإشعارات الأقدم. أعد المحاولة بعد قليل.',
    readFailed: 'تعذّر تعليم «{title}» كمقروء.',
    markAllFailed: 'تعذّر تعليم الكل كمقروء.',
    actionUnreachable: 'تعذّر الوصول إلى خادم الإشعارات. حاول مرة أخرى.',
    tryAgain: 'حاول مرة أخرى.',
  },
};

/** Languages written right to left, of those built in. */
const RTL = new Set(['ar']);

/**
 * The built-in language for a BCP 47 tag (`de-AT` is `de`), English for
 * any other; `dir` is the direction it is written in.
 */
export function language(tag) {
  const base = String(tag ?? '').toLowerCase().split('-')[0];
  const known = Object.hasOwn(STRINGS, base);
  return { locale: known ? tag : 'en', base: known ? base : 'en', dir: RTL.has(base) ? 'rtl' : 'ltr' };
}

/** `text` with each `{name}` replaced by `values[name]`, as text. */
export function fill(text, values = {}) {
  return String(text).replace(/\{(\w+)\}/g, (whole, name) => (name in values ? String(values[name]) : whole));
}
