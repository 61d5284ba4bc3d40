//! Payloads: how many bytes a JSON payload takes as PostgreSQL prints it
//! (`payload::text`), and how deep it nests, computed from the JSON as
//! sent. Invariant I10
//! (`migrations/0001_schema.sql`) bounds that size, and the database
//! enforces it; this lets `publish` refuse an oversized payload before the
//! database has to build its text (twice) only to refuse it - a 9 KB
//! request can print as 131 MB, since jsonb prints numbers in full. The
//! bound itself is `publish::MAX_PAYLOAD_TEXT`, which the schema's trigger
//! names as the number to keep equal.
//!
//! The size must agree with PostgreSQL byte for byte (a test in
//! `tests/api/payloads.rs` compares them), or the HTTP path would refuse
//! what SQL accepts, or the reverse. The depth cannot: PostgreSQL has no
//! bound of its own, only its stack (see `publish::MAX_PAYLOAD_DEPTH`).
//! It must never build the printed text (that is the cost it exists to
//! avoid), and never panic or overflow on any valid JSON: lengths saturate
//! at `usize::MAX`.

use std::collections::HashMap;

/// Whether `json` nests arrays and objects more than `max` levels deep
/// (brackets inside strings are text). It stops at the first level too
/// many and allocates nothing, so it can run before [`jsonb_text_len`],
/// whose scan keeps an 80-byte frame for every open level: a 2 MB body of
/// `[` would otherwise hold 160 MB while it is scanned.
pub fn nests_deeper_than(json: &str, max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for byte in json.bytes() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// How many bytes PostgreSQL prints for `json` as `jsonb` (`payload::text`);
/// `json` must be valid JSON, as a `RawValue` is. jsonb prints `", "` and
/// `": "` between items and no other space, keeps the last of duplicate
/// keys, re-escapes strings its own way and prints numbers as `numeric`
/// does: in full. Saturates at `usize::MAX` rather than overflow.
/// (`the_printed_size_is_computed_as_postgresql_prints` compares it with
/// the database.)
pub fn jsonb_text_len(json: &str) -> usize {
    let (bytes, mut at, mut scan) = (json.as_bytes(), 0, Scan::default());
    while at < bytes.len() {
        let start = at;
        at += 1;
        match bytes[start] {
            b'[' => scan.stack.push(Open::Array { items: 0, len: 0 }),
            b'{' => scan.stack.push(Open::Object {
                members: HashMap::new(),
                key: None,
            }),
            b']' | b'}' => scan.close(),
            b'"' => {
                let (text, end) = unescape(json, start);
                at = end;
                scan.string(text);
            }
            b'-' | b'0'..=b'9' => {
                at = json[start..]
                    .find(|c: char| !matches!(c, '-' | '+' | '.' | 'e' | 'E' | '0'..='9'))
                    .map_or(json.len(), |end| start + end);
                scan.value(numeric_len(&json[start..at]));
            }
            b't' | b'n' => scan.value(4),
            b'f' => scan.value(5),
            _ => {} // whitespace, `,`, `:`, and the rest of a literal
        }
    }
    scan.total
}

/// [`jsonb_text_len`]'s state: the containers open around the scan.
#[derive(Default)]
struct Scan {
    stack: Vec<Open>,
    /// The whole value's length, once it is complete.
    total: usize,
}

enum Open {
    Array {
        items: usize,
        len: usize,
    },
    Object {
        /// Each member's printed length (key, `": "` and value) by its key:
        /// the last of a duplicate key wins, as in jsonb.
        members: HashMap<String, usize>,
        /// The key read last and its printed length, while its value is not
        /// complete yet.
        key: Option<(String, usize)>,
    },
}

impl Scan {
    fn string(&mut self, text: String) {
        let len = escaped_len(&text);
        match self.stack.last_mut() {
            Some(Open::Object {
                key: key @ None, ..
            }) => *key = Some((text, len)),
            _ => self.value(len),
        }
    }

    fn close(&mut self) {
        let len = match self.stack.pop() {
            Some(Open::Array { items, len }) => container_len(items, len),
            Some(Open::Object { members, .. }) => {
                let len = members
                    .values()
                    .fold(0, |sum: usize, len| sum.saturating_add(*len));
                container_len(members.len(), len)
            }
            None => return,
        };
        self.value(len);
    }

    /// A complete value of `len` bytes: an item, a member, or the whole.
    fn value(&mut self, len: usize) {
        match self.stack.last_mut() {
            Some(Open::Array { items, len: sum }) => {
                *items += 1;
                *sum = sum.saturating_add(len);
            }
            Some(Open::Object { members, key }) => {
                if let Some((name, name_len)) = key.take() {
                    members.insert(name, name_len.saturating_add(2).saturating_add(len));
                }
            }
            None => self.total = len,
        }
    }
}

/// `[` and `]` (or braces) around `items` of `len` bytes in all, `", "` apart.
fn container_len(items: usize, len: usize) -> usize {
    len.saturating_add(2 + 2 * items.saturating_sub(1))
}

/// The string starting with the quote at `json[start]`, its escapes
/// resolved, and where it ends. A lone surrogate becomes U+FFFD (the
/// database refuses it anyway).
fn unescape(json: &str, start: usize) -> (String, usize) {
    let mut text = String::new();
    let mut chars = json[start + 1..].char_indices();
    let mut pending_high: Option<u32> = None;
    while let Some((offset, c)) = chars.next() {
        let decoded = match c {
            '"' => {
                text.extend(pending_high.map(|_| char::REPLACEMENT_CHARACTER));
                return (text, start + 1 + offset + 1);
            }
            '\\' => match chars.next().map(|(_, c)| c) {
                Some('u') => {
                    let hex: String = chars.by_ref().take(4).map(|(_, c)| c).collect();
                    u32::from_str_radix(&hex, 16).unwrap_or(0xFFFD)
                }
                Some('b') => 0x08,
                Some('f') => 0x0C,
                Some('n') => 0x0A,
                Some('r') => 0x0D,
                Some('t') => 0x09,
                Some(other) => u32::from(other), // `"`, `\`, `/`
                None => break,
            },
            c => u32::from(c),
        };
        let (high, c) = match (pending_high.take(), decoded) {
            (Some(high), low @ 0xDC00..=0xDFFF) => {
                (None, 0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00))
            }
            (earlier, high @ 0xD800..=0xDBFF) => {
                text.extend(earlier.map(|_| char::REPLACEMENT_CHARACTER));
                (Some(high), high)
            }
            (earlier, c) => {
                text.extend(earlier.map(|_| char::REPLACEMENT_CHARACTER));
                (None, c)
            }
        };
        pending_high = high;
        if high.is_none() {
            text.push(char::from_u32(c).unwrap_or(char::REPLACEMENT_CHARACTER));
        }
    }
    (text, json.len())
}

/// A string's length as jsonb prints it, quotes included: `"`, `\` and
/// five control characters take two bytes, other control characters six
/// (`\u001f`), everything else its UTF-8 bytes.
fn escaped_len(text: &str) -> usize {
    2 + text
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | 0x08 | 0x0C | b'\n' | b'\r' | b'\t' => 2,
            0..=0x1F => 6,
            _ => 1,
        })
        .sum::<usize>()
}

/// A JSON number's length as `numeric` prints it: no exponent, the integer
/// part without leading zeros (at least `0`), and as many decimals as the
/// input had after its point, less the exponent (`1.50` has two, `1.5e-3`
/// four, `1.5e3` none); `-` only if it is not zero.
fn numeric_len(number: &str) -> usize {
    let (negative, unsigned) = match number.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, number),
    };
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(e) => (&unsigned[..e], saturating_exponent(&unsigned[e + 1..])),
        None => (unsigned, 0),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = whole.bytes().chain(fraction.bytes());
    let Some(first) = digits.clone().position(|d| d != b'0') else {
        // Zero: `0`, no sign, and its decimals.
        return decimals_len(fraction.len() as i64 - exponent).saturating_add(1);
    };
    let point = (whole.len() as i64).saturating_add(exponent);
    let whole_len = point.saturating_sub(first as i64).max(1);
    let len = whole_len
        .saturating_add(decimals_len(fraction.len() as i64 - exponent) as i64)
        .saturating_add(i64::from(negative));
    usize::try_from(len).unwrap_or(usize::MAX)
}

/// `.` and `scale` digits, or nothing for a scale of 0 or less.
fn decimals_len(scale: i64) -> usize {
    match usize::try_from(scale) {
        Ok(0) | Err(_) => 0,
        Ok(scale) => scale.saturating_add(1),
    }
}

/// An exponent's value, held to a range where no sum with it overflows.
fn saturating_exponent(text: &str) -> i64 {
    const LIMIT: i64 = i64::MAX / 4;
    let (negative, digits) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let value = digits.bytes().fold(0i64, |value, digit| {
        let value = value
            .saturating_mul(10)
            .saturating_add(i64::from(digit - b'0'));
        value.min(LIMIT)
    });
    if negative {
        -value
    } else {
        value
    }
}
