//! What a submission may ask for: the deployment's defaults and hard caps that validation
//! ([`super::validate`]) applies. Plain values with the defaults kiln ships; the configuration
//! holds one and the binary fills it from flags.

use super::Limits;
use super::hosts::HostPolicy;

/// What a submission may ask for. Defaults apply to whatever a request leaves out; maxima are hard
/// caps (a request above one is refused, never silently clamped).
#[derive(Clone, Debug)]
pub struct Policy {
    pub default_limits: Limits,
    pub max_limits: Limits,
    pub max_code_bytes: usize,
    pub max_stdin_bytes: usize,
    pub max_files_bytes: usize,
    pub max_files: usize,
    pub max_args: usize,
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
            },
            max_limits: Limits {
                wall_ms: 600_000,
                cpu_ms: 600_000,
                memory_mb: 8192,
                processes: 1024,
                output_bytes: 16 * MIB,
                file_bytes: 1024 * MIB,
            },
            max_code_bytes: MIB as usize,
            max_stdin_bytes: 8 * MIB as usize,
            max_files_bytes: 16 * MIB as usize,
            max_files: 256,
            max_args: 256,
            default_max_attempts: 3,
            max_max_attempts: 10,
            callbacks: HostPolicy::default(),
            max_batch_cases: 10_000,
        }
    }
}
