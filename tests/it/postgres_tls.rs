//! TLS between kiln and PostgreSQL, against a real server that takes TCP connections over TLS
//! only (`hostssl` in its `pg_hba.conf`), with a CA and a server certificate for `localhost`
//! made by the `openssl` CLI when the tests start: what each `sslmode` of a database URL lets
//! `kiln serve` connect to, and what it says when it may not.
//!
//! The module's tests share one such cluster (its own, not the other tests' nor
//! `KILN_TEST_DB`'s), each with a database of its own, created over the Unix socket.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Weak};

use tempfile::TempDir;

use crate::pg::{OwnCluster, Setup};
use crate::util::{Server, serve_until_listening, sh, skip};

/// Only TLS over TCP, for anyone, trusted (no password: what is tested is the transport);
/// the Unix socket stays open to the tests' own setup.
const HBA: &str = "local all all trust\nhostssl all all 127.0.0.1/32 trust\n";

/// The cluster the running tests of this module share, if one is up.
static SHARED: tokio::sync::Mutex<Weak<TlsCluster>> = tokio::sync::Mutex::const_new(Weak::new());

static NEXT_DATABASE: AtomicU32 = AtomicU32::new(0);

/// A cluster taking only TLS, and the certificates it was set up with.
struct TlsCluster {
    cluster: OwnCluster,
    /// `ca.pem` (the CA that signed the server's certificate) and `other-ca.pem` (one that did
    /// not), among the rest of what `openssl` made.
    pki: TempDir,
}

impl TlsCluster {
    /// The module's cluster, started by the first test to need it; `None` where the host
    /// cannot run one.
    async fn shared(test: &str) -> Option<Arc<TlsCluster>> {
        let mut shared = SHARED.lock().await;
        if let Some(cluster) = shared.upgrade() {
            return Some(cluster);
        }
        if Command::new("openssl").arg("version").output().is_err() {
            skip(
                test,
                "the openssl CLI is not installed (apt-get install openssl)",
            );
            return None;
        }
        let pki = TempDir::new().expect("temp dir for the certificates");
        make_certificates(pki.path());
        let (cert, key) = (pki.path().join("server.pem"), pki.path().join("server.key"));
        let setup = Setup {
            files: &[&cert, &key],
            settings: &[
                "ssl=on",
                "ssl_cert_file=server.pem",
                "ssl_key_file=server.key",
            ],
            hba: Some(HBA),
            ..Setup::default()
        };
        let cluster = OwnCluster::start(test, &setup).await?;
        let cluster = Arc::new(TlsCluster { cluster, pki });
        *shared = Arc::downgrade(&cluster);
        Some(cluster)
    }

    fn ca(&self, name: &str) -> PathBuf {
        self.pki.path().join(name)
    }

    /// A new database, and the URL of it on `host` with these TLS `params`.
    async fn database(&self, host: &str, params: &str) -> (String, String) {
        let name = format!(
            "kiln_tls_{}_{}",
            std::process::id(),
            NEXT_DATABASE.fetch_add(1, Ordering::Relaxed)
        );
        self.cluster.create_database(&name).await;
        let url = self.url(host, &name, params);
        (name, url)
    }

    fn url(&self, host: &str, database: &str, params: &str) -> String {
        let port = self.cluster.port();
        format!("postgres://postgres@{host}:{port}/{database}?{params}")
    }
}

/// Runs `openssl` in `dir`, which must succeed.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// In `dir`: a CA (`ca.pem`), a server certificate for `localhost` only (not for 127.0.0.1)
/// signed by it (`server.pem`, `server.key`), and a second CA that signed nothing
/// (`other-ca.pem`).
fn make_certificates(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    for (name, subject) in [("ca", "/CN=kiln test CA"), ("other-ca", "/CN=another CA")] {
        let (key, cert) = (format!("{name}.key"), format!("{name}.pem"));
        let mut args = vec!["req", "-x509", "-days", "2", "-subj", subject];
        args.extend(ec);
        args.extend(["-keyout", &key, "-out", &cert]);
        args.extend(["-addext", "basicConstraints=critical,CA:TRUE"]);
        args.extend(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
        openssl(dir, &args);
    }
    let mut args = vec!["req", "-subj", "/CN=localhost", "-keyout", "server.key"];
    args.extend(ec);
    args.extend(["-out", "server.csr"]);
    openssl(dir, &args);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost\nbasicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write the server certificate's extensions");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ],
    );
}

/// Starts `kiln serve --db url` and stops it again once it listens: `Ok` if it got that far,
/// else what it said on stderr before it exited.
fn serve(url: &str) -> Result<(), String> {
    let dir = TempDir::new().expect("temp dir");
    serve_until_listening(url.as_ref(), &dir.path().join("work"), "127.0.0.1:0", &[])
}

#[tokio::test]
async fn with_verify_full_and_the_servers_ca_kiln_serve_runs_a_job_over_tls() {
    let Some(cluster) = TlsCluster::shared("postgres_tls_verify_full").await else {
        return;
    };
    // Named `localhost`, as the certificate is, and reached at 127.0.0.1, where it listens.
    let ca = cluster.ca("ca.pem");
    let params = format!(
        "hostaddr=127.0.0.1&sslmode=verify-full&sslrootcert={}",
        ca.display()
    );
    let (name, url) = cluster.database("localhost", &params).await;
    let server = Server::start_with(&["--db", &url]).await;
    let id = server.submit(sh("echo over tls")).await;
    let job = server.finished(&id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["stdout"], "over tls\n", "{job}");

    // The server's view: kiln's connections to this database are encrypted.
    let encrypted: i64 = cluster
        .cluster
        .local_client("postgres")
        .await
        .query_one(
            "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
             WHERE a.datname = $1 AND a.application_name = 'kiln' AND s.ssl",
            &[&name],
        )
        .await
        .expect("read pg_stat_ssl")
        .get(0);
    assert!(encrypted >= 1, "{encrypted} encrypted connections");

    // Operators' commands take the same URL, and so the same TLS.
    let made = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["token", "create", "--tenant", "team", "--db", &url])
        .output()
        .expect("run kiln token");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
}

#[tokio::test]
async fn with_sslmode_disable_the_server_refuses_kiln_and_kiln_says_the_server_wants_encryption() {
    let Some(cluster) = TlsCluster::shared("postgres_tls_disable").await else {
        return;
    };
    let (_, url) = cluster.database("127.0.0.1", "sslmode=disable").await;
    let refused = serve(&url).expect_err("the server takes only TLS");
    assert!(
        refused.contains("cannot open the database postgres://postgres@127.0.0.1"),
        "{refused}"
    );
    // PostgreSQL's own words, which kiln passes on rather than hiding behind "db error".
    assert!(refused.contains("no pg_hba.conf entry"), "{refused}");
    assert!(refused.contains("no encryption"), "{refused}");
}

#[tokio::test]
async fn verify_full_refuses_a_certificate_of_another_ca_or_for_another_host_and_says_so() {
    let Some(cluster) = TlsCluster::shared("postgres_tls_refused").await else {
        return;
    };
    let (name, _) = cluster.database("localhost", "").await;

    let other = cluster.ca("other-ca.pem");
    let params = format!(
        "hostaddr=127.0.0.1&sslmode=verify-full&sslrootcert={}",
        other.display()
    );
    let wrong_ca = serve(&cluster.url("localhost", &name, &params)).expect_err("unknown CA");
    assert!(
        wrong_ca.contains("certificate failed verification") && wrong_ca.contains("UnknownIssuer"),
        "{wrong_ca}"
    );
    assert!(
        wrong_ca.contains(&format!(
            "sslmode=verify-full, root certificates from {}",
            other.display()
        )),
        "the settings it ran under: {wrong_ca}"
    );

    // The right CA, but the certificate is for `localhost`, not the address kiln was given.
    let ca = cluster.ca("ca.pem");
    let params = format!("sslmode=verify-full&sslrootcert={}", ca.display());
    let wrong_host = serve(&cluster.url("127.0.0.1", &name, &params)).expect_err("wrong name");
    assert!(
        wrong_host.contains("certificate failed verification")
            && wrong_host.contains("not valid for name \"127.0.0.1\""),
        "{wrong_host}"
    );

    // verify-ca checks the chain only, so the same address is taken.
    let params = format!("sslmode=verify-ca&sslrootcert={}", ca.display());
    serve(&cluster.url("127.0.0.1", &name, &params)).expect("verify-ca ignores the name");
}

#[tokio::test]
async fn require_and_the_default_prefer_encrypt_without_a_root_certificate() {
    let Some(cluster) = TlsCluster::shared("postgres_tls_require").await else {
        return;
    };
    // The server takes nothing but TLS, so starting at all shows the connections encrypted;
    // with no root certificate, nobody checks whose certificate it is.
    let (name, url) = cluster.database("127.0.0.1", "sslmode=require").await;
    serve(&url).expect("require connects without a root certificate");
    serve(&cluster.url("127.0.0.1", &name, "")).expect("prefer is the default and uses TLS");
}
