//! Typed query parameters. Each type parses and checks its own value while
//! the query string is read, so a handler gets only valid values, and a bad
//! one is a 400 problem document naming the parameter (through
//! [`super::error::AppQuery`]).
//!
//! Present but empty is a bad value, not an absent one, as the OpenAPI
//! document says; a filter for which empty means "none" stays text.
//! Nothing here may accept a value its handler would have to check again.

use std::fmt::Display;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{de, Deserialize, Deserializer};

/// How many items a page holds: a whole number from 1 to `MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit<const MAX: i64>(pub i64);

/// A position in a recipient's log (a `seq`): a whole number from 0 up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seq(pub i64);

/// A moment, in RFC 3339: `2026-11-21T13:00:00Z`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Time(pub DateTime<Utc>);

impl<const MAX: i64> FromStr for Limit<MAX> {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        text.parse()
            .ok()
            .filter(|n| (1..=MAX).contains(n))
            .map(Self)
            .ok_or_else(|| format!("must be a whole number from 1 to {MAX}; got {text:?}"))
    }
}

impl FromStr for Seq {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        text.parse()
            .ok()
            .filter(|n| *n >= 0)
            .map(Self)
            .ok_or_else(|| format!("must be a whole number from 0 up; got {text:?}"))
    }
}

impl FromStr for Time {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        DateTime::parse_from_rfc3339(text)
            .map(|time| Self(time.with_timezone(&Utc)))
            .map_err(|_| {
                format!("must be an RFC 3339 time, e.g. 2026-11-21T13:00:00Z; got {text:?}")
            })
    }
}

/// Reads a parameter as text and parses it with its `FromStr`, whose
/// message says what a valid value looks like.
fn parsed<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: Display,
{
    let text = String::deserialize(deserializer)?;
    text.parse().map_err(de::Error::custom)
}

impl<'de, const MAX: i64> Deserialize<'de> for Limit<MAX> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        parsed(deserializer)
    }
}

impl<'de> Deserialize<'de> for Seq {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        parsed(deserializer)
    }
}

impl<'de> Deserialize<'de> for Time {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        parsed(deserializer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_parameter_takes_exactly_its_valid_values() {
        assert_eq!("1".parse(), Ok(Limit::<500>(1)));
        assert_eq!("500".parse(), Ok(Limit::<500>(500)));
        for bad in ["0", "501", "-1", "", "ten", "1.5"] {
            assert!(bad.parse::<Limit<500>>().is_err(), "{bad:?}");
        }
        assert_eq!("0".parse(), Ok(Seq(0)));
        for bad in ["-1", "", "x", "99999999999999999999"] {
            assert!(bad.parse::<Seq>().is_err(), "{bad:?}");
        }
        assert!("2026-11-21T13:00:00Z".parse::<Time>().is_ok());
        assert!("2026-11-21T14:00:00+01:00".parse::<Time>().is_ok());
        for bad in ["", "2026-11-21", "yesterday"] {
            assert!(bad.parse::<Time>().is_err(), "{bad:?}");
        }
    }
}
