//! Test doubles for the modules' pure tests: an in-memory model of what the read-model writes
//! do in Redis, and a clock that stamps events at increasing instants.

use std::collections::{BTreeMap, BTreeSet};

use events::{DomainEvent, EventContext, ModuleSpec};
use projection::ViewState;
use streams::Op;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

/// What the read-model operations leave in Redis, in memory: apply a projection's ops here and
/// look at the result.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryModel {
    /// String keys.
    pub strings: BTreeMap<String, String>,
    /// Sorted sets' members.
    pub zsets: BTreeMap<String, BTreeSet<String>>,
    /// Sorted sets' scores, by key and member, as `f64` bits (so the model stays `Eq`).
    pub scores: BTreeMap<String, BTreeMap<String, u64>>,
    /// Hashes.
    pub hashes: BTreeMap<String, BTreeMap<String, String>>,
}

impl MemoryModel {
    /// Applies `ops` in order, as the apply script does.
    ///
    /// # Panics
    /// On an `HINCRBY` of a field that is not an integer (the script refuses it).
    pub fn run(&mut self, ops: &[Op]) {
        for op in ops {
            match op {
                Op::Set { key, value } => {
                    self.strings.insert(key.clone(), value.clone());
                }
                Op::Del { key } => {
                    self.strings.remove(key);
                    self.zsets.remove(key);
                    self.scores.remove(key);
                    self.hashes.remove(key);
                }
                Op::ZAdd { key, member, score } => {
                    self.zsets
                        .entry(key.clone())
                        .or_default()
                        .insert(member.clone());
                    self.scores
                        .entry(key.clone())
                        .or_default()
                        .insert(member.clone(), score.to_bits());
                }
                Op::ZRem { key, member } => {
                    self.zsets.entry(key.clone()).or_default().remove(member);
                    self.scores.entry(key.clone()).or_default().remove(member);
                }
                Op::ZKeepHighest { key, count } => {
                    let ranked = self.ranked(key);
                    for member in ranked.iter().skip(*count as usize) {
                        self.zsets.entry(key.clone()).or_default().remove(member);
                        self.scores.entry(key.clone()).or_default().remove(member);
                    }
                }
                Op::HIncrBy { key, field, delta } => {
                    let value = self
                        .hashes
                        .entry(key.clone())
                        .or_default()
                        .entry(field.clone())
                        .or_insert_with(|| "0".into());
                    let n: i64 = value.parse().expect("HINCRBY on an integer field");
                    *value = (n + delta).to_string();
                }
                Op::HSet { key, field, value } => {
                    self.hashes
                        .entry(key.clone())
                        .or_default()
                        .insert(field.clone(), value.clone());
                }
                Op::HDel { key, field } => {
                    self.hashes.entry(key.clone()).or_default().remove(field);
                }
            }
        }
    }

    /// The values of `keys` as a projection reads them.
    #[must_use]
    pub fn state(&self, keys: &[String]) -> ViewState {
        ViewState::from_pairs(
            keys.iter()
                .map(|k| (k.clone(), self.strings.get(k).cloned())),
        )
    }

    /// A string key's value.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&str> {
        self.strings.get(key).map(String::as_str)
    }

    /// How many members a sorted set has.
    #[must_use]
    pub fn members(&self, key: &str) -> usize {
        self.zsets.get(key).map_or(0, BTreeSet::len)
    }

    /// A sorted set's members, highest score first (ties: the greatest member first), as
    /// `ZREVRANGE` lists them.
    #[must_use]
    pub fn ranked(&self, key: &str) -> Vec<String> {
        let mut members: Vec<(f64, String)> = self
            .zsets
            .get(key)
            .into_iter()
            .flatten()
            .map(|m| {
                let bits = self.scores.get(key).and_then(|s| s.get(m)).copied();
                (bits.map_or(0.0, f64::from_bits), m.clone())
            })
            .collect();
        members.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| b.1.cmp(&a.1)));
        members.into_iter().map(|(_, m)| m).collect()
    }

    /// A hash field read as an integer (0 when absent, as `HINCRBY` starts).
    ///
    /// # Panics
    /// When the field is not an integer.
    #[must_use]
    pub fn counter(&self, key: &str, field: &str) -> i64 {
        self.hashes
            .get(key)
            .and_then(|h| h.get(field))
            .map_or(0, |v| v.parse().expect("integer field"))
    }
}

/// Stamps events at increasing instants, one `step` apart, so that creation order is time
/// order in lists.
#[derive(Debug, Clone)]
pub struct EventClock {
    next: OffsetDateTime,
    step: Duration,
}

impl EventClock {
    /// A clock whose first tick is `start`.
    #[must_use]
    pub fn starting_at(start: OffsetDateTime, step: Duration) -> Self {
        Self { next: start, step }
    }

    /// A clock starting now, on a whole second (PostgreSQL keeps microseconds), one
    /// millisecond per tick.
    #[must_use]
    pub fn now() -> Self {
        let now = OffsetDateTime::now_utc();
        Self::starting_at(
            now.replace_nanosecond(0).unwrap_or(now),
            Duration::milliseconds(1),
        )
    }

    /// The context of one command by `user`, at the next tick.
    pub fn context(&mut self, user: Uuid) -> EventContext {
        let now = self.next;
        self.next += self.step;
        EventContext {
            user_id: Some(user),
            correlation_id: None,
            source: "test".into(),
            now,
        }
    }
}

/// Checks that a module's event enum and its catalogue entry say the same thing: `examples`
/// (one per variant at least) cover every catalogue type, each example's type is in the
/// catalogue, and each one's payload reads back as the same event.
///
/// # Panics
/// Naming the first mismatch.
pub fn assert_events_match_catalogue<E: DomainEvent + PartialEq + std::fmt::Debug>(
    spec: &ModuleSpec,
    examples: &[E],
) {
    if let Err(e) = spec.check() {
        panic!("catalogue entry of {}: {e}", spec.name);
    }
    assert_eq!(
        spec.event_types,
        E::TYPES,
        "the catalogue lists the enum's types"
    );
    for t in spec.event_types {
        assert!(
            examples.iter().any(|e| e.event_type() == *t),
            "no example of {t}: add one per variant"
        );
    }
    for e in examples {
        assert!(
            spec.emits(e.event_type()),
            "{} is not in the catalogue of {}",
            e.event_type(),
            spec.name
        );
        let back = E::from_payload(e.event_type(), &e.payload())
            .unwrap_or_else(|err| panic!("{} does not read back: {err}", e.event_type()));
        assert_eq!(&back, e, "{} reads back unchanged", e.event_type());
    }
    assert!(
        E::from_payload(
            &format!("{}.never_emitted", spec.name),
            &serde_json::json!({})
        )
        .is_err(),
        "an unknown type is refused"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_does_what_the_script_does() {
        let mut m = MemoryModel::default();
        m.run(&[
            Op::Set {
                key: "v".into(),
                value: "1".into(),
            },
            Op::ZAdd {
                key: "z".into(),
                score: 0.0,
                member: "a".into(),
            },
            Op::HIncrBy {
                key: "h".into(),
                field: "n".into(),
                delta: 3,
            },
            Op::HIncrBy {
                key: "h".into(),
                field: "n".into(),
                delta: -1,
            },
        ]);
        assert_eq!(m.get("v"), Some("1"));
        assert_eq!((m.members("z"), m.counter("h", "n")), (1, 2));
        m.run(&[
            Op::Del { key: "v".into() },
            Op::ZRem {
                key: "z".into(),
                member: "a".into(),
            },
        ]);
        assert_eq!((m.get("v"), m.members("z")), (None, 0));
        let add = |score: f64, member: &str| Op::ZAdd {
            key: "r".into(),
            score,
            member: member.into(),
        };
        let keep = Op::ZKeepHighest {
            key: "r".into(),
            count: 2,
        };
        m.run(&[
            add(2.0, "b"),
            keep.clone(),
            add(3.0, "c"),
            add(1.0, "a"),
            keep,
        ]);
        assert_eq!(m.ranked("r"), vec!["c".to_owned(), "b".to_owned()]);
        assert_eq!(m.state(&["v".into()]).get("v"), None);
    }

    #[test]
    fn the_clock_ticks_forward() {
        let mut c = EventClock::now();
        let user = Uuid::now_v7();
        let (a, b) = (c.context(user), c.context(user));
        assert_eq!(b.now - a.now, Duration::milliseconds(1));
        assert_eq!(a.user_id, Some(user));
    }
}
