//! The registry: every module this build hosts. Each service, the pipeline tests and the
//! benchmarks iterate [`ALL`]; adding a module is its crate, its migration and one line here.
#![warn(missing_docs)]

use events::ModuleSpec;
pub use module_kit::Module;

/// Every module, in a fixed order.
pub static ALL: &[Module] = &[task::MODULE, community::MODULE, galaxy::MODULE];

/// The catalogue entries of every module.
pub fn specs() -> impl Iterator<Item = &'static ModuleSpec> {
    ALL.iter().map(|m| m.spec)
}

/// The module whose projection is named `projection`.
#[must_use]
pub fn by_projection(projection: &str) -> Option<&'static Module> {
    ALL.iter().find(|m| m.spec.projection == projection)
}

/// The module named `name`.
#[must_use]
pub fn by_name(name: &str) -> Option<&'static Module> {
    ALL.iter().find(|m| m.spec.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The benchmarks apply each module's sample history as a stream: an aggregate's versions
    /// must each appear once, or the apply planning sees duplicates.
    #[test]
    fn every_sample_history_holds_each_version_of_each_aggregate_once() {
        for m in ALL {
            let history = (m.sample_history)(50_000);
            let mut seen = std::collections::HashSet::new();
            for e in &history {
                assert!(
                    seen.insert((e.aggregate_id, e.aggregate_version)),
                    "{}: {} version {} twice",
                    m.spec.name,
                    e.aggregate_id,
                    e.aggregate_version
                );
            }
            assert!(
                history.len() >= 40_000,
                "{}: {} events",
                m.spec.name,
                history.len()
            );
        }
    }

    #[test]
    fn every_module_follows_the_conventions_and_owns_its_names_alone() {
        let mut names = Vec::new();
        let mut types = Vec::new();
        let mut aggregates = Vec::new();
        for m in ALL {
            let spec = m.spec;
            spec.check().unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                (m.projection)().module(),
                spec,
                "{} projects its own stream",
                spec.name
            );
            assert!(!names.contains(&spec.name), "{} twice", spec.name);
            names.push(spec.name);
            for t in spec.event_types {
                assert!(!types.contains(t), "{t} in two modules");
                types.push(t);
            }
            for a in spec.aggregate_types {
                assert!(!aggregates.contains(a), "aggregate {a} in two modules");
                aggregates.push(a);
            }
        }
        assert_eq!(
            by_name("task").map(|m| m.spec.projection),
            Some("task_projection")
        );
        assert_eq!(
            by_projection("task_projection").map(|m| m.spec.name),
            Some("task")
        );
        assert!(by_name("nope").is_none() && by_projection("nope").is_none());
    }
}
