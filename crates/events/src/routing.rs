//! Stable routing of aggregates to stream partitions, and the stream names that follow.
//!
//! The partition of an aggregate is `fnv1a_64(aggregate_id bytes) mod P`, where the bytes are
//! the UUID's 16 bytes in network order and FNV-1a uses the standard 64-bit offset basis and
//! prime. The function is fixed forever: changing it would move aggregates between partitions
//! while events of theirs are in flight, breaking per-aggregate order. FNV is used rather than
//! the UUID's low bits because UUIDv7 ids are partly a clock, and FNV mixes all 16 bytes.

use uuid::Uuid;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The partition (0-based) of `aggregate_id` among `partitions` partitions.
///
/// `partitions` of 0 is treated as 1: there is always at least one partition.
#[must_use]
pub fn partition_for(aggregate_id: Uuid, partitions: u32) -> u32 {
    let hash = aggregate_id.as_bytes().iter().fold(FNV_OFFSET, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(FNV_PRIME)
    });
    // The remainder is < partitions ≤ u32::MAX, so the cast cannot truncate.
    (hash % u64::from(partitions.max(1))) as u32
}

/// A relay wake-up's payload naming `partitions` (numbers separated by commas), whichever way
/// it travels (a Redis `PUBLISH` or a PostgreSQL `NOTIFY`): the relay parses one format.
#[must_use]
pub fn wake_payload<'a>(partitions: impl IntoIterator<Item = &'a i32>) -> String {
    partitions
        .into_iter()
        .map(i32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Names of the Redis streams a deployment uses, derived from its key prefix and partition
/// count (architecture.md §11: `REDIS_KEY_PREFIX`, `STREAM_PARTITIONS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRouting {
    prefix: String,
    partitions: u32,
}

impl StreamRouting {
    /// Routing for a deployment with key prefix `prefix` and `partitions` partitions per stream.
    #[must_use]
    pub fn new(prefix: impl Into<String>, partitions: u32) -> Self {
        Self {
            prefix: prefix.into(),
            partitions: partitions.max(1),
        }
    }

    /// Number of partitions per module stream.
    #[must_use]
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// The key prefix every Redis name of this deployment starts with.
    #[must_use]
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The stream of `module`'s partition `partition`: `cqrs:stream:<module>` with one
    /// partition, `cqrs:stream:<module>:<p>` otherwise, behind the key prefix.
    #[must_use]
    pub fn stream(&self, module: &str, partition: u32) -> String {
        if self.partitions == 1 {
            format!("{}cqrs:stream:{module}", self.prefix)
        } else {
            format!("{}cqrs:stream:{module}:{partition}", self.prefix)
        }
    }

    /// Every partition stream of `module`, in partition order.
    #[must_use]
    pub fn streams(&self, module: &str) -> Vec<String> {
        (0..self.partitions)
            .map(|p| self.stream(module, p))
            .collect()
    }

    /// The stream an aggregate's events go to.
    #[must_use]
    pub fn stream_for(&self, module: &str, aggregate_id: Uuid) -> String {
        self.stream(module, partition_for(aggregate_id, self.partitions))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn partition_function_is_pinned() {
        // Part of the contract between command-api (which stores the partition) and the relay:
        // a change here would reorder in-flight events. Expected values computed independently
        // (Python, FNV-1a 64 over uuid.bytes).
        let id = Uuid::parse_str("0192e3a4-5b6c-7d8e-9f00-112233445566").expect("uuid");
        assert_eq!(partition_for(id, 1), 0);
        assert_eq!(partition_for(id, 16), 1);
        assert_eq!(partition_for(id, 7), 6);
        assert_eq!(partition_for(Uuid::nil(), 16), 5);
        assert_eq!(partition_for(Uuid::nil(), 7), 0);
    }

    #[test]
    fn stream_names_follow_partition_count() {
        let one = StreamRouting::new("p:", 1);
        assert_eq!(one.stream("task", 0), "p:cqrs:stream:task");
        assert_eq!(one.streams("task"), vec!["p:cqrs:stream:task"]);
        let four = StreamRouting::new("", 4);
        assert_eq!(four.stream("task", 3), "cqrs:stream:task:3");
        assert_eq!(four.streams("task").len(), 4);
        assert_eq!(StreamRouting::new("", 0).partitions(), 1);
    }

    proptest! {
        #[test]
        fn partitions_are_in_range_and_spread(bytes in any::<[u8; 16]>(), p in 1u32..64) {
            let id = Uuid::from_bytes(bytes);
            prop_assert!(partition_for(id, p) < p);
        }
    }

    #[test]
    fn random_ids_spread_evenly_over_partitions() {
        let p = 8u32;
        let mut counts = [0u32; 8];
        for _ in 0..8000 {
            counts[partition_for(Uuid::now_v7(), p) as usize] += 1;
        }
        for c in counts {
            assert!((700..1300).contains(&c), "uneven spread {counts:?}");
        }
    }
}
