"""Publish tidings notifications from Python, inside the app's own transaction.

psycopg 3; connection settings come from the usual libpq variables
(PGHOST, PGPORT, PGDATABASE, PGUSER, PGPASSWORD) or a DSN in argv[2].
Usage: python3 publish.py RECIPIENT [DSN]
"""
import sys

import psycopg
from psycopg.types.json import Jsonb


def main() -> None:
    recipient = sys.argv[1] if len(sys.argv) > 1 else "alice"
    dsn = sys.argv[2] if len(sys.argv) > 2 else ""
    with psycopg.connect(dsn) as conn:
        # The notification commits together with the app's own work...
        with conn.transaction():
            row = conn.execute(
                "INSERT INTO tidings.notifications (recipient, kind, payload)"
                " VALUES (%s, %s, %s) RETURNING id, seq",
                (recipient, "invoice.paid", Jsonb({"title": "Invoice paid", "amount": 42})),
            ).fetchone()
            print(f"committed id={row[0]} seq={row[1]}")
        # ...and if that work fails, nothing is ever delivered.
        try:
            with conn.transaction():
                conn.execute(
                    "INSERT INTO tidings.notifications (recipient, kind) VALUES (%s, 'never.sent')",
                    (recipient,),
                )
                raise RuntimeError("the app's work failed")
        except RuntimeError:
            print("rolled back: nothing delivered")


if __name__ == "__main__":
    main()
