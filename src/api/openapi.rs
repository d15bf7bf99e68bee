//! The API described for machines: the OpenAPI 3.1 document of `/v1` and the operations
//! endpoints, served at `GET /openapi.json` and checked in as `docs/openapi.json`.
//!
//! The document is generated from the code: each handler's `#[utoipa::path]` gives its route,
//! parameters and own answers, the request and response types derive their schemas, and the
//! router mounts exactly the handlers the document lists (both come from [`super::v1`]). What
//! every route shares because a layer adds it to all of them (a refused token, the rate limit,
//! an unavailable database, a body that times out, an unknown method) is added here once, as
//! the layers add it. Nothing is fetched at build or run time: no UI is bundled, the document is
//! the interface, and `kiln openapi` prints it for generators offline.

use std::sync::LazyLock;

use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, Header, OpenApi, Ref, RefOr, Response, ResponseBuilder, Schema,
};
use utoipa::{Modify, ToSchema};

use super::error::ErrorBody;

/// The document's frame: what kiln is, its security scheme, and the shared schemas.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "kiln",
        description = "A durable job queue for running untrusted code: submit jobs and suites of \
                       test cases, read their results and event history back, follow them live.",
        license(name = "MIT OR Apache-2.0"),
    ),
    servers((url = "/", description = "This server")),
    components(schemas(ErrorBody)),
    security((), ("bearer" = [])),
    tags(
        (name = "jobs", description = "One program, run once in the sandbox"),
        (name = "batches", description = "Suites of test cases, with verdicts and pass@k"),
        (name = "events", description = "The append-only history, paged or live"),
        (name = "runtimes", description = "The languages this server runs"),
        (name = "tenants", description = "Whom a token acts for"),
        (name = "stats", description = "The queue now and its recent history, for an overview"),
        (name = "operations", description = "Health, readiness, metrics and this document"),
    )
)]
pub(super) struct Frame;

/// Adds what every operation shares.
struct Shared;

impl Modify for Shared {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A token made by `kiln token create`; needed once any token exists.",
                    ))
                    .build(),
            ),
        );
        // axum's catch-all `{*path}` is OpenAPI's plain `{path}` (one that may hold slashes).
        let paths = std::mem::take(&mut openapi.paths.paths);
        openapi.paths.paths = paths
            .into_iter()
            .map(|(path, item)| (path.replace("{*", "{"), item))
            .collect();
        for item in openapi.paths.paths.values_mut() {
            for operation in [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                add_shared_answers(operation);
            }
        }
    }
}

/// The answers the layers in front of every handler may give.
fn add_shared_answers(operation: &mut Operation) {
    let public = operation.security.as_ref().is_some_and(|s| {
        s.iter()
            .all(|requirement| requirement == &Default::default())
    });
    let mut shared = vec![
        (
            "429",
            "Too many requests from this caller, or the queue is full: see Retry-After",
        ),
        (
            "500",
            "A failure on the server's side; the server log has the details",
        ),
        (
            "503",
            "The database is unavailable, the server is stopping, or the request took too long: see Retry-After",
        ),
    ];
    if !public {
        shared.push((
            "401",
            "No token, or one that is not valid, where tokens are required",
        ));
    }
    for (status, description) in shared {
        operation
            .responses
            .responses
            .entry(status.to_owned())
            .or_insert_with(|| error(description));
    }
}

/// An error answer in kiln's shape.
pub(super) fn error(description: &str) -> RefOr<Response> {
    let mut retry_after = Header::new(
        utoipa::openapi::ObjectBuilder::new().schema_type(utoipa::openapi::schema::Type::Integer),
    );
    retry_after.description = Some("Seconds after which trying again makes sense".into());
    ResponseBuilder::new()
        .description(description)
        .header("Retry-After", retry_after)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(RefOr::<Schema>::Ref(Ref::from_schema_name(
                    ErrorBody::name(),
                ))))
                .build(),
        )
        .into()
}

/// The document, built once.
static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    let (_, mut document) = super::v1().split_for_parts();
    Shared.modify(&mut document);
    // Serializing a document of plain maps and strings cannot fail.
    document.to_pretty_json().unwrap_or_default() + "\n"
});

/// The document as JSON, as `GET /openapi.json` serves it and `docs/openapi.json` holds it.
pub fn document() -> &'static str {
    &DOCUMENT
}

/// `GET /openapi.json`.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    operation_id = "openapi",
    security(()),
    responses((status = 200, description = "This document", content_type = "application/json"))
)]
pub(super) async fn serve() -> impl IntoResponse {
    ([(CONTENT_TYPE, "application/json")], document())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::*;

    fn parsed() -> Value {
        serde_json::from_str(document()).expect("the document is JSON")
    }

    #[test]
    fn the_checked_in_document_is_the_one_served() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");
        let checked_in = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            checked_in == document(),
            "docs/openapi.json is not the document the server serves: \
             run `cargo run -- openapi > docs/openapi.json`"
        );
    }

    #[test]
    fn every_route_the_router_mounts_is_described_or_named_as_a_compatibility_route() {
        // The routes mounted beside the described ones; everything else comes with its
        // description through `v1()`, so a route cannot be mounted undescribed without being
        // added here.
        // The dashboard's page and assets are not API.
        const UNDESCRIBED: [&str; 6] = [
            "/eval",
            "/eval-async",
            "/eval-status/{id}",
            "/events",
            "/",
            "/ui/{file}",
        ];
        let router = include_str!("mod.rs");
        let mounted: BTreeSet<&str> = router
            .split(".route(\"")
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
            .collect();
        assert_eq!(mounted, BTreeSet::from(UNDESCRIBED));
        let document = parsed();
        let paths = document["paths"].as_object().expect("paths");
        for path in UNDESCRIBED {
            assert!(!paths.contains_key(path), "{path} is described");
        }
        for path in [
            "/v1/jobs",
            "/v1/jobs/{id}/files/{path}",
            "/openapi.json",
            "/healthz",
        ] {
            assert!(paths.contains_key(path), "{path} is missing");
        }
    }

    #[test]
    fn every_operation_has_an_id_and_answers_errors_in_the_one_shape() {
        let document = parsed();
        let mut ids = BTreeSet::new();
        for (path, item) in document["paths"].as_object().expect("paths") {
            for (method, operation) in item.as_object().expect("an item") {
                let id = operation["operationId"].as_str().expect("an operation id");
                assert!(ids.insert(id.to_owned()), "{id} twice");
                let responses = operation["responses"].as_object().expect("responses");
                for status in ["429", "500", "503"] {
                    assert!(
                        responses.contains_key(status),
                        "{method} {path}: no {status}"
                    );
                }
                for (status, response) in responses {
                    if status.starts_with(['4', '5']) {
                        assert_eq!(
                            response["content"]["application/json"]["schema"]["$ref"],
                            "#/components/schemas/ErrorBody",
                            "{method} {path} {status}"
                        );
                    }
                }
            }
        }
        assert!(ids.contains("submit_job") && ids.contains("cancel_batch"));
    }
}
