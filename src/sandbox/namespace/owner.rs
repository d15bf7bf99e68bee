//! Who a sandbox's user namespace belongs to: the host uid its per-user kernel counts are charged
//! to.
//!
//! The kernel keeps counts per user — inotify instances and watches, fanotify groups and marks,
//! pending signals, POSIX message queue bytes, locked shared memory, processes, namespaces — and
//! keeps them per user namespace: a count taken inside a namespace is charged to the user there,
//! *and* to the namespace's owner (the effective uid that created it) in the parent namespace,
//! against the parent's limits, and so on up to the host. A sandbox made by the server as the
//! host's root therefore spent root's allowances: one job holding 128 inotify instances left
//! every other job and every root process on the host with `EMFILE` from `inotify_init1`, and
//! the same held for signals queued, message queues and locked memory. Limits written into the
//! namespace's `/proc/sys/user/*` do not help: they bound the count inside, but every unit is
//! still charged to the owner outside.
//!
//! So the user namespace is created by the job's own host uid (its slot's, unprivileged, in use
//! by no other run): [`as_owner`] runs the `clone3` that makes it with that effective uid. Every
//! count of the sandbox is then that uid's alone, within the host's per-user limits, and root and
//! the other slots keep theirs whole. Owning the namespace gives capabilities in it only to
//! processes of that uid *outside* it, and there are none: the job runs inside, and at the
//! `namespaces` level (no user namespace) nothing is created for it to own.

use std::io;

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Runs `f` — the `clone3` that creates a sandbox's user namespace — with this thread's effective
/// uid set to `owner`, then puts the thread's credentials back as they were.
///
/// Only this thread changes: the raw `setresuid` acts on the calling thread alone (libc's wrapper
/// would change every thread of the server), and the real and saved uids stay as they are, which
/// is what lets it come back. Leaving uid 0 clears the effective capabilities, and the clone
/// needs them (the cgroup init is born into, the other namespaces): they are raised again from
/// the permitted set, which an effective uid change keeps. A few system calls, while a sandbox is
/// made ready, off the path of a run.
pub(super) fn as_owner<T>(owner: u32, f: impl FnOnce() -> T) -> io::Result<T> {
    // SAFETY: geteuid cannot fail; it reads this thread's credentials.
    let euid = unsafe { libc::geteuid() };
    if euid == owner {
        return Ok(f());
    }
    let caps = capget()?;
    let raised = caps.map(|set| CapData {
        effective: set.permitted,
        ..set
    });
    set_euid(owner)?;
    if let Err(e) = capset(&raised) {
        restore(euid, &caps);
        return Err(e);
    }
    let result = f();
    restore(euid, &caps);
    Ok(result)
}

/// A server thread left with another uid or fewer capabilities cannot be trusted with what it
/// runs next: if the way back fails, the server stops.
fn restore(euid: u32, caps: &[CapData; 2]) {
    if let Err(error) = set_euid(euid).and_then(|()| capset(caps)) {
        tracing::error!(%error, "cannot restore a thread's credentials after making a sandbox");
        std::process::abort();
    }
}

fn set_euid(euid: u32) -> io::Result<()> {
    let unchanged = libc::uid_t::MAX;
    // SAFETY: setresuid takes three ids; on this thread only (the raw call, not libc's).
    let rc = unsafe { libc::syscall(libc::SYS_setresuid, unchanged, euid, unchanged) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn capget() -> io::Result<[CapData; 2]> {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: both point at live values of the kernel's layout; pid 0 is this thread.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &raw mut header, data.as_mut_ptr()) };
    if rc == 0 {
        Ok(data)
    } else {
        Err(io::Error::last_os_error())
    }
}

fn capset(caps: &[CapData; 2]) -> io::Result<()> {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    // SAFETY: both point at live values of the kernel's layout; pid 0 is this thread.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &raw mut header, caps.as_ptr()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds() -> (u32, u32, u32, [CapData; 2]) {
        let (mut r, mut e, mut s) = (0, 0, 0);
        // SAFETY: getresuid writes three ids.
        assert_eq!(unsafe { libc::getresuid(&mut r, &mut e, &mut s) }, 0);
        (r, e, s, capget().expect("capget"))
    }

    /// The owner is the effective uid during `f` only, with the capabilities `f` needs, and
    /// this thread comes back exactly as it was.
    #[test]
    fn runs_as_the_owner_with_its_capabilities_and_comes_back() {
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            crate::testing::skip(
                "runs_as_the_owner_with_its_capabilities_and_comes_back",
                "needs root",
            );
            return;
        }
        // Its own thread: other tests' threads keep their credentials, this one's are changed.
        std::thread::spawn(|| {
            let before = creds();
            let during = as_owner(471_113, creds).expect("as_owner");
            let after = creds();
            assert_eq!(
                (during.0, during.1, during.2),
                (before.0, 471_113, before.2)
            );
            for (set_during, set_before) in during.3.iter().zip(&before.3) {
                assert_eq!(set_during.effective, set_before.permitted);
                assert_eq!(set_during.permitted, set_before.permitted);
            }
            assert_eq!((after.0, after.1, after.2), (before.0, before.1, before.2));
            for (set_after, set_before) in after.3.iter().zip(&before.3) {
                assert_eq!(set_after.effective, set_before.effective);
                assert_eq!(set_after.permitted, set_before.permitted);
            }
        })
        .join()
        .expect("the thread");
    }
}
