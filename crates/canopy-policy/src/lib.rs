//! canopy-policy: the policy language (TOML), its validation with file:line diagnostics, and the
//! immutable compiled Plan with its indexed matcher. Pure: no syscalls, no async runtime.
