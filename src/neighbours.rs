//! The other kiln servers running on this host, as far as they share what two servers must not:
//! a work root (each server sweeps it at start and stages its runs in it) or host uids of the
//! sandbox (two servers' jobs running as one uid could signal or trace each other). The defaults
//! (`$TMPDIR/kiln-work`, uids from 200000) are the same for every server started without flags,
//! so the collision is an easy one to make and a hard one to see.
//!
//! Each server enters a register while it runs: a file named by its pid in
//! `$TMPDIR/kiln-servers`, saying its work root and uid range, under an exclusive `flock` held
//! for the server's life. The kernel drops the lock when the process ends however it ends, so an
//! entry whose lock can be taken is a server that is gone, and is removed. A server that finds
//! a live one it collides with warns at start and goes on: two servers may share a work root on
//! purpose for a moment (a migration), but the operator should know.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What a server says of itself in the register.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Neighbour {
    pub pid: u32,
    pub listen: String,
    pub work_root: PathBuf,
    /// The host uids its sandboxes use, `first..end`; `None` without a sandbox.
    pub uids: Option<(u32, u32)>,
}

/// A live server that shares something with this one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Clash {
    WorkRoot(Neighbour),
    Uids(Neighbour),
}

impl std::fmt::Display for Clash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Clash::WorkRoot(other) => write!(
                f,
                "another live kiln server (pid {}, listening on {}) uses the work root {}: each \
                 sweeps it at start and stages its runs there; give each server its own \
                 --work-root",
                other.pid,
                other.listen,
                other.work_root.display()
            ),
            Clash::Uids(other) => {
                let (first, end) = other.uids.unwrap_or_default();
                write!(
                    f,
                    "another live kiln server (pid {}, listening on {}) runs its jobs as host \
                     uids {first}..{end}, which overlap this server's: their jobs could share a \
                     uid; give each server its own --sandbox-uid-base, {} or more apart",
                    other.pid,
                    other.listen,
                    end - first
                )
            }
        }
    }
}

/// This server's entry in the register, removed when dropped (at the end of `kiln serve`).
pub struct Registration {
    path: PathBuf,
    /// Holds the lock that says the server lives.
    _file: File,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Where servers register unless told otherwise.
pub fn default_register() -> PathBuf {
    std::env::temp_dir().join("kiln-servers")
}

/// Enters `me` in the register at `dir` and returns the live servers it clashes with.
pub fn register(dir: &Path, me: &Neighbour) -> io::Result<(Registration, Vec<Clash>)> {
    if !dir.is_dir() {
        std::fs::create_dir_all(dir)?;
        // Like /tmp: every user's server may enter, none may remove another's entry.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o1777))?;
    }
    let clashes = live(dir)?
        .into_iter()
        .filter(|other| other.pid != me.pid)
        .filter_map(|other| clash(me, other))
        .collect();
    // Locked before it gets its name, so that no one finds it unlocked and takes it for stale.
    let partial = dir.join(format!(".{}.partial", me.pid));
    let mut file = File::create(&partial)?;
    lock(&file, libc::LOCK_EX)?;
    file.write_all(
        serde_json::to_string(me)
            .map_err(io::Error::other)?
            .as_bytes(),
    )?;
    let path = dir.join(me.pid.to_string());
    std::fs::rename(&partial, &path)?;
    Ok((Registration { path, _file: file }, clashes))
}

/// The servers in the register at `dir` that still run, by pid, removing those that do not.
pub fn live(dir: &Path) -> io::Result<Vec<Neighbour>> {
    let mut found = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(found),
        entries => entries?,
    };
    for entry in entries {
        let path = entry?.path();
        let named_by_pid = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<u32>().ok());
        if named_by_pid.is_none() {
            continue;
        }
        let Ok(file) = File::open(&path) else {
            continue;
        };
        if lock(&file, libc::LOCK_SH | libc::LOCK_NB).is_ok() {
            // Nobody holds it: its server is gone.
            let _ = std::fs::remove_file(&path);
            continue;
        }
        let neighbour = std::fs::read_to_string(&path)
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok());
        found.extend(neighbour);
    }
    found.sort_by_key(|server| server.pid);
    Ok(found)
}

/// Each pair of `servers` that clash: a server, and what another shares with it.
pub fn clashes_among(servers: &[Neighbour]) -> Vec<(&Neighbour, Clash)> {
    let mut found = Vec::new();
    for (i, one) in servers.iter().enumerate() {
        for other in &servers[i + 1..] {
            found.extend(clash(one, other.clone()).map(|clash| (one, clash)));
        }
    }
    found
}

fn clash(me: &Neighbour, other: Neighbour) -> Option<Clash> {
    let real = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    if real(&me.work_root) == real(&other.work_root) {
        return Some(Clash::WorkRoot(other));
    }
    match (me.uids, other.uids) {
        (Some((a, b)), Some((c, d))) if a < d && c < b => Some(Clash::Uids(other)),
        _ => None,
    }
}

fn lock(file: &File, how: libc::c_int) -> io::Result<()> {
    // SAFETY: flock on a descriptor this File owns.
    match unsafe { libc::flock(file.as_raw_fd(), how) } {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(pid: u32, work_root: &Path, uids: Option<(u32, u32)>) -> Neighbour {
        Neighbour {
            pid,
            listen: "127.0.0.1:8000".into(),
            work_root: work_root.to_path_buf(),
            uids,
        }
    }

    #[test]
    fn servers_clash_on_one_work_root_or_overlapping_uids_and_not_otherwise() {
        let (a, b) = (Path::new("/srv/a"), Path::new("/srv/b"));
        let me = server(1, a, Some((200_000, 210_001)));
        let same_root = server(2, a, Some((300_000, 310_001)));
        let overlapping = server(3, b, Some((205_000, 215_001)));
        let apart = server(4, b, Some((210_001, 220_002)));
        let unsandboxed = server(5, b, None);
        assert_eq!(
            clash(&me, same_root.clone()),
            Some(Clash::WorkRoot(same_root))
        );
        assert_eq!(
            clash(&me, overlapping.clone()),
            Some(Clash::Uids(overlapping))
        );
        assert_eq!(clash(&me, apart), None);
        assert_eq!(clash(&me, unsandboxed), None);
    }

    #[test]
    fn an_entry_whose_server_is_gone_is_removed_and_a_live_one_is_found() {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join("work");
        // A server that died without removing its entry: nobody holds its lock.
        std::fs::write(
            dir.path().join("999999"),
            serde_json::to_string(&server(999_999, &root, None)).expect("json"),
        )
        .expect("write");
        let first = server(1, &root, None);
        let (held, clashes) = register(dir.path(), &first).expect("register");
        assert!(clashes.is_empty(), "{clashes:?}");
        assert!(
            !dir.path().join("999999").exists(),
            "the stale entry is gone"
        );
        let (_second, clashes) = register(dir.path(), &server(2, &root, None)).expect("register");
        assert_eq!(clashes, vec![Clash::WorkRoot(first)]);
        drop(held);
        assert!(
            !dir.path().join("1").exists(),
            "removed when the server ends"
        );
    }

    #[test]
    fn of_several_servers_each_pair_that_shares_something_is_named_once() {
        let (a, b, c) = (Path::new("/a"), Path::new("/b"), Path::new("/c"));
        let servers = [
            server(1, a, Some((200_000, 210_001))),
            server(2, a, Some((300_000, 310_001))),
            server(3, b, Some((305_000, 315_001))),
            server(4, c, None),
        ];
        let found: Vec<(u32, u32)> = clashes_among(&servers)
            .into_iter()
            .map(|(one, clash)| match clash {
                Clash::WorkRoot(other) | Clash::Uids(other) => (one.pid, other.pid),
            })
            .collect();
        assert_eq!(found, vec![(1, 2), (2, 3)]);
    }
}
