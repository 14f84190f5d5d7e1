//! Request bodies: PATCH fields that tell "absent" from `null`, and the validation rules every
//! module's bodies are made of. Each failure names its field (http-api.md's `details.field`).

use serde::{Deserialize, Deserializer};
use service_kit::http::ApiError;

/// A field of a request that breaks its rule.
///
/// # Handling
/// 400 `validation_failed` with `details.field`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Invalid {
    /// The field, as the client named it.
    pub field: &'static str,
    /// What is wrong, in words a client developer can act on.
    pub message: String,
}

/// A failure of `field`.
#[must_use]
pub fn invalid(field: &'static str, message: impl Into<String>) -> Invalid {
    Invalid {
        field,
        message: message.into(),
    }
}

impl From<Invalid> for ApiError {
    fn from(e: Invalid) -> Self {
        ApiError::Validation {
            message: e.message,
            field: Some(e.field.into()),
        }
    }
}

/// A field of a PATCH body: absent, `null`, or a value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Patch<T> {
    /// Not sent: leave unchanged.
    #[default]
    Absent,
    /// Sent as `null`.
    Null,
    /// Sent with a value.
    Value(T),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Patch<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Only called for fields that are present; `#[serde(default)]` covers absence.
        Ok(match Option::<T>::deserialize(d)? {
            None => Self::Null,
            Some(v) => Self::Value(v),
        })
    }
}

impl<T> Patch<T> {
    /// Whether the field was not sent.
    #[must_use]
    pub fn is_absent(&self) -> bool {
        matches!(self, Self::Absent)
    }

    /// A field that may be omitted but not cleared: `None` when absent.
    ///
    /// # Errors
    /// [`Invalid`] for `null`.
    pub fn required(self, field: &'static str) -> Result<Option<T>, Invalid> {
        match self {
            Self::Absent => Ok(None),
            Self::Null => Err(invalid(field, format!("{field} cannot be null"))),
            Self::Value(v) => Ok(Some(v)),
        }
    }

    /// A field that may be cleared: `None` when absent, `Some(None)` for `null`.
    #[must_use]
    pub fn clearable(self) -> Option<Option<T>> {
        match self {
            Self::Absent => None,
            Self::Null => Some(None),
            Self::Value(v) => Some(Some(v)),
        }
    }
}

/// The JSON Schema `pattern` of text that [`text`] accepts: something besides whitespace, and
/// no NUL.
pub const TEXT_PATTERN: &str = r"^[^\x00]*[^\s\x00][^\x00]*$";

/// The JSON Schema `pattern` of text without NUL ([`optional_text`], list items).
pub const NO_NUL_PATTERN: &str = r"^[^\x00]*$";

/// PostgreSQL can store no U+0000 in `text` or `jsonb`: a NUL in a field would fail the
/// command's transaction (a 500) instead of being refused (found by fuzzing).
fn no_nul(field: &'static str, raw: &str) -> Result<(), Invalid> {
    if raw.contains('\0') {
        return Err(invalid(
            field,
            format!("{field} must not contain NUL (U+0000)"),
        ));
    }
    Ok(())
}

/// Text that must not be blank, trimmed, at most `max` characters (not bytes), without NUL.
///
/// # Errors
/// [`Invalid`] for blank or too long text, or text with a NUL.
pub fn text(field: &'static str, raw: &str, max: usize) -> Result<String, Invalid> {
    no_nul(field, raw)?;
    let t = raw.trim();
    if t.is_empty() {
        return Err(invalid(field, format!("{field} must not be blank")));
    }
    if t.chars().count() > max {
        return Err(invalid(
            field,
            format!("{field} must be at most {max} characters"),
        ));
    }
    Ok(t.to_owned())
}

/// Optional free text of at most `max` characters, kept as sent, without NUL.
///
/// # Errors
/// [`Invalid`] for too long text, or text with a NUL.
pub fn optional_text(
    field: &'static str,
    raw: Option<String>,
    max: usize,
) -> Result<Option<String>, Invalid> {
    if let Some(s) = &raw {
        no_nul(field, s)?;
    }
    match raw {
        Some(s) if s.chars().count() > max => Err(invalid(
            field,
            format!("{field} must be at most {max} characters"),
        )),
        other => Ok(other),
    }
}

/// An integer in `lo..=hi`, converted to the type stored.
///
/// # Errors
/// [`Invalid`] outside the range.
pub fn ranged<T: TryFrom<i64>>(
    field: &'static str,
    v: i64,
    lo: i64,
    hi: i64,
) -> Result<T, Invalid> {
    if !(lo..=hi).contains(&v) {
        return Err(invalid(
            field,
            format!("{field} must be between {lo} and {hi}"),
        ));
    }
    T::try_from(v).map_err(|_| invalid(field, format!("{field} is out of range")))
}

/// A list of at most `max_items` strings, each trimmed and `item_chars` characters long,
/// without NUL; `item` names one of them in messages (`tags` holds `tag`s).
///
/// # Errors
/// [`Invalid`] for too many items or an item of the wrong length or with a NUL.
pub fn string_list(
    field: &'static str,
    item: &str,
    raw: Vec<String>,
    max_items: usize,
    item_chars: std::ops::RangeInclusive<usize>,
) -> Result<Vec<String>, Invalid> {
    if raw.len() > max_items {
        return Err(invalid(field, format!("at most {max_items} {item}s")));
    }
    raw.into_iter()
        .map(|t| {
            no_nul(field, &t)?;
            let t = t.trim().to_owned();
            if item_chars.contains(&t.chars().count()) {
                Ok(t)
            } else {
                Err(invalid(
                    field,
                    format!(
                        "each {item} must be {} to {} characters",
                        item_chars.start(),
                        item_chars.end()
                    ),
                ))
            }
        })
        .collect()
}

/// The schema of a [`string_list`] field for the OpenAPI document: at most `max_items`
/// strings of `item_chars` characters; `null` allowed when `nullable` (an omitted list).
#[must_use]
pub fn string_list_schema(
    max_items: usize,
    item_chars: std::ops::RangeInclusive<usize>,
    nullable: bool,
) -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, SchemaType, Type};
    let item = ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(*item_chars.start()))
        .max_length(Some(*item_chars.end()))
        .pattern(Some(NO_NUL_PATTERN));
    let kind = if nullable {
        SchemaType::from_iter([Type::Array, Type::Null])
    } else {
        SchemaType::new(Type::Array)
    };
    ArrayBuilder::new()
        .schema_type(kind)
        .items(item)
        .max_items(Some(max_items))
        .build()
}

/// One of `names` (the wire names of an enum).
///
/// # Errors
/// [`Invalid`] listing the names allowed.
pub fn one_of<T: Copy>(
    field: &'static str,
    raw: &str,
    all: &[T],
    name: impl Fn(T) -> &'static str,
) -> Result<T, Invalid> {
    all.iter()
        .copied()
        .find(|t| name(*t) == raw)
        .ok_or_else(|| {
            let names: Vec<&str> = all.iter().map(|t| name(*t)).collect();
            invalid(
                field,
                format!("{field} must be one of {}", names.join(", ")),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Body {
        #[serde(default)]
        due: Patch<String>,
    }

    #[test]
    fn patch_distinguishes_absent_null_and_value() {
        let parse = |j: &str| serde_json::from_str::<Body>(j).expect("json").due;
        assert!(parse("{}").is_absent());
        assert_eq!(parse(r#"{"due": null}"#).clearable(), Some(None));
        assert_eq!(
            parse(r#"{"due": "x"}"#).clearable(),
            Some(Some("x".to_owned()))
        );
        assert_eq!(parse("{}").clearable(), None);
        assert_eq!(
            parse(r#"{"due": null}"#).required("due"),
            Err(invalid("due", "due cannot be null"))
        );
    }

    #[test]
    fn rules_name_their_field_and_count_characters() {
        assert_eq!(text("title", "  a  ", 3).as_deref(), Ok("a"));
        assert!(text("title", "   ", 3).is_err());
        assert!(text("title", &"é".repeat(3), 3).is_ok());
        assert_eq!(text("title", "abcd", 3).map_err(|e| e.field), Err("title"));
        assert!(optional_text("note", Some("é".repeat(4)), 3).is_err());
        assert_eq!(optional_text("note", None, 3), Ok(None));
        assert_eq!(ranged::<i16>("p", 5, 1, 5), Ok(5));
        assert!(ranged::<i16>("p", 6, 1, 5).is_err());
        assert!(ranged::<i8>("p", 300, 0, 1000).is_err(), "does not fit");
        assert_eq!(
            string_list("tags", "tag", vec![" a ".into()], 2, 1..=3),
            Ok(vec!["a".to_owned()])
        );
        assert!(
            string_list("tags", "tag", vec!["a".into(); 3], 2, 1..=3).map_err(|e| e.message)
                == Err("at most 2 tags".to_owned())
        );
        assert!(string_list("tags", "tag", vec![String::new()], 2, 1..=3).is_err());
        for nul in [
            text("t", "a\0b", 9).err(),
            optional_text("n", Some("\0".into()), 9).err(),
        ] {
            assert!(nul.is_some_and(|e| e.message.contains("NUL")));
        }
        assert!(string_list("tags", "tag", vec!["a\0".into()], 2, 1..=3).is_err());
        let pick = |s| one_of("size", s, &[1u8, 2], |n| if n == 1 { "one" } else { "two" });
        assert_eq!(pick("two"), Ok(2));
        assert_eq!(
            pick("three").map_err(|e| e.message),
            Err("size must be one of one, two".to_owned())
        );
    }
}
