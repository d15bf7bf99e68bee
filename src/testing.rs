//! What a test does when the host cannot run it. A skip is a note on a developer's machine
//! (no root, an old kernel) but a failure under `KILN_TEST_STRICT=1`, which CI sets after
//! installing everything the tests need: there, a skipped test is a broken host, not a pass.
//!
//! The integration tests include this file as their own module (`tests/it/util.rs`), so that
//! "strict" means one thing in both: it names nothing of kiln's.

/// Says why the calling test cannot run here; the test returns right after. Panics instead when
/// `KILN_TEST_STRICT=1`.
#[track_caller]
pub(crate) fn skip(test: &str, why: &str) {
    if std::env::var_os("KILN_TEST_STRICT").is_some_and(|strict| strict == "1") {
        panic!(
            "{test}: this host cannot run the test ({why}), and KILN_TEST_STRICT=1 forbids a skip"
        );
    }
    eprintln!("{test}: skipped: {why}");
}
