//! Operator and read-only bearer tokens (`ADMIN_TOKENS`, `ADMIN_READONLY_TOKENS`).
//!
//! Every configured token is compared with the presented one in constant time (all of them,
//! whatever matched), so timing tells nothing about how much of a guess was right. A token is
//! never logged or shown: the caller is known by the token's name (`name:secret` in the
//! setting) or, unnamed, by a fingerprint (the first 12 hex digits of its SHA-256).

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest, web};
use futures::future::{Ready, ready};
use service_kit::Secret;
use service_kit::http::ApiError;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything.
    Operator,
    /// `GET` only.
    ReadOnly,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Self::Operator => "operator",
            Self::ReadOnly => "readonly",
        }
    }
}

/// One configured token.
struct Token {
    secret: Vec<u8>,
    actor: String,
    role: Role,
}

/// The configured tokens.
pub struct Tokens {
    tokens: Vec<Token>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("count", &self.tokens.len())
            .finish_non_exhaustive()
    }
}

/// Why the token settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// No operator token: admin-api would be unusable (or, worse, tempt a "dev mode").
    #[error("ADMIN_TOKENS must hold at least one operator token (comma-separated)")]
    NoOperator,
    /// A token too short to resist guessing.
    #[error("{setting}: a token of {len} characters is too short (at least 16)")]
    TooShort {
        /// The setting.
        setting: &'static str,
        /// Its length.
        len: usize,
    },
}

/// The shortest token accepted.
const MIN_LEN: usize = 16;

impl Tokens {
    /// Tokens from the two settings' values.
    ///
    /// # Errors
    /// [`TokenError`] when there is no operator token or one is too short.
    pub fn new(operators: &[Secret], readers: &[Secret]) -> Result<Self, TokenError> {
        let mut tokens = Vec::new();
        for (list, role, setting) in [
            (operators, Role::Operator, "ADMIN_TOKENS"),
            (readers, Role::ReadOnly, "ADMIN_READONLY_TOKENS"),
        ] {
            for raw in list
                .iter()
                .map(|s| s.expose().trim())
                .filter(|s| !s.is_empty())
            {
                let (name, secret) = split_name(raw);
                if secret.len() < MIN_LEN {
                    return Err(TokenError::TooShort {
                        setting,
                        len: secret.len(),
                    });
                }
                let actor = match name {
                    Some(n) => format!("{}:{n}", role.as_str()),
                    None => format!("{}:{}", role.as_str(), fingerprint(secret)),
                };
                tokens.push(Token {
                    secret: secret.as_bytes().to_vec(),
                    actor,
                    role,
                });
            }
        }
        if !tokens.iter().any(|t| t.role == Role::Operator) {
            return Err(TokenError::NoOperator);
        }
        Ok(Self { tokens })
    }

    /// The caller presenting `presented`, if it is a configured token.
    fn find(&self, presented: &str) -> Option<Caller> {
        let presented = presented.as_bytes();
        let mut found: Option<&Token> = None;
        // Every token is compared, matched or not.
        for t in &self.tokens {
            let same = t.secret.len() == presented.len() && bool::from(t.secret.ct_eq(presented));
            if same && found.is_none() {
                found = Some(t);
            }
        }
        found.map(|t| Caller {
            actor: t.actor.clone(),
            role: t.role,
        })
    }
}

/// `name:secret` → (`Some(name)`, secret) when the part before the first `:` is a plain name;
/// otherwise the whole value is the secret.
fn split_name(raw: &str) -> (Option<&str>, &str) {
    match raw.split_once(':') {
        Some((name, secret))
            if !name.is_empty()
                && name.len() <= 32
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) =>
        {
            (Some(name), secret)
        }
        _ => (None, raw),
    }
}

/// The first 12 hex digits of the token's SHA-256: enough to tell tokens apart in the audit
/// log, useless for guessing.
#[must_use]
pub fn fingerprint(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    hex::encode(&digest[..6])
}

/// An authenticated caller: extract it to require any valid token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Who, for the audit log.
    pub actor: String,
    /// What it may do.
    pub role: Role,
}

impl Caller {
    /// 403 unless the caller may change things.
    ///
    /// # Errors
    /// [`ApiError::Forbidden`] for a read-only token.
    pub fn require_operator(&self) -> Result<(), ApiError> {
        match self.role {
            Role::Operator => Ok(()),
            Role::ReadOnly => Err(ApiError::Forbidden(
                "this token is read-only: it may only GET".into(),
            )),
        }
    }
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(authenticate(req))
    }
}

fn authenticate(req: &HttpRequest) -> Result<Caller, ApiError> {
    let tokens = req
        .app_data::<web::Data<Tokens>>()
        .ok_or_else(|| ApiError::Internal("Tokens missing from app data".into()))?;
    let value = req
        .headers()
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::Unauthorized("missing Authorization header".into()))?;
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| ApiError::Unauthorized("Authorization must be `Bearer <token>`".into()))?;
    tokens
        .find(token)
        .ok_or_else(|| ApiError::Unauthorized("unknown token".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets(v: &[&str]) -> Vec<Secret> {
        v.iter().map(|s| Secret::new(*s)).collect()
    }

    #[test]
    fn tokens_are_known_by_name_or_fingerprint_never_by_themselves() {
        let tokens = Tokens::new(
            &secrets(&["alice:0123456789abcdef0123", "fedcba9876543210fedc"]),
            &secrets(&["ro-secret-ro-secret-1"]),
        )
        .expect("valid");
        let alice = tokens.find("0123456789abcdef0123").expect("alice");
        assert_eq!(alice.actor, "operator:alice");
        assert_eq!(alice.role, Role::Operator);
        let unnamed = tokens.find("fedcba9876543210fedc").expect("unnamed");
        assert_eq!(
            unnamed.actor,
            format!("operator:{}", fingerprint("fedcba9876543210fedc"))
        );
        assert!(!unnamed.actor.contains("fedcba9876543210fedc"));
        let reader = tokens.find("ro-secret-ro-secret-1").expect("reader");
        assert_eq!(reader.role, Role::ReadOnly);
        assert!(reader.require_operator().is_err());
        assert!(tokens.find("alice:0123456789abcdef0123").is_none());
        assert!(tokens.find("0123456789abcdef012").is_none());
        assert!(tokens.find("").is_none());
    }

    #[test]
    fn settings_without_an_operator_or_with_short_tokens_are_refused() {
        assert!(matches!(
            Tokens::new(&secrets(&[" "]), &secrets(&["ro-secret-ro-secret-1"])),
            Err(TokenError::NoOperator)
        ));
        assert!(matches!(
            Tokens::new(&secrets(&["short"]), &[]),
            Err(TokenError::TooShort { len: 5, .. })
        ));
    }
}
