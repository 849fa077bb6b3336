//! Applying and removing the capture rules of [`mesh::capture`] inside a pod's network
//! namespace, with the `iptables-restore`, `iptables-save` and `ip` tools.
//!
//! Idempotent both ways: installing over an existing install removes it first; removing
//! what is not there succeeds.

use std::fs::File;
use std::io::Write;
use std::process::{Command, Stdio};

use mesh::capture;

/// Why the rules could not be applied or removed.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    /// A tool failed or could not be run.
    #[error("{tool}: {reason}")]
    Tool {
        /// The command line.
        tool: String,
        /// Its stderr or the spawn error.
        reason: String,
    },
    /// The namespace could not be entered.
    #[error("{0}")]
    Netns(#[from] std::io::Error),
}

fn run(tool: &str, args: &[&str], stdin: Option<&str>) -> Result<String, RulesError> {
    let shown = format!("{tool} {}", args.join(" "));
    let fail = |reason: String| RulesError::Tool {
        tool: shown.clone(),
        reason,
    };
    let mut child = Command::new(tool)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot run (is it installed?): {e}")))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .map_err(|e| fail(format!("writing stdin: {e}")))?;
    }
    let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        return Err(fail(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip_ignoring(args: &[String], ignore: &[&str]) -> Result<(), RulesError> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match run("ip", &args, None) {
        Err(RulesError::Tool { reason, .. }) if ignore.iter().any(|i| reason.contains(i)) => Ok(()),
        other => other.map(drop),
    }
}

/// Removes our iptables jumps and chains, if installed (in the current thread's netns);
/// whether they were.
fn remove_iptables_here() -> Result<bool, RulesError> {
    let saved = run("iptables-save", &[], None)?;
    let installed = capture::installed_jumps(&saved);
    if installed {
        run(
            "iptables-restore",
            &["--noflush"],
            Some(&capture::iptables_cleanup_v4()),
        )?;
    }
    Ok(installed)
}

fn remove_here() -> Result<bool, RulesError> {
    let installed = remove_iptables_here()?;
    for args in capture::ip_route_cleanup_v4() {
        ip_ignoring(&args, &["No such file", "No such process", "not exist"])?;
    }
    Ok(installed)
}

/// Installs the capture rules and policy routing inside `netns` (replacing an earlier install).
pub fn install(netns: &File, opts: &capture::CaptureOptions) -> Result<(), RulesError> {
    crate::netns::run_in(netns, || {
        let _was_installed = remove_iptables_here()?;
        run(
            "iptables-restore",
            &["--noflush"],
            Some(&capture::iptables_rules_v4(opts)),
        )?;
        for args in capture::ip_route_setup_v4() {
            ip_ignoring(&args, &["File exists"])?;
        }
        Ok(())
    })?
}

/// Removes what [`install`] put in `netns`; succeeds when nothing is installed. Returns
/// whether our iptables jumps were there.
pub fn remove(netns: &File) -> Result<bool, RulesError> {
    crate::netns::run_in(netns, remove_here)?
}
