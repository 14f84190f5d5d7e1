//! Bearer-JWT authentication for command-api and query-api (HS256, `sub` = user UUID, `exp`
//! required).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest, web};
use futures::future::{Ready, ready};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Secret;
use crate::http::ApiError;

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    iat: u64,
}

/// Issues and verifies tokens with one HS256 secret.
#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwtKeys([redacted])")
    }
}

/// A token could not be issued.
#[derive(Debug, thiserror::Error)]
#[error("cannot issue token: {0}")]
pub struct IssueError(String);

impl JwtKeys {
    /// Keys from the shared secret.
    #[must_use]
    pub fn new(secret: &Secret) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        // A few seconds for clock skew between the issuer and this process, not the 60 s
        // default: expired means expired.
        validation.leeway = 5;
        Self {
            encoding: EncodingKey::from_secret(secret.expose().as_bytes()),
            decoding: DecodingKey::from_secret(secret.expose().as_bytes()),
            validation,
        }
    }

    /// A token for `user` valid for `ttl`.
    ///
    /// # Errors
    /// [`IssueError`] if signing fails (it does not with HS256 and a valid key).
    pub fn issue(&self, user: Uuid, ttl: Duration) -> Result<String, IssueError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let claims = Claims {
            sub: user.to_string(),
            iat: now,
            exp: now + ttl.as_secs(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| IssueError(e.to_string()))
    }

    /// The user a token authenticates.
    ///
    /// # Errors
    /// 401 `unauthorized` for a malformed, expired or wrongly signed token, or a `sub` that is
    /// not a UUID.
    pub fn verify(&self, token: &str) -> Result<Uuid, ApiError> {
        use jsonwebtoken::errors::ErrorKind;
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| {
                ApiError::Unauthorized(match e.kind() {
                    ErrorKind::ExpiredSignature => "token expired".into(),
                    ErrorKind::InvalidSignature => "token signature is invalid".into(),
                    ErrorKind::MissingRequiredClaim(c) => format!("token lacks the {c} claim"),
                    _ => "token is malformed".into(),
                })
            })?;
        Uuid::parse_str(&data.claims.sub)
            .map_err(|_| ApiError::Unauthorized("token sub is not a user id".into()))
    }
}

/// The authenticated caller: extract it in a handler to require a valid bearer token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthUser(pub Uuid);

impl FromRequest for AuthUser {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(authenticate(req))
    }
}

fn authenticate(req: &HttpRequest) -> Result<AuthUser, ApiError> {
    let keys = req
        .app_data::<web::Data<JwtKeys>>()
        .ok_or_else(|| ApiError::Internal("JwtKeys missing from app data".into()))?;
    let value = req
        .headers()
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::Unauthorized("missing Authorization header".into()))?;
    let token = value
        .to_str()
        .ok()
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::Unauthorized("Authorization must be `Bearer <token>`".into()))?;
    keys.verify(token).map(AuthUser)
}

/// Parses a duration like `90s`, `15m`, `1h` or `7d`.
///
/// # Errors
/// A message naming the accepted forms.
pub fn parse_ttl(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 90s, 15m, 1h or 7d"))?;
    let secs = match unit {
        "s" | "" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("{s:?} is not a duration like 90s, 15m, 1h or 7d")),
    };
    if secs == 0 {
        return Err("ttl must be positive".into());
    }
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(secret: &str) -> JwtKeys {
        JwtKeys::new(&Secret::new(secret))
    }

    #[test]
    fn issued_tokens_verify_to_their_user() {
        let k = keys("0123456789abcdef0123");
        let user = Uuid::now_v7();
        let token = k.issue(user, Duration::from_secs(60)).expect("issue");
        assert_eq!(k.verify(&token).expect("verify"), user);
    }

    #[test]
    fn forged_expired_and_garbage_tokens_are_unauthorized() {
        let k = keys("0123456789abcdef0123");
        let forged = keys("another-secret-of-16+")
            .issue(Uuid::nil(), Duration::from_secs(60))
            .expect("issue");
        assert!(
            matches!(k.verify(&forged), Err(ApiError::Unauthorized(m)) if m.contains("signature"))
        );
        // Expired well beyond the leeway.
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let claims = Claims {
            sub: Uuid::nil().to_string(),
            iat: now - 100,
            exp: now - 60,
        };
        let expired = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &k.encoding)
            .expect("enc");
        assert!(
            matches!(k.verify(&expired), Err(ApiError::Unauthorized(m)) if m.contains("expired"))
        );
        assert!(matches!(
            k.verify("abc.def.ghi"),
            Err(ApiError::Unauthorized(_))
        ));
        let not_uuid = Claims {
            sub: "bob".into(),
            iat: now,
            exp: now + 60,
        };
        let t = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &not_uuid, &k.encoding)
            .expect("enc");
        assert!(matches!(k.verify(&t), Err(ApiError::Unauthorized(m)) if m.contains("sub")));
    }

    #[test]
    fn ttl_forms() {
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_ttl("90"), Ok(Duration::from_secs(90)));
        assert!(parse_ttl("1w").is_err());
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("h").is_err());
    }
}
