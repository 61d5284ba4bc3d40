//! OpenAPI: `GET /openapi.json`, the HTTP contract as an OpenAPI 3.1
//! document generated from the handlers themselves.
//!
//! Each feature's `router()` is a utoipa `OpenApiRouter` whose routes come
//! from the handlers' `#[utoipa::path]` annotations, so a route cannot be
//! served without being described. This module adds only what belongs to
//! the whole API: its title, tags, how callers authenticate, and the
//! problem documents every path refers to. It must never describe a route
//! itself.

use axum::body::Bytes;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::http::error::{problems, Problem};
use crate::http::state::AppState;

/// The parts of the document that are not any one route's.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "tidings",
        description = "Notifications that backend apps append with a plain SQL INSERT, \
            pushed to browsers over Server-Sent Events, resumable from any position \
            without loss or duplication. Errors are RFC 9457 problem documents, \
            including a 404 for an unknown path, a 405 (with `Allow`) for a method \
            a path does not take, and a 503 for a request that arrived while tidings \
            was starting if the start then fails or is cancelled. (Until the database \
            is reachable and migrated, the probes answer at once and every other \
            request waits.)",
        license(name = "MIT OR Apache-2.0", identifier = "MIT OR Apache-2.0"),
    ),
    modifiers(&Authentication),
    security(("bearer" = []), ("access_token" = []), ("cookie" = [])),
    components(
        schemas(Problem),
        responses(
            problems::BadRequest,
            problems::Unauthorized,
            problems::Forbidden,
            problems::NotFound,
            problems::Conflict,
            problems::PayloadTooLarge,
            problems::UnsupportedMediaType,
            problems::TooManyStreams,
            problems::Unavailable,
            super::web::NotModified,
        )
    ),
    tags(
        (name = "stream", description = "Server-Sent Events with resume"),
        (name = "inbox", description = "The caller's notifications and read marks"),
        (name = "publish", description = "Publishing over HTTP (role `publisher`); SQL INSERT is the primary path"),
        (name = "audit", description = "The history for auditors (role `auditor`)"),
        (name = "operations", description = "Health, metrics and this document"),
        (name = "browser", description = "The browser client and the demo page"),
    )
)]
pub struct ApiDoc;

/// The three places a token may come from (see `auth`); any one will do.
struct Authentication;

impl Modify for Authentication {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .bearer_format("JWT")
            .description(Some(
                "HS256 JWT: `sub` is the recipient, `exp` required, optional `roles`",
            ))
            .build();
        components.add_security_scheme("bearer", SecurityScheme::Http(bearer));
        components.add_security_scheme(
            "access_token",
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "access_token",
                "The same JWT as a query parameter, for EventSource, which cannot set headers",
            ))),
        );
        components.add_security_scheme(
            "cookie",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                "tidings_token",
                "The same JWT in a cookie",
            ))),
        );
    }
}

/// The finished document, rendered once; handed to the handler as an
/// extension because it exists only after every router is assembled.
#[derive(Clone)]
pub struct Document(Bytes);

impl Document {
    pub fn new(openapi: &utoipa::openapi::OpenApi) -> Self {
        Self(openapi.to_json().unwrap_or_default().into())
    }
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi()).routes(routes!(document))
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object)))]
async fn document(Extension(document): Extension<Document>) -> Response {
    ([(CONTENT_TYPE, "application/json")], document.0).into_response()
}
