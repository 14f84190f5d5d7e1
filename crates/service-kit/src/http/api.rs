//! The route registrar: the only way an API mounts a route, so that its OpenAPI document and
//! its routing are two views of one list and cannot disagree.
//!
//! A handler is registered together with the operation that `#[utoipa::path(...)]` generated
//! for it (the hidden `__path_<handler>` type): the method and path come from that attribute
//! alone, and the operation, with the schemas it refers to, goes into the document. Routes are
//! grouped by path into one actix resource each, whose other methods answer 405
//! `method_not_allowed` with the JSON error body and an `Allow` header listing exactly the
//! path's methods (a handler registered with actix's `#[get]` would answer 404 instead, and a
//! bare resource an empty 405).
//!
//! ```ignore
//! /// Reads a thing.
//! #[utoipa::path(get, path = "/v1/things/{id}", params(("id" = Uuid, Path)),
//!     responses((status = 200, body = Thing), (status = 404, body = ErrorBody)),
//!     security(("bearer" = [])))]
//! async fn get_thing(id: web::Path<String>) -> Result<HttpResponse, ApiError> { /* … */ }
//!
//! let mut routes = Routes::new();
//! routes.security_scheme(BEARER, jwt_bearer());
//! routes.with_data(web::Data::new(store)).add(__path_get_thing, get_thing);
//! let (configure, document) = routes.into_api(ApiInfo::new("thing-api", "0.1.0"))?;
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use actix_web::http::Method;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{FromRequest, Handler, HttpResponse, Responder, web};
use utoipa::__dev::SchemaReferences;
use utoipa::openapi::path::{Operation, Parameter, ParameterIn, Paths};
use utoipa::openapi::schema::Schema;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{
    Components, HttpMethod, Info, ObjectBuilder, OpenApi, RefOr, Required, Type,
};

use crate::http::ApiError;
use crate::http::middleware::REQUEST_ID;

/// The name of the bearer-JWT security scheme: operations that need a token say
/// `security(("bearer" = []))`, and the API registers the scheme under this name.
pub const BEARER: &str = "bearer";

/// The bearer-JWT scheme of command-api and query-api (HS256, `sub` = the user's UUID).
#[must_use]
pub fn jwt_bearer() -> SecurityScheme {
    let mut http = Http::new(HttpAuthScheme::Bearer);
    http.bearer_format = Some("JWT".into());
    http.description = Some("HS256 JWT signed with JWT_SECRET; `sub` is the user's UUID".into());
    SecurityScheme::Http(http)
}

/// Makes a fresh actix route for one method (actix routes are built per worker, and are
/// neither `Clone` nor `Send`).
type RouteFactory = Arc<dyn Fn() -> actix_web::Route + Send + Sync>;
/// Attaches app data to a path's resource.
type AttachData = Arc<dyn Fn(actix_web::Resource) -> actix_web::Resource + Send + Sync>;
/// Adds app-wide data.
type Configure = Arc<dyn Fn(&mut web::ServiceConfig) + Send + Sync>;

/// One path: its methods, in registration order, and the data its resource carries.
struct PathRoutes {
    path: String,
    methods: Vec<(HttpMethod, RouteFactory)>,
    data: Vec<AttachData>,
}

/// Why a set of routes cannot be served. Each is a programming error in a module or service,
/// reported at start so that no route serves without (or against) its documentation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// Two handlers claim one method of one path.
    #[error("{method} {path} is registered twice")]
    Duplicate {
        /// The method, upper case.
        method: String,
        /// The path template.
        path: String,
    },
    /// The path uses actix pattern syntax the OpenAPI document cannot express (`{id:\d+}`,
    /// `{tail}*`), so the two would match different requests.
    #[error("{0} is not a plain path template (no regex segments or tails)")]
    Pattern(String),
    /// A `{segment}` of the path has no path parameter in the operation.
    #[error("{method} {path} does not document its path parameter {name}")]
    UndocumentedPathParameter {
        /// The method, upper case.
        method: String,
        /// The path template.
        path: String,
        /// The segment's name.
        name: String,
    },
    /// An operation requires a security scheme nobody registered.
    #[error("{method} {path} requires the security scheme {scheme}, which is not registered")]
    UnknownSecurityScheme {
        /// The method, upper case.
        method: String,
        /// The path template.
        path: String,
        /// The scheme's name.
        scheme: String,
    },
    /// The document could not be serialised.
    #[error("cannot serialise the OpenAPI document: {0}")]
    Document(String),
}

/// The title and version of an API's document.
#[derive(Debug, Clone)]
pub struct ApiInfo {
    /// The service name, e.g. `command-api`.
    pub title: String,
    /// The crate version.
    pub version: String,
}

impl ApiInfo {
    /// Info for `title` at `version` (pass `env!("CARGO_PKG_VERSION")` from the service).
    #[must_use]
    pub fn new(title: impl Into<String>, version: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            version: version.into(),
        }
    }
}

/// Routes and their OpenAPI operations, registered together. See the module docs.
#[derive(Default)]
pub struct Routes {
    paths: Vec<PathRoutes>,
    app_data: Vec<Configure>,
    operations: Vec<(String, HttpMethod, Operation)>,
    schemas: BTreeMap<String, RefOr<Schema>>,
    security_schemes: BTreeMap<String, SecurityScheme>,
    errors: Vec<RouteError>,
}

impl std::fmt::Debug for Routes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routes")
            .field(
                "paths",
                &self.paths.iter().map(|p| &p.path).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// Registrations whose paths carry the same app data; see [`Routes::with_data`].
pub struct Group<'r> {
    routes: &'r mut Routes,
    data: Vec<AttachData>,
}

impl std::fmt::Debug for Group<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("data", &self.data.len())
            .finish_non_exhaustive()
    }
}

impl Group<'_> {
    /// Adds more data to the group's paths.
    #[must_use]
    pub fn with_data<T: Clone + Send + Sync + 'static>(mut self, data: T) -> Self {
        self.data.push(attach(data));
        self
    }

    /// [`Routes::add`], with the group's data on the path's resource.
    pub fn add<P, F, Args>(&mut self, _operation: P, handler: F) -> &mut Self
    where
        P: utoipa::Path + SchemaReferences,
        F: Handler<Args> + Clone + Send + Sync,
        Args: FromRequest + 'static,
        F::Output: Responder + 'static,
    {
        self.routes.register::<P, F, Args>(handler, &self.data);
        self
    }
}

fn attach<T: Clone + Send + Sync + 'static>(data: T) -> AttachData {
    Arc::new(move |resource: actix_web::Resource| resource.app_data(data.clone()))
}

impl Routes {
    /// No routes yet.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `handler` for the method(s) and path of `operation`, the `__path_<handler>`
    /// value that its `#[utoipa::path]` generated, and documents it there: `add(__path_create,
    /// create)`.
    pub fn add<P, F, Args>(&mut self, _operation: P, handler: F) -> &mut Self
    where
        P: utoipa::Path + SchemaReferences,
        F: Handler<Args> + Clone + Send + Sync,
        Args: FromRequest + 'static,
        F::Output: Responder + 'static,
    {
        self.register::<P, F, Args>(handler, &[]);
        self
    }

    /// Registers the latency histogram of every documented route (as the request middleware
    /// labels it: method and path pattern), so `/metrics` shows them before the first request
    /// and latency percentiles have a series from the first scrape.
    pub(crate) fn register_metrics(&self) {
        for (path, method, _) in &self.operations {
            let _ = metrics::histogram!(
                super::middleware::HTTP_REQUEST_DURATION_SECONDS,
                "method" => actix_method(method).to_string(),
                "route" => path.clone()
            );
        }
    }

    /// A group of registrations whose paths' resources carry `data` (e.g. a
    /// `web::Data<ReadSide>`, or a `web::QueryConfig`). Data belongs to a path's resource, so
    /// every method of that path sees it.
    pub fn with_data<T: Clone + Send + Sync + 'static>(&mut self, data: T) -> Group<'_> {
        Group {
            routes: self,
            data: vec![attach(data)],
        }
    }

    /// Data for every route of the app (e.g. `web::Data<JwtKeys>`).
    pub fn app_data<T: Clone + Send + Sync + 'static>(&mut self, data: T) -> &mut Self {
        self.app_data
            .push(Arc::new(move |cfg: &mut web::ServiceConfig| {
                cfg.app_data(data.clone());
            }));
        self
    }

    /// Data for every route of the app, made by `make` once per HTTP worker thread, on that
    /// thread: for state whose IO should stay on the thread serving the request (a worker's
    /// own PostgreSQL pool: its connections' tasks then run beside the requests using them,
    /// instead of waking another thread at every round trip).
    pub fn worker_data<T: 'static>(
        &mut self,
        make: impl Fn() -> T + Send + Sync + 'static,
    ) -> &mut Self {
        self.app_data
            .push(Arc::new(move |cfg: &mut web::ServiceConfig| {
                cfg.app_data(make());
            }));
        self
    }

    /// Registers a security scheme that operations may require by `name`.
    pub fn security_scheme(&mut self, name: &str, scheme: SecurityScheme) -> &mut Self {
        self.security_schemes.insert(name.to_owned(), scheme);
        self
    }

    fn register<P, F, Args>(&mut self, handler: F, data: &[AttachData])
    where
        P: utoipa::Path + SchemaReferences,
        F: Handler<Args> + Clone + Send + Sync,
        Args: FromRequest + 'static,
        F::Output: Responder + 'static,
    {
        let path = P::path();
        let mut operation = P::operation();
        with_request_id(&mut operation);
        with_retry_after(&mut operation);
        let mut schemas = Vec::new();
        P::schemas(&mut schemas);
        self.schemas.extend(schemas);
        if path.contains(':') || path.contains('*') {
            self.errors.push(RouteError::Pattern(path.clone()));
        }
        let index = match self.paths.iter().position(|p| p.path == path) {
            Some(i) => i,
            None => {
                self.paths.push(PathRoutes {
                    path: path.clone(),
                    methods: vec![],
                    data: vec![],
                });
                self.paths.len() - 1
            }
        };
        let entry = &mut self.paths[index];
        entry.data.extend(data.iter().cloned());
        for method in P::methods() {
            if entry.methods.iter().any(|(m, _)| *m == method) {
                self.errors.push(RouteError::Duplicate {
                    method: method_name(&method).to_owned(),
                    path: path.clone(),
                });
                continue;
            }
            let actix_method = actix_method(&method);
            let handler = handler.clone();
            entry.methods.push((
                method.clone(),
                Arc::new(move || web::method(actix_method.clone()).to(handler.clone())),
            ));
            self.operations
                .push((path.clone(), method, operation.clone()));
        }
    }

    fn check(&self) -> Vec<RouteError> {
        let mut errors = self.errors.clone();
        for (path, method, operation) in &self.operations {
            let method = method_name(method).to_owned();
            let declared: Vec<&str> = operation
                .parameters
                .iter()
                .flatten()
                .filter_map(|p| match p {
                    RefOr::T(p) if p.parameter_in == ParameterIn::Path => Some(p.name.as_str()),
                    _ => None,
                })
                .collect();
            for name in segments(path) {
                if !declared.contains(&name) {
                    errors.push(RouteError::UndocumentedPathParameter {
                        method: method.clone(),
                        path: path.clone(),
                        name: name.to_owned(),
                    });
                }
            }
            for requirement in operation.security.iter().flatten() {
                // A requirement serialises as `{name: scopes}`; its fields are private.
                let Ok(serde_json::Value::Object(names)) = serde_json::to_value(requirement) else {
                    continue;
                };
                for scheme in names.keys() {
                    if !self.security_schemes.contains_key(scheme) {
                        errors.push(RouteError::UnknownSecurityScheme {
                            method: method.clone(),
                            path: path.clone(),
                            scheme: scheme.clone(),
                        });
                    }
                }
            }
        }
        errors
    }

    /// The OpenAPI document of the routes registered so far (paths and components).
    #[must_use]
    pub fn document(&self, info: &ApiInfo) -> OpenApi {
        let mut paths = Paths::new();
        for (path, method, operation) in &self.operations {
            paths.add_path_operation(path, vec![method.clone()], operation.clone());
        }
        let mut components = Components::new();
        components.schemas = self.schemas.clone();
        components.security_schemes = self
            .security_schemes
            .iter()
            .map(|(name, scheme)| (name.clone(), RefOr::T(scheme.clone())))
            .collect();
        let mut document = OpenApi::new(Info::new(&info.title, &info.version), paths);
        document.components = Some(components);
        document
    }

    /// The actix configuration (one resource per path, 405 with `Allow` for the others, the
    /// app data) and the document, with an empty title and version.
    ///
    /// # Errors
    /// The first [`RouteError`]: a route that would serve without, or against, its
    /// documentation.
    pub fn into_parts(
        self,
    ) -> Result<
        (
            impl Fn(&mut web::ServiceConfig) + Clone + Send + Sync + 'static + use<>,
            OpenApi,
        ),
        RouteError,
    > {
        self.into_parts_with(&ApiInfo::new("", ""))
    }

    /// [`Routes::into_parts`] plus `GET /openapi.json`, serving the document titled by `info`,
    /// which describes that route too.
    ///
    /// # Errors
    /// As [`Routes::into_parts`].
    pub fn into_api(
        mut self,
        info: &ApiInfo,
    ) -> Result<
        (
            impl Fn(&mut web::ServiceConfig) + Clone + Send + Sync + 'static + use<>,
            OpenApi,
        ),
        RouteError,
    > {
        self.add(__path_openapi_json, openapi_json);
        // The document exists only once every route is in, its own included; the route reads
        // it from the data attached to its resource now.
        let document = self.document(info);
        let json =
            serde_json::to_vec(&document).map_err(|e| RouteError::Document(e.to_string()))?;
        let served = web::Data::new(DocumentJson(web::Bytes::from(json)));
        if let Some(entry) = self.paths.iter_mut().find(|p| p.path == OPENAPI_PATH) {
            entry.data.push(attach(served));
        }
        self.into_parts_with(info)
    }

    fn into_parts_with(
        self,
        info: &ApiInfo,
    ) -> Result<
        (
            impl Fn(&mut web::ServiceConfig) + Clone + Send + Sync + 'static + use<>,
            OpenApi,
        ),
        RouteError,
    > {
        if let Some(e) = self.check().into_iter().next() {
            return Err(e);
        }
        let document = self.document(info);
        let paths = Arc::new(self.paths);
        let app_data = Arc::new(self.app_data);
        let configure = move |cfg: &mut web::ServiceConfig| {
            for data in app_data.iter() {
                data(cfg);
            }
            for entry in paths.iter() {
                cfg.service(resource(entry));
            }
        };
        Ok((configure, document))
    }
}

/// The resource of one path: its routes, its data, and a 405 naming its methods.
fn resource(entry: &PathRoutes) -> actix_web::Resource {
    let mut methods: Vec<&HttpMethod> = entry.methods.iter().map(|(m, _)| m).collect();
    methods.sort_by_key(|m| method_rank(m));
    let allow = methods
        .iter()
        .map(|m| method_name(m))
        .collect::<Vec<_>>()
        .join(", ");
    // Method names are header-safe tokens, so this is always `Some`.
    let allow = HeaderValue::from_str(&allow).ok();
    let mut resource = web::resource(entry.path.as_str()).default_service(web::to(move || {
        let allow = allow.clone();
        async move {
            let mut response = HttpResponse::from_error(ApiError::MethodNotAllowed);
            if let Some(allow) = allow {
                response.headers_mut().insert(header::ALLOW, allow);
            }
            response
        }
    }));
    for data in &entry.data {
        resource = data(resource);
    }
    for (_, route) in &entry.methods {
        resource = resource.route(route());
    }
    resource
}

/// Every operation may carry `X-Request-Id` (the middleware reads it on every request), and
/// every answer echoes it: said once here rather than on each handler.
fn with_request_id(operation: &mut Operation) {
    let header = REQUEST_ID;
    let name = header.as_str();
    let echoed = || -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(128))
            .into()
    };
    // Any value is taken: one that is not a sane id is replaced, not refused.
    let parameter = optional_parameter(
        name,
        ParameterIn::Header,
        ObjectBuilder::new().schema_type(Type::String),
        "Echoed in the answer and recorded as the events' correlation_id; generated when absent \
         or not 1–128 visible ASCII characters",
    );
    let parameters = operation.parameters.get_or_insert_with(Vec::new);
    let already = parameters.iter().any(|p| match p {
        RefOr::T(p) => p.name.eq_ignore_ascii_case(name),
        RefOr::Ref(_) => false,
    });
    if !already {
        parameters.push(RefOr::T(parameter));
    }
    for response in operation.responses.responses.values_mut() {
        if let RefOr::T(response) = response {
            let mut header = utoipa::openapi::header::Header::new(echoed());
            header.description = Some("The request's id".into());
            response
                .headers
                .entry(name.to_owned())
                .or_insert(RefOr::T(header));
        }
    }
}

/// A documented 503 with the error body is [`ApiError::Unavailable`], whose mapping always sets
/// `Retry-After`: said once here rather than on each handler.
fn with_retry_after(operation: &mut Operation) {
    let Some(RefOr::T(response)) = operation.responses.responses.get_mut("503") else {
        return;
    };
    let is_error_body = response.content.values().any(|c| match c {
        RefOr::T(c) => {
            matches!(&c.schema, Some(RefOr::Ref(r)) if r.ref_location.ends_with("/ErrorBody"))
        }
        RefOr::Ref(_) => false,
    });
    if is_error_body {
        let mut header = utoipa::openapi::header::Header::new(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(0)),
        );
        header.description = Some("Seconds to wait before retrying".into());
        response
            .headers
            .entry("retry-after".to_owned())
            .or_insert(RefOr::T(header));
    }
}

/// An optional parameter `name` in `place`, for extractors that document what they read by
/// implementing [`utoipa::IntoParams`] (listed in an operation's `params(...)`).
#[must_use]
pub fn optional_parameter(
    name: &str,
    place: ParameterIn,
    schema: impl Into<RefOr<Schema>>,
    description: &str,
) -> Parameter {
    let mut parameter = Parameter::new(name);
    parameter.parameter_in = place;
    parameter.required = Required::False;
    parameter.schema = Some(schema.into());
    parameter.description = Some(description.to_owned());
    parameter
}

/// The `{segment}` names of a path template.
fn segments(path: &str) -> Vec<&str> {
    path.split('{')
        .skip(1)
        .filter_map(|s| s.split_once('}').map(|(name, _)| name))
        .collect()
}

fn actix_method(method: &HttpMethod) -> Method {
    match method {
        HttpMethod::Get => Method::GET,
        HttpMethod::Post => Method::POST,
        HttpMethod::Put => Method::PUT,
        HttpMethod::Delete => Method::DELETE,
        HttpMethod::Options => Method::OPTIONS,
        HttpMethod::Head => Method::HEAD,
        HttpMethod::Patch => Method::PATCH,
        HttpMethod::Trace => Method::TRACE,
    }
}

fn method_name(method: &HttpMethod) -> &'static str {
    match method {
        HttpMethod::Get => "GET",
        HttpMethod::Post => "POST",
        HttpMethod::Put => "PUT",
        HttpMethod::Delete => "DELETE",
        HttpMethod::Options => "OPTIONS",
        HttpMethod::Head => "HEAD",
        HttpMethod::Patch => "PATCH",
        HttpMethod::Trace => "TRACE",
    }
}

/// `Allow` lists methods in this order whatever the registration order, so the header is
/// stable.
fn method_rank(method: &HttpMethod) -> u8 {
    match method {
        HttpMethod::Get => 0,
        HttpMethod::Head => 1,
        HttpMethod::Post => 2,
        HttpMethod::Put => 3,
        HttpMethod::Patch => 4,
        HttpMethod::Delete => 5,
        HttpMethod::Options => 6,
        HttpMethod::Trace => 7,
    }
}

const OPENAPI_PATH: &str = "/openapi.json";

/// The serialised document, made once at start.
struct DocumentJson(web::Bytes);

/// This API's OpenAPI document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses(
        (status = 200, description = "The OpenAPI 3.1 document of this API",
         content_type = "application/json", body = Object),
    ),
)]
async fn openapi_json(document: web::Data<DocumentJson>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(document.0.clone())
}

#[cfg(test)]
mod tests {
    use actix_web::test::{TestRequest, call_service, init_service, read_body};
    use actix_web::{App, http::StatusCode};

    use super::*;

    /// Reads a thing.
    #[utoipa::path(
        get,
        path = "/things/{id}",
        params(("id" = String, Path, description = "The thing")),
        responses((status = 200, description = "The thing"), (status = 404, body = ErrorBody)),
        security(("bearer" = [])),
    )]
    async fn get_thing(id: web::Path<String>, tag: web::Data<&'static str>) -> HttpResponse {
        HttpResponse::Ok().body(format!("{}:{id}", tag.get_ref()))
    }

    /// Replaces a thing.
    #[utoipa::path(
        put,
        path = "/things/{id}",
        params(("id" = String, Path)),
        responses((status = 204, description = "Replaced")),
    )]
    async fn put_thing() -> HttpResponse {
        HttpResponse::NoContent().finish()
    }

    /// Lists things.
    #[utoipa::path(get, path = "/things", responses((status = 200, description = "Things")))]
    async fn list_things() -> HttpResponse {
        HttpResponse::Ok().finish()
    }

    /// Forgets to document `{id}`.
    #[utoipa::path(delete, path = "/things/{id}", responses((status = 204, description = "Gone")))]
    async fn undocumented_id() -> HttpResponse {
        HttpResponse::NoContent().finish()
    }

    use crate::http::ErrorBody;

    fn sample() -> Routes {
        let mut routes = Routes::new();
        routes.security_scheme(BEARER, jwt_bearer());
        routes
            .with_data(web::Data::new("tagged"))
            .add(__path_get_thing, get_thing)
            .add(__path_put_thing, put_thing);
        routes.add(__path_list_things, list_things);
        routes
    }

    const ALL: [Method; 5] = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
    ];

    #[actix_web::test]
    async fn the_document_and_the_routes_agree() {
        let (configure, document) = sample()
            .into_api(&ApiInfo::new("thing-api", "1.2.3"))
            .expect("valid routes");
        let app = init_service(App::new().configure(configure)).await;
        let json = serde_json::to_value(&document).expect("json");
        assert_eq!(json["info"]["title"], "thing-api");
        assert_eq!(json["info"]["version"], "1.2.3");
        assert!(
            json["components"]["schemas"]["ErrorBody"].is_object(),
            "{json}"
        );
        assert_eq!(
            json["components"]["securitySchemes"]["bearer"]["bearerFormat"],
            "JWT"
        );
        let paths = json["paths"].as_object().expect("paths");
        assert_eq!(
            paths.keys().collect::<Vec<_>>(),
            ["/openapi.json", "/things", "/things/{id}"]
        );
        for (path, item) in paths {
            let uri = path.replace("{id}", "abc");
            let documented: Vec<String> = ALL
                .iter()
                .filter(|m| item.get(m.as_str().to_ascii_lowercase()).is_some())
                .map(|m| m.to_string())
                .collect();
            for method in &ALL {
                let res = call_service(
                    &app,
                    TestRequest::default()
                        .method(method.clone())
                        .uri(&uri)
                        .to_request(),
                )
                .await;
                let status = res.status();
                if documented.contains(&method.to_string()) {
                    assert!(
                        status != StatusCode::NOT_FOUND && status != StatusCode::METHOD_NOT_ALLOWED,
                        "{method} {path}: {status}"
                    );
                } else {
                    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
                    let allow = res
                        .headers()
                        .get(header::ALLOW)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    let mut allowed: Vec<String> = allow.split(", ").map(str::to_owned).collect();
                    allowed.sort();
                    let mut expected = documented.clone();
                    expected.sort();
                    assert_eq!(allowed, expected, "{method} {path}");
                    let body: serde_json::Value =
                        serde_json::from_slice(&read_body(res).await).expect("json body");
                    assert_eq!(body["error"]["code"], "method_not_allowed");
                }
            }
        }
    }

    #[actix_web::test]
    async fn group_data_reaches_every_method_of_the_path_and_openapi_json_serves_the_document() {
        let (configure, document) = sample()
            .into_api(&ApiInfo::new("thing-api", "1"))
            .expect("valid routes");
        let app = init_service(App::new().configure(configure)).await;
        let res = call_service(&app, TestRequest::get().uri("/things/x").to_request()).await;
        assert_eq!(read_body(res).await, "tagged:x");
        let res = call_service(&app, TestRequest::get().uri("/openapi.json").to_request()).await;
        assert_eq!(res.status(), StatusCode::OK);
        let served: serde_json::Value =
            serde_json::from_slice(&read_body(res).await).expect("json");
        assert_eq!(served, serde_json::to_value(&document).expect("json"));
        // Every answer documents the echoed request id; every operation the header.
        let op = &served["paths"]["/things/{id}"]["get"];
        assert!(op["responses"]["200"]["headers"]["x-request-id"].is_object());
        assert!(
            op["parameters"]
                .as_array()
                .expect("params")
                .iter()
                .any(|p| p["name"] == "x-request-id" && p["in"] == "header")
        );
    }

    #[test]
    fn mistakes_are_refused_at_start() {
        let mut twice = sample();
        twice.add(__path_list_things, list_things);
        assert!(matches!(
            twice.into_parts().err(),
            Some(RouteError::Duplicate { method, path }) if method == "GET" && path == "/things"
        ));
        let mut undocumented = sample();
        undocumented.add(__path_undocumented_id, undocumented_id);
        assert!(matches!(
            undocumented.into_parts().err(),
            Some(RouteError::UndocumentedPathParameter { name, .. }) if name == "id"
        ));
        let mut no_scheme = Routes::new();
        no_scheme.add(__path_get_thing, get_thing);
        assert!(matches!(
            no_scheme.into_parts().err(),
            Some(RouteError::UnknownSecurityScheme { scheme, .. }) if scheme == "bearer"
        ));
    }

    #[test]
    fn segments_are_the_braced_names() {
        assert_eq!(segments("/a/{id}/b/{user_id}"), ["id", "user_id"]);
        assert!(segments("/a").is_empty());
    }
}
