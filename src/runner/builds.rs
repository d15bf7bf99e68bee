//! The build cache of batches: a compiled runtime's binary, built once per distinct program of a
//! batch and run by every case with that program, instead of recompiling the same code for each
//! test case. A suite of one program against many inputs builds once; a suite of many programs
//! (samples of generated code) builds each once, and identical samples share a build.
//!
//! One entry per program of a batch, keyed by a SHA-256 of everything that goes into the build
//! (the runtime, its compiler and flags, the code, every file by name and content: [`BuildKey`]),
//! under `<work root>/.builds/`: the binary (`<batch id>-<key>`) and, while the compiler runs,
//! its staging directory (`<batch id>-<key>.build`, bound into the compile's sandbox as
//! `/work`). The first case to need the binary compiles it; cases arriving meanwhile wait for that
//! build rather than start their own. A compile error is kept too, so every case reports it. A
//! batch's entries are forgotten when it completes ([`Builds::forget`], driven by the
//! `batch.completed` event) and their files go with the last case still using them; whatever a
//! crashed server left behind is swept when the next one starts.

use std::collections::HashMap;
use std::fs::DirBuilder;
use std::future::Future;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

use super::{RunError, RunOutput, remove_logged, remove_path, remove_tree};
use crate::job::BatchId;
use crate::runtime::Runtime;

/// What a build is made of, hashed: two cases share a build exactly when they match.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct BuildKey([u8; 32]);

impl BuildKey {
    pub(super) fn of(
        runtime: &Runtime,
        source: &str,
        code: &[u8],
        files: &std::collections::BTreeMap<String, crate::job::content::Content>,
    ) -> BuildKey {
        let mut hash = Sha256::new();
        // Each part is length-prefixed, so no two different builds hash the same bytes.
        let mut part = |bytes: &[u8]| {
            hash.update((bytes.len() as u64).to_le_bytes());
            hash.update(bytes);
        };
        part(runtime.name.as_bytes());
        if let Some(compile) = &runtime.compile {
            for word in compile.command.identity() {
                part(word);
            }
            part(compile.artifact.as_bytes());
        }
        part(source.as_bytes());
        part(code);
        for (name, content) in files {
            part(name.as_bytes());
            part(content.as_bytes());
        }
        BuildKey(hash.finalize().into())
    }

    /// Enough of the hash to name the entry's files apart.
    fn short(&self) -> String {
        self.0[..8].iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// A batch's build, once it has run: the binary, or how it failed (the compiler's refusal, or
/// a limit the build reached).
pub(super) enum Built {
    Artifact(PathBuf),
    Failed(RunOutput),
}

/// Why a build left nothing to share: it was cancelled (the case's own outcome), or could not
/// run at all. The next case to need it tries again.
pub(super) enum NotBuilt {
    Cancelled(RunOutput),
    Error(RunError),
}

impl From<RunError> for NotBuilt {
    fn from(e: RunError) -> Self {
        NotBuilt::Error(e)
    }
}

pub struct Builds {
    root: PathBuf,
    entries: Mutex<HashMap<(BatchId, BuildKey), Arc<Entry>>>,
}

pub(super) struct Entry {
    built: OnceCell<Built>,
    artifact: PathBuf,
    staging: PathBuf,
}

impl Builds {
    /// A cache under `root`, emptied of what an earlier server left there.
    pub(super) fn new(root: PathBuf) -> io::Result<Builds> {
        remove_tree(&root)?;
        Ok(Builds {
            root,
            entries: Mutex::default(),
        })
    }

    /// The entry of one program of the batch, created empty on first use.
    pub(super) fn entry(&self, batch: BatchId, key: BuildKey) -> Arc<Entry> {
        let mut entries = self.lock();
        let entry = entries.entry((batch, key)).or_insert_with(|| {
            let name = format!("{batch}-{}", key.short());
            Arc::new(Entry {
                built: OnceCell::new(),
                staging: self.root.join(format!("{name}.build")),
                artifact: self.root.join(name),
            })
        });
        Arc::clone(entry)
    }

    /// Creates the cache directory; traversable but not listable, like the work root, so a
    /// compile's sandbox can reach its staging directory.
    pub(super) async fn prepare(&self) -> io::Result<()> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || {
            DirBuilder::new().recursive(true).mode(0o711).create(root)
        })
        .await
        .unwrap_or_else(|panicked| Err(io::Error::other(panicked)))
    }

    /// Drops the batch's builds: their files are removed once no case holds them any more.
    pub fn forget(&self, batch: BatchId) {
        self.lock().retain(|(of, _), _| *of != batch);
    }

    /// The batches with a build in the cache.
    pub fn batches(&self) -> Vec<BatchId> {
        let batches: std::collections::BTreeSet<BatchId> =
            self.lock().keys().map(|(batch, _)| *batch).collect();
        batches.into_iter().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(BatchId, BuildKey), Arc<Entry>>> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Entry {
    /// The build, running `build` if no case has built it yet; waits while another case is
    /// building it. A failed `build` leaves the entry empty for the next caller.
    pub(super) async fn get_or_build<F, Fut>(&self, build: F) -> Result<&Built, NotBuilt>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Built, NotBuilt>>,
    {
        self.built.get_or_try_init(build).await
    }

    /// Where the artifact is kept.
    pub(super) fn artifact(&self) -> &Path {
        &self.artifact
    }

    /// Where the compiler works.
    pub(super) fn staging(&self) -> &Path {
        &self.staging
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        let artifact = std::mem::take(&mut self.artifact);
        let staging = std::mem::take(&mut self.staging);
        let remove = move || {
            if let Err(error) = remove_path(&artifact) {
                tracing::warn!(%error, path = %artifact.display(), "removing a batch build failed");
            }
            remove_logged(&staging);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(remove)),
            Err(_) => remove(),
        }
    }
}
