//! The consistency token: what a command answers so that its caller can later ask the query
//! side to wait until that write is visible (read-your-writes on an eventually consistent read
//! side). It names the module, the aggregate and the version the write produced.
//!
//! The encoding is opaque to clients (base64url of `v1:<module>:<aggregate_id>:<version>`) so
//! it can change without breaking them.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use uuid::Uuid;

/// A write's position: "aggregate `aggregate_id` of `module` reached `version`".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsistencyToken {
    /// Module whose projection must have applied the write, e.g. `task`.
    pub module: String,
    /// The aggregate written.
    pub aggregate_id: Uuid,
    /// The version the write produced.
    pub version: i64,
}

/// The token a client sent is not one we issued.
///
/// # Handling
/// Answer 400 `validation_failed`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("consistency token is malformed")]
pub struct InvalidToken;

impl ConsistencyToken {
    /// The opaque string form sent to clients.
    #[must_use]
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD
            .encode(format!("v1:{}:{}:{}", self.module, self.aggregate_id, self.version).as_bytes())
    }

    /// Parses a token produced by [`ConsistencyToken::encode`].
    ///
    /// # Errors
    /// [`InvalidToken`] for anything else.
    pub fn decode(token: &str) -> Result<Self, InvalidToken> {
        if token.len() > 200 {
            return Err(InvalidToken);
        }
        let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| InvalidToken)?;
        let text = std::str::from_utf8(&raw).map_err(|_| InvalidToken)?;
        let mut parts = text.split(':');
        let (Some("v1"), Some(module), Some(id), Some(version), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(InvalidToken);
        };
        let valid_module = !module.is_empty() && module.bytes().all(|b| b.is_ascii_lowercase());
        let aggregate_id = Uuid::parse_str(id).map_err(|_| InvalidToken)?;
        let version: i64 = version.parse().map_err(|_| InvalidToken)?;
        if !valid_module || version < 1 {
            return Err(InvalidToken);
        }
        Ok(Self {
            module: module.to_owned(),
            aggregate_id,
            version,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trips() {
        let t = ConsistencyToken {
            module: "task".into(),
            aggregate_id: Uuid::now_v7(),
            version: 42,
        };
        let s = t.encode();
        assert!(
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(ConsistencyToken::decode(&s), Ok(t));
    }

    #[test]
    fn foreign_tokens_are_rejected() {
        for bad in [
            "",
            "x",
            "!!!!",
            "djE6dGFzazp4OjE",
            &URL_SAFE_NO_PAD.encode(b"v1:task:not-a-uuid:1"),
        ] {
            assert_eq!(ConsistencyToken::decode(bad), Err(InvalidToken), "{bad}");
        }
        let zero = URL_SAFE_NO_PAD.encode(format!("v1:task:{}:0", Uuid::nil()).as_bytes());
        assert_eq!(ConsistencyToken::decode(&zero), Err(InvalidToken));
        assert_eq!(
            ConsistencyToken::decode(&"A".repeat(500)),
            Err(InvalidToken)
        );
    }
}
