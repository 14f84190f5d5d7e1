//! admin-api: migrations, start-up checks and shutdown, as a process.

mod helpers;
mod openapi;
mod process;
