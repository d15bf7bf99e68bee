//! The files a run produced, collected once it is over: its work directory (the sandbox's
//! `/work` tmpfs, held from the server's side past the sandbox's end, or the run directory on
//! disk) is walked for the regular files its `outputs` match, kept within the [`OutputCaps`].
//!
//! What the job left there is hostile. The walk never follows a symlink: each name is opened
//! from its parent directory's descriptor with `O_NOFOLLOW`, so neither `out.txt ->
//! /etc/shadow` nor a directory `out -> /` leads anywhere. A file is opened `O_NONBLOCK` and
//! read only once `fstat` says it is regular, so a FIFO cannot hold the worker. At most
//! [`MAX_ENTRIES`] entries are looked at, [`MAX_DEPTH`] directories deep, for [`MAX_WALK`] at
//! most, and only directories a pattern reaches into are entered. Names that are not UTF-8
//! match no pattern.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::job::outputs::{
    Collected, Omission, OmittedFile, OutputCaps, OutputFile, content_type, matches,
    may_hold_matches,
};

/// Most directory entries one collection looks at.
pub(super) const MAX_ENTRIES: usize = 100_000;

/// Deepest directory a collection enters.
pub(super) const MAX_DEPTH: usize = 64;

/// Longest a collection may take: the job chooses its patterns and its file names, so matching
/// them is bounded by time too, not only by their count.
pub(super) const MAX_WALK: Duration = Duration::from_secs(2);

/// Most omitted files listed; more are left out of the list too.
pub(super) const MAX_OMITTED: usize = 64;

/// The matching files under `root`, a descriptor of the work directory (`O_PATH` will do).
pub(super) fn collect(
    root: &OwnedFd,
    patterns: &[String],
    caps: OutputCaps,
) -> io::Result<Collected> {
    let top = open_at(root, c".", libc::O_RDONLY | libc::O_DIRECTORY)?;
    let mut walk = Walk {
        patterns,
        caps,
        deadline: Instant::now() + MAX_WALK,
        seen: 0,
        kept_bytes: 0,
        collected: Collected::default(),
    };
    walk.dir(&top, "", 0)?;
    Ok(walk.collected)
}

/// A descriptor of the run directory on disk, for a run outside the sandbox.
pub(super) fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    let path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: `path` is a NUL-terminated string that lives through the call.
    let fd = unsafe { libc::open(path.as_ptr(), flags) };
    owned(fd)
}

struct Walk<'a> {
    patterns: &'a [String],
    caps: OutputCaps,
    deadline: Instant,
    seen: usize,
    kept_bytes: u64,
    collected: Collected,
}

impl Walk<'_> {
    fn dir(&mut self, dir: &OwnedFd, prefix: &str, depth: usize) -> io::Result<()> {
        let listing = std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))?;
        let mut entries = Vec::new();
        for entry in listing {
            // A directory of a million names is not listed whole: the walk would stop anyway.
            if self.seen + entries.len() >= MAX_ENTRIES || Instant::now() > self.deadline {
                break;
            }
            let entry = entry?;
            // The type the directory itself records: never what a symlink points to.
            let kind = entry.file_type()?;
            if let Ok(name) = entry.file_name().into_string() {
                entries.push((name, kind));
            }
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, kind) in entries {
            self.seen += 1;
            if self.seen > MAX_ENTRIES || Instant::now() > self.deadline {
                return Ok(());
            }
            let path = match prefix {
                "" => name.clone(),
                _ => format!("{prefix}/{name}"),
            };
            let Ok(c_name) = CString::new(name) else {
                continue;
            };
            if kind.is_dir() {
                if depth < MAX_DEPTH && may_hold_matches(self.patterns, &path) {
                    let flags = libc::O_RDONLY | libc::O_DIRECTORY;
                    if let Ok(sub) = open_at(dir, &c_name, flags) {
                        self.dir(&sub, &path, depth + 1)?;
                    }
                }
                continue;
            }
            if !self.patterns.iter().any(|pattern| matches(pattern, &path)) {
                continue;
            }
            if kind.is_file() {
                self.file(dir, &c_name, path);
            } else {
                self.omit(path, None, Omission::NotARegularFile);
            }
        }
        Ok(())
    }

    fn file(&mut self, dir: &OwnedFd, name: &std::ffi::CStr, path: String) {
        // ELOOP if a symlink took the file's place since the listing.
        let Ok(fd) = open_at(dir, name, libc::O_RDONLY | libc::O_NONBLOCK) else {
            return self.omit(path, None, Omission::NotARegularFile);
        };
        let file = File::from(fd);
        let size = match file.metadata() {
            Ok(meta) if meta.is_file() => meta.len(),
            _ => return self.omit(path, None, Omission::NotARegularFile),
        };
        if self.collected.files.len() >= self.caps.max_files {
            return self.omit(path, Some(size), Omission::TooManyFiles);
        }
        let room = self.caps.max_bytes.saturating_sub(self.kept_bytes);
        if size > room {
            return self.omit(path, Some(size), Omission::TooManyBytes);
        }
        let mut contents = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        // One byte more than there is room for tells a file that grew past it.
        if file
            .take(room.saturating_add(1))
            .read_to_end(&mut contents)
            .is_err()
        {
            return self.omit(path, Some(size), Omission::NotARegularFile);
        }
        let size = contents.len() as u64;
        if size > room {
            return self.omit(path, Some(size), Omission::TooManyBytes);
        }
        self.kept_bytes += size;
        let content_type = content_type(&path, &contents).to_owned();
        self.collected.files.push(OutputFile {
            path,
            size,
            content_type,
            contents,
        });
    }

    fn omit(&mut self, path: String, size: Option<u64>, reason: Omission) {
        if self.collected.omitted.len() < MAX_OMITTED {
            self.collected
                .omitted
                .push(OmittedFile { path, size, reason });
        }
    }
}

/// `name` in `dir`, never through a symlink, never becoming the controlling terminal.
fn open_at(dir: &OwnedFd, name: &std::ffi::CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    let flags = flags | libc::O_NOFOLLOW | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: `dir` is an open descriptor and `name` a NUL-terminated string, both alive
    // through the call.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags) };
    owned(fd)
}

fn owned(fd: libc::c_int) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor just returned by open, owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn collected(dir: &Path, patterns: &[&str], caps: OutputCaps) -> Collected {
        let patterns: Vec<String> = patterns.iter().map(|p| (*p).to_owned()).collect();
        let root = open_dir(dir).expect("open the directory");
        collect(&root, &patterns, caps).expect("collect")
    }

    #[test]
    fn matching_regular_files_are_kept_and_symlinks_and_fifos_are_not_followed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("out/deep")).expect("dirs");
        std::fs::write(root.join("out/a.txt"), "a").expect("a");
        std::fs::write(root.join("out/deep/b.bin"), b"\xff\x00").expect("b");
        std::fs::write(root.join("other.txt"), "not asked for").expect("other");
        symlink("/etc/passwd", root.join("out/link.txt")).expect("symlink");
        symlink("/etc", root.join("out/etc")).expect("dir symlink");
        let fifo = CString::new(root.join("out/pipe.txt").as_os_str().as_bytes()).expect("path");
        // SAFETY: a valid path string.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);

        let found = collected(root, &["out/**", "out/etc/passwd"], OutputCaps::default());
        let kept: Vec<(&str, u64)> = found
            .files
            .iter()
            .map(|f| (f.path.as_str(), f.size))
            .collect();
        assert_eq!(kept, [("out/a.txt", 1), ("out/deep/b.bin", 2)]);
        assert_eq!(found.files[1].contents, b"\xff\x00");
        assert_eq!(found.files[1].content_type, "application/octet-stream");
        let omitted: Vec<(&str, Omission)> = found
            .omitted
            .iter()
            .map(|f| (f.path.as_str(), f.reason))
            .collect();
        assert_eq!(
            omitted,
            [
                ("out/etc", Omission::NotARegularFile),
                ("out/link.txt", Omission::NotARegularFile),
                ("out/pipe.txt", Omission::NotARegularFile),
            ]
        );
    }

    #[test]
    fn files_past_the_caps_are_listed_as_omitted_with_why() {
        let dir = tempfile::tempdir().expect("temp dir");
        for (name, size) in [("a", 4), ("b", 10), ("c", 2), ("d", 1)] {
            std::fs::write(dir.path().join(name), vec![b'x'; size]).expect("file");
        }
        let caps = OutputCaps {
            max_files: 2,
            max_bytes: 8,
        };
        let found = collected(dir.path(), &["*"], caps);
        let kept: Vec<&str> = found.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(kept, ["a", "c"]);
        let omitted: Vec<(&str, Option<u64>, Omission)> = found
            .omitted
            .iter()
            .map(|f| (f.path.as_str(), f.size, f.reason))
            .collect();
        assert_eq!(
            omitted,
            [
                ("b", Some(10), Omission::TooManyBytes),
                ("d", Some(1), Omission::TooManyFiles),
            ]
        );
    }
}
