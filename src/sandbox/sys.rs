//! Raw system calls for the code that runs between a sandbox's `clone3` and its `execve`.
//!
//! That code shares the server's memory (see [`super::namespace`]): it must not allocate, lock or
//! touch thread-local storage. glibc's wrappers store `errno` in the TLS of the thread that
//! called `clone3` — a server thread that goes on running — so even a failed `mount()` through
//! libc would overwrite that thread's `errno` behind its back. Everything here is an inline
//! `syscall` instruction that returns the kernel's result as is: `Err(errno)` for the negative
//! ones, nothing written anywhere.

use std::ffi::{CStr, c_void};

/// The kernel's answer: a non-negative result, or the errno.
pub type Result<T = usize> = std::result::Result<T, i32>;

fn check(ret: isize) -> Result {
    if (-4095..0).contains(&ret) {
        Err(-ret as i32)
    } else {
        Ok(ret as usize)
    }
}

/// One system call with up to six arguments.
///
/// # Safety
///
/// Whatever the call `n` demands of its arguments.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub unsafe fn call(n: libc::c_long, a: [usize; 6]) -> Result {
    let ret: isize;
    // SAFETY: the caller vouches for the arguments; the instruction clobbers only rcx and r11.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") n as isize => ret,
            in("rdi") a[0], in("rsi") a[1], in("rdx") a[2],
            in("r10") a[3], in("r8") a[4], in("r9") a[5],
            lateout("rcx") _, lateout("r11") _,
            options(nostack),
        );
    }
    check(ret)
}

/// One system call with up to six arguments.
///
/// # Safety
///
/// Whatever the call `n` demands of its arguments.
#[cfg(target_arch = "aarch64")]
#[inline(always)]
pub unsafe fn call(n: libc::c_long, a: [usize; 6]) -> Result {
    let ret: isize;
    // SAFETY: the caller vouches for the arguments.
    unsafe {
        std::arch::asm!(
            "svc 0",
            in("x8") n,
            inlateout("x0") a[0] as isize => ret,
            in("x1") a[1], in("x2") a[2], in("x3") a[3], in("x4") a[4], in("x5") a[5],
            options(nostack),
        );
    }
    check(ret)
}

/// `clone3` that starts the child on its own stack (`args.stack`) in `entry(arg)`, which never
/// returns. Returns the child's pid in the parent.
///
/// A child made with `CLONE_VM` cannot come back from the system call like a forked one: it
/// would return into the parent's stack frames while the parent uses them. So the child side
/// never leaves this instruction sequence except into `entry`, on the fresh stack.
///
/// # Safety
///
/// `args` must be valid for the kernel; the stack must stay mapped and `arg` valid for as long
/// as the child runs on them, and `entry` may only make calls from this module.
#[cfg(target_arch = "x86_64")]
pub unsafe fn clone3(
    args: &libc::clone_args,
    entry: unsafe extern "C" fn(*const c_void) -> !,
    arg: *const c_void,
) -> Result {
    let ret: isize;
    // SAFETY: see above. The kernel sets the child's stack pointer to the (16-byte aligned) top
    // of its stack, so the `call` leaves it aligned as the ABI wants at function entry.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "mov rdi, r12",
            "call r13",
            "ud2",
            "2:",
            inlateout("rax") libc::SYS_clone3 as isize => ret,
            in("rdi") args as *const libc::clone_args,
            in("rsi") size_of::<libc::clone_args>(),
            in("r12") arg,
            in("r13") entry,
            lateout("rcx") _, lateout("r11") _,
            options(nostack),
        );
    }
    check(ret)
}

/// `clone3` that starts the child on its own stack (`args.stack`) in `entry(arg)`, which never
/// returns. Returns the child's pid in the parent.
///
/// # Safety
///
/// See the x86_64 version.
#[cfg(target_arch = "aarch64")]
pub unsafe fn clone3(
    args: &libc::clone_args,
    entry: unsafe extern "C" fn(*const c_void) -> !,
    arg: *const c_void,
) -> Result {
    let ret: isize;
    // SAFETY: see the x86_64 version.
    unsafe {
        std::arch::asm!(
            "svc 0",
            "cbnz x0, 2f",
            "mov x29, xzr",
            "mov x0, x20",
            "blr x21",
            "brk #0",
            "2:",
            in("x8") libc::SYS_clone3,
            inlateout("x0") args as *const libc::clone_args as isize => ret,
            in("x1") size_of::<libc::clone_args>(),
            in("x20") arg,
            in("x21") entry,
            options(nostack),
        );
    }
    check(ret)
}

fn ptr<T>(p: *const T) -> usize {
    p as usize
}

fn path(p: &CStr) -> usize {
    ptr(p.as_ptr())
}

// The thin wrappers below pass integers and pointers to live values straight to the kernel;
// each is as safe as the call it names with those arguments.

pub unsafe fn read(fd: i32, buf: &mut [u8]) -> Result {
    unsafe {
        call(
            libc::SYS_read,
            [fd as usize, ptr(buf.as_mut_ptr()), buf.len(), 0, 0, 0],
        )
    }
}

pub unsafe fn write(fd: i32, buf: &[u8]) -> Result {
    unsafe {
        call(
            libc::SYS_write,
            [fd as usize, ptr(buf.as_ptr()), buf.len(), 0, 0, 0],
        )
    }
}

/// Writes all of `buf`, however many calls it takes.
pub unsafe fn write_all(fd: i32, mut buf: &[u8]) -> Result<()> {
    while !buf.is_empty() {
        let n = unsafe { write(fd, buf) }?;
        buf = &buf[n.min(buf.len())..];
    }
    Ok(())
}

pub unsafe fn close(fd: i32) {
    // Closing is best effort wherever it is used: nothing to do about a failure.
    let _ = unsafe { call(libc::SYS_close, [fd as usize, 0, 0, 0, 0, 0]) };
}

pub unsafe fn close_range(first: u32, last: u32) -> Result {
    unsafe {
        call(
            libc::SYS_close_range,
            [first as usize, last as usize, 0, 0, 0, 0],
        )
    }
}

/// Sets the signal mask (`how`: `SIG_BLOCK`, `SIG_UNBLOCK`, `SIG_SETMASK`) from a bit set in the
/// kernel's layout (bit `n - 1` for signal `n`).
pub unsafe fn sigprocmask(how: i32, set: u64) -> Result {
    unsafe {
        call(
            libc::SYS_rt_sigprocmask,
            [how as usize, ptr(&raw const set), 0, size_of::<u64>(), 0, 0],
        )
    }
}

pub unsafe fn fcntl(fd: i32, cmd: i32, arg: usize) -> Result {
    unsafe { call(libc::SYS_fcntl, [fd as usize, cmd as usize, arg, 0, 0, 0]) }
}

pub unsafe fn dup3(from: i32, to: i32, flags: i32) -> Result {
    unsafe {
        call(
            libc::SYS_dup3,
            [from as usize, to as usize, flags as usize, 0, 0, 0],
        )
    }
}

pub unsafe fn prctl(option: i32, arg: usize) -> Result {
    unsafe { call(libc::SYS_prctl, [option as usize, arg, 0, 0, 0, 0]) }
}

pub unsafe fn sethostname(name: &[u8]) -> Result {
    unsafe {
        call(
            libc::SYS_sethostname,
            [ptr(name.as_ptr()), name.len(), 0, 0, 0, 0],
        )
    }
}

pub unsafe fn mount(
    source: Option<&CStr>,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
    data: Option<&CStr>,
) -> Result {
    let opt = |s: Option<&CStr>| s.map_or(0, path);
    unsafe {
        call(
            libc::SYS_mount,
            [
                opt(source),
                path(target),
                opt(fstype),
                flags as usize,
                opt(data),
                0,
            ],
        )
    }
}

pub unsafe fn umount2(target: &CStr, flags: i32) -> Result {
    unsafe {
        call(
            libc::SYS_umount2,
            [path(target), flags as usize, 0, 0, 0, 0],
        )
    }
}

pub unsafe fn pivot_root(new_root: &CStr, put_old: &CStr) -> Result {
    unsafe {
        call(
            libc::SYS_pivot_root,
            [path(new_root), path(put_old), 0, 0, 0, 0],
        )
    }
}

pub unsafe fn chdir(dir: &CStr) -> Result {
    unsafe { call(libc::SYS_chdir, [path(dir), 0, 0, 0, 0, 0]) }
}

pub unsafe fn mkdir(dir: &CStr, mode: libc::mode_t) -> Result {
    let at = libc::AT_FDCWD as usize;
    unsafe { call(libc::SYS_mkdirat, [at, path(dir), mode as usize, 0, 0, 0]) }
}

pub unsafe fn symlink(target: &CStr, link: &CStr) -> Result {
    let at = libc::AT_FDCWD as usize;
    unsafe { call(libc::SYS_symlinkat, [path(target), at, path(link), 0, 0, 0]) }
}

pub unsafe fn open(file: &CStr, flags: i32, mode: libc::mode_t) -> Result<i32> {
    unsafe { openat(libc::AT_FDCWD, file, flags, mode) }
}

pub unsafe fn openat(dir: i32, file: &CStr, flags: i32, mode: libc::mode_t) -> Result<i32> {
    let fd = unsafe {
        call(
            libc::SYS_openat,
            [
                dir as usize,
                path(file),
                flags as usize,
                mode as usize,
                0,
                0,
            ],
        )
    }?;
    Ok(fd as i32)
}

pub unsafe fn sendfile(to: i32, from: i32, count: usize) -> Result {
    unsafe {
        call(
            libc::SYS_sendfile,
            [to as usize, from as usize, 0, count, 0, 0],
        )
    }
}

pub unsafe fn fchown(fd: i32, uid: u32, gid: u32) -> Result {
    unsafe {
        call(
            libc::SYS_fchown,
            [fd as usize, uid as usize, gid as usize, 0, 0, 0],
        )
    }
}

pub unsafe fn fchmod(fd: i32, mode: libc::mode_t) -> Result {
    unsafe { call(libc::SYS_fchmod, [fd as usize, mode as usize, 0, 0, 0, 0]) }
}

pub unsafe fn fstat(fd: i32, st: &mut libc::stat) -> Result {
    let at = libc::AT_EMPTY_PATH as usize;
    unsafe {
        call(
            libc::SYS_newfstatat,
            [fd as usize, path(c""), ptr(st as *mut libc::stat), at, 0, 0],
        )
    }
}

pub unsafe fn unshare(flags: i32) -> Result {
    unsafe { call(libc::SYS_unshare, [flags as usize, 0, 0, 0, 0, 0]) }
}

pub unsafe fn setsid() -> Result {
    unsafe { call(libc::SYS_setsid, [0; 6]) }
}

pub unsafe fn setgroups_none() -> Result {
    unsafe { call(libc::SYS_setgroups, [0; 6]) }
}

pub unsafe fn setresgid(id: u32) -> Result {
    let id = id as usize;
    unsafe { call(libc::SYS_setresgid, [id, id, id, 0, 0, 0]) }
}

pub unsafe fn setresuid(id: u32) -> Result {
    let id = id as usize;
    unsafe { call(libc::SYS_setresuid, [id, id, id, 0, 0, 0]) }
}

/// Sets resource `resource` to `new` and returns the limits it had.
pub unsafe fn prlimit(resource: u32, new: Option<&libc::rlimit>) -> Result<libc::rlimit> {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    let new = new.map_or(0, |r| ptr(r as *const libc::rlimit));
    unsafe {
        call(
            libc::SYS_prlimit64,
            [0, resource as usize, new, ptr(&raw mut old), 0, 0],
        )
    }?;
    Ok(old)
}

pub unsafe fn execve(
    program: &CStr,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
) -> Result {
    unsafe {
        call(
            libc::SYS_execve,
            [path(program), ptr(argv), ptr(envp), 0, 0, 0],
        )
    }
}

/// Waits for any child; returns its pid, wait status and resource use (with that of the
/// children it waited for).
pub unsafe fn wait_any() -> Result<(i32, i32, libc::rusage)> {
    let mut status: i32 = 0;
    // SAFETY: all zeroes is a valid rusage.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe {
        call(
            libc::SYS_wait4,
            [
                -1isize as usize,
                ptr(&raw mut status),
                0,
                ptr(&raw mut usage),
                0,
                0,
            ],
        )
    }?;
    Ok((pid as i32, status, usage))
}

pub unsafe fn kill(pid: i32, signal: i32) -> Result {
    unsafe { call(libc::SYS_kill, [pid as usize, signal as usize, 0, 0, 0, 0]) }
}

pub unsafe fn exit(code: i32) -> ! {
    loop {
        // SAFETY: exit_group never returns; the loop only satisfies the type.
        let _ = unsafe { call(libc::SYS_exit_group, [code as usize, 0, 0, 0, 0, 0]) };
    }
}

pub unsafe fn landlock_add_rule(ruleset: i32, rule_type: u32, attr: *const c_void) -> Result {
    unsafe {
        call(
            libc::SYS_landlock_add_rule,
            [ruleset as usize, rule_type as usize, ptr(attr), 0, 0, 0],
        )
    }
}

pub unsafe fn landlock_restrict_self(ruleset: i32) -> Result {
    unsafe {
        call(
            libc::SYS_landlock_restrict_self,
            [ruleset as usize, 0, 0, 0, 0, 0],
        )
    }
}

pub unsafe fn seccomp_set_filter(program: *const c_void) -> Result {
    let op = libc::SECCOMP_SET_MODE_FILTER as usize;
    unsafe { call(libc::SYS_seccomp, [op, 0, ptr(program), 0, 0, 0]) }
}
