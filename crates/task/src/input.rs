//! The HTTP bodies of the task commands, and their validation into domain commands. Every
//! rule of http-api.md lives here, each failure naming its field.

use module_kit::input::{
    Invalid, Patch, invalid, one_of, optional_text, ranged, string_list, text,
};
use serde::Deserialize;
use uuid::Uuid;

use crate::domain::{CreateTask, TaskCommand, TaskError, TaskType, UpdateTask};

// The bodies' schemas state the rules below as far as JSON Schema can (the document is what
// clients and the fuzzer generate from); the validation functions stay the authority. The
// patterns are module_kit::input::{TEXT_PATTERN, NO_NUL_PATTERN} (utoipa takes literals only;
// a test checks they agree).

/// `POST /v1/tasks`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTaskBody {
    /// 1–255 characters, trimmed, not blank.
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = r"^[^\x00]*[^\s\x00][^\x00]*$"
    )]
    pub title: String,
    /// One of the task types.
    #[serde(rename = "type")]
    #[schema(value_type = TaskType)]
    pub task_type: String,
    /// 1–1440.
    #[schema(minimum = 1, maximum = 1440)]
    pub estimated_minutes: i64,
    /// 1–5, default 3.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 5, default = 3)]
    pub priority: Option<i64>,
    /// 1–5, default 1.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 5, default = 1)]
    pub difficulty: Option<i64>,
    /// `YYYY-MM-DD`.
    #[serde(default)]
    #[schema(value_type = Option<time::Date>)]
    pub due_date: Option<String>,
    /// At most 20 tags of 1–32 characters (trimmed).
    #[serde(default)]
    #[schema(schema_with = optional_tags_schema)]
    pub tags: Option<Vec<String>>,
}

fn optional_tags_schema() -> utoipa::openapi::schema::Array {
    module_kit::input::string_list_schema(20, 1..=32, true)
}

/// `PATCH /v1/tasks/{id}`: at least one field. Each follows the rule of `POST /v1/tasks`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(min_properties = 1)]
#[allow(missing_docs)] // the fields of `POST /v1/tasks`, each optional here
pub struct UpdateTaskBody {
    #[serde(default)]
    #[schema(value_type = String, min_length = 1, max_length = 255, pattern = r"^[^\x00]*[^\s\x00][^\x00]*$")]
    pub title: Patch<String>,
    #[serde(default)]
    #[schema(value_type = i64, minimum = 1, maximum = 1440)]
    pub estimated_minutes: Patch<i64>,
    #[serde(default)]
    #[schema(value_type = i64, minimum = 1, maximum = 5)]
    pub priority: Patch<i64>,
    #[serde(default)]
    #[schema(value_type = i64, minimum = 1, maximum = 5)]
    pub difficulty: Patch<i64>,
    /// `null` clears the due date; only this field may be `null`.
    #[serde(default)]
    #[schema(value_type = Option<time::Date>)]
    pub due_date: Patch<String>,
    #[serde(default)]
    #[schema(schema_with = crate::domain::tags_schema)]
    pub tags: Patch<Vec<String>>,
}

/// `POST /v1/tasks/{id}/complete`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteTaskBody {
    /// 0–1440.
    #[schema(minimum = 0, maximum = 1440)]
    pub actual_minutes: i64,
    /// At most 2000 characters.
    #[serde(default)]
    #[schema(max_length = 2000, pattern = r"^[^\x00]*$")]
    pub note: Option<String>,
}

/// `POST /v1/tasks/{id}/abandon` (body optional).
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AbandonTaskBody {
    /// At most 2000 characters.
    #[serde(default)]
    #[schema(max_length = 2000, pattern = r"^[^\x00]*$")]
    pub reason: Option<String>,
}

fn title(raw: &str) -> Result<String, Invalid> {
    text("title", raw, 255)
}

fn task_type(raw: &str) -> Result<TaskType, Invalid> {
    one_of("type", raw, &TaskType::ALL, TaskType::as_str)
}

fn due_date(raw: &str) -> Result<time::Date, Invalid> {
    module_kit::dates::parse(raw)
        .ok_or_else(|| invalid("due_date", "due_date must be a date like 2026-12-31"))
}

fn tags(raw: Vec<String>) -> Result<Vec<String>, Invalid> {
    string_list("tags", "tag", raw, 20, 1..=32)
}

fn long_text(field: &'static str, raw: Option<String>) -> Result<Option<String>, Invalid> {
    optional_text(field, raw, 2000)
}

impl CreateTaskBody {
    /// Validates into a command creating task `id`.
    ///
    /// # Errors
    /// [`TaskError::Invalid`] naming the first bad field.
    pub fn validate(self, id: Uuid) -> Result<CreateTask, TaskError> {
        Ok(CreateTask {
            id,
            title: title(&self.title)?,
            task_type: task_type(&self.task_type)?,
            estimated_minutes: ranged("estimated_minutes", self.estimated_minutes, 1, 1440)?,
            priority: ranged("priority", self.priority.unwrap_or(3), 1, 5)?,
            difficulty: ranged("difficulty", self.difficulty.unwrap_or(1), 1, 5)?,
            due_date: self.due_date.as_deref().map(due_date).transpose()?,
            tags: tags(self.tags.unwrap_or_default())?,
        })
    }
}

impl UpdateTaskBody {
    /// Validates into an update command.
    ///
    /// # Errors
    /// [`TaskError::Invalid`] for a bad field, a `null` where clearing makes no sense, or an
    /// empty body.
    pub fn validate(self) -> Result<TaskCommand, TaskError> {
        let nothing = self.title.is_absent()
            && self.estimated_minutes.is_absent()
            && self.priority.is_absent()
            && self.difficulty.is_absent()
            && self.due_date.is_absent()
            && self.tags.is_absent();
        if nothing {
            return Err(TaskError::Invalid {
                field: "body",
                message: "send at least one field to change".into(),
            });
        }
        Ok(TaskCommand::Update(UpdateTask {
            title: self
                .title
                .required("title")?
                .as_deref()
                .map(title)
                .transpose()?,
            estimated_minutes: self
                .estimated_minutes
                .required("estimated_minutes")?
                .map(|v| ranged("estimated_minutes", v, 1, 1440))
                .transpose()?,
            priority: self
                .priority
                .required("priority")?
                .map(|v| ranged("priority", v, 1, 5))
                .transpose()?,
            difficulty: self
                .difficulty
                .required("difficulty")?
                .map(|v| ranged("difficulty", v, 1, 5))
                .transpose()?,
            due_date: self
                .due_date
                .clearable()
                .map(|d| d.as_deref().map(due_date).transpose())
                .transpose()?,
            tags: self.tags.required("tags")?.map(tags).transpose()?,
        }))
    }
}

impl CompleteTaskBody {
    /// Validates into a complete command.
    ///
    /// # Errors
    /// [`TaskError::Invalid`] naming the bad field.
    pub fn validate(self) -> Result<TaskCommand, TaskError> {
        Ok(TaskCommand::Complete {
            actual_minutes: ranged("actual_minutes", self.actual_minutes, 0, 1440)?,
            note: long_text("note", self.note)?,
        })
    }
}

impl AbandonTaskBody {
    /// Validates into an abandon command.
    ///
    /// # Errors
    /// [`TaskError::Invalid`] when the reason is too long.
    pub fn validate(self) -> Result<TaskCommand, TaskError> {
        Ok(TaskCommand::Abandon {
            reason: long_text("reason", self.reason)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn create(v: serde_json::Value) -> Result<CreateTask, TaskError> {
        serde_json::from_value::<CreateTaskBody>(v)
            .expect("shape")
            .validate(Uuid::nil())
    }

    fn field(r: Result<impl std::fmt::Debug, TaskError>) -> &'static str {
        match r {
            Err(TaskError::Invalid { field, .. }) => field,
            other => panic!("expected invalid, got {other:?}"),
        }
    }

    fn base() -> serde_json::Value {
        json!({"title": "  Read  ", "type": "learning", "estimated_minutes": 30})
    }

    #[test]
    fn a_minimal_create_gets_defaults_and_a_trimmed_title() {
        let c = create(base()).expect("valid");
        assert_eq!((c.title.as_str(), c.priority, c.difficulty), ("Read", 3, 1));
        assert!(c.tags.is_empty() && c.due_date.is_none());
    }

    #[test]
    fn each_create_rule_names_its_field() {
        let with = |k: &str, v: serde_json::Value| {
            let mut b = base();
            b[k] = v;
            create(b)
        };
        assert_eq!(field(with("title", json!("   "))), "title");
        assert_eq!(field(with("title", json!("x".repeat(256)))), "title");
        assert!(
            with("title", json!("é".repeat(255))).is_ok(),
            "255 characters, not bytes"
        );
        assert_eq!(field(with("type", json!("chores"))), "type");
        assert_eq!(
            field(with("estimated_minutes", json!(0))),
            "estimated_minutes"
        );
        assert_eq!(
            field(with("estimated_minutes", json!(1441))),
            "estimated_minutes"
        );
        assert!(with("estimated_minutes", json!(1440)).is_ok());
        assert_eq!(field(with("priority", json!(6))), "priority");
        assert_eq!(field(with("difficulty", json!(0))), "difficulty");
        assert_eq!(field(with("due_date", json!("2026-13-01"))), "due_date");
        assert_eq!(field(with("due_date", json!("tomorrow"))), "due_date");
        assert_eq!(field(with("tags", json!(vec!["a"; 21]))), "tags");
        assert_eq!(field(with("tags", json!([""]))), "tags");
        assert_eq!(field(with("tags", json!(["x".repeat(33)]))), "tags");
        assert!(with("tags", json!(vec!["a"; 20])).is_ok());
    }

    #[test]
    fn patch_distinguishes_absent_null_and_value() {
        let parse = |v: serde_json::Value| {
            serde_json::from_value::<UpdateTaskBody>(v)
                .expect("shape")
                .validate()
        };
        assert_eq!(field(parse(json!({}))), "body");
        assert_eq!(field(parse(json!({"title": null}))), "title");
        let TaskCommand::Update(u) = parse(json!({"due_date": null})).expect("clear") else {
            panic!()
        };
        assert_eq!(u.due_date, Some(None));
        assert_eq!(u.title, None);
        let TaskCommand::Update(u) = parse(json!({"priority": 5, "tags": ["a"]})).expect("ok")
        else {
            panic!()
        };
        assert_eq!((u.priority, u.tags), (Some(5), Some(vec!["a".to_owned()])));
        assert_eq!(field(parse(json!({"priority": 9}))), "priority");
    }

    #[test]
    fn the_documented_patterns_are_the_validation_rules() {
        use utoipa::PartialSchema as _;
        let json = |s| serde_json::to_value(s).expect("json");
        let create = json(CreateTaskBody::schema());
        let update = json(UpdateTaskBody::schema());
        for title in [
            &create["properties"]["title"],
            &update["properties"]["title"],
        ] {
            assert_eq!(title["pattern"], module_kit::input::TEXT_PATTERN);
        }
        for text in [
            &json(CompleteTaskBody::schema())["properties"]["note"],
            &json(AbandonTaskBody::schema())["properties"]["reason"],
            &create["properties"]["tags"]["items"],
        ] {
            assert_eq!(text["pattern"], module_kit::input::NO_NUL_PATTERN);
        }
    }

    #[test]
    fn complete_and_abandon_bounds() {
        let complete = |v: serde_json::Value| {
            serde_json::from_value::<CompleteTaskBody>(v)
                .expect("shape")
                .validate()
        };
        assert!(complete(json!({"actual_minutes": 0})).is_ok());
        assert_eq!(
            field(complete(json!({"actual_minutes": -1}))),
            "actual_minutes"
        );
        assert_eq!(
            field(complete(
                json!({"actual_minutes": 5, "note": "n".repeat(2001)})
            )),
            "note"
        );
        let abandon = AbandonTaskBody {
            reason: Some("r".repeat(2001)),
        };
        assert_eq!(field(abandon.validate()), "reason");
        assert!(AbandonTaskBody::default().validate().is_ok());
    }
}
