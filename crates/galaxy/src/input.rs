//! The HTTP bodies of the galaxy commands, and their validation into domain commands. Every
//! rule of http-api.md lives here, each failure naming its field. Whether a parent or a
//! relation end exists is checked in the transaction ([`crate::store`]).

use module_kit::input::{Invalid, invalid, one_of, optional_text, ranged, string_list, text};
use serde::Deserialize;
use uuid::Uuid;

use crate::domain::{ActivityType, CreateNode, CreateRelation, GalaxyError, RelationType, Study};

// The bodies' schemas state the rules below as far as JSON Schema can; the validation
// functions stay the authority. The patterns are module_kit::input::{TEXT_PATTERN,
// NO_NUL_PATTERN} (utoipa takes literals only; a test checks they agree).

/// `POST /v1/galaxy/nodes`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateNodeBody {
    /// 1–255 characters, trimmed, not blank.
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = r"^[^\x00]*[^\s\x00][^\x00]*$"
    )]
    pub name: String,
    /// At most 255 characters.
    #[serde(default)]
    #[schema(max_length = 255, pattern = r"^[^\x00]*$")]
    pub name_en: Option<String>,
    /// At most 5000 characters.
    #[serde(default)]
    #[schema(max_length = 5000, pattern = r"^[^\x00]*$")]
    pub description: Option<String>,
    /// At most 20 keywords of 1–64 characters (trimmed).
    #[serde(default)]
    #[schema(schema_with = keywords_schema)]
    pub keywords: Option<Vec<String>>,
    /// 1–5, default 1.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 5, default = 1)]
    pub importance_level: Option<i64>,
    /// An existing node (else 400).
    #[serde(default)]
    pub parent_id: Option<Uuid>,
    /// The subject the node belongs to.
    #[serde(default)]
    pub subject_id: Option<i64>,
    /// Whether the node is a seed of the galaxy (default `false`).
    #[serde(default)]
    pub is_seed: Option<bool>,
}

fn keywords_schema() -> utoipa::openapi::schema::Array {
    module_kit::input::string_list_schema(20, 1..=64, true)
}

/// `POST /v1/galaxy/relations`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRelationBody {
    /// An existing node (else 400).
    pub source_node_id: Uuid,
    /// An existing node other than the source (else 400).
    pub target_node_id: Uuid,
    /// One of the relation types.
    #[schema(value_type = RelationType)]
    pub relation_type: String,
    /// 0–1, default 1.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 1, default = 1)]
    pub strength: Option<f64>,
}

/// `POST /v1/galaxy/nodes/{id}/study`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StudyBody {
    /// 1–1440.
    #[schema(minimum = 1, maximum = 1440)]
    pub minutes: i64,
    /// 0–1: how well the session went; mastery rises by ten times this.
    #[schema(minimum = 0, maximum = 1)]
    pub performance_score: f64,
    /// One of the activity types.
    #[schema(value_type = ActivityType)]
    pub activity_type: String,
}

/// A number in `0..=1` (NaN cannot come from JSON, but is refused all the same).
fn unit(field: &'static str, v: f64) -> Result<f64, Invalid> {
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(invalid(field, format!("{field} must be between 0 and 1")))
    }
}

impl CreateNodeBody {
    /// Validates into a command creating node `id`.
    ///
    /// # Errors
    /// [`GalaxyError::Invalid`] naming the first bad field.
    pub fn validate(self, id: Uuid) -> Result<CreateNode, GalaxyError> {
        Ok(CreateNode {
            id,
            name: text("name", &self.name, 255)?,
            name_en: optional_text("name_en", self.name_en, 255)?,
            description: optional_text("description", self.description, 5000)?,
            keywords: string_list(
                "keywords",
                "keyword",
                self.keywords.unwrap_or_default(),
                20,
                1..=64,
            )?,
            importance_level: ranged("importance_level", self.importance_level.unwrap_or(1), 1, 5)?,
            parent_id: self.parent_id,
            subject_id: self.subject_id,
            is_seed: self.is_seed.unwrap_or(false),
        })
    }
}

impl CreateRelationBody {
    /// Validates into a relation command.
    ///
    /// # Errors
    /// [`GalaxyError::Invalid`] naming the first bad field (a node related to itself names
    /// `target_node_id`).
    pub fn validate(self) -> Result<CreateRelation, GalaxyError> {
        let relation_type = one_of(
            "relation_type",
            &self.relation_type,
            &RelationType::ALL,
            RelationType::as_str,
        )?;
        let strength = unit("strength", self.strength.unwrap_or(1.0))?;
        if self.source_node_id == self.target_node_id {
            return Err(invalid("target_node_id", "a node cannot be related to itself").into());
        }
        Ok(CreateRelation {
            source_node_id: self.source_node_id,
            target_node_id: self.target_node_id,
            relation_type,
            strength,
        })
    }
}

impl StudyBody {
    /// Validates into a study session.
    ///
    /// # Errors
    /// [`GalaxyError::Invalid`] naming the first bad field.
    pub fn validate(self) -> Result<Study, GalaxyError> {
        Ok(Study {
            minutes: ranged("minutes", self.minutes, 1, 1440)?,
            performance_score: unit("performance_score", self.performance_score)?,
            activity_type: one_of(
                "activity_type",
                &self.activity_type,
                &ActivityType::ALL,
                ActivityType::as_str,
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field(r: Result<impl std::fmt::Debug, GalaxyError>) -> &'static str {
        match r {
            Err(GalaxyError::Invalid { field, .. }) => field,
            other => panic!("expected invalid, got {other:?}"),
        }
    }

    fn node(v: serde_json::Value) -> Result<CreateNode, GalaxyError> {
        serde_json::from_value::<CreateNodeBody>(v)
            .expect("shape")
            .validate(Uuid::nil())
    }

    #[test]
    fn a_minimal_node_gets_defaults_and_a_trimmed_name() {
        let n = node(json!({"name": "  Borrowing "})).expect("valid");
        assert_eq!(
            (n.name.as_str(), n.importance_level, n.is_seed),
            ("Borrowing", 1, false)
        );
        assert!(n.keywords.is_empty() && n.parent_id.is_none() && n.name_en.is_none());
    }

    #[test]
    fn each_node_rule_names_its_field() {
        let with = |k: &str, v: serde_json::Value| {
            let mut b = json!({"name": "n"});
            b[k] = v;
            node(b)
        };
        assert_eq!(field(with("name", json!("  "))), "name");
        assert_eq!(field(with("name", json!("x".repeat(256)))), "name");
        assert!(with("name", json!("é".repeat(255))).is_ok());
        assert_eq!(field(with("name_en", json!("x".repeat(256)))), "name_en");
        assert_eq!(
            field(with("description", json!("x".repeat(5001)))),
            "description"
        );
        assert!(with("description", json!("x".repeat(5000))).is_ok());
        assert_eq!(field(with("keywords", json!(vec!["k"; 21]))), "keywords");
        assert_eq!(field(with("keywords", json!([" "]))), "keywords");
        assert!(with("keywords", json!(vec!["k"; 20])).is_ok());
        assert_eq!(
            field(with("importance_level", json!(0))),
            "importance_level"
        );
        assert_eq!(
            field(with("importance_level", json!(6))),
            "importance_level"
        );
        assert_eq!(field(with("name", json!("a\0b"))), "name");
    }

    #[test]
    fn each_relation_rule_names_its_field() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let rel = |v: serde_json::Value| {
            serde_json::from_value::<CreateRelationBody>(v)
                .expect("shape")
                .validate()
        };
        let ok = rel(json!({"source_node_id": a, "target_node_id": b, "relation_type": "related"}))
            .expect("valid");
        assert_eq!(ok.strength, 1.0);
        assert_eq!(
            field(rel(
                json!({"source_node_id": a, "target_node_id": b, "relation_type": "likes"})
            )),
            "relation_type"
        );
        for bad in [-0.01, 1.01] {
            assert_eq!(
                field(rel(json!({"source_node_id": a, "target_node_id": b,
                                 "relation_type": "extends", "strength": bad}))),
                "strength"
            );
        }
        assert_eq!(
            field(rel(
                json!({"source_node_id": a, "target_node_id": a, "relation_type": "extends"})
            )),
            "target_node_id"
        );
    }

    #[test]
    fn each_study_rule_names_its_field() {
        let study = |v: serde_json::Value| {
            serde_json::from_value::<StudyBody>(v)
                .expect("shape")
                .validate()
        };
        let base = json!({"minutes": 30, "performance_score": 0.5, "activity_type": "review"});
        assert!(study(base.clone()).is_ok());
        let with = |k: &str, v: serde_json::Value| {
            let mut b = base.clone();
            b[k] = v;
            study(b)
        };
        assert_eq!(field(with("minutes", json!(0))), "minutes");
        assert_eq!(field(with("minutes", json!(1441))), "minutes");
        assert!(with("minutes", json!(1440)).is_ok());
        assert_eq!(
            field(with("performance_score", json!(1.5))),
            "performance_score"
        );
        assert!(with("performance_score", json!(0)).is_ok());
        assert_eq!(field(with("activity_type", json!("nap"))), "activity_type");
    }

    #[test]
    fn the_documented_patterns_are_the_validation_rules() {
        use utoipa::PartialSchema as _;
        let doc = serde_json::to_value(CreateNodeBody::schema()).expect("json");
        assert_eq!(
            doc["properties"]["name"]["pattern"],
            module_kit::input::TEXT_PATTERN
        );
        for f in ["name_en", "description"] {
            assert_eq!(
                doc["properties"][f]["pattern"],
                module_kit::input::NO_NUL_PATTERN
            );
        }
    }
}
