//! The HTTP bodies of the post commands, and their validation into domain commands. Every
//! rule of http-api.md lives here, each failure naming its field.

use module_kit::input::{Invalid, Patch, invalid, one_of, optional_text, text};
use serde::Deserialize;
use uuid::Uuid;

use crate::domain::{CreatePost, PostCommand, PostError, UpdatePost, Visibility};

// The bodies' schemas state the rules below as far as JSON Schema can (the document is what
// clients and the fuzzer generate from); the validation functions stay the authority. The
// patterns are module_kit::input::{TEXT_PATTERN, NO_NUL_PATTERN} and [`IMAGE_URL_PATTERN`]
// (utoipa takes literals only; a test checks they agree).

/// The longest content, in characters.
pub const MAX_CONTENT: usize = 5000;
/// The most images a post has.
pub const MAX_IMAGES: usize = 9;
/// The longest image URL, in characters.
pub const MAX_URL: usize = 2048;
/// The longest topic, in characters.
pub const MAX_TOPIC: usize = 100;

/// The JSON Schema `pattern` of an image URL as [`image_urls`] accepts it: `https://`, a
/// host, then anything but whitespace and NUL.
pub const IMAGE_URL_PATTERN: &str = r"^https://[^\s\x00/?#]+[^\s\x00]*$";

/// `POST /v1/posts`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePostBody {
    /// 1–5000 characters, trimmed, not blank.
    #[schema(
        min_length = 1,
        max_length = 5000,
        pattern = r"^[^\x00]*[^\s\x00][^\x00]*$"
    )]
    pub content: String,
    /// At most 9 `https` URLs.
    #[serde(default)]
    #[schema(schema_with = optional_image_urls_schema)]
    pub image_urls: Option<Vec<String>>,
    /// At most 100 characters.
    #[serde(default)]
    #[schema(max_length = 100, pattern = r"^[^\x00]*$")]
    pub topic: Option<String>,
    /// `public` (default), `private` or `friends_only`.
    #[serde(default)]
    #[schema(value_type = Option<Visibility>)]
    pub visibility: Option<String>,
}

fn image_urls_schema_of(nullable: bool) -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, SchemaType, Type};
    let item = ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some("https://x".len()))
        .max_length(Some(MAX_URL))
        .pattern(Some(IMAGE_URL_PATTERN));
    let kind = if nullable {
        SchemaType::from_iter([Type::Array, Type::Null])
    } else {
        SchemaType::new(Type::Array)
    };
    ArrayBuilder::new()
        .schema_type(kind)
        .items(item)
        .max_items(Some(MAX_IMAGES))
        .build()
}

fn optional_image_urls_schema() -> utoipa::openapi::schema::Array {
    image_urls_schema_of(true)
}

fn image_urls_schema() -> utoipa::openapi::schema::Array {
    image_urls_schema_of(false)
}

/// `PATCH /v1/posts/{id}`: at least one field. Each follows the rule of `POST /v1/posts`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(min_properties = 1)]
#[allow(missing_docs)] // the fields of `POST /v1/posts`, each optional here
pub struct UpdatePostBody {
    #[serde(default)]
    #[schema(value_type = String, min_length = 1, max_length = 5000, pattern = r"^[^\x00]*[^\s\x00][^\x00]*$")]
    pub content: Patch<String>,
    #[serde(default)]
    #[schema(schema_with = image_urls_schema)]
    pub image_urls: Patch<Vec<String>>,
    /// `null` clears the topic; only this field may be `null`.
    #[serde(default)]
    #[schema(value_type = Option<String>, max_length = 100, pattern = r"^[^\x00]*$")]
    pub topic: Patch<String>,
    #[serde(default)]
    #[schema(value_type = Visibility)]
    pub visibility: Patch<String>,
}

fn content(raw: &str) -> Result<String, Invalid> {
    text("content", raw, MAX_CONTENT)
}

fn topic(raw: Option<String>) -> Result<Option<String>, Invalid> {
    optional_text("topic", raw, MAX_TOPIC)
}

fn visibility(raw: &str) -> Result<Visibility, Invalid> {
    one_of("visibility", raw, &Visibility::ALL, Visibility::as_str)
}

/// Whether `url` is what [`IMAGE_URL_PATTERN`] describes.
fn is_image_url(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("https://") else {
        return false;
    };
    let host_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    host_len > 0 && !url.chars().any(|c| c.is_whitespace() || c == '\0')
}

/// At most 9 `https` URLs with a host, each at most 2048 characters.
///
/// # Errors
/// [`Invalid`] on `image_urls`.
pub fn image_urls(raw: Vec<String>) -> Result<Vec<String>, Invalid> {
    if raw.len() > MAX_IMAGES {
        return Err(invalid(
            "image_urls",
            format!("at most {MAX_IMAGES} image URLs"),
        ));
    }
    for url in &raw {
        if url.chars().count() > MAX_URL || !is_image_url(url) {
            return Err(invalid(
                "image_urls",
                format!(
                    "each image URL must be an https URL with a host, at most {MAX_URL} characters, without spaces"
                ),
            ));
        }
    }
    Ok(raw)
}

impl CreatePostBody {
    /// Validates into a command creating post `id`.
    ///
    /// # Errors
    /// [`PostError::Invalid`] naming the first bad field.
    pub fn validate(self, id: Uuid) -> Result<CreatePost, PostError> {
        Ok(CreatePost {
            id,
            content: content(&self.content)?,
            image_urls: image_urls(self.image_urls.unwrap_or_default())?,
            topic: topic(self.topic)?,
            visibility: self
                .visibility
                .as_deref()
                .map(visibility)
                .transpose()?
                .unwrap_or(Visibility::Public),
        })
    }
}

impl UpdatePostBody {
    /// Validates into an update command.
    ///
    /// # Errors
    /// [`PostError::Invalid`] for a bad field, a `null` where clearing makes no sense, or an
    /// empty body.
    pub fn validate(self) -> Result<PostCommand, PostError> {
        let nothing = self.content.is_absent()
            && self.image_urls.is_absent()
            && self.topic.is_absent()
            && self.visibility.is_absent();
        if nothing {
            return Err(PostError::Invalid {
                field: "body",
                message: "send at least one field to change".into(),
            });
        }
        Ok(PostCommand::Update(UpdatePost {
            content: self
                .content
                .required("content")?
                .as_deref()
                .map(content)
                .transpose()?,
            image_urls: self
                .image_urls
                .required("image_urls")?
                .map(image_urls)
                .transpose()?,
            topic: self.topic.clearable().map(topic).transpose()?,
            visibility: self
                .visibility
                .required("visibility")?
                .as_deref()
                .map(visibility)
                .transpose()?,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn create(v: serde_json::Value) -> Result<CreatePost, PostError> {
        serde_json::from_value::<CreatePostBody>(v)
            .expect("shape")
            .validate(Uuid::nil())
    }

    fn update(v: serde_json::Value) -> Result<PostCommand, PostError> {
        serde_json::from_value::<UpdatePostBody>(v)
            .expect("shape")
            .validate()
    }

    fn field(r: Result<impl std::fmt::Debug, PostError>) -> &'static str {
        match r {
            Err(PostError::Invalid { field, .. }) => field,
            other => panic!("expected invalid, got {other:?}"),
        }
    }

    #[test]
    fn a_minimal_create_is_public_without_images_or_topic() {
        let c = create(json!({"content": "  hello  "})).expect("valid");
        assert_eq!(c.content, "hello");
        assert_eq!(c.visibility, Visibility::Public);
        assert!(c.image_urls.is_empty() && c.topic.is_none());
    }

    #[test]
    fn each_create_rule_names_its_field() {
        let with = |k: &str, v: serde_json::Value| {
            let mut b = json!({"content": "hi"});
            b[k] = v;
            create(b)
        };
        assert_eq!(field(with("content", json!("   "))), "content");
        assert_eq!(field(with("content", json!("x".repeat(5001)))), "content");
        assert!(with("content", json!("é".repeat(5000))).is_ok());
        assert_eq!(field(with("content", json!("a\0b"))), "content");
        assert_eq!(
            field(with("image_urls", json!(vec!["https://a.example/x"; 10]))),
            "image_urls"
        );
        assert!(with("image_urls", json!(vec!["https://a.example/x"; 9])).is_ok());
        for bad in [
            "http://a.example/x",
            "https://",
            "https:///path",
            "https://a b",
            "ftp://a.example",
            "a.example/x.png",
        ] {
            assert_eq!(
                field(with("image_urls", json!([bad]))),
                "image_urls",
                "{bad}"
            );
        }
        let long = format!("https://a.example/{}", "x".repeat(MAX_URL));
        assert_eq!(field(with("image_urls", json!([long]))), "image_urls");
        assert_eq!(field(with("topic", json!("t".repeat(101)))), "topic");
        assert!(with("topic", json!("t".repeat(100))).is_ok());
        assert_eq!(field(with("visibility", json!("friends"))), "visibility");
        for v in ["public", "private", "friends_only"] {
            assert_eq!(
                with("visibility", json!(v))
                    .expect("ok")
                    .visibility
                    .as_str(),
                v
            );
        }
    }

    #[test]
    fn patch_distinguishes_absent_null_and_value() {
        assert_eq!(field(update(json!({}))), "body");
        for f in ["content", "image_urls", "visibility"] {
            assert_eq!(field(update(json!({f: null}))), f);
        }
        let PostCommand::Update(u) = update(json!({"topic": null})).expect("clear") else {
            panic!()
        };
        assert_eq!(u.topic, Some(None));
        assert_eq!(u.content, None);
        let PostCommand::Update(u) =
            update(json!({"visibility": "private", "image_urls": []})).expect("ok")
        else {
            panic!()
        };
        assert_eq!(
            (u.visibility, u.image_urls),
            (Some(Visibility::Private), Some(vec![]))
        );
        assert_eq!(field(update(json!({"content": ""}))), "content");
        assert_eq!(field(update(json!({"topic": "t".repeat(101)}))), "topic");
    }

    #[test]
    fn the_documented_patterns_are_the_validation_rules() {
        use utoipa::PartialSchema as _;
        let json = |s| serde_json::to_value(s).expect("json");
        let create = json(CreatePostBody::schema());
        let update = json(UpdatePostBody::schema());
        for body in [&create, &update] {
            assert_eq!(
                body["properties"]["content"]["pattern"],
                module_kit::input::TEXT_PATTERN
            );
            assert_eq!(
                body["properties"]["topic"]["pattern"],
                module_kit::input::NO_NUL_PATTERN
            );
            assert_eq!(
                body["properties"]["image_urls"]["items"]["pattern"],
                IMAGE_URL_PATTERN
            );
            assert_eq!(body["properties"]["image_urls"]["maxItems"], MAX_IMAGES);
        }
        // The shortest URL the schema allows is one the validation accepts.
        assert!(image_urls(vec!["https://x".into()]).is_ok());
    }
}
