//! The stacks init and the job run on until the job's `execve`: one mapping, each stack below
//! an inaccessible guard, so that an overflow faults instead of writing into the server's memory.
//! [`super::Started`] holds it and unmaps it only once init is gone.

use std::io;

/// Each stack's size. Touched pages only are ever backed by memory; the setup code needs a few.
pub(super) const STACK_SIZE: usize = 256 << 10;
const GUARD_SIZE: usize = 64 << 10;

/// One mapping for init's and the job's stacks, each below an inaccessible guard.
pub(super) struct Stacks {
    mapping: *mut libc::c_void,
    len: usize,
    pub(super) init: Stack,
    pub(super) job: Stack,
}

#[derive(Clone, Copy)]
pub(super) struct Stack {
    /// The lowest address; the stack grows down from `base + STACK_SIZE`.
    pub(super) base: *mut libc::c_void,
}

// SAFETY: a plain mapping, only freed by Drop; the pointers are addresses, not shared data.
unsafe impl Send for Stacks {}
// SAFETY: as above.
unsafe impl Sync for Stacks {}

impl Stacks {
    pub(super) fn new() -> io::Result<Stacks> {
        let len = 2 * (GUARD_SIZE + STACK_SIZE);
        // SAFETY: a fresh anonymous mapping; nothing else refers to it.
        let mapping = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if mapping == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let stacks = Stacks {
            mapping,
            len,
            // SAFETY (both): offsets within the mapping.
            init: Stack {
                base: unsafe { mapping.byte_add(GUARD_SIZE) },
            },
            job: Stack {
                base: unsafe { mapping.byte_add(2 * GUARD_SIZE + STACK_SIZE) },
            },
        };
        for stack in [stacks.init, stacks.job] {
            // SAFETY: part of the mapping above.
            let rc = unsafe {
                libc::mprotect(stack.base, STACK_SIZE, libc::PROT_READ | libc::PROT_WRITE)
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(stacks)
    }
}

impl Drop for Stacks {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`; `Started` drops it only after init is gone.
        unsafe { libc::munmap(self.mapping, self.len) };
    }
}
