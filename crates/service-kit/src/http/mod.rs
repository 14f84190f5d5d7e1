//! The HTTP layer shared by the three APIs and the workers' health servers.

pub mod api;
pub mod auth;
pub mod error;
pub mod extract;
pub mod middleware;
pub mod responses;
pub mod server;

pub use api::Routes;
pub use error::{ApiError, ErrorBody};

use actix_web::{HttpResponse, web};

/// A resource whose unsupported methods answer 405 with the JSON error body (instead of
/// actix's empty 405, or the 404 that `#[get]`-style registration gives), but without `Allow`
/// and without documentation: APIs register through [`Routes`], which gives both.
#[must_use]
pub fn resource(path: &str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(|| async {
        HttpResponse::from_error(ApiError::MethodNotAllowed)
    }))
}

/// The app-wide 404 for unknown paths, with the JSON error body.
pub async fn not_found() -> HttpResponse {
    HttpResponse::from_error(ApiError::NotFound)
}
