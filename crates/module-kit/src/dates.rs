//! `YYYY-MM-DD` dates on the wire, in request bodies, views and event payloads alike.

use serde::{Deserialize, Deserializer, Serializer};
use time::Date;
use time::macros::format_description;

const FORMAT: &[time::format_description::FormatItem<'static>] =
    format_description!("[year]-[month]-[day]");

/// Parses `YYYY-MM-DD`.
#[must_use]
pub fn parse(s: &str) -> Option<Date> {
    Date::parse(s, FORMAT).ok()
}

/// Formats as `YYYY-MM-DD`.
#[must_use]
pub fn format(d: Date) -> String {
    d.format(FORMAT).unwrap_or_default()
}

/// Serde for `Option<Date>` (`#[serde(with = "module_kit::dates::option")]`).
pub mod option {
    use super::*;

    /// Writes `YYYY-MM-DD` or `null`.
    ///
    /// # Errors
    /// The serializer's.
    pub fn serialize<S: Serializer>(d: &Option<Date>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&format(*d)),
            None => s.serialize_none(),
        }
    }

    /// Reads `YYYY-MM-DD` or `null`.
    ///
    /// # Errors
    /// When the string is not `YYYY-MM-DD`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Date>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| parse(&s).ok_or_else(|| serde::de::Error::custom("expected YYYY-MM-DD")))
            .transpose()
    }
}

/// Serde for `Option<Option<Date>>` in a change set: absent = unchanged (skip it with
/// `skip_serializing_if = "Option::is_none"` and `default`), `null` = cleared.
pub mod patch {
    use super::*;

    /// Writes the inner value (the outer `None` is skipped by the field attribute).
    ///
    /// # Errors
    /// The serializer's.
    pub fn serialize<S: Serializer>(d: &Option<Option<Date>>, s: S) -> Result<S::Ok, S::Error> {
        super::option::serialize(&d.flatten(), s)
    }

    /// Reads a present field.
    ///
    /// # Errors
    /// When the string is not `YYYY-MM-DD`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<Date>>, D::Error> {
        super::option::deserialize(d).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    #[test]
    fn dates_round_trip_and_nonsense_is_refused() {
        assert_eq!(parse("2026-12-31"), Some(date!(2026 - 12 - 31)));
        assert_eq!(format(date!(2027 - 01 - 02)), "2027-01-02");
        for bad in ["2026-13-01", "tomorrow", "2026-1-1", ""] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
