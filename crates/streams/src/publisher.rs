//! Publishing batches of events to streams.

use deadpool_redis::redis;

use crate::StreamError;

/// Field names of a stream entry. The envelope is the payload; the others let operators read a
/// stream with `XRANGE` without parsing JSON.
pub mod fields {
    /// The event's id.
    pub const EVENT_ID: &str = "event_id";
    /// The event's type.
    pub const EVENT_TYPE: &str = "event_type";
    /// The whole JSON envelope.
    pub const ENVELOPE: &str = "envelope";
}

/// One event to publish.
#[derive(Debug, Clone, Copy)]
pub struct StreamEntry<'a> {
    /// Target stream.
    pub stream: &'a str,
    /// The event's id.
    pub event_id: &'a str,
    /// The event's type.
    pub event_type: &'a str,
    /// The JSON envelope.
    pub envelope: &'a str,
}

/// `XADD`s every entry in one pipeline, in order, inside one `MULTI`/`EXEC`, and returns the
/// entry ids.
///
/// The transaction is for the readers: Redis serves a reader blocked on a stream right after
/// the command that fed it, so without it a reader of a batch's streams wakes up (and reads,
/// applies, acknowledges) once per entry; with it, once per batch, with every entry. A reader
/// never sees part of a batch either.
///
/// Entries are never trimmed here (no `MAXLEN`): a blind cap drops events a slow consumer has
/// not read. Retention trims only below what every group acknowledged.
///
/// # Errors
/// [`StreamError::Unavailable`] when Redis is down. On error some entries may have been added:
/// the caller keeps its rows and publishes them again (duplicates, never losses).
pub async fn publish(
    conn: &mut impl redis::aio::ConnectionLike,
    entries: &[StreamEntry<'_>],
) -> Result<Vec<String>, StreamError> {
    if entries.is_empty() {
        return Ok(vec![]);
    }
    let mut pipe = redis::pipe();
    pipe.atomic();
    for e in entries {
        pipe.cmd("XADD")
            .arg(e.stream)
            .arg("*")
            .arg(fields::EVENT_ID)
            .arg(e.event_id)
            .arg(fields::EVENT_TYPE)
            .arg(e.event_type)
            .arg(fields::ENVELOPE)
            .arg(e.envelope);
    }
    Ok(pipe.query_async(conn).await?)
}
