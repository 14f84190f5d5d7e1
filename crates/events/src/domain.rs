//! What every module's event enum implements, so that the rest of the system handles any
//! module's events the same way: their wire names, their payload encoding, and the envelopes a
//! command stamps them into.

use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::{EventContext, EventEnvelope};

/// A payload that does not have the shape of its event type, or an event type the enum does
/// not know.
///
/// # Handling
/// It will never parse by retrying: the projection refuses the event (it is dead-lettered).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed {event_type} payload: {reason}")]
pub struct PayloadError {
    /// The event type read.
    pub event_type: String,
    /// Why it does not parse.
    pub reason: String,
}

impl PayloadError {
    /// `event_type` is not one the enum knows.
    #[must_use]
    pub fn unknown(event_type: &str) -> Self {
        Self {
            event_type: event_type.to_owned(),
            reason: "unknown event type".into(),
        }
    }
}

/// A module's events, one variant per event type of its catalogue entry.
pub trait DomainEvent: Sized {
    /// Every event type the enum has, in catalogue order. A module's
    /// [`crate::ModuleSpec::event_types`] is this list, so the two cannot drift apart.
    const TYPES: &'static [&'static str];

    /// The wire name, e.g. `task.completed`: one of [`DomainEvent::TYPES`].
    fn event_type(&self) -> &'static str;

    /// The JSON payload.
    fn payload(&self) -> serde_json::Value;

    /// Reads a payload of type `event_type`.
    ///
    /// # Errors
    /// [`PayloadError`] for an unknown type or a payload of the wrong shape.
    fn from_payload(event_type: &str, payload: &serde_json::Value) -> Result<Self, PayloadError>;

    /// Reads the event an envelope carries.
    ///
    /// # Errors
    /// As [`DomainEvent::from_payload`].
    fn from_envelope(envelope: &EventEnvelope) -> Result<Self, PayloadError> {
        Self::from_payload(&envelope.event_type, &envelope.payload)
    }
}

/// The JSON of a payload struct. Payloads are plain structs of strings, numbers and lists, which
/// always serialise; the empty object stands in should one ever not.
#[must_use]
pub fn encode_payload<T: Serialize>(payload: &T) -> serde_json::Value {
    serde_json::to_value(payload).unwrap_or_else(|_| serde_json::json!({}))
}

/// Reads a payload struct of event type `event_type`.
///
/// # Errors
/// [`PayloadError`] when `payload` does not have `T`'s shape.
pub fn decode_payload<T: DeserializeOwned>(
    event_type: &str,
    payload: &serde_json::Value,
) -> Result<T, PayloadError> {
    T::deserialize(payload).map_err(|e| PayloadError {
        event_type: event_type.to_owned(),
        reason: e.to_string(),
    })
}

/// A module's aggregate as its pure rules see it: how one event changes it. With
/// [`commit`], the command side writes its new row and the projection its new view from the
/// same function of the same events.
pub trait Aggregate: Sized {
    /// Its events.
    type Event: DomainEvent;
    /// Why an event cannot apply (a history that cannot happen).
    type Error;
    /// The aggregate type of its events, e.g. `Task`.
    const TYPE: &'static str;

    /// Folds one event into the state (`None`: the aggregate does not exist yet). `id`,
    /// `version` and `at` come from the event's envelope.
    ///
    /// # Errors
    /// When the event cannot apply to `state`.
    fn evolve(
        state: Option<Self>,
        event: &Self::Event,
        id: Uuid,
        version: i64,
        at: time::OffsetDateTime,
    ) -> Result<Self, Self::Error>;
}

/// What a command produced: the aggregate after its events (`None` only when it did not exist
/// and no event created it) and the events' envelopes, numbered on from `version` (the
/// version before the command, 0 for a new aggregate).
#[derive(Debug, Clone, PartialEq)]
pub struct Committed<A> {
    /// The aggregate after the events.
    pub state: Option<A>,
    /// One envelope per event, in order.
    pub envelopes: Vec<EventEnvelope>,
}

/// Folds `events` into `state` (at `version`) and stamps their envelopes with `ctx`: the one
/// sequence every command, and every test that plays commands, goes through.
///
/// # Errors
/// The aggregate's error when an event cannot apply.
pub fn commit<A: Aggregate>(
    state: Option<A>,
    version: i64,
    aggregate_id: Uuid,
    events: &[A::Event],
    ctx: &EventContext,
) -> Result<Committed<A>, A::Error> {
    let state = events
        .iter()
        .zip(version + 1..)
        .try_fold(state, |s, (e, v)| {
            A::evolve(s, e, aggregate_id, v, ctx.now).map(Some)
        })?;
    Ok(Committed {
        state,
        envelopes: ctx.envelopes(A::TYPE, aggregate_id, version + 1, events),
    })
}

impl EventContext {
    /// The envelope of `event`, version `version` of aggregate `aggregate_id`.
    #[must_use]
    pub fn envelope_of<E: DomainEvent>(
        &self,
        aggregate_type: &str,
        aggregate_id: Uuid,
        version: i64,
        event: &E,
    ) -> EventEnvelope {
        self.envelope(
            aggregate_type,
            aggregate_id,
            version,
            event.event_type(),
            event.payload(),
        )
    }

    /// The envelopes of `events`, the versions `first_version`, `first_version + 1`, … of
    /// aggregate `aggregate_id`: what one command appends.
    #[must_use]
    pub fn envelopes<E: DomainEvent>(
        &self,
        aggregate_type: &str,
        aggregate_id: Uuid,
        first_version: i64,
        events: &[E],
    ) -> Vec<EventEnvelope> {
        events
            .iter()
            .zip(first_version..)
            .map(|(e, v)| self.envelope_of(aggregate_type, aggregate_id, v, e))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Renamed {
        name: String,
    }

    #[derive(Debug, PartialEq)]
    enum Shelf {
        Renamed(Renamed),
        Emptied,
    }

    impl DomainEvent for Shelf {
        const TYPES: &'static [&'static str] = &["shelf.renamed", "shelf.emptied"];
        fn event_type(&self) -> &'static str {
            match self {
                Self::Renamed(_) => "shelf.renamed",
                Self::Emptied => "shelf.emptied",
            }
        }
        fn payload(&self) -> serde_json::Value {
            match self {
                Self::Renamed(p) => encode_payload(p),
                Self::Emptied => serde_json::json!({}),
            }
        }
        fn from_payload(t: &str, p: &serde_json::Value) -> Result<Self, PayloadError> {
            match t {
                "shelf.renamed" => decode_payload(t, p).map(Self::Renamed),
                "shelf.emptied" => Ok(Self::Emptied),
                _ => Err(PayloadError::unknown(t)),
            }
        }
    }

    /// How many books a shelf held, and its name.
    #[derive(Debug, Clone, PartialEq)]
    struct ShelfState {
        name: String,
        emptied: u32,
        version: i64,
    }

    impl Aggregate for ShelfState {
        type Event = Shelf;
        type Error = String;
        const TYPE: &'static str = "Shelf";
        fn evolve(
            state: Option<Self>,
            event: &Shelf,
            _: Uuid,
            version: i64,
            _: time::OffsetDateTime,
        ) -> Result<Self, String> {
            match (state, event) {
                (None, Shelf::Renamed(r)) => Ok(Self {
                    name: r.name.clone(),
                    emptied: 0,
                    version,
                }),
                (None, Shelf::Emptied) => Err("no shelf".into()),
                (Some(s), Shelf::Renamed(r)) => Ok(Self {
                    name: r.name.clone(),
                    version,
                    ..s
                }),
                (Some(s), Shelf::Emptied) => Ok(Self {
                    emptied: s.emptied + 1,
                    version,
                    ..s
                }),
            }
        }
    }

    #[test]
    fn commit_folds_the_events_and_numbers_their_envelopes_on() {
        let ctx = EventContext::new(None, None, "test");
        let id = Uuid::now_v7();
        let created = commit::<ShelfState>(
            None,
            0,
            id,
            &[Shelf::Renamed(Renamed { name: "a".into() })],
            &ctx,
        )
        .expect("created");
        let state = created.state.expect("exists");
        let later =
            commit(Some(state), 1, id, &[Shelf::Emptied, Shelf::Emptied], &ctx).expect("emptied");
        assert_eq!(
            later.state,
            Some(ShelfState {
                name: "a".into(),
                emptied: 2,
                version: 3
            })
        );
        let versions: Vec<i64> = later
            .envelopes
            .iter()
            .map(|e| e.aggregate_version)
            .collect();
        assert_eq!(versions, vec![2, 3]);
        assert_eq!(later.envelopes[0].aggregate_type, "Shelf");
        assert!(commit::<ShelfState>(None, 0, id, &[Shelf::Emptied], &ctx).is_err());
        let nothing = commit::<ShelfState>(None, 0, id, &[], &ctx).expect("no events");
        assert_eq!((nothing.state, nothing.envelopes.len()), (None, 0));
    }

    #[test]
    fn a_command_stamps_consecutive_versions_and_events_read_back() {
        let ctx = EventContext::new(None, Some("req-1".into()), "test");
        let id = Uuid::now_v7();
        let events = [Shelf::Renamed(Renamed { name: "a".into() }), Shelf::Emptied];
        let envs = ctx.envelopes("Shelf", id, 4, &events);
        let versions: Vec<i64> = envs.iter().map(|e| e.aggregate_version).collect();
        assert_eq!(versions, vec![4, 5]);
        assert!(envs.iter().all(|e| e.occurred_at == ctx.now));
        let back: Vec<Shelf> = envs
            .iter()
            .map(|e| Shelf::from_envelope(e).expect("parse"))
            .collect();
        assert_eq!(back, events);
        let bad = Shelf::from_payload("shelf.renamed", &serde_json::json!({"name": 3}))
            .expect_err("malformed");
        assert_eq!(bad.event_type, "shelf.renamed");
        assert_eq!(
            Shelf::from_payload("shelf.burnt", &serde_json::json!({})),
            Err(PayloadError::unknown("shelf.burnt"))
        );
    }
}
