// The demo page's script (served at /demo.js): takes the token from the
// address, hands it to the bell, and in demo mode wires the publish form.
import { TidingsError, claimsOf } from '/tidings.js';

const STORED = 'tidings-demo-token';

/** The token from `?access_token=`, kept for reloads but not in the address bar or history. */
function takeToken() {
  const params = new URLSearchParams(location.search);
  const token = params.get('access_token');
  if (!token) return sessionStorage.getItem(STORED);
  sessionStorage.setItem(STORED, token);
  params.delete('access_token');
  const query = params.toString();
  history.replaceState(null, '', `${location.pathname}${query ? `?${query}` : ''}${location.hash}`);
  return token;
}

async function publish(token, recipient, form) {
  const fields = Object.fromEntries(new FormData(form));
  const payload = { title: fields.title, body: fields.body };
  if (fields.url) payload.url = fields.url;
  const response = await fetch('/v1/notifications', {
    method: 'POST',
    headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ recipient, kind: fields.kind, payload }),
  });
  if (!response.ok) {
    const problem = await response.json().catch(() => ({}));
    throw new TidingsError(response.status, problem.detail);
  }
  return response.json();
}

const token = takeToken();
const recipient = token ? (claimsOf(token).sub ?? '') : '';
if (!token) {
  document.getElementById('missing-token').hidden = false;
} else {
  document.getElementById('bell').token = token;
  document.getElementById('recipient').textContent = recipient;
  document.getElementById('sql').textContent = document
    .getElementById('sql')
    .textContent.replace("'demo'", `'${recipient.replaceAll("'", "''")}'`);
}

if (token && document.documentElement.dataset.demo === 'on') {
  const form = document.getElementById('publish-form');
  const result = document.getElementById('publish-result');
  document.getElementById('publish').hidden = false;
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    try {
      const { seq } = await publish(token, recipient, form);
      result.textContent = `Published (seq ${seq}).`;
    } catch (error) {
      result.textContent = `Not published: ${error.message}`;
    }
  });
}
