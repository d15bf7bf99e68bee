//! Network namespaces for sandboxes, made once and used by one run after another.
//!
//! A fresh network namespace is the dearest part of a sandbox: creating one (every protocol's
//! per-namespace state) and the kernel's asynchronous teardown afterwards cost about 0.8 ms of
//! CPU a run on the machines we measured, more than the rest of the namespaces together. Jobs
//! get no network (seccomp allows `AF_UNIX` sockets only), so what a run's network namespace
//! isolates is its abstract UNIX socket names and, where a deployment allows IP, its loopback.
//! Both belong to sockets, and sockets die with the processes holding them: once every process
//! of a run is gone, its namespace holds nothing of it, and the next run can have it.
//!
//! So a [`NetPool`] hands each sandbox a namespace of its own ([`NetLease`]) for as long as the
//! sandbox lives, and takes it back only once the sandbox's init has been reaped — when the
//! kernel has killed and released every process of its pid namespace. A sandbox that could not
//! be confirmed dead returns nothing: its namespace is dropped. Two sandboxes never hold the same
//! namespace at once.
//!
//! The namespaces are made by the server (the host's root), so no job holds a capability in
//! them: it cannot configure an interface, a route or a filter, and finds each one as new.
//! Their loopback stays down, as in a namespace made by `clone`.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

/// Namespaces kept for reuse, and the server's own to come back to.
pub struct NetPool {
    host: OwnedFd,
    idle: Mutex<Vec<OwnedFd>>,
}

/// How many unused namespaces are kept: enough for every sandbox of a large worker pool; those
/// over it are freed.
const MAX_IDLE: usize = 64;

/// One sandbox's network namespace, until it is given back by [`NetLease::release`] (dropping it
/// frees the namespace instead).
pub struct NetLease {
    fd: OwnedFd,
    pool: Arc<NetPool>,
}

impl NetPool {
    /// Must be called on a thread in the server's own network namespace.
    pub fn new() -> io::Result<Arc<NetPool>> {
        Ok(Arc::new(NetPool {
            host: open_own()?,
            idle: Mutex::new(Vec::new()),
        }))
    }

    /// A namespace no sandbox holds: an idle one, else a new one.
    pub fn take(self: &Arc<Self>) -> io::Result<NetLease> {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let fd = match idle {
            Some(fd) => fd,
            None => self.create()?,
        };
        Ok(NetLease {
            fd,
            pool: Arc::clone(self),
        })
    }

    /// Runs `f` (a `clone` that should inherit the namespace) with this thread in `lease`'s
    /// namespace, then puts the thread back in the server's. Nothing else can run on the thread
    /// in between: `f` is synchronous.
    pub fn within<T>(&self, lease: &NetLease, f: impl FnOnce() -> T) -> io::Result<T> {
        set_ns(&lease.fd)?;
        let result = f();
        self.back_home();
        Ok(result)
    }

    fn create(&self) -> io::Result<OwnedFd> {
        // SAFETY: unshare takes flags only; it moves this thread alone into a new namespace.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let created = open_own();
        self.back_home();
        created
    }

    /// A server thread left in a sandbox's namespace would open its sockets there: if the way
    /// back fails, nothing the server does afterwards can be trusted, so it stops.
    fn back_home(&self) {
        if let Err(error) = set_ns(&self.host) {
            tracing::error!(%error, "cannot return to the server's network namespace");
            std::process::abort();
        }
    }
}

impl NetLease {
    /// Gives the namespace back. Call only once every process that was in it is gone.
    pub fn release(self) {
        let mut idle = self.pool.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(self.fd);
        }
    }
}

fn open_own() -> io::Result<OwnedFd> {
    // SAFETY: a NUL-terminated path; the result is a new descriptor or -1.
    let fd = unsafe {
        libc::open(
            c"/proc/thread-self/ns/net".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: just opened, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn set_ns(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: setns on a live namespace descriptor; it changes this thread only.
    if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn inode(fd: &OwnedFd) -> u64 {
        std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .expect("namespace fd")
            .ino()
    }

    fn own_inode() -> u64 {
        std::fs::metadata("/proc/thread-self/ns/net")
            .expect("own network namespace")
            .ino()
    }

    #[test]
    fn a_released_namespace_is_handed_out_again_and_a_dropped_one_never() {
        let pool = NetPool::new().expect("pool");
        let host = own_inode();
        let first = pool.take().expect("a namespace");
        let second = pool.take().expect("another namespace");
        let (a, b) = (inode(&first.fd), inode(&second.fd));
        assert!(a != host && b != host && a != b, "{a} {b} host {host}");

        first.release();
        let again = pool.take().expect("the released namespace");
        assert_eq!(inode(&again.fd), a, "a released namespace is reused");

        drop(second);
        assert!(
            pool.idle.lock().expect("idle list").is_empty(),
            "a namespace dropped without release is not kept"
        );
    }

    #[test]
    fn a_clone_within_a_lease_runs_in_it_and_the_thread_comes_back() {
        let pool = NetPool::new().expect("pool");
        let host = own_inode();
        let lease = pool.take().expect("a namespace");
        let inside = pool.within(&lease, own_inode).expect("entered");
        assert_eq!(inside, inode(&lease.fd));
        assert_eq!(
            own_inode(),
            host,
            "the thread is back in the server's namespace"
        );
    }
}
