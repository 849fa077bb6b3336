//! The pure part of the CNI plugin, as a library so that the fuzz targets (`fuzz/`) can drive
//! the parsing of what a container runtime passes (environment, stdin) without a process.
//! Everything else lives in the binary (`main.rs`).

#![forbid(unsafe_code)]

pub mod cni;
