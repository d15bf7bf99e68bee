//! The fuzz target over request decoding and validation: property tests that feed generated
//! input to the real functions a request passes through — the JSON body decoder, job and suite
//! validation, file-name checks, query decoding, `Idempotency-Key`, `Last-Event-ID`, page
//! sizes and waits — and check that each either accepts with every rule kept or refuses with a
//! 4xx, and never panics. `tests/it/hostile.rs` throws generated requests at the real server.
//!
//! Each property runs 256 cases in `cargo test`; `PROPTEST_CASES=100000 cargo test --lib
//! api::fuzz` runs longer.

use std::collections::BTreeMap;

use axum::extract::FromRequestParts;
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode, Uri};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures_util::FutureExt;
use proptest::prelude::*;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::error::{ApiError, ErrorCode};
use super::extract::{Query, parse_json};
use super::{batches, jobs, streams};
use crate::job::JobSpec;
use crate::job::batch::BatchSpec;
use crate::job::content::Encoded;
use crate::job::names::hidden_character;
use crate::job::outputs::check_pattern;
use crate::job::policy::Policy;
use crate::job::validate::{
    BatchRequest, CaseRequest, JobRequest, LimitsRequest, Rejection, RuntimeTerms, check_file_name,
};

fn is_client_error(e: &ApiError) -> bool {
    e.status.is_client_error() && !e.code.as_str().is_empty() && !e.message.is_empty()
}

fn is_invalid_query(e: &ApiError) -> bool {
    e.status == StatusCode::BAD_REQUEST && e.code == ErrorCode::InvalidQuery && is_client_error(e)
}

/// A query decoded by the extractor every handler uses: the value, or the error a request gets.
fn decode_query<T: DeserializeOwned>(uri: &Uri) -> Result<T, ApiError> {
    let (mut parts, ()) = Request::get(uri.clone())
        .body(())
        .expect("a request")
        .into_parts();
    Query::<T>::from_request_parts(&mut parts, &())
        .now_or_never()
        .expect("decoding a query never waits")
        .map(|Query(value)| value)
}

fn source_file_of(runtime: &str, _code: &str) -> Option<RuntimeTerms> {
    (runtime == "sh").then(|| RuntimeTerms {
        name: "sh".to_owned(),
        source_file: "main.sh".to_owned(),
        binary: None,
        limits: LimitsRequest::default(),
    })
}

/// Text that reaches the interesting branches: names and paths, their tricks, and anything.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9._/ -]{0,16}",
        Just("main.sh".to_owned()),
        Just("sh".to_owned()),
        Just(String::new()),
        "[./a\\\\]{1,8}",
        "[a-z]{1,4}[\u{0}\u{7}\u{200B}\u{202E}\u{2066}\u{FEFF}\u{3164}\u{A0}][a-z]{0,4}",
        "\\PC{0,12}",
        any::<String>(),
        (200usize..400).prop_map(|n| "n".repeat(n)),
    ]
}

/// A limit, mostly left out or within every maximum, sometimes zero or absurd.
fn limit() -> impl Strategy<Value = Option<u64>> {
    prop::option::weighted(
        0.3,
        prop_oneof![
            3 => 1u64..=64,
            1 => Just(0u64),
            1 => 1u64..1_000_000,
            1 => any::<u64>(),
            1 => Just(u64::MAX),
        ],
    )
}

/// Limits, mostly none given.
fn limits() -> impl Strategy<Value = LimitsRequest> {
    let given = (
        limit(),
        limit(),
        limit(),
        limit(),
        limit(),
        limit(),
        limit(),
    )
        .prop_map(
            |(wall_ms, cpu_ms, memory_mb, processes, output_bytes, file_bytes, cpu_percent)| {
                LimitsRequest {
                    wall_ms,
                    cpu_ms,
                    memory_mb,
                    processes,
                    output_bytes,
                    file_bytes,
                    cpu_percent,
                }
            },
        );
    prop_oneof![2 => Just(LimitsRequest::default()), 1 => given]
}

fn runtime() -> impl Strategy<Value = String> {
    prop_oneof![3 => Just("sh".to_owned()), 1 => text()]
}

fn files() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(
        prop_oneof![3 => "[a-z]{1,8}(/[a-z]{1,8})?(\\.txt)?", 1 => text()],
        text(),
        0..3,
    )
}

/// A value as the wire may bring it: text, bytes in base64, or an object that is neither (an
/// unknown encoding, base64 that is not, a second field).
fn encoded_value() -> BoxedStrategy<Encoded> {
    let tagged =
        |fields: Vec<(String, serde_json::Value)>| Encoded::Tagged(fields.into_iter().collect());
    prop_oneof![
        3 => text().prop_map(Encoded::Text),
        1 => prop::collection::vec(any::<u8>(), 0..16)
            .prop_map(move |bytes| tagged(vec![("base64".into(), STANDARD.encode(bytes).into())])),
        1 => (text(), text()).prop_map(move |(name, value)| tagged(vec![(name, value.into())])),
    ]
    .boxed()
}

fn job_request() -> impl Strategy<Value = JobRequest> {
    (
        runtime(),
        prop_oneof![3 => Just("echo ok".to_owned()), 1 => text()],
        encoded_value(),
        prop::collection::vec(text(), 0..3),
        files(),
        limits(),
        any::<i32>(),
        prop::option::of(prop_oneof![0u32..12, any::<u32>()]),
        prop::option::weighted(
            0.2,
            prop_oneof![Just("http://example.com/hook".to_owned()), text()],
        ),
        prop::collection::vec(
            prop_oneof![2 => "[a-z*?]{1,6}(/[a-z*]{1,6})?", 1 => text()],
            0..3,
        ),
    )
        .prop_map(
            |(
                runtime,
                code,
                stdin,
                args,
                files,
                limits,
                priority,
                max_attempts,
                callback_url,
                outputs,
            )| {
                JobRequest {
                    runtime,
                    code: code.into(),
                    stdin,
                    args,
                    files: encoded(files),
                    outputs,
                    limits,
                    priority,
                    max_attempts,
                    callback_url,
                    callback_shape: Default::default(),
                    interactive: false,
                }
            },
        )
}

/// Files as a request gives them, each as text.
fn encoded(files: BTreeMap<String, String>) -> BTreeMap<String, Encoded> {
    files.into_iter().map(|(n, c)| (n, c.into())).collect()
}

fn case_request() -> impl Strategy<Value = CaseRequest> {
    (
        (
            prop::option::weighted(0.5, text()),
            prop::option::weighted(0.3, text()),
            prop::option::weighted(0.2, runtime()),
            prop::option::weighted(0.3, text()),
            files(),
        ),
        // Rarely other than text: one malformed value refuses the whole suite.
        prop_oneof![12 => Just(Encoded::default()), 1 => encoded_value()],
        prop::collection::vec(text(), 0..2),
        prop::option::weighted(0.5, text().prop_map(Encoded::Text)),
        limits(),
    )
        .prop_map(
            |((name, group, runtime, code, files), stdin, args, expected_output, limits)| {
                CaseRequest {
                    name,
                    group,
                    runtime,
                    code: code.map(Into::into),
                    files: encoded(files),
                    stdin,
                    args,
                    expected_output,
                    limits,
                }
            },
        )
}

fn batch_request() -> impl Strategy<Value = BatchRequest> {
    (
        job_request(),
        prop::collection::vec(case_request(), 0..6),
        prop::bool::weighted(0.2),
    )
        .prop_map(|(job, cases, callback_each_case)| BatchRequest {
            runtime: Some(job.runtime).filter(|_| job.priority % 4 != 0),
            code: Some(job.code).filter(|_| job.priority % 3 != 0),
            files: job.files,
            limits: job.limits,
            compare: Default::default(),
            pass_at_k: match job.priority % 5 {
                0 => vec![1, 10],
                1 => vec![0],
                2 => vec![3, 3],
                _ => Vec::new(),
            },
            callback_url: job.callback_url,
            callback_each_case,
            callback_shape: Default::default(),
            cases,
        })
}

/// Any JSON value, a few levels deep, with keys that are sometimes the real field names.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::from)),
        text().prop_map(Value::String),
    ];
    let key = prop_oneof![
        Just("runtime".to_owned()),
        Just("code".to_owned()),
        Just("limits".to_owned()),
        Just("wall_ms".to_owned()),
        Just("files".to_owned()),
        Just("cases".to_owned()),
        Just("name".to_owned()),
        text(),
    ];
    leaf.prop_recursive(4, 24, 5, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(key.clone(), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn check_job(spec: &JobSpec, policy: &Policy) -> Result<(), TestCaseError> {
    let (limits, max) = (spec.limits, policy.max_limits);
    for (value, max) in [
        (limits.wall_ms, max.wall_ms),
        (limits.cpu_ms, max.cpu_ms),
        (limits.memory_mb, max.memory_mb),
        (limits.processes, max.processes),
        (limits.output_bytes, max.output_bytes),
        (limits.file_bytes, max.file_bytes),
    ] {
        prop_assert!((1..=max).contains(&value), "{limits:?}");
    }
    prop_assert!(!spec.code.as_bytes().contains(&0));
    prop_assert!(spec.args.iter().all(|a| !a.contains('\0')));
    prop_assert!(
        !String::from_utf8_lossy(spec.code.as_bytes())
            .trim()
            .is_empty()
    );
    prop_assert!(spec.code.len() <= policy.max_code_bytes);
    prop_assert!((1..=policy.max_max_attempts).contains(&spec.max_attempts));
    for pattern in &spec.outputs {
        prop_assert!(check_pattern(pattern).is_ok(), "{pattern:?}");
    }
    for name in spec.files.keys() {
        prop_assert!(check_file_name(name).is_ok());
        prop_assert_ne!(name, "main.sh");
        for (end, _) in name.match_indices('/') {
            let dir = &name[..end];
            prop_assert!(
                !spec.files.contains_key(dir) && dir != "main.sh",
                "{:?}",
                name
            );
        }
    }
    Ok(())
}

/// An error as the API answers it.
fn answer(rejection: Rejection) -> ApiError {
    rejection.into()
}

proptest! {
    #[test]
    fn any_bytes_decode_to_a_request_or_a_400_or_422(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let errors = [
            parse_json::<JobRequest>(&bytes).err(),
            parse_json::<BatchRequest>(&bytes).err(),
        ];
        for e in errors.iter().flatten() {
            prop_assert!(
                matches!(e.status, StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY),
                "{e:?}"
            );
            prop_assert!(is_client_error(e));
        }
    }

    #[test]
    fn json_of_any_shape_is_decoded_and_validated_or_refused_with_a_4xx(value in json_value()) {
        let policy = Policy::default();
        let bytes = value.to_string().into_bytes();
        match parse_json::<JobRequest>(&bytes) {
            Ok(request) => match JobSpec::validate(request, None, &policy, source_file_of) {
                Ok(spec) => check_job(&spec, &policy)?,
                Err(rejection) => prop_assert!(is_client_error(&answer(rejection))),
            },
            Err(e) => prop_assert!(is_client_error(&e)),
        }
        match parse_json::<BatchRequest>(&bytes) {
            Ok(request) => {
                if let Err(rejection) = BatchSpec::validate(request, None, &policy, source_file_of) {
                    prop_assert!(is_client_error(&answer(rejection)));
                }
            }
            Err(e) => prop_assert!(is_client_error(&e)),
        }
    }

    #[test]
    fn nesting_to_any_depth_is_refused_without_running_out_of_stack(
        depth in prop_oneof![1usize..200, 200usize..100_000],
        opener in prop::sample::select(vec![
            "[", "{\"a\":", "{\"runtime\":", "{\"limits\":", "{\"files\":",
            "{\"cases\":[", "{\"runtime\":\"sh\",\"code\":\"x\",\"cases\":[{\"limits\":",
        ]),
        closed in any::<bool>(),
    ) {
        let mut body = opener.repeat(depth);
        body.push('1');
        if closed {
            for c in opener.chars().rev() {
                let closer = match c { '[' => "]", '{' => "}", _ => "" };
                body.push_str(&closer.repeat(depth));
            }
        }
        for e in [
            parse_json::<JobRequest>(body.as_bytes()).err(),
            parse_json::<BatchRequest>(body.as_bytes()).err(),
        ] {
            let e = e.expect("never a valid request");
            prop_assert!(is_client_error(&e), "{e:?}");
        }
    }

    #[test]
    fn a_validated_job_keeps_every_rule(request in job_request(), key in prop::option::of(text())) {
        let policy = Policy::default();
        match JobSpec::validate(request, key, &policy, source_file_of) {
            Ok(spec) => {
                check_job(&spec, &policy)?;
                if let Some(key) = &spec.idempotency_key {
                    prop_assert!((1..=255).contains(&key.len()));
                }
            }
            Err(rejection) => prop_assert!(is_client_error(&answer(rejection))),
        }
    }

    #[test]
    fn a_validated_suite_keeps_every_rule(request in batch_request()) {
        let policy = Policy { max_batch_cases: 4, ..Policy::default() };
        let asked = request.cases.len();
        match BatchSpec::validate(request, None, &policy, source_file_of) {
            Ok(spec) => {
                prop_assert!((1..=4).contains(&spec.cases.len()));
                prop_assert_eq!(spec.cases.len(), asked);
                let mut names = std::collections::HashSet::new();
                for case in &spec.cases {
                    prop_assert!(names.insert(case.name.clone()), "names are unique");
                    prop_assert!(hidden_character(&case.name).is_none(), "{:?}", case.name);
                    prop_assert!(!case.name.is_empty() && case.name.len() <= 200);
                    prop_assert!(case.limits.wall_ms <= policy.max_limits.wall_ms);
                    prop_assert!(case.limits.memory_mb >= 1);
                }
                prop_assert!(!spec.suite.callback_each_case || spec.suite.callback_url.is_some());
            }
            Err(Rejection::TooLarge(message)) => prop_assert!(asked > 4, "{}", message),
            Err(Rejection::Invalid(message)) => prop_assert!(!message.is_empty()),
            Err(rejection) => prop_assert!(!rejection.to_string().is_empty()),
        }
    }

    #[test]
    fn an_accepted_file_name_stays_inside_the_work_directory(name in text()) {
        if check_file_name(&name).is_ok() {
            let path = std::path::Path::new(&name);
            prop_assert!(path.is_relative());
            prop_assert!(
                path.components().all(|c| matches!(c, std::path::Component::Normal(_))),
                "{:?}", name
            );
            prop_assert!(hidden_character(&name).is_none() && !name.contains('\\'));
            prop_assert!(std::path::Path::new("/work").join(path).starts_with("/work"));
        }
    }

    #[test]
    fn last_event_id_is_an_event_id_or_a_400(
        value in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..24),
            "[ 0-9+-]{0,24}".prop_map(String::into_bytes),
            any::<i64>().prop_map(|n| n.to_string().into_bytes()),
        ],
        after in prop::option::of(any::<i64>()),
    ) {
        let mut headers = HeaderMap::new();
        let Ok(value) = HeaderValue::from_bytes(&value) else {
            // Not a header value at all: hyper refuses it before kiln sees it.
            return Ok(());
        };
        headers.insert("last-event-id", value.clone());
        match streams::resume_point(&headers, after) {
            Ok(id) => {
                prop_assert!(id >= 0);
                let text = value.to_str().map(str::trim);
                prop_assert_eq!(text.ok().and_then(|t| t.parse::<i64>().ok()), Some(id));
            }
            Err(e) => prop_assert_eq!(e.status, StatusCode::BAD_REQUEST),
        }
        let without = streams::resume_point(&HeaderMap::new(), after);
        prop_assert_eq!(without.ok(), Some(after.unwrap_or(0).max(0)));
    }

    #[test]
    fn an_idempotency_key_is_visible_ascii_or_a_400(value in prop::collection::vec(any::<u8>(), 0..40)) {
        let Ok(value) = HeaderValue::from_bytes(&value) else { return Ok(()) };
        let mut headers = HeaderMap::new();
        headers.insert("idempotency-key", value);
        match jobs::idempotency_key(&headers) {
            Ok(Some(key)) => prop_assert!(key.bytes().all(|b| (0x20..0x7f).contains(&b)), "{:?}", key),
            Ok(None) => prop_assert!(false, "the key was there"),
            Err(e) => prop_assert_eq!(e.status, StatusCode::BAD_REQUEST),
        }
    }

    #[test]
    fn queries_of_any_text_decode_or_are_refused(
        query in prop_oneof![
            "[a-z_=&0-9.+-]{0,40}",
            "(after|limit|wait|status|format)=[-0-9a-zA-Z.%]{0,24}",
            prop::collection::vec(any::<u8>(), 0..16).prop_map(|bytes| {
                let encoded: String = bytes.iter().map(|b| format!("%{b:02X}")).collect();
                format!("after={encoded}")
            }),
        ],
    ) {
        let Ok(uri) = format!("/x?{query}").parse::<Uri>() else { return Ok(()) };
        // Each either decodes or is refused as a request with that query is: a `400`.
        let refusals = [
            decode_query::<jobs::FeedQuery>(&uri).err(),
            decode_query::<jobs::ListQuery>(&uri).err(),
            decode_query::<jobs::EventsQuery>(&uri).err(),
            decode_query::<batches::CasesQuery>(&uri).err(),
            decode_query::<batches::ReportQuery>(&uri).err(),
        ];
        for e in refusals.iter().flatten() {
            prop_assert!(is_invalid_query(e), "{} {} {:?}", e.status, e.code.as_str(), e.message);
        }
        match decode_query::<jobs::WaitQuery>(&uri) {
            Ok(wait) => {
                let max = std::time::Duration::from_secs(60);
                match jobs::wait_within(wait.wait, max) {
                    Ok(d) => prop_assert!(d <= max),
                    Err(e) => prop_assert_eq!(e.status, StatusCode::BAD_REQUEST),
                }
            }
            Err(e) => prop_assert!(is_invalid_query(&e), "{} {} {:?}", e.status, e.code.as_str(), e.message),
        }
    }

    #[test]
    fn a_page_size_is_between_1_and_1000_or_a_400(limit in prop::option::of(any::<u32>())) {
        match jobs::page_size(limit) {
            Ok(n) => prop_assert!((1..=1000).contains(&n)),
            Err(e) => prop_assert_eq!(e.status, StatusCode::BAD_REQUEST),
        }
    }
}

/// The generators are worth running only if they reach both sides of validation.
#[test]
fn the_generated_jobs_and_suites_are_both_accepted_and_refused() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let policy = Policy::default();
    let (mut jobs, mut suites) = ((0, 0), (0, 0));
    for _ in 0..500 {
        let tally = |ok: bool, (yes, no): &mut (u32, u32)| *(if ok { yes } else { no }) += 1;
        let job = job_request().new_tree(&mut runner).expect("job").current();
        tally(
            JobSpec::validate(job, None, &policy, source_file_of).is_ok(),
            &mut jobs,
        );
        let suite = batch_request()
            .new_tree(&mut runner)
            .expect("suite")
            .current();
        tally(
            BatchSpec::validate(suite, None, &policy, source_file_of).is_ok(),
            &mut suites,
        );
    }
    assert!(
        jobs.0 >= 25 && jobs.1 >= 25,
        "jobs accepted, refused: {jobs:?}"
    );
    assert!(
        suites.0 >= 10 && suites.1 >= 25,
        "suites accepted, refused: {suites:?}"
    );
}

#[test]
fn waits_at_the_edges_of_f64_are_clamped_or_refused() {
    let max = std::time::Duration::from_secs(60);
    for (wait, ok) in [
        (-0.0, true),
        (0.0, true),
        (f64::MIN_POSITIVE, true),
        (f64::MAX, true),
        (f64::INFINITY, false),
        (f64::NAN, false),
        (-f64::MIN_POSITIVE, false),
    ] {
        assert_eq!(jobs::wait_within(Some(wait), max).is_ok(), ok, "{wait}");
    }
}
