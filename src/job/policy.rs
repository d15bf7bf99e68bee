//! What a submission may ask for: the deployment's defaults and hard caps that validation
//! ([`super::validate`]) applies. Plain values with the defaults kiln ships; the configuration
//! holds one and the binary fills it from flags.

use super::Limits;
use super::hosts::HostPolicy;

/// What a submission may ask for. Defaults apply to whatever a request leaves out; maxima are hard
/// caps (a request above one is refused, never silently clamped). The CPU quota is optional at
/// both ends: no default is no quota, no maximum no cap; with a maximum and no default, a job
/// that asks for none gets the maximum.
#[derive(Clone, Debug)]
pub struct Policy {
    pub default_limits: Limits,
    pub max_limits: Limits,
    pub max_code_bytes: usize,
    pub max_stdin_bytes: usize,
    pub max_files_bytes: usize,
    pub max_files: usize,
    /// Most directories the files' names may make in the work directory.
    pub max_dirs: usize,
    pub max_args: usize,
    /// What a run's args may take to pass to its program, each counted as `execve` counts it:
    /// its length plus [`ARG_OVERHEAD_BYTES`](super::validate::ARG_OVERHEAD_BYTES), its NUL and
    /// its pointer. The kernel takes at least 128 KiB of args and environment together whatever
    /// the stack limit (ARG_MAX, 32 pages; a quarter of the stack limit where that is more): the
    /// default leaves the other half to what kiln adds (the interpreter's path and flags, the
    /// source file, the environment), so an accepted job's args always reach its program.
    pub max_args_bytes: usize,
    pub default_max_attempts: u32,
    pub max_max_attempts: u32,
    /// The hosts a `callback_url` may name.
    pub callbacks: HostPolicy,
    /// Most cases one batch may have (more is refused as too large).
    pub max_batch_cases: usize,
}

impl Default for Policy {
    fn default() -> Self {
        const MIB: u64 = 1 << 20;
        Policy {
            default_limits: Limits {
                wall_ms: 10_000,
                cpu_ms: 10_000,
                memory_mb: 512,
                processes: 64,
                output_bytes: MIB,
                file_bytes: 16 * MIB,
                cpu_percent: None,
            },
            max_limits: Limits {
                wall_ms: 600_000,
                cpu_ms: 600_000,
                memory_mb: 8192,
                processes: 1024,
                output_bytes: 16 * MIB,
                file_bytes: 1024 * MIB,
                cpu_percent: None,
            },
            max_code_bytes: MIB as usize,
            max_stdin_bytes: 8 * MIB as usize,
            max_files_bytes: 16 * MIB as usize,
            max_files: 256,
            max_dirs: 256,
            max_args: 256,
            max_args_bytes: 64 << 10,
            default_max_attempts: 3,
            max_max_attempts: 10,
            callbacks: HostPolicy::default(),
            max_batch_cases: 10_000,
        }
    }
}
