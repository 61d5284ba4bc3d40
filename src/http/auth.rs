//! Auth: who is asking. Verifies HS256 JWTs and turns them into a
//! [`Caller`], the only way a handler learns the caller's own recipient.
//!
//! The caller's own recipient comes from the token's `sub` and nowhere else
//! (never from a path, query or body), which is what keeps one recipient out
//! of another's stream and inbox. Other recipients are named only to
//! endpoints gated by a role ([`Publisher`], [`Auditor`]): a publisher's body names
//! whom it notifies, an auditor's `?recipient=` whose history it reads. This
//! module must never accept a token it did not verify, nor one outside its
//! time: the algorithm is pinned to HS256, `exp` is required, and `nbf` and
//! `iat`, when present, must not lie ahead (all with [`LEEWAY_SECS`]).
//!
//! A browser attaches the `tidings_token` cookie to requests any site
//! makes, so a write that only the cookie authenticates must come from a
//! page of tidings' own origin or of one allowed by `--cors-origin`
//! ([`CookieOrigins`]); a token in a header or the query string is one a
//! foreign page cannot attach, and needs no such proof.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{FromRef, FromRequestParts};
use axum::http::header::{AUTHORIZATION, HOST, ORIGIN};
use axum::http::request::Parts;
use axum::http::uri::{Authority, Scheme};
use axum::http::{HeaderMap, HeaderValue, Method, Uri};
use axum_extra::extract::CookieJar;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::de::value::{Error as ValueError, StrDeserializer};
use serde::{Deserialize, Deserializer, Serialize};

use crate::config::Role;
use crate::http::error::AppError;

/// The claims tidings reads from (and writes into) a token.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    /// When the token was issued, if it says: one issued ahead of our
    /// clock by more than the leeway is refused. NumericDate allows a
    /// fraction. Never written: tidings' own tokens do not need it.
    #[serde(default, skip_serializing)]
    pub iat: Option<f64>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "known_roles"
    )]
    pub roles: Vec<Role>,
}

/// The roles tidings knows, out of a `roles` claim. Identity providers put
/// their own roles there too (`admin`, say); refusing the whole token for
/// them would lock those users out of their own inbox, and ignoring them
/// grants nothing.
fn known_roles<'de, D: Deserializer<'de>>(claim: D) -> Result<Vec<Role>, D::Error> {
    let names = Option::<Vec<String>>::deserialize(claim)?.unwrap_or_default();
    Ok(names
        .into_iter()
        .filter_map(|name| Role::deserialize(StrDeserializer::<ValueError>::new(&name)).ok())
        .collect())
}

/// Longest recipient, in characters (Unicode scalar values, as JSON
/// Schema's `maxLength` counts them). The database must index it (entries
/// of at most about 2700 bytes: four bytes a character) and NOTIFY it
/// JSON-escaped (payloads of at most 8000 bytes: six bytes for a control
/// character).
pub const MAX_RECIPIENT_CHARS: usize = 512;

/// Why `recipient` (a token's `sub`, or a published notification's
/// `recipient`) is one the database cannot hold, if it is: both must obey
/// the same rule, or a recipient could be published to and never read.
pub fn recipient_problem(recipient: &str) -> Option<String> {
    if recipient.is_empty() {
        Some("must not be empty".into())
    } else if recipient.contains('\0') {
        Some("cannot hold U+0000, which PostgreSQL text cannot store".into())
    } else if recipient.chars().count() > MAX_RECIPIENT_CHARS {
        Some(format!(
            "must be at most {MAX_RECIPIENT_CHARS} characters long"
        ))
    } else {
        None
    }
}

/// How far `exp`, `nbf` and `iat` may be off, in seconds: the clocks of the
/// issuer and of tidings never quite agree, and a token refused for a
/// second's drift would fail at random. Small enough that an expired token
/// stays usable only that long (docs/protocol.md says the same number).
pub const LEEWAY_SECS: u64 = 5;

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
        // The protocol names no audience, and jsonwebtoken refuses every
        // token with an `aud` unless one is configured: many issuers add
        // one. So `aud` is not checked (docs/protocol.md says so too).
        validation.validate_aud = false;
        // A token not valid before some time must not open anything now
        // (jsonwebtoken leaves `nbf` unchecked unless asked).
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECS;
        Self {
            encoding: Arc::new(EncodingKey::from_secret(secret)),
            decoding: Arc::new(DecodingKey::from_secret(secret)),
            validation: Arc::new(validation),
        }
    }

    /// A token for `sub`, valid for `ttl` from now.
    pub fn issue(&self, sub: &str, roles: &[Role], ttl: Duration) -> Result<String, AppError> {
        if let Some(problem) = recipient_problem(sub) {
            return Err(AppError::BadRequest(format!(
                "cannot sign token: sub {problem}"
            )));
        }
        let claims = Claims {
            sub: sub.to_owned(),
            exp: unix_now().saturating_add(ttl.as_secs()),
            iat: None,
            roles: roles.to_vec(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| AppError::BadRequest(format!("cannot sign token: {e}")))
    }

    pub fn verify(&self, token: &str) -> Result<Claims, AppError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| AppError::Unauthorized(format!("invalid token: {e}")))?;
        // jsonwebtoken does not look at `iat`; a token from the future was
        // made with a wrong clock or to be used later, and is neither.
        if data.claims.iat.is_some_and(issued_ahead) {
            return Err(AppError::Unauthorized(
                "invalid token: issued in the future (iat)".into(),
            ));
        }
        // A `sub` the database cannot hold would fail every query later,
        // and a stream would retry its registration for good.
        if let Some(problem) = recipient_problem(&data.claims.sub) {
            return Err(AppError::Unauthorized(format!(
                "invalid token: sub {problem}"
            )));
        }
        Ok(data.claims)
    }
}

/// Whether `iat` lies ahead of now by more than the leeway.
fn issued_ahead(iat: f64) -> bool {
    iat > (unix_now() + LEEWAY_SECS) as f64
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
    /// The caller, if its token has `role`; a 403 otherwise.
    fn with(self, role: Role) -> Result<Self, AppError> {
        if self.roles.contains(&role) {
            Ok(self)
        } else {
            let name = serde_json::to_string(&role).unwrap_or_default();
            Err(AppError::Forbidden(format!(
                "this token lacks the {name} role"
            )))
        }
    }
}

/// An extractor for a caller whose token has `$role`: the caller's own
/// extraction, then the role check (403 without it).
macro_rules! caller_with_role {
    ($(#[$doc:meta])* $name:ident, $role:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $name(pub Caller);

        impl<S> FromRequestParts<S> for $name
        where
            Keys: FromRef<S>,
            CookieOrigins: FromRef<S>,
            S: Send + Sync,
        {
            type Rejection = AppError;

            async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
                let caller = Caller::from_request_parts(parts, state).await?;
                caller.with($role).map(Self)
            }
        }
    };
}

caller_with_role!(
    /// A caller whose token has the `publisher` role: it may name any
    /// recipient in what it publishes.
    Publisher,
    Role::Publisher
);

caller_with_role!(
    /// A caller whose token has the `auditor` role: it may read any
    /// recipient's history.
    Auditor,
    Role::Auditor
);

impl<S> FromRequestParts<S> for Caller
where
    Keys: FromRef<S>,
    CookieOrigins: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let (token, source) = token_from(parts)
            .ok_or_else(|| AppError::Unauthorized("a token is required".into()))?;
        if source == Source::Cookie && !is_safe(&parts.method) {
            CookieOrigins::from_ref(state).check(parts)?;
        }
        let claims = Keys::from_ref(state).verify(&token)?;
        Ok(Caller {
            recipient: claims.sub,
            roles: claims.roles,
        })
    }
}

/// Where a request's token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Header,
    Query,
    /// The only one a browser attaches by itself, whichever site asks.
    Cookie,
}

/// The token and its source, from the first of: `Authorization: Bearer`,
/// the `access_token` query parameter (EventSource cannot set headers),
/// the `tidings_token` cookie.
fn token_from(parts: &Parts) -> Option<(String, Source)> {
    let from = |source| move |token| (token, source);
    bearer_token(&parts.headers)
        .map(from(Source::Header))
        .or_else(|| {
            query_param(parts.uri.query().unwrap_or(""), "access_token").map(from(Source::Query))
        })
        .or_else(|| cookie(parts, "tidings_token").map(from(Source::Cookie)))
}

/// Methods that change nothing here, and that a cross-site page may
/// therefore make with the cookie: CORS keeps it from reading the answer.
fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The origins besides tidings' own whose pages may write with the
/// `tidings_token` cookie: those `--cors-origin` allows. Cheap to clone.
#[derive(Clone, Default)]
pub struct CookieOrigins(Arc<[HeaderValue]>);

impl CookieOrigins {
    pub fn new(allowed: &[HeaderValue]) -> Self {
        Self(allowed.into())
    }

    /// Whether the page that made this cookie-authenticated write may make
    /// it; a 403 otherwise. Browsers say where a request comes from:
    /// `Sec-Fetch-Site` (all current ones; the browser's own verdict, so
    /// trusted when present) and `Origin` (on every cross-origin request,
    /// and on same-origin POSTs). A request with neither is not from a
    /// browser, so no page made it, and it passes.
    fn check(&self, parts: &Parts) -> Result<(), AppError> {
        let site = parts.headers.get("sec-fetch-site");
        let origin = parts.headers.get(ORIGIN);
        let allowed = match (site.map(HeaderValue::as_bytes), origin) {
            (None, None) => true,
            (Some(b"same-origin" | b"none"), _) => true,
            (Some(_), Some(origin)) => self.0.contains(origin),
            (Some(_), None) => false,
            (None, Some(origin)) => self.0.contains(origin) || is_own(origin, parts),
        };
        if allowed {
            return Ok(());
        }
        Err(AppError::Forbidden(
            "a write authenticated by the tidings_token cookie must come from a page of \
             tidings' own origin or of one allowed by --cors-origin; send the token in an \
             Authorization header otherwise"
                .into(),
        ))
    }
}

/// Whether `origin` is the origin the request was sent to, as far as the
/// request tells: the same host and port (the scheme is unknown behind a
/// TLS-terminating proxy). For browsers that send `Origin` but not
/// `Sec-Fetch-Site`.
fn is_own(origin: &HeaderValue, parts: &Parts) -> bool {
    let Some(origin) = origin.to_str().ok().and_then(|o| o.parse::<Uri>().ok()) else {
        return false;
    };
    let target = parts.uri.authority().cloned().or_else(|| {
        let host = parts.headers.get(HOST)?.to_str().ok()?;
        host.parse::<Authority>().ok()
    });
    let (Some(target), Some(host)) = (target, origin.host()) else {
        return false;
    };
    let default_port = match origin.scheme() {
        Some(scheme) if *scheme == Scheme::HTTPS => 443,
        _ => 80,
    };
    host.eq_ignore_ascii_case(target.host())
        && origin.port_u16().unwrap_or(default_port) == target.port_u16().unwrap_or(default_port)
}

/// The credentials of an `Authorization` header whose scheme is Bearer
/// (case-insensitive, RFC 7235), even empty or garbled ones: those must be
/// refused, not skipped for a token further down. Other schemes are not
/// ours - browsers behind a basic-auth proxy send `Basic` by themselves.
fn bearer_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(AUTHORIZATION)?.as_bytes();
    let (scheme, credentials) = match value.iter().position(|&b| b == b' ') {
        Some(space) => value.split_at(space),
        None => (value, &[][..]),
    };
    scheme
        .eq_ignore_ascii_case(b"bearer")
        .then(|| String::from_utf8_lossy(credentials).trim().to_owned())
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
