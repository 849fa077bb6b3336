//! Applying and removing the capture rules of [`mesh::capture`] inside a pod's network
//! namespace, with the `iptables-restore`, `iptables-save` and `ip` tools.
//!
//! Idempotent both ways, and a re-install never leaves a moment without capture: [`install`]
//! reads the namespace's `iptables-save`; when our chains, their rules and the jumps into
//! them are already exactly as [`mesh::capture::iptables_rules_v4`] says, nothing is written
//! (packet counters kept). Otherwise one `iptables-restore --noflush` transaction per table
//! re-declares our chains (`:ISTIO_PRERT - [0:0]` flushes an existing chain in place under
//! `--noflush`), refills them and adds a jump only where it is missing (a duplicate is
//! deleted, one copy always stays). A table's transaction commits at once, so a packet sees
//! either the old rules or the new ones. Removing what is not there succeeds.

use std::collections::BTreeMap;
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

/// Runs `ip args`; an error whose message contains one of `ignore` counts as success. Returns
/// whether the command did something (`false`: an ignored error, e.g. the entry was there).
fn ip_ignoring(args: &[String], ignore: &[&str]) -> Result<bool, RulesError> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match run("ip", &args, None) {
        Err(RulesError::Tool { reason, .. }) if ignore.iter().any(|i| reason.contains(i)) => {
            Ok(false)
        }
        other => other.map(|_| true),
    }
}

/// One table of the wanted rules: our chains (in declaration order) with their rules, and
/// the jump rules from built-in chains into them.
#[derive(Debug, Default)]
struct Wanted {
    table: String,
    chains: Vec<(String, Vec<String>)>,
    jumps: Vec<String>,
}

/// Splits `iptables-restore` input (as [`capture::iptables_rules_v4`] writes it) by table:
/// a chain declared in a table is ours; a rule appended to any other chain is a jump.
fn wanted(rules: &str) -> Vec<Wanted> {
    let mut tables: Vec<Wanted> = Vec::new();
    for line in rules.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('*') {
            tables.push(Wanted {
                table: name.to_string(),
                ..Wanted::default()
            });
            continue;
        }
        let Some(table) = tables.last_mut() else {
            continue;
        };
        if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split_whitespace().next().unwrap_or_default();
            table.chains.push((name.to_string(), Vec::new()));
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let chain = rule.split_whitespace().next().unwrap_or_default();
            match table.chains.iter_mut().find(|(name, _)| name == chain) {
                Some((_, lines)) => lines.push(line.to_string()),
                None => table.jumps.push(line.to_string()),
            }
        }
    }
    tables
}

/// What `iptables-save` shows of one table: declared chains, and every `-A` line per chain
/// in order.
fn saved_table(saved: &str, table: &str) -> (Vec<String>, BTreeMap<String, Vec<String>>) {
    let mut declared = Vec::new();
    let mut rules: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut inside = false;
    for line in saved.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('*') {
            inside = name == table;
            continue;
        }
        if !inside {
            continue;
        }
        if line == "COMMIT" {
            inside = false;
        } else if let Some(decl) = line.strip_prefix(':') {
            declared.push(
                decl.split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string(),
            );
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let chain = rule.split_whitespace().next().unwrap_or_default();
            rules
                .entry(chain.to_string())
                .or_default()
                .push(line.to_string());
        }
    }
    (declared, rules)
}

/// The one `iptables-restore --noflush` input that brings a namespace whose `iptables-save`
/// is `saved` to exactly `rules` (see the module docs); `None` when it is there already.
/// Never deletes a chain nor the last copy of a jump: a table's rules change in one commit.
fn transaction(rules: &str, saved: &str) -> Option<String> {
    let mut out = String::new();
    for want in wanted(rules) {
        let (declared, have) = saved_table(saved, &want.table);
        let jump_count = |jump: &str| {
            let chain = jump
                .strip_prefix("-A ")
                .and_then(|r| r.split_whitespace().next())
                .unwrap_or_default();
            have.get(chain)
                .map_or(0, |lines| lines.iter().filter(|l| *l == jump).count())
        };
        let exact = want.chains.iter().all(|(name, lines)| {
            declared.contains(name) && have.get(name).map_or(lines.is_empty(), |h| h == lines)
        }) && want.jumps.iter().all(|j| jump_count(j) == 1);
        if exact {
            continue;
        }
        out.push_str(&format!("*{}\n", want.table));
        for (name, _) in &want.chains {
            out.push_str(&format!(":{name} - [0:0]\n"));
        }
        for line in want.chains.iter().flat_map(|(_, lines)| lines) {
            out.push_str(line);
            out.push('\n');
        }
        for jump in &want.jumps {
            let count = jump_count(jump);
            if count == 0 {
                out.push_str(jump);
                out.push('\n');
            }
            for _ in 1..count {
                out.push_str(&format!("-D {}\n", &jump["-A ".len()..]));
            }
        }
        out.push_str("COMMIT\n");
    }
    (!out.is_empty()).then_some(out)
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

/// The per-namespace sysctl that hands a closing listener's queued connections to another
/// listener of its `SO_REUSEPORT` group instead of resetting them.
pub const MIGRATE_REQ_SYSCTL: &str = "/proc/sys/net/ipv4/tcp_migrate_req";

/// Sets `net.ipv4.tcp_migrate_req=1` in the current thread's namespace (`/proc/sys/net`
/// shows the namespace of the thread that opens it). During a ztunnel upgrade the old
/// ztunnel closes its in-pod listeners while the new one's are open in the same reuseport
/// groups: with this, connections the old one had not accepted yet (and handshakes in flight)
/// move to the new listener; without it they are reset. The agent sets it, not ztunnel: it
/// already configures each pod's namespace (and re-checks it, see `repair`) with the
/// privileges that takes, and it must hold before any old ztunnel closes a listener. A kernel
/// without it (before 5.14) only loses that guarantee: logged, not fatal.
fn migrate_requests_here() {
    if let Err(e) = std::fs::write(MIGRATE_REQ_SYSCTL, "1") {
        tracing::warn!(error = %e, sysctl = MIGRATE_REQ_SYSCTL, "cannot set tcp_migrate_req: a ztunnel upgrade may reset connections queued on the old listeners");
    }
}

/// Installs the capture rules and policy routing inside `netns`, bringing an earlier install
/// up to date without a gap in capture (see the module docs). Returns whether anything had to
/// change: iptables, or the policy-routing rule or route (`false`: already exactly installed,
/// nothing written).
pub fn install(netns: &File, opts: &capture::CaptureOptions) -> Result<bool, RulesError> {
    crate::netns::run_in(netns, || {
        let saved = run("iptables-save", &[], None)?;
        let mut changed = match transaction(&capture::iptables_rules_v4(opts), &saved) {
            Some(tx) => {
                run("iptables-restore", &["--noflush"], Some(&tx))?;
                true
            }
            None => false,
        };
        // An existing rule or route answers "File exists": only a missing one is added.
        for args in capture::ip_route_setup_v4() {
            changed |= ip_ignoring(&args, &["File exists"])?;
        }
        migrate_requests_here();
        Ok(changed)
    })?
}

/// Removes what [`install`] put in `netns`; succeeds when nothing is installed. Returns
/// whether our iptables jumps were there.
pub fn remove(netns: &File) -> Result<bool, RulesError> {
    crate::netns::run_in(netns, remove_here)?
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh::capture::CaptureOptions;

    /// `iptables-save` of a namespace holding `rules` (chains listed, then rules grouped by
    /// chain with the built-in chains first, as the tool prints them).
    fn save_of(rules: &str) -> String {
        let mut out = String::from("# Generated by iptables-save\n");
        for want in wanted(rules) {
            out.push_str(&format!(
                "*{}\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n",
                want.table
            ));
            for (name, _) in want.chains.iter().rev() {
                out.push_str(&format!(":{name} - [0:0]\n"));
            }
            for line in &want.jumps {
                out.push_str(&format!("{line}\n"));
            }
            for (_, lines) in want.chains.iter().rev() {
                for line in lines {
                    out.push_str(&format!("{line}\n"));
                }
            }
            out.push_str("COMMIT\n");
        }
        out
    }

    #[test]
    fn a_fresh_namespace_gets_chains_rules_and_jumps_in_one_transaction() {
        let rules = capture::iptables_rules_v4(&CaptureOptions::default());
        let tx = transaction(&rules, "").expect("something to do");
        let want = "\
*mangle
:ISTIO_PRERT - [0:0]
:ISTIO_OUTPUT - [0:0]
-A ISTIO_PRERT -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff
-A ISTIO_OUTPUT -m connmark --mark 0x111/0xfff -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff
-A PREROUTING -j ISTIO_PRERT
-A OUTPUT -j ISTIO_OUTPUT
COMMIT
*nat
:ISTIO_PRERT - [0:0]
:ISTIO_OUTPUT - [0:0]
-A ISTIO_PRERT -s 169.254.7.127/32 -p tcp -m tcp -j ACCEPT
-A ISTIO_PRERT ! -d 127.0.0.1/32 -p tcp -m tcp ! --dport 15008 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15006
-A ISTIO_OUTPUT -d 169.254.7.127/32 -p tcp -m tcp -j ACCEPT
-A ISTIO_OUTPUT -p tcp -m connmark --mark 0x111/0xfff -j ACCEPT
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -j ACCEPT
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001
-A PREROUTING -j ISTIO_PRERT
-A OUTPUT -j ISTIO_OUTPUT
COMMIT
";
        assert_eq!(tx, want);
    }

    #[test]
    fn an_exact_install_is_left_alone() {
        for dns in [false, true] {
            let rules = capture::iptables_rules_v4(&CaptureOptions { capture_dns: dns });
            assert_eq!(transaction(&rules, &save_of(&rules)), None, "dns={dns}");
        }
    }

    #[test]
    fn an_outdated_install_is_refilled_in_place_and_keeps_its_jumps() {
        let old = capture::iptables_rules_v4(&CaptureOptions::default());
        let new = capture::iptables_rules_v4(&CaptureOptions { capture_dns: true });
        let tx = transaction(&new, &save_of(&old)).expect("the DNS rule is missing");
        // Only nat differs; mangle is exact and not touched.
        assert!(!tx.contains("*mangle"), "{tx}");
        assert!(tx.starts_with("*nat\n:ISTIO_PRERT - [0:0]\n:ISTIO_OUTPUT - [0:0]\n"));
        assert!(tx.contains("--to-ports 15053"));
        // The jumps are there already: never deleted, never added again; no chain deleted.
        for absent in ["-A PREROUTING", "-A OUTPUT", "-D ", "-X ", "-F "] {
            assert!(!tx.contains(absent), "{absent:?} in {tx}");
        }
        assert_eq!(tx.matches("COMMIT").count(), 1);
    }

    #[test]
    fn duplicate_jumps_lose_the_extra_copies_only() {
        let rules = capture::iptables_rules_v4(&CaptureOptions::default());
        let doubled = save_of(&rules).replace(
            "-A OUTPUT -j ISTIO_OUTPUT\n",
            "-A OUTPUT -j ISTIO_OUTPUT\n-A OUTPUT -j ISTIO_OUTPUT\n-A OUTPUT -j ISTIO_OUTPUT\n",
        );
        let tx = transaction(&rules, &doubled).expect("duplicates to drop");
        for table in ["mangle", "nat"] {
            let part = tx
                .split(&format!("*{table}\n"))
                .nth(1)
                .and_then(|rest| rest.split("COMMIT").next())
                .expect("table in the transaction");
            assert_eq!(part.matches("-D OUTPUT -j ISTIO_OUTPUT").count(), 2, "{tx}");
            assert!(!part.contains("-A OUTPUT") && !part.contains("-A PREROUTING"));
        }
    }

    #[test]
    fn a_missing_jump_is_added_and_a_foreign_rule_in_our_chain_flushed() {
        let rules = capture::iptables_rules_v4(&CaptureOptions::default());
        let broken = save_of(&rules)
            .replacen("-A PREROUTING -j ISTIO_PRERT\n", "", 1)
            .replacen(
                "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -j ACCEPT\n",
                "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -j ACCEPT\n-A ISTIO_OUTPUT -j DROP\n",
                1,
            );
        let tx = transaction(&rules, &broken).expect("to repair");
        // mangle lost its PREROUTING jump (the first table in the save); nat has an extra rule.
        assert_eq!(
            tx.matches("-A PREROUTING -j ISTIO_PRERT").count(),
            1,
            "{tx}"
        );
        assert!(!tx.contains("-j DROP"));
        assert_eq!(tx.matches("COMMIT").count(), 2);
    }
}
