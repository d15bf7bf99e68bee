//! The dashboard in a real browser: `tests/browser/dashboard.mjs` drives Debian's Chromium
//! through playwright-core (pinned in `tests/browser/package-lock.json`, installed by `npm ci`
//! under the target directory) against a real server with tokens for an admin and two tenants,
//! and checks what a person sees: the overview with no console errors, a job appearing and
//! ending live, output streaming, cancel, a suite's grid filling in with the API's counts, and
//! a tenant seeing only its own jobs. Its screenshots land in the target directory
//! (`dashboard-screenshots/`). A host without Chromium, Node.js or the npm registry skips, which
//! `KILN_TEST_STRICT=1` turns into a failure. Serving the page itself is checked without one.

use std::path::{Path, PathBuf};
use std::process::Command;

use reqwest::StatusCode;
use tempfile::TempDir;

use crate::auth::create_token;
use crate::util::{Server, skip};

const BROWSER_TESTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser");
const CHROMIUM: &str = "/usr/bin/chromium";

/// playwright-core installed from the lock file, under the target directory.
fn node_modules() -> Result<PathBuf, String> {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser-tests");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    for file in ["package.json", "package-lock.json"] {
        std::fs::copy(Path::new(BROWSER_TESTS).join(file), dir.join(file))
            .map_err(|e| format!("{file}: {e}"))?;
    }
    if !Path::new(CHROMIUM).exists() {
        return Err(format!("no {CHROMIUM} (apt-get install chromium)"));
    }
    let out = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(&dir)
        .output()
        .map_err(|e| format!("cannot run npm (apt-get install npm): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "npm ci failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(dir.join("node_modules"))
}

#[tokio::test]
async fn the_page_and_its_assets_are_served_from_the_binary_with_a_strict_policy_and_no_token() {
    let dir = TempDir::new().expect("temp dir");
    create_token(dir.path(), "acme", false);
    let server = Server::start_in(dir, &[]).await;
    let http = reqwest::Client::new();
    for (path, kind) in [
        ("/", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
    ] {
        let response = http
            .get(format!("{}{path}", server.url))
            .send()
            .await
            .expect("GET");
        assert_eq!(response.status(), StatusCode::OK, "{path} needs no token");
        let headers = response.headers().clone();
        assert!(headers["content-type"].to_str().unwrap().starts_with(kind));
        let policy = headers["content-security-policy"].to_str().unwrap();
        assert!(
            policy.contains("script-src 'self'") && policy.contains("frame-ancestors 'none'"),
            "{policy}"
        );
        let tag = headers["etag"].clone();
        let again = http
            .get(format!("{}{path}", server.url))
            .header("if-none-match", tag)
            .send()
            .await
            .expect("GET again");
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{path}");
    }
    let page = reqwest::get(format!("{}/", server.url))
        .await
        .expect("GET /")
        .text()
        .await
        .expect("the page");
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "nothing is fetched from elsewhere: {page}"
    );
    let (status, body) = server.get("/ui/secrets.txt").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, _) = server.get("/v1/jobs").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "the API still needs one");
}

#[test]
fn the_first_load_is_small() {
    let total: u64 = [
        "dashboard/index.html",
        "dashboard/app.js",
        "dashboard/app.css",
    ]
    .iter()
    .map(|file| {
        std::fs::metadata(Path::new(env!("CARGO_MANIFEST_DIR")).join(file))
            .expect("an asset")
            .len()
    })
    .sum();
    assert!(total <= 200 * 1024, "{total} bytes");
}

#[tokio::test]
async fn in_chromium_the_dashboard_shows_the_queue_jobs_and_suites_live_and_each_tenant_its_own() {
    let modules = match tokio::task::spawn_blocking(node_modules)
        .await
        .expect("npm ran")
    {
        Ok(modules) => modules,
        Err(why) => {
            skip(
                "in_chromium_the_dashboard_shows_the_queue_jobs_and_suites_live_and_each_tenant_its_own",
                &why,
            );
            return;
        }
    };
    let dir = TempDir::new().expect("temp dir");
    let admin = create_token(dir.path(), "ops", true);
    let acme = create_token(dir.path(), "acme", false);
    let globex = create_token(dir.path(), "globex", false);
    let server = Server::start_in(dir, &[]).await;
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
    let out = tokio::process::Command::new("node")
        .arg(Path::new(BROWSER_TESTS).join("dashboard.mjs"))
        .env("KILN_URL", &server.url)
        .env("KILN_ADMIN_TOKEN", admin)
        .env("KILN_ACME_TOKEN", acme)
        .env("KILN_GLOBEX_TOKEN", globex)
        .env("KILN_NODE_MODULES", modules)
        .env("KILN_SCREENSHOTS", &shots)
        .env("CHROMIUM", CHROMIUM)
        .output()
        .await
        .expect("run node");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the browser run failed:\n{report}\n{}\n(server log in {})",
        String::from_utf8_lossy(&out.stderr),
        server.dir.path().display()
    );
    assert!(
        report.contains("ok: a tenant's token lists only"),
        "{report}"
    );
    assert!(shots.join("overview.png").exists() && shots.join("suite.png").exists());
}
