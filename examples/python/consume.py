"""Consume a tidings stream from Python, resuming where it stopped.

httpx and httpx-sse (pip install httpx httpx-sse). Prints each event as one
JSON line. Reconnects after the server's `retry:` advice whenever the stream
ends (tidings restarting, a proxy answering for it meanwhile), sending the
last event's id so nothing is missed or repeated.

Configuration from the environment: TIDINGS_URL (default
http://127.0.0.1:8080), TIDINGS_TOKEN, and LAST_EVENT_ID to start after.
Usage: python3 consume.py [COUNT]   (stop after COUNT events)
"""
import json
import os
import sys
import time

import httpx
from httpx_sse import connect_sse


def events(base, token, last_event_id=None):
    """Yields (id, event type, data as JSON), forever, across reconnects."""
    retry = 2.0
    with httpx.Client(timeout=httpx.Timeout(10.0, read=None)) as client:
        while True:
            headers = {"Authorization": f"Bearer {token}"}
            if last_event_id is not None:
                headers["Last-Event-ID"] = last_event_id
            try:
                with connect_sse(client, "GET", f"{base}/v1/stream", headers=headers) as source:
                    refused(source.response)
                    for sse in source.iter_sse():
                        if sse.retry is not None:
                            retry = sse.retry / 1000
                        # httpx-sse also hands out data-less events: one for
                        # the `retry:` advice, and one per heartbeat once an
                        # id was seen. They carry nothing; JSON would fail.
                        if not sse.data:
                            continue
                        last_event_id = sse.id
                        yield sse.id, sse.event, json.loads(sse.data)
            except httpx.TransportError as error:
                print(f"stream interrupted ({error}); reconnecting", file=sys.stderr)
            time.sleep(retry)


def refused(response):
    """Stops on answers that a retry does not fix; waits out the others."""
    if response.status_code == 200:
        return
    if response.status_code in (429, 503):
        time.sleep(float(response.headers.get("Retry-After", "5")))
        raise httpx.TransportError(f"{response.status_code}, retrying")
    response.read()
    sys.exit(f"stream refused: {response.status_code} {response.text}")


def main():
    wanted = int(sys.argv[1]) if len(sys.argv) > 1 else None
    base = os.environ.get("TIDINGS_URL", "http://127.0.0.1:8080")
    stream = events(base, os.environ["TIDINGS_TOKEN"], os.environ.get("LAST_EVENT_ID"))
    for seen, (event_id, event, data) in enumerate(stream, start=1):
        # A `reset` means the database was restored behind the stream:
        # reload what you show from the inbox, then carry on.
        print(json.dumps({"id": event_id, "event": event, "data": data}), flush=True)
        if wanted is not None and seen >= wanted:
            return


if __name__ == "__main__":
    main()
