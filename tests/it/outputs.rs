//! Files a job produces: collected from the real sandbox's `/work` after the run, listed on the
//! job, served with their size and type, capped, never through a symlink, kept across a
//! restart, visible to their tenant only, pruned and archived with their job, and fetched by
//! `kiln status --download`.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::auth::{As, create_token};
use crate::db::{self, Cell};
use crate::util::Server;

/// A job that writes `out/a.txt`, `out/b.bin` (not UTF-8), `report.json` and a file no
/// pattern names.
fn producer() -> Value {
    json!({
        "runtime": "sh",
        "code": "mkdir -p out/sub; printf hello > out/a.txt; printf '\\377\\000' > out/sub/b.bin; \
                 printf '{\"ok\":true}' > report.json; printf x > ignored.txt",
        "outputs": ["out/**", "report.json"],
    })
}

async fn fetch(server: &Server, id: &str, path: &str) -> (StatusCode, String, Vec<u8>) {
    let response = reqwest::get(format!("{}/v1/jobs/{id}/files/{path}", server.url))
        .await
        .expect("GET file");
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let bytes = response.bytes().await.expect("body").to_vec();
    (status, content_type, bytes)
}

#[tokio::test]
async fn the_files_a_job_names_are_listed_on_it_and_served_with_their_size_and_type() {
    let server = Server::start().await;
    let id = server.submit(producer()).await;
    let job = server.finished(&id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["outputs"], json!(["out/**", "report.json"]));
    assert_eq!(
        job["files_out"],
        json!([
            {"path": "out/a.txt", "size": 5, "content_type": "text/plain; charset=utf-8"},
            {"path": "out/sub/b.bin", "size": 2, "content_type": "application/octet-stream"},
            {"path": "report.json", "size": 11, "content_type": "application/json"},
        ])
    );
    assert!(job.get("files_omitted").is_none(), "{job}");

    let (status, content_type, bytes) = fetch(&server, &id, "out/sub/b.bin").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type, "application/octet-stream");
    assert_eq!(bytes, b"\xff\x00");
    let (status, _, bytes) = fetch(&server, &id, "out/a.txt").await;
    assert_eq!(
        (status, bytes.as_slice()),
        (StatusCode::OK, b"hello".as_slice())
    );
    let (status, _, body) = fetch(&server, &id, "ignored.txt").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "no pattern named it");
    let body: Value = serde_json::from_slice(&body).expect("v1 error");
    assert_eq!(body["error"]["code"], "file_not_found");

    let plain = server
        .submit(json!({"runtime": "sh", "code": "true"}))
        .await;
    let plain = server.finished(&plain).await;
    assert!(
        plain.get("files_out").is_none(),
        "a job without outputs lists none: {plain}"
    );
}

#[tokio::test]
async fn files_past_the_count_and_byte_caps_are_left_out_and_the_job_says_which_and_why() {
    let server =
        Server::start_with(&["--max-output-files", "2", "--max-output-files-bytes", "10"]).await;
    let code = "printf 1234 > a; printf 12345678 > b; printf 12 > c; printf 1 > d";
    let id = server
        .submit(json!({"runtime": "sh", "code": code, "outputs": ["?"]}))
        .await;
    let job = server.finished(&id).await;
    let kept: Vec<&str> = job["files_out"]
        .as_array()
        .expect("files_out")
        .iter()
        .map(|f| f["path"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(kept, ["a", "c"], "{job}");
    assert_eq!(
        job["files_omitted"],
        json!([
            {"path": "b", "size": 8, "reason": "too_many_bytes"},
            {"path": "d", "size": 1, "reason": "too_many_files"},
        ])
    );
    let (status, _, _) = fetch(&server, &id, "b").await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "an omitted file is not served"
    );
}

#[tokio::test]
async fn a_symlink_out_of_the_work_directory_is_never_followed() {
    let server = Server::start().await;
    let code = "ln -s /etc/passwd passwd.txt; ln -s / root; mkfifo pipe.txt; printf ok > ok.txt";
    let id = server
        .submit(json!({"runtime": "sh", "code": code, "outputs": ["*.txt", "root/etc/passwd"]}))
        .await;
    let job = server.finished(&id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(
        job["files_out"],
        json!([{"path": "ok.txt", "size": 2, "content_type": "text/plain; charset=utf-8"}])
    );
    assert_eq!(
        job["files_omitted"],
        json!([
            {"path": "passwd.txt", "size": null, "reason": "not_a_regular_file"},
            {"path": "pipe.txt", "size": null, "reason": "not_a_regular_file"},
        ])
    );
    for path in ["passwd.txt", "root/etc/passwd"] {
        let (status, _, bytes) = fetch(&server, &id, path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert!(!String::from_utf8_lossy(&bytes).contains("root:"), "{path}");
    }
}

#[tokio::test]
async fn an_output_pattern_that_escapes_the_work_directory_is_refused_and_nothing_is_stored() {
    let server = Server::start().await;
    for pattern in [
        "../x",
        "/etc/passwd",
        "out/../../etc",
        "./a",
        "a//b",
        "a\\b",
    ] {
        let job = json!({"runtime": "sh", "code": "true", "outputs": [pattern]});
        let (status, body) = server.post("/v1/jobs", &job).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{pattern}: {body}"
        );
        assert_eq!(body["error"]["code"], "invalid_request", "{body}");
        let said = body["error"]["message"].as_str().unwrap_or_default();
        assert!(said.starts_with("outputs[0]: "), "{said}");
    }
    let many: Vec<String> = (0..33).map(|i| format!("f{i}")).collect();
    let (status, body) = server
        .post(
            "/v1/jobs",
            &json!({"runtime": "sh", "code": "true", "outputs": many}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (_, list) = server.get("/v1/jobs").await;
    assert_eq!(list["jobs"], json!([]), "nothing was stored");
}

#[tokio::test]
async fn kept_files_survive_a_restart() {
    let server = Server::start().await;
    let id = server.submit(producer()).await;
    server.finished(&id).await;
    let (_, dir) = server.terminate();
    let server = Server::start_in(dir, &[]).await;
    let (status, _, bytes) = fetch(&server, &id, "out/sub/b.bin").await;
    assert_eq!(
        (status, bytes.as_slice()),
        (StatusCode::OK, b"\xff\x00".as_slice())
    );
    let job = server.finished(&id).await;
    assert_eq!(job["files_out"].as_array().map(Vec::len), Some(3), "{job}");
}

#[tokio::test]
async fn a_jobs_files_are_visible_to_its_tenant_only() {
    let dir = TempDir::new().expect("temp dir");
    let acme = create_token(dir.path(), "acme", false);
    let globex = create_token(dir.path(), "globex", false);
    let server = Server::start_in(dir, &[]).await;
    let (acme, globex) = (
        As::new(&server, Some(&acme)),
        As::new(&server, Some(&globex)),
    );
    let id = acme.submit(producer()).await;
    acme.finished(&id).await;
    let path = format!("/v1/jobs/{id}/files/out/a.txt");
    let (status, body) = globex.get(&path).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(
        body["error"]["code"], "job_not_found",
        "as if there were no such job"
    );
    let (status, body) = As::new(&server, None).get(&path).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, body) = acme.get(&path).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["raw"], "hello", "the owner reads it");
}

#[tokio::test]
async fn a_jobs_files_are_pruned_and_archived_with_it() {
    let server = Server::start().await;
    let id = server.submit(producer()).await;
    server.finished(&id).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let archive = server.dir.path().join("archive.db");
    let out = server.kiln(&[
        "prune",
        "--finished-before",
        "0s",
        "--archive",
        archive.to_str().expect("utf-8 path"),
        "--yes",
    ]);
    assert!(out.status.success(), "{out:?}");
    let (status, _, _) = fetch(&server, &id, "out/a.txt").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let files = format!("SELECT count(*) FROM job_files WHERE job_id = '{id}'");
    assert_eq!(server.count(&files), 0, "gone from the database");
    // The archive is a SQLite file whichever the backend.
    assert_eq!(
        db::sqlite_rows(&archive, &files),
        [[Cell::Int(3)]],
        "kept in the archive"
    );
    let archived = db::sqlite_rows(
        &archive,
        &format!("SELECT content FROM job_files WHERE job_id = '{id}' AND path = 'out/sub/b.bin'"),
    );
    let archived = archived[0][0].clone();
    assert_eq!(archived, Cell::Bytes(b"\xff\x00".to_vec()));
}

#[tokio::test]
async fn kiln_status_download_writes_the_kept_files_under_a_directory() {
    let server = Server::start().await;
    let id = server.submit(producer()).await;
    server.finished(&id).await;
    let out = server.kiln(&["status", &id, "--download", "got"]);
    assert!(out.status.success(), "{out:?}");
    let got = server.dir.path().join("got");
    assert_eq!(std::fs::read(got.join("out/a.txt")).expect("a"), b"hello");
    assert_eq!(
        std::fs::read(got.join("out/sub/b.bin")).expect("b"),
        b"\xff\x00"
    );
    assert_eq!(
        std::fs::read(got.join("report.json")).expect("report"),
        b"{\"ok\":true}"
    );
    assert!(!got.join("ignored.txt").exists());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("wrote 3 files to got"), "{said}");

    // The same from the command line alone: `submit --keep`, then `status --download`.
    std::fs::write(
        server.dir.path().join("make.sh"),
        "printf '\\377' > made.bin\n",
    )
    .expect("program");
    let out = server.kiln(&["submit", "make.sh", "--keep", "*.bin", "--wait", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let job: Value = serde_json::from_slice(&out.stdout).expect("the job");
    let id = job["id"].as_str().expect("id");
    let out = server.kiln(&["status", id, "--download", "."]);
    assert!(out.status.success(), "{out:?}");
    let made = std::fs::read(server.dir.path().join("made.bin")).expect("downloaded");
    assert_eq!(made, b"\xff");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("wrote 1 file to ."), "{said}");
}

#[tokio::test]
async fn a_compiled_programs_run_keeps_its_files_too() {
    let server = Server::start().await;
    let code = r#"#include <stdio.h>
int main(void) { FILE *f = fopen("result.txt", "w"); fputs("from c", f); fclose(f); return 0; }"#;
    let id = server
        .submit(json!({"runtime": "c", "code": code, "outputs": ["*.txt"]}))
        .await;
    let job = server.finished(&id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let (status, _, bytes) = fetch(&server, &id, "result.txt").await;
    assert_eq!(
        (status, bytes.as_slice()),
        (StatusCode::OK, b"from c".as_slice())
    );
}

#[tokio::test]
async fn a_cancelled_run_keeps_the_files_it_wrote_before_the_cancel() {
    let server = Server::start().await;
    let id = server
        .submit(
            json!({"runtime": "sh", "code": "printf half > part.txt; echo started; sleep 30",
                       "outputs": ["*.txt"]}),
        )
        .await;
    server.running(&id).await;
    // Time for the job to write its file before it is cancelled.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, body) = server
        .post(&format!("/v1/jobs/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut job = server.finished(&id).await;
    for _ in 0..100 {
        if job
            .get("files_out")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        job = server.finished(&id).await;
    }
    assert_eq!(job["status"], "cancelled", "{job}");
    assert_eq!(job["stdout"], "started\n", "{job}");
    assert_eq!(job["stdout_encoding"], "utf-8", "text stays text");
    assert_eq!(
        job["files_out"],
        json!([{"path": "part.txt", "size": 4, "content_type": "text/plain; charset=utf-8"}])
    );
}
