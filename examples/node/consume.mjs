// Consume a tidings stream from Node.js (20+, no dependencies): prints each
// event as one JSON line, resuming after LAST_EVENT_ID if given.
// Usage: TIDINGS_URL=http://127.0.0.1:8080 TIDINGS_TOKEN=... node consume.mjs [COUNT]
const base = process.env.TIDINGS_URL ?? 'http://127.0.0.1:8080';
const wanted = Number(process.argv[2] ?? Infinity);
const headers = { Authorization: `Bearer ${process.env.TIDINGS_TOKEN}` };
if (process.env.LAST_EVENT_ID) headers['Last-Event-ID'] = process.env.LAST_EVENT_ID;

const response = await fetch(`${base}/v1/stream`, { headers });
if (response.status !== 200) {
  console.error(`stream refused: ${response.status} ${await response.text()}`);
  process.exit(1);
}

// The event-stream format: fields until a blank line; comments start with ':'.
let buffer = '';
let seen = 0;
const decoder = new TextDecoder();
for await (const chunk of response.body) {
  buffer += decoder.decode(chunk, { stream: true });
  let end;
  while ((end = buffer.indexOf('\n\n')) >= 0) {
    const block = buffer.slice(0, end);
    buffer = buffer.slice(end + 2);
    const event = { id: null, event: 'message', data: [] };
    for (const line of block.split('\n')) {
      if (line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
      if (field === 'id') event.id = value;
      else if (field === 'event') event.event = value;
      else if (field === 'data') event.data.push(value);
    }
    if (event.data.length === 0) continue; // e.g. the retry advice
    console.log(JSON.stringify({ id: event.id, event: event.event, data: JSON.parse(event.data.join('\n')) }));
    if (++seen >= wanted) process.exit(0);
  }
}
