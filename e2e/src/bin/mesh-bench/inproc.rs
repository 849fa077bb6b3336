//! The in-process HBONE comparison (`mesh/benches/hbone.rs`: direct TCP, a plain TCP proxy and
//! an HBONE tunnel in one process), run with cargo from the source tree the benchmark was built
//! from, so its table sits next to the cluster's in one report.

use std::path::Path;
use std::process::Command;

/// The exact command, run in the repository's root.
pub(crate) const COMMAND: &str = "cargo bench -p mesh --features testing --bench hbone";

/// Runs [`COMMAND`]; the command and its output (or why it did not run), for the report.
/// Never fails the benchmark: the cluster's numbers stand on their own.
pub(crate) fn hbone_bench() -> String {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let header = format!(
        "in-process HBONE benchmark: `{COMMAND}` in {}",
        repo.display()
    );
    if !repo.join("mesh/benches/hbone.rs").is_file() {
        return format!("{header}: not run, the source tree is not there");
    }
    eprintln!("{header} (builds with the bench profile first)...");
    let out = Command::new("cargo")
        .args(COMMAND.split_whitespace().skip(1))
        .current_dir(&repo)
        .output();
    match out {
        Ok(o) if o.status.success() => {
            format!(
                "{header}:\n\n{}",
                String::from_utf8_lossy(&o.stdout).trim_end()
            )
        }
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr);
            let lines: Vec<&str> = err.lines().collect();
            format!(
                "{header}: failed ({}):\n{}",
                o.status,
                lines[lines.len().saturating_sub(20)..].join("\n")
            )
        }
        Err(e) => format!("{header}: not run ({e}): is cargo on PATH?"),
    }
}
