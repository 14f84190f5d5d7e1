//! The key space of a deployment. Every Redis name comes from here, behind the configured
//! prefix, so deployments and parallel tests sharing one Redis never touch each other's keys.

use events::StreamRouting;

/// The generation a read model starts at; rebuilds move to higher ones.
pub const INITIAL_GENERATION: i64 = 1;

/// The root of a deployment's Redis names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpace {
    prefix: String,
}

impl KeySpace {
    /// A key space under `prefix` (may be empty).
    #[must_use]
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The prefix.
    #[must_use]
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Stream routing for `partitions` partitions per module.
    #[must_use]
    pub fn routing(&self, partitions: u32) -> StreamRouting {
        StreamRouting::new(self.prefix.clone(), partitions)
    }

    /// Where the active generation of `projection`'s read model is recorded: readers and
    /// writers resolve it at run time ([`crate::generation`]), so a switch needs no restart.
    #[must_use]
    pub fn generation_pointer(&self, projection: &str) -> String {
        format!("{}cqrs:generation:{projection}", self.prefix)
    }

    /// The lock one replica holds while it rebuilds `projection`'s read model, so the others
    /// wait instead of rebuilding too. Outside any generation: it guards the building of one.
    #[must_use]
    pub fn rebuild_lock(&self, projection: &str) -> String {
        format!("{}cqrs:rebuild:{projection}", self.prefix)
    }

    /// The generations of `projection` retired and waiting to be deleted (a sorted set scored
    /// by when they were retired).
    #[must_use]
    pub fn retired(&self, projection: &str) -> String {
        format!("{}cqrs:retired:{projection}", self.prefix)
    }

    /// The canary of `projection` ([`crate::read_model::canary`]).
    #[must_use]
    pub fn canary(&self, projection: &str) -> String {
        format!("{}cqrs:canary:{projection}", self.prefix)
    }

    /// The read-model keys of `module`'s projection, generation `generation`.
    #[must_use]
    pub fn read_model(&self, module: &str, generation: i64) -> ReadModelKeys {
        ReadModelKeys {
            base: format!("{}rm:{module}:g{generation}:", self.prefix),
            generation,
        }
    }
}

/// The keys of one generation of one projection's read model. A rebuild writes a new
/// generation beside the serving one, so every key carries the generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadModelKeys {
    base: String,
    generation: i64,
}

impl ReadModelKeys {
    /// `<base><suffix>`, e.g. `rm:task:g1:view:<id>`.
    #[must_use]
    pub fn key(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.base)
    }

    /// The hash of applied versions: field = aggregate id, value = last applied version.
    #[must_use]
    pub fn versions(&self) -> String {
        self.key("versions")
    }

    /// Set once the generation was built from history: its absence means the read model is
    /// missing (a first start, or Redis lost it) and must be rebuilt before anything applies.
    #[must_use]
    pub fn marker(&self) -> String {
        self.key("marker")
    }

    /// The record of the build of this generation while it runs (which operation builds it):
    /// its absence on resuming a build means Redis lost the partial generation.
    #[must_use]
    pub fn build_record(&self) -> String {
        self.key("build")
    }

    /// The generation these keys belong to.
    #[must_use]
    pub fn generation(&self) -> i64 {
        self.generation
    }

    /// The common prefix of every key of this generation (for `SCAN MATCH <base>*`).
    #[must_use]
    pub fn base(&self) -> &str {
        &self.base
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_carries_prefix_module_and_generation() {
        let keys = KeySpace::new("t1:").read_model("task", 3);
        assert_eq!(keys.key("view:x"), "t1:rm:task:g3:view:x");
        assert_eq!(keys.versions(), "t1:rm:task:g3:versions");
        assert_eq!(keys.marker(), "t1:rm:task:g3:marker");
        let space = KeySpace::new("t1:");
        assert_eq!(
            space.generation_pointer("task_projection"),
            "t1:cqrs:generation:task_projection"
        );
        assert_eq!(
            space.rebuild_lock("task_projection"),
            "t1:cqrs:rebuild:task_projection"
        );
        assert_eq!(
            KeySpace::new("t1:").routing(1).stream("task", 0),
            "t1:cqrs:stream:task"
        );
    }
}
