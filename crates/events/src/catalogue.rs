//! What the rest of the system needs to know about a module's events (architecture.md §3).
//!
//! Each module crate declares its own [`ModuleSpec`], built from its event enum
//! ([`crate::DomainEvent::TYPES`]), and the registry crate lists the modules; this crate only
//! fixes the shape and the naming rules. Event type names are part of the wire format: they
//! are past tense and never renamed.

/// One module: its stream, consumer group, projection name and the event types it emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModuleSpec {
    /// Module name, also the stream suffix (`cqrs:stream:<name>`) and the first segment of
    /// every event type it emits.
    pub name: &'static str,
    /// The projection that consumes the module's stream: `<name>_projection`.
    pub projection: &'static str,
    /// The consumer group the projection reads through: `<name>_projection_group`.
    pub consumer_group: &'static str,
    /// The aggregate types whose events go to this module's stream.
    pub aggregate_types: &'static [&'static str],
    /// Every event type the module emits, in the order of the catalogue.
    pub event_types: &'static [&'static str],
}

impl ModuleSpec {
    /// Whether `event_type` belongs to this module's catalogue.
    #[must_use]
    pub fn emits(&self, event_type: &str) -> bool {
        self.event_types.contains(&event_type)
    }

    /// Checks the naming rules of architecture.md §3.
    ///
    /// # Errors
    /// The first rule broken, in words.
    pub fn check(&self) -> Result<(), String> {
        let name = self.name;
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
            return Err(format!("module name {name:?} is not lower-case letters"));
        }
        if self.projection != format!("{name}_projection") {
            return Err(format!("{name}: projection must be {name}_projection"));
        }
        if self.consumer_group != format!("{name}_projection_group") {
            return Err(format!("{name}: group must be {name}_projection_group"));
        }
        if self.aggregate_types.is_empty() || self.event_types.is_empty() {
            return Err(format!("{name}: no aggregate or event types"));
        }
        for (i, t) in self.event_types.iter().enumerate() {
            if !t.starts_with(&format!("{name}.")) {
                return Err(format!("{t} is outside module {name}"));
            }
            if self.event_types[..i].contains(t) {
                return Err(format!("{t} is listed twice"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHELF: ModuleSpec = ModuleSpec {
        name: "shelf",
        projection: "shelf_projection",
        consumer_group: "shelf_projection_group",
        aggregate_types: &["Shelf"],
        event_types: &["shelf.renamed", "shelf.emptied"],
    };

    #[test]
    fn names_follow_the_architecture_convention() {
        assert_eq!(SHELF.check(), Ok(()));
        assert!(SHELF.emits("shelf.emptied"));
        assert!(!SHELF.emits("shelf.burnt"));
        let bad = [
            ModuleSpec {
                projection: "shelves",
                ..SHELF
            },
            ModuleSpec {
                consumer_group: "g",
                ..SHELF
            },
            ModuleSpec {
                event_types: &["shelf.renamed", "book.moved"],
                ..SHELF
            },
            ModuleSpec {
                event_types: &["shelf.renamed", "shelf.renamed"],
                ..SHELF
            },
            ModuleSpec {
                name: "Shelf",
                ..SHELF
            },
        ];
        for spec in bad {
            assert!(spec.check().is_err(), "{spec:?}");
        }
    }
}
