//! Error answers that many operations share, documented once: an operation's
//! `#[utoipa::path(responses(...))]` lists its own statuses and names these types for the rest,
//! so a shared answer reads the same in every operation of every module. (Each variant's doc
//! comment is its description in the document.)

use super::ErrorBody;

/// What every command may answer besides its own outcomes.
#[derive(utoipa::IntoResponses)]
pub enum CommandErrors {
    /// Missing or invalid token
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// PostgreSQL is unavailable; nothing was written
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// What a command with a JSON body may answer about the body itself.
#[derive(utoipa::IntoResponses)]
pub enum BodyErrors {
    /// Body over 64 KiB
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// Body is not `application/json`
    #[response(status = 415)]
    NotJson(ErrorBody),
}

/// What every query may answer besides its own outcomes.
#[derive(utoipa::IntoResponses)]
pub enum QueryErrors {
    /// Missing or invalid token
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// Redis is unavailable, or the read model is being built from nothing
    #[response(status = 503)]
    Unavailable(ErrorBody),
}
