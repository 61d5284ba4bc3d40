// Publish tidings notifications from Node.js (pg), inside the app's own
// transaction. Connection settings come from the libpq-style variables
// (PGHOST, PGPORT, PGDATABASE, PGUSER, PGPASSWORD).
// Usage: node publish.mjs RECIPIENT
import pg from 'pg';

const recipient = process.argv[2] ?? 'alice';
const client = new pg.Client();
await client.connect();

async function transaction(work) {
  await client.query('BEGIN');
  try {
    const result = await work();
    await client.query('COMMIT');
    return result;
  } catch (error) {
    await client.query('ROLLBACK');
    throw error;
  }
}

const { rows } = await transaction(() =>
  client.query(
    'INSERT INTO tidings.notifications (recipient, kind, payload) VALUES ($1, $2, $3) RETURNING id, seq',
    [recipient, 'order.shipped', { title: 'Your order shipped', url: '/orders/7' }],
  ),
);
console.log(`committed id=${rows[0].id} seq=${rows[0].seq}`);

try {
  await transaction(async () => {
    await client.query("INSERT INTO tidings.notifications (recipient, kind) VALUES ($1, 'never.sent')", [recipient]);
    throw new Error("the app's work failed");
  });
} catch {
  console.log('rolled back: nothing delivered');
}
await client.end();
