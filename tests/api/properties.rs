//! Properties of the two pieces every event passes through, over thousands
//! of generated cases: the stream cursor (dedupe, gap fill, reset) and the
//! SSE encoding (one line per field, and every payload round-trips).

use chrono::{TimeZone, Utc};
use proptest::prelude::*;
use serde_json::{json, Value};

use tidings::delivery::events::Event;
use tidings::delivery::stream::{Cursor, Offer};

proptest! {
    /// Whatever the hub offers - duplicates, gaps, any order - a stream that
    /// follows the cursor and fills gaps from the table sends exactly
    /// position+1 ..= latest, once each, in order.
    #[test]
    fn the_cursor_turns_any_offers_into_exactly_the_missing_seqs_in_order(
        latest in 0i64..300,
        position in 0i64..300,
        offers in proptest::collection::vec(1i64..300, 0..400),
    ) {
        let position = position.min(latest);
        let (mut cursor, reset) = Cursor::start(Some(position), latest);
        prop_assert!(reset.is_none());
        let mut sent = Vec::new();
        let catch_up = |cursor: &mut Cursor, sent: &mut Vec<i64>| {
            for seq in cursor.sent() + 1..=latest {
                cursor.advance(seq);
                sent.push(seq);
            }
        };
        for seq in offers.into_iter().filter(|seq| *seq <= latest) {
            match cursor.offer(seq) {
                Offer::Send => sent.push(seq),
                Offer::Duplicate => {}
                Offer::Gap => catch_up(&mut cursor, &mut sent),
            }
        }
        catch_up(&mut cursor, &mut sent);
        prop_assert_eq!(sent, (position + 1..=latest).collect::<Vec<_>>());
    }

    /// A position beyond the log resets to the latest seq, and the reset
    /// event carries that position as both its id and its data.
    #[test]
    fn a_position_beyond_the_log_resets_to_the_latest(latest in 0i64..1_000_000, ahead in 1i64..1_000_000) {
        let (cursor, reset) = Cursor::start(Some(latest + ahead), latest);
        let reset = reset.expect("a reset event");
        prop_assert_eq!(cursor.sent(), latest);
        prop_assert_eq!(reset.seq, latest);
        prop_assert_eq!(serde_json::from_str::<Value>(reset.data()).ok(), Some(json!({"position": latest})));
    }

    /// Any recipient, kind and payload (newlines, CRs, control characters,
    /// quotes, any Unicode) is encoded as single-line fields, and a
    /// spec-following SSE parser gets the same JSON back.
    #[test]
    fn any_notification_round_trips_through_the_sse_encoding(
        id in 1i64..i64::MAX,
        seq in 1i64..i64::MAX,
        recipient in "\\PC{1,20}|[\\r\\n\\t\"\\\\ ]{1,5}",
        kind in any::<String>().prop_filter("non-empty, no NUL", |k| !k.is_empty() && !k.contains('\0')),
        text in any::<String>().prop_map(|t| t.replace('\0', "")),
        number in any::<i64>(),
    ) {
        let payload = json!({"text": text, "n": number, "nested": {"list": [text.clone(), null, true]}});
        let raw = serde_json::value::RawValue::from_string(payload.to_string()).expect("raw payload");
        let created_at = Utc.timestamp_opt(1_700_000_000, 123_000).single().expect("time");
        let event = Event::notification(id, seq, &recipient, &kind, &raw, created_at);

        let bytes = event.frame().to_vec();
        let parsed = parse_sse(&bytes);

        prop_assert_eq!(parsed.len(), 1, "one event in {:?}", bytes);
        let (event_id, name, data) = &parsed[0];
        let expected_id = seq.to_string();
        prop_assert_eq!(event_id.as_deref(), Some(expected_id.as_str()));
        prop_assert_eq!(name.as_str(), "notification");
        let data: Value = serde_json::from_str(data).expect("data is JSON");
        prop_assert_eq!(&data["payload"], &payload);
        prop_assert_eq!(data["recipient"].as_str(), Some(recipient.as_str()));
        prop_assert_eq!(data["kind"].as_str(), Some(kind.as_str()));
        prop_assert_eq!(data["id"].as_i64(), Some(id));
        for line in bytes.split(|b| *b == b'\n') {
            prop_assert!(!line.contains(&b'\r') && !line.contains(&0), "raw CR or NUL in {:?}", line);
        }
    }
}

/// The HTML standard's event-stream interpretation: (id, event, data) of
/// each dispatched event.
fn parse_sse(bytes: &[u8]) -> Vec<(Option<String>, String, String)> {
    let text = String::from_utf8(bytes.to_vec()).expect("UTF-8");
    let mut events = Vec::new();
    let (mut id, mut name, mut data, mut has_data) = (None, String::new(), String::new(), false);
    for line in text.split('\n') {
        if line.is_empty() {
            if has_data {
                let name = if name.is_empty() {
                    "message".to_owned()
                } else {
                    std::mem::take(&mut name)
                };
                events.push((id.clone(), name, std::mem::take(&mut data)));
            }
            has_data = false;
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => id = Some(value.to_owned()),
            "event" => name = value.to_owned(),
            "data" => {
                if has_data {
                    data.push('\n');
                }
                data.push_str(value);
                has_data = true;
            }
            _ => {}
        }
    }
    events
}
