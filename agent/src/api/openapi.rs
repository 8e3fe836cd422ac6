//! The OpenAPI 3.1 document of the HTTP API, served at `GET /api/v1/openapi.json` on both
//! listeners. It is built from the routers themselves: every route is registered through
//! `utoipa_axum::routes!` with the `#[utoipa::path]` of its handler, so a route cannot be
//! served without being described. The write routes are described on both listeners (marked
//! as Unix-socket only), since a client reads the document to learn the whole API.

use std::sync::LazyLock;

use axum::{http::header, response::IntoResponse};
use utoipa::OpenApi as _;

use super::{ErrorBody, read, write};

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "berth",
        description = "The host agent's HTTP API. Two listeners serve it: the Unix socket \
            (root, 0660) serves every route; the TCP listener serves the read routes only, \
            checks the Host header (400/421 otherwise) and, without `Authorization: Bearer \
            TOKEN` (the token in `http.token_file`, 401 when wrong), redacts env values and \
            refuses logs. Every error is a JSON object `{\"error\": \"...\"}`; a query or body \
            with an unknown field is a 400 naming it. See docs/api.md."
    ),
    components(schemas(ErrorBody, super::series::SortParam)),
    modifiers(&BearerToken),
    tags(
        (name = "health", description = "Liveness and readiness"),
        (name = "metrics", description = "OpenMetrics"),
        (name = "system", description = "The agent, the host and the diagnosis"),
        (name = "containers", description = "Containers of every engine; changes only to berth's own"),
        (name = "images", description = "berth's image store"),
        (name = "ports", description = "Published port ranges and what netfilter costs for them"),
        (name = "query", description = "Series over a window from the in-memory history"),
    )
)]
struct ApiDoc;

/// The optional bearer token of the TCP listener.
struct BearerToken;

impl utoipa::Modify for BearerToken {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The document: the read and the write routes, with every schema they name.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc.merge(read::routes().into_openapi());
    doc.merge(write::routes().into_openapi());
    doc
}

/// Rendered once: it depends on the code only.
static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    document()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"cannot render the OpenAPI document: {e}\"}}"))
});

#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "system",
    description = "This document (OpenAPI 3.1).",
    responses((status = 200, description = "The OpenAPI document", body = Object,
        content_type = "application/json")))]
pub(super) async fn get_openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        DOCUMENT.as_str(),
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    /// The route table as it was before the document existed, written out by hand: a route
    /// dropped from the registration (and so from the document) fails here.
    const READ: &[(&str, &str)] = &[
        ("get", "/metrics"),
        ("get", "/healthz"),
        ("get", "/readyz"),
        ("get", "/api/v1/openapi.json"),
        ("get", "/api/v1/system"),
        ("get", "/api/v1/cgroups"),
        ("get", "/api/v1/diagnose"),
        ("get", "/api/v1/containers"),
        ("get", "/api/v1/containers/{id}"),
        ("get", "/api/v1/containers/{id}/logs"),
        ("get", "/api/v1/containers/{id}/stats"),
        ("get", "/api/v1/containers/{id}/syscalls"),
        ("get", "/api/v1/images"),
        ("get", "/api/v1/ports"),
        ("get", "/api/v1/query"),
    ];
    const WRITE: &[(&str, &str)] = &[
        ("post", "/api/v1/containers"),
        ("delete", "/api/v1/containers/{id}"),
        ("post", "/api/v1/containers/{id}/stop"),
        ("post", "/api/v1/containers/{id}/kill"),
        ("post", "/api/v1/containers/{id}/update"),
        ("post", "/api/v1/images/import"),
        ("post", "/api/v1/images/pull"),
        ("delete", "/api/v1/images/{reference}"),
    ];

    fn doc() -> Value {
        serde_json::from_str(&super::DOCUMENT).expect("the document is JSON")
    }

    fn operations(doc: &Value) -> BTreeSet<(String, String)> {
        let paths = doc["paths"].as_object().expect("paths");
        paths
            .iter()
            .flat_map(|(path, item)| {
                item.as_object()
                    .expect("path item")
                    .keys()
                    .filter(|k| ["get", "post", "put", "delete", "patch"].contains(&k.as_str()))
                    .map(move |m| (m.clone(), path.clone()))
            })
            .collect()
    }

    #[test]
    fn the_query_route_names_the_values_sort_and_engine_take() {
        let doc = doc();
        let sort = &doc["components"]["schemas"]["SortParam"]["enum"];
        for name in crate::history::query::SORT_KEYS
            .iter()
            .chain(&["cpu", "flows"])
        {
            assert!(
                sort.as_array().unwrap().iter().any(|v| v == name),
                "{name} missing from {sort}"
            );
            assert!(crate::history::query::sort_key(name).is_some(), "{name}");
        }
        let params = doc["paths"]["/api/v1/query"]["get"]["parameters"].to_string();
        assert!(params.contains("#/components/schemas/Engine"), "{params}");
    }

    #[test]
    fn the_document_has_every_route_and_no_other() {
        let doc = doc();
        assert_eq!(doc["openapi"], "3.1.0");
        let want: BTreeSet<(String, String)> = READ
            .iter()
            .chain(WRITE)
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        assert_eq!(operations(&doc), want);
    }

    #[test]
    fn write_routes_say_they_are_socket_only_and_read_routes_do_not() {
        let doc = doc();
        for (method, path) in WRITE {
            let op = &doc["paths"][path][method];
            let d = op["description"].as_str().unwrap_or_default();
            assert!(
                d.contains("Only on the Unix socket"),
                "{method} {path}: {d}"
            );
        }
        for (method, path) in READ {
            let d = doc["paths"][path][method]["description"]
                .as_str()
                .unwrap_or_default();
            assert!(!d.is_empty(), "{method} {path} has no description");
            assert!(
                !d.contains("Only on the Unix socket"),
                "{method} {path}: {d}"
            );
        }
    }

    /// Every operation names a success and every error it answers with ApiError's body; the
    /// path parameters of its path are declared.
    #[test]
    fn every_operation_has_its_errors_and_parameters() {
        let doc = doc();
        for (method, path) in operations(&doc) {
            let op = &doc["paths"][&path][&method];
            let responses = op["responses"].as_object().expect("responses");
            assert!(
                responses.keys().any(|s| s.starts_with('2')),
                "{method} {path}: no 2xx"
            );
            for (status, r) in responses {
                let d = r["description"].as_str().unwrap_or_default();
                assert!(!d.is_empty(), "{method} {path} {status}: no description");
                if status.starts_with('4') || status.starts_with('5') {
                    assert_eq!(
                        r["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ErrorBody",
                        "{method} {path} {status}"
                    );
                }
            }
            let params: Vec<&str> = op["parameters"]
                .as_array()
                .map(|a| a.iter().filter_map(|p| p["name"].as_str()).collect())
                .unwrap_or_default();
            for seg in path.split('/').filter(|s| s.starts_with('{')) {
                let name = seg.trim_matches(|c| c == '{' || c == '}');
                assert!(params.contains(&name), "{method} {path}: no {name}");
            }
        }
        let errors = &doc["components"]["schemas"]["ErrorBody"];
        assert_eq!(errors["required"], serde_json::json!(["error"]));
    }

    /// The error body the document describes is the one ApiError sends.
    #[tokio::test]
    async fn api_errors_have_the_documented_shape() {
        use axum::response::IntoResponse as _;
        let r = super::super::ApiError::NotFound("x".into()).into_response();
        assert_eq!(r.status(), 404);
        let body = axum::body::to_bytes(r.into_body(), 1024)
            .await
            .expect("body");
        let v: Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(v, serde_json::json!({"error": "x"}));
    }
}
