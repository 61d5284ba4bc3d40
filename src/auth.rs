//! Auth: who is asking. Verifies HS256 JWTs and turns them into a
//! [`Caller`], the only way a handler learns a recipient.
//!
//! A recipient comes from the token's `sub` and nowhere else (never from a
//! path or query), which is what keeps one recipient out of another's stream
//! and inbox. This module must never accept a token it did not verify: the
//! algorithm is pinned to HS256 and `exp` is required.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{FromRef, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum_extra::extract::CookieJar;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::Role;
use crate::error::AppError;

/// The claims tidings reads from (and writes into) a token.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<Role>,
}

/// Signs and verifies tokens with the configured secret.
#[derive(Clone)]
pub struct Keys {
    encoding: Arc<EncodingKey>,
    decoding: Arc<DecodingKey>,
    validation: Arc<Validation>,
}

impl Keys {
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = 5;
        Self {
            encoding: Arc::new(EncodingKey::from_secret(secret)),
            decoding: Arc::new(DecodingKey::from_secret(secret)),
            validation: Arc::new(validation),
        }
    }

    /// A token for `sub`, valid for `ttl` from now.
    pub fn issue(&self, sub: &str, roles: &[Role], ttl: Duration) -> Result<String, AppError> {
        let claims = Claims {
            sub: sub.to_owned(),
            exp: unix_now().saturating_add(ttl.as_secs()),
            roles: roles.to_vec(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| AppError::BadRequest(format!("cannot sign token: {e}")))
    }

    pub fn verify(&self, token: &str) -> Result<Claims, AppError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| AppError::Unauthorized(format!("invalid token: {e}")))?;
        if data.claims.sub.is_empty() {
            return Err(AppError::Unauthorized("invalid token: empty sub".into()));
        }
        Ok(data.claims)
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The verified caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The recipient whose notifications this caller may see: the `sub`.
    pub recipient: String,
    pub roles: Vec<Role>,
}

impl Caller {
    pub fn require(&self, role: Role) -> Result<(), AppError> {
        if self.roles.contains(&role) {
            Ok(())
        } else {
            let name = serde_json::to_string(&role).unwrap_or_default();
            Err(AppError::Forbidden(format!(
                "this token lacks the {name} role"
            )))
        }
    }
}

impl<S> FromRequestParts<S> for Caller
where
    Keys: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let token = token_from(parts)?
            .ok_or_else(|| AppError::Unauthorized("a token is required".into()))?;
        let claims = Keys::from_ref(state).verify(&token)?;
        Ok(Caller {
            recipient: claims.sub,
            roles: claims.roles,
        })
    }
}

/// The token, from the first of: `Authorization: Bearer`, the `access_token`
/// query parameter (EventSource cannot set headers), the `tidings_token`
/// cookie.
fn token_from(parts: &Parts) -> Result<Option<String>, AppError> {
    if let Some(value) = parts.headers.get(AUTHORIZATION) {
        let value = value.to_str().unwrap_or_default();
        return match value.strip_prefix("Bearer ") {
            Some(token) => Ok(Some(token.trim().to_owned())),
            None => Err(AppError::Unauthorized(
                "the Authorization header must be `Bearer <token>`".into(),
            )),
        };
    }
    if let Some(token) = query_param(parts.uri.query().unwrap_or(""), "access_token") {
        return Ok(Some(token));
    }
    Ok(cookie(parts, "tidings_token"))
}

/// The decoded value of `name` in a query string.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

fn cookie(parts: &Parts, name: &str) -> Option<String> {
    CookieJar::from_headers(&parts.headers)
        .get(name)
        .map(|cookie| cookie.value().to_owned())
}
