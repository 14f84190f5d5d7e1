//! query-api over HTTP against read models built by the real projector from a real stream.

mod consistency;
mod galaxy;
mod generations;
mod helpers;
mod openapi;
mod posts;
mod reads;
