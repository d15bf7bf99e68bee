//! A run's work directory on disk, under the runner's work root: `{job id}-{attempt}`, private
//! (0700), holding the submitted code and files for a plain subprocess or a compile step, and
//! removed whatever way the run ends. Also what a run's `/work` starts with, for a sandbox that
//! writes the submitted files from memory instead.

use std::collections::BTreeMap;
use std::fs::{DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use super::{RunError, RunRequest};
use crate::job::content::Content;
use crate::sandbox::WorkFile;

/// Whether `name` is that of a run's directory: `{job id}-{attempt}`.
pub(super) fn is_run_directory(name: &str) -> bool {
    name.rsplit_once('-').is_some_and(|(job, attempt)| {
        uuid::Uuid::try_parse(job).is_ok() && attempt.parse::<u32>().is_ok()
    })
}

/// What `/work` starts with, from [`staged_entries`]' names: the files staged on disk, or
/// (`inline`) written from the request's memory.
pub(super) fn work_files<'a>(
    names: &'a [String],
    req: &RunRequest<'a>,
    source: &str,
    inline: bool,
) -> Vec<WorkFile<'a>> {
    names
        .iter()
        .map(|name| match (name.ends_with('/'), inline) {
            (true, _) => WorkFile::Dir(name),
            (false, false) => WorkFile::Staged(name),
            (false, true) => WorkFile::Inline(name, submitted(req, source, name)),
        })
        .collect()
}

/// The submitted contents of `name`: the code under the runtime's source file name (`source`),
/// or one of the files.
fn submitted<'a>(req: &RunRequest<'a>, source: &str, name: &str) -> &'a [u8] {
    if name == source {
        req.code
    } else {
        req.files
            .get(name)
            .map_or(&[], |contents| contents.as_bytes())
    }
}

/// What the code and files of a request take on the run's tmpfs, which keeps each file in whole
/// pages: counted in bytes, 257 one-byte files would not fit in the megabyte a run with a small
/// `file_bytes` gets.
pub(super) fn staged_size(req: &RunRequest<'_>) -> u64 {
    let files = req.files.values().map(Content::len);
    std::iter::once(req.code.len())
        .chain(files)
        .map(|len| in_pages(len as u64))
        .sum()
}

/// `len` bytes rounded up to whole pages.
pub(super) fn in_pages(len: u64) -> u64 {
    // SAFETY: sysconf has no preconditions; glibc reads the page size from the auxiliary vector.
    let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    len.div_ceil(page).saturating_mul(page)
}

/// A run's private directory, once populated. Removed explicitly at the end of a run; if the run
/// is dropped before that, `Drop` removes it in the background instead.
pub(super) struct WorkDir {
    pub(super) path: PathBuf,
    /// Whether anything of it may be on disk.
    pub(super) on_disk: bool,
}

impl WorkDir {
    pub(super) async fn populate(
        &mut self,
        req: &RunRequest<'_>,
        source: &str,
    ) -> Result<(), RunError> {
        self.on_disk = true;
        let path = self.path.clone();
        let source_file = source.to_owned();
        let code = req.code.to_owned();
        let files = req.files.clone();
        tokio::task::spawn_blocking(move || populate_work_dir(&path, &source_file, &code, &files))
            .await
            .unwrap_or_else(|panicked| Err(io::Error::other(panicked)))
            .map_err(|source| RunError::WorkDir {
                path: self.path.clone(),
                source,
            })
    }

    pub(super) async fn remove(mut self) {
        self.on_disk = false;
        let path = self.path.clone();
        if let Err(error) = tokio::task::spawn_blocking(move || remove_logged(&path)).await {
            tracing::warn!(%error, path = %self.path.display(), "removing work directory failed");
        }
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if !self.on_disk {
            return;
        }
        let path = std::mem::take(&mut self.path);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(move || remove_logged(&path))),
            Err(_) => remove_logged(&path),
        }
    }
}

fn populate_work_dir(
    dir: &Path,
    source_file: &str,
    code: &[u8],
    files: &BTreeMap<String, Content>,
) -> io::Result<()> {
    let create = || DirBuilder::new().mode(0o700).create(dir);
    // A directory left by a crashed earlier run of this attempt may hold anything: start clean.
    // Looked for only when creating fails, which spares the usual run a lookup.
    if let Err(error) = create() {
        if error.kind() != io::ErrorKind::AlreadyExists {
            return Err(error);
        }
        remove_tree(dir)?;
        create()?;
    }
    write_new_file(dir, source_file, code)?;
    for (name, contents) in files {
        write_new_file(dir, name, contents.as_bytes())?;
    }
    Ok(())
}

/// Names were validated on submission; checked again because a bad one would write outside
/// the work directory.
fn stays_inside(name: &str) -> io::Result<()> {
    if Path::new(name)
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
    {
        return Ok(());
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{name}: file name leaves the work directory"),
    ))
}

/// The checks [`populate_work_dir`] makes on the way, for files a sandbox writes from memory.
pub(super) fn check_inline(req: &RunRequest<'_>, source: &str) -> io::Result<()> {
    if req.files.contains_key(source) {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{source}: a submitted file has the source file's name"),
        ));
    }
    req.files.keys().try_for_each(|name| stays_inside(name))
}

fn write_new_file(dir: &Path, name: &str, contents: &[u8]) -> io::Result<()> {
    let context = |error: io::Error| io::Error::new(error.kind(), format!("{name}: {error}"));
    let relative = Path::new(name);
    stays_inside(name)?;
    // A file at the top needs no directory made: `dir` itself exists.
    if let Some(parent) = relative.parent().filter(|p| !p.as_os_str().is_empty()) {
        // Everything under `dir` was created by this function moments ago, so no component can be
        // a symlink planted by a job.
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir.join(parent))
            .map_err(context)?;
    }
    let path = dir.join(relative);
    // create_new (O_EXCL) plus O_NOFOLLOW: never write through a link, never clobber the source
    // file with a same-named extra file.
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(context)?;
    file.write_all(contents).map_err(context)
}

/// How [`copy_tree`] places each file: as a copy of its own, or as a hard link to the same
/// inode where nothing will write to it (a sandboxed run's work directory, which the sandbox only
/// reads its files from into its own `/work`), so that a shared build's binary is not copied
/// once more for every case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Placing {
    Copy,
    Link,
}

/// Copies `from` (a regular file keeping its mode, or a directory of them) to `to`. What a build
/// left may be anything the compiler was made to write, so nothing else is followed or copied:
/// a symlink, a device or a fifo among it is an error. With [`Placing::Link`] a file is linked
/// instead, or copied where it cannot be (another file system).
pub(super) fn copy_tree(from: &Path, to: &Path, placing: Placing) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(from)?;
    if meta.is_file() {
        if placing == Placing::Link && std::fs::hard_link(from, to).is_ok() {
            return Ok(());
        }
        return std::fs::copy(from, to).map(drop);
    }
    if !meta.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{}: the build left neither a file nor a directory",
                from.display()
            ),
        ));
    }
    DirBuilder::new().mode(0o755).create(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        copy_tree(&entry.path(), &to.join(entry.file_name()), placing)?;
    }
    Ok(())
}

/// What a run's `/work` must hold of the artifact a build left at `dir/artifact`: its path
/// relative to `dir`, or for a directory each directory (ending in `/`, parents first) and
/// file beneath it, each with its size.
pub(super) fn artifact_entries(dir: &Path, artifact: &str) -> io::Result<Vec<(String, u64)>> {
    let mut entries = Vec::new();
    let mut pending = vec![artifact.to_owned()];
    while let Some(relative) = pending.pop() {
        let meta = std::fs::symlink_metadata(dir.join(&relative))?;
        if meta.is_file() {
            entries.push((relative, meta.len()));
        } else if meta.is_dir() {
            entries.push((format!("{relative}/"), 0));
            let mut children: Vec<String> = std::fs::read_dir(dir.join(&relative))?
                .map(|e| e.map(|e| format!("{relative}/{}", e.file_name().to_string_lossy())))
                .collect::<io::Result<_>>()?;
            children.sort_unstable_by(|a, b| b.cmp(a));
            pending.extend(children);
        } else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{relative}: the build left neither a file nor a directory"),
            ));
        }
    }
    Ok(entries)
}

/// Removes what is at `path`, a file or a directory tree; nothing there is no error.
pub(super) fn remove_path(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => remove_tree(path),
        Ok(_) => std::fs::remove_file(path),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error),
    }
}

pub(super) fn remove_tree(path: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        result => result,
    }
}

/// Removal failure must not turn a finished run into an error: the job's result is what matters,
/// and a crashed-run leftover is cleared by the next attempt anyway.
pub(super) fn remove_logged(path: &Path) {
    if let Err(error) = remove_tree(path) {
        tracing::warn!(%error, path = %path.display(), "removing work directory failed");
    }
}

/// What gets staged for a run, relative to its work directory: every directory (ending in `/`,
/// parents first), then the source file and the submitted files.
pub(super) fn staged_entries(source_file: &str, files: &BTreeMap<String, Content>) -> Vec<String> {
    let mut dirs = std::collections::BTreeSet::new();
    for name in files.keys() {
        let mut prefix = String::new();
        let parts: Vec<&str> = name.split('/').collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            prefix.push_str(part);
            prefix.push('/');
            dirs.insert(prefix.clone());
        }
    }
    // BTreeSet order puts "a/" before "a/b/": parents first.
    let mut entries: Vec<String> = dirs.into_iter().collect();
    entries.push(source_file.to_owned());
    entries.extend(files.keys().cloned());
    entries
}
