//! Installing the plugin into the node's CNI configuration, as a DaemonSet does (upstream
//! istio-cni's `install-cni`): the agent copies its own binary into the CNI bin directory and
//! chains itself into the primary CNI's network configuration list.
//!
//! - Binary: `/proc/self/exe` → `<bin-dir>/ambient-mesh-cni`, mode 0755, through a temp file
//!   and a rename (a runtime executing the old binary keeps its inode; none sees half a file).
//! - Config: the first `*.conflist` by file name in the conf dir (the one the runtime uses),
//!   waited for while the primary CNI has not written it yet. Its `plugins` array gets
//!   `{"type":"ambient-mesh-cni","agent_socket":"<--cni-socket>"}` appended, or an existing
//!   entry of that type gets its `agent_socket` set (other entries of that type are dropped:
//!   the plugin must run once). Nothing else changes, and nothing is written when the entry is
//!   already right. A file that is not JSON or has no `plugins` array is left untouched.
//!   The rewrite is atomic (temp file + rename, same mode). Like upstream, object keys come out
//!   sorted (the file is re-serialised); no value changes.
//! - The install stays when the agent stops: while it is down, ADD fails with "try again
//!   later" (code 11) and no pod starts uncaptured. `cni-plugin uninstall` removes both.
//!
//! The agent re-checks the file every [`CHECK_EVERY`], so the entry comes back if the primary
//! CNI rewrites its conflist.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

/// The plugin's `type` in the conflist, and so its binary's name in the CNI bin directory.
pub const PLUGIN_TYPE: &str = "ambient-mesh-cni";

/// How often the agent checks that its entry is still in the conflist (or waits for one).
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Why a conflist cannot be edited (its file is left untouched).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConflistError {
    /// Not JSON.
    #[error("not valid JSON: {0}")]
    NotJson(String),
    /// JSON, but not a network configuration list.
    #[error("no \"plugins\" array: not a CNI network configuration list")]
    NoPlugins,
}

/// Why installing or uninstalling failed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// A file operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The conflist cannot be edited; it was left untouched.
    #[error("{path}: {source}; left untouched")]
    Conflist {
        /// The file.
        path: PathBuf,
        /// Why.
        source: ConflistError,
    },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> InstallError {
    let path = path.to_path_buf();
    move |source| InstallError::Io { what, path, source }
}

fn parse(text: &str) -> Result<Value, ConflistError> {
    serde_json::from_str(text).map_err(|e| ConflistError::NotJson(e.to_string()))
}

fn is_ours(plugin: &Value) -> bool {
    plugin.get("type").and_then(Value::as_str) == Some(PLUGIN_TYPE)
}

fn plugins(conf: &mut Value) -> Result<&mut Vec<Value>, ConflistError> {
    match conf.get_mut("plugins") {
        Some(Value::Array(list)) => Ok(list),
        _ => Err(ConflistError::NoPlugins),
    }
}

fn serialise(conf: &Value) -> String {
    let mut text = serde_json::to_string_pretty(conf).unwrap_or_default();
    text.push('\n');
    text
}

/// The conflist `text` with our entry pointing at `agent_socket`; `None` when it is already
/// there exactly so (nothing to write).
pub fn with_entry(text: &str, agent_socket: &Path) -> Result<Option<String>, ConflistError> {
    let original = parse(text)?;
    let mut conf = original.clone();
    let socket = Value::String(agent_socket.display().to_string());
    let list = plugins(&mut conf)?;
    match list.iter().position(is_ours) {
        Some(first) => {
            let mut seen = 0;
            list.retain(|p| {
                let ours = is_ours(p);
                seen += usize::from(ours);
                !ours || seen == 1
            });
            match &mut list[first] {
                Value::Object(entry) => {
                    entry.insert("agent_socket".into(), socket);
                }
                other => *other = json!({"type": PLUGIN_TYPE, "agent_socket": socket}),
            }
        }
        None => list.push(json!({"type": PLUGIN_TYPE, "agent_socket": socket})),
    }
    Ok((conf != original).then(|| serialise(&conf)))
}

/// The conflist `text` without our entries; `None` when it has none.
pub fn without_entry(text: &str) -> Result<Option<String>, ConflistError> {
    let original = parse(text)?;
    let mut conf = original.clone();
    plugins(&mut conf)?.retain(|p| !is_ours(p));
    Ok((conf != original).then(|| serialise(&conf)))
}

/// Every `*.conflist` of `conf_dir` (dot-names skipped), sorted by file name.
fn conflists(conf_dir: &Path) -> Result<Vec<PathBuf>, InstallError> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(conf_dir)
        .map_err(io_err("reading the CNI conf dir", conf_dir))?
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            !name.starts_with('.') && name.ends_with(".conflist")
        })
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    Ok(found)
}

/// Writes `bytes` to `path` through a temp file in the same directory and a rename.
fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), InstallError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    // A dot-name: neither the runtime nor `conflists` picks it up.
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io_err("creating", &tmp))?;
        file.write_all(bytes).map_err(io_err("writing", &tmp))?;
        // The umask may have narrowed the mode given at creation.
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(io_err("setting the mode of", &tmp))?;
        file.sync_all().map_err(io_err("syncing", &tmp))?;
        std::fs::rename(&tmp, path).map_err(io_err("renaming into", path))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Copies the binary `exe` to `<bin_dir>/ambient-mesh-cni` (mode 0755, atomically); returns
/// the installed path and whether it was written (an identical copy with that mode is left
/// alone, so agent restarts do not rewrite it).
pub fn install_binary(exe: &Path, bin_dir: &Path) -> Result<(PathBuf, bool), InstallError> {
    std::fs::create_dir_all(bin_dir).map_err(io_err("creating", bin_dir))?;
    let bytes = std::fs::read(exe).map_err(io_err("reading", exe))?;
    let target = bin_dir.join(PLUGIN_TYPE);
    let same = std::fs::metadata(&target)
        .is_ok_and(|m| m.len() == bytes.len() as u64 && m.permissions().mode() & 0o7777 == 0o755)
        && std::fs::read(&target).is_ok_and(|old| old == bytes);
    if !same {
        write_atomically(&target, &bytes, 0o755)?;
    }
    Ok((target, !same))
}

/// What [`ensure_entry`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ensured {
    /// No `*.conflist` yet: the primary CNI has not written its config.
    NoConflist,
    /// The entry was already right in this file.
    Unchanged(PathBuf),
    /// The entry was added or updated in this file.
    Written(PathBuf),
}

/// Puts our entry into the first conflist of `conf_dir`, if there is one.
pub fn ensure_entry(conf_dir: &Path, agent_socket: &Path) -> Result<Ensured, InstallError> {
    let Some(path) = conflists(conf_dir)?.into_iter().next() else {
        return Ok(Ensured::NoConflist);
    };
    let text = std::fs::read_to_string(&path).map_err(io_err("reading", &path))?;
    let edited = with_entry(&text, agent_socket).map_err(|source| InstallError::Conflist {
        path: path.clone(),
        source,
    })?;
    let Some(edited) = edited else {
        return Ok(Ensured::Unchanged(path));
    };
    let mode = std::fs::metadata(&path)
        .map_err(io_err("reading the mode of", &path))?
        .permissions()
        .mode()
        & 0o7777;
    write_atomically(&path, edited.as_bytes(), mode)?;
    Ok(Ensured::Written(path))
}

/// What [`uninstall`] removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Uninstalled {
    /// Conflists our entry was removed from.
    pub conflists: Vec<PathBuf>,
    /// The binary, if it was there.
    pub binary: Option<PathBuf>,
}

/// Removes our entry from every conflist of `conf_dir` and our binary from `bin_dir`.
/// Conflists that cannot be read as such are left alone (they hold no entry of ours we could
/// remove).
pub fn uninstall(conf_dir: &Path, bin_dir: &Path) -> Result<Uninstalled, InstallError> {
    let mut done = Uninstalled::default();
    for path in conflists(conf_dir)? {
        let text = std::fs::read_to_string(&path).map_err(io_err("reading", &path))?;
        match without_entry(&text) {
            Ok(Some(edited)) => {
                let mode = std::fs::metadata(&path)
                    .map_err(io_err("reading the mode of", &path))?
                    .permissions()
                    .mode()
                    & 0o7777;
                write_atomically(&path, edited.as_bytes(), mode)?;
                done.conflists.push(path);
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(conflist = %path.display(), error = %e, "skipped"),
        }
    }
    let binary = bin_dir.join(PLUGIN_TYPE);
    match std::fs::remove_file(&binary) {
        Ok(()) => done.binary = Some(binary),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("removing", &binary)(e)),
    }
    Ok(done)
}

/// Keeps our entry in the conf dir's first conflist: waits for one to appear (logging it
/// once), installs, and re-checks every [`CHECK_EVERY`]. Runs until the agent stops.
pub async fn keep_entry(conf_dir: PathBuf, agent_socket: PathBuf) {
    let mut waiting_logged = false;
    let mut installed_in: Option<PathBuf> = None;
    let mut last_error: Option<String> = None;
    loop {
        let (dir, socket) = (conf_dir.clone(), agent_socket.clone());
        let result = tokio::task::spawn_blocking(move || ensure_entry(&dir, &socket)).await;
        match result {
            Ok(Ok(Ensured::NoConflist)) => {
                if !waiting_logged {
                    tracing::info!(conf_dir = %conf_dir.display(), "waiting for the primary CNI plugin to write a *.conflist");
                    waiting_logged = true;
                }
                installed_in = None;
            }
            Ok(Ok(Ensured::Written(path))) => {
                tracing::info!(conflist = %path.display(), agent_socket = %agent_socket.display(), changed = true, "installed into the CNI config");
                installed_in = Some(path);
                last_error = None;
            }
            Ok(Ok(Ensured::Unchanged(path))) => {
                if installed_in.as_ref() != Some(&path) {
                    tracing::info!(conflist = %path.display(), agent_socket = %agent_socket.display(), changed = false, "installed into the CNI config");
                    installed_in = Some(path);
                }
                last_error = None;
            }
            Ok(Err(e)) => {
                let e = e.to_string();
                // Once per distinct error: the check repeats every second.
                if last_error.as_ref() != Some(&e) {
                    tracing::error!(error = %e, "cannot install into the CNI config; retrying");
                    last_error = Some(e);
                }
            }
            Err(e) => tracing::error!(error = %e, "internal: install check panicked"),
        }
        tokio::time::sleep(CHECK_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CALICO: &str = r#"{
  "name": "k8s-pod-network",
  "cniVersion": "0.3.1",
  "plugins": [
    {"type": "calico", "ipam": {"type": "calico-ipam"}, "log_level": "info"},
    {"type": "portmap", "snat": true, "capabilities": {"portMappings": true}}
  ]
}"#;

    fn value(text: &str) -> Value {
        serde_json::from_str(text).expect("json")
    }

    #[test]
    fn entry_is_appended_and_everything_else_kept() {
        let out = with_entry(CALICO, Path::new("/run/am/cni.sock"))
            .expect("edits")
            .expect("changed");
        let mut want = value(CALICO);
        plugins(&mut want)
            .expect("list")
            .push(json!({"type": "ambient-mesh-cni", "agent_socket": "/run/am/cni.sock"}));
        assert_eq!(value(&out), want);
        // Idempotent: the same install again writes nothing.
        assert_eq!(with_entry(&out, Path::new("/run/am/cni.sock")), Ok(None));
    }

    #[test]
    fn existing_entry_is_updated_in_place_and_duplicates_dropped() {
        let conf = r#"{"name":"n","cniVersion":"1.0.0","plugins":[{"type":"ptp"},
            {"type":"ambient-mesh-cni","agent_socket":"/old.sock","extra":1},
            {"type":"bandwidth"},{"type":"ambient-mesh-cni"}]}"#;
        let out = with_entry(conf, Path::new("/new.sock"))
            .expect("edits")
            .expect("changed");
        assert_eq!(
            value(&out)["plugins"],
            json!([{"type":"ptp"},
                {"type":"ambient-mesh-cni","agent_socket":"/new.sock","extra":1},
                {"type":"bandwidth"}])
        );
        assert_eq!(value(&out)["name"], json!("n"));
    }

    #[test]
    fn bad_conflists_are_refused() {
        let sock = Path::new("/s");
        assert!(matches!(
            with_entry("{not json", sock),
            Err(ConflistError::NotJson(_))
        ));
        assert_eq!(
            with_entry(r#"{"name":"x","type":"bridge"}"#, sock),
            Err(ConflistError::NoPlugins)
        );
        assert_eq!(
            with_entry(r#"{"plugins":{"type":"x"}}"#, sock),
            Err(ConflistError::NoPlugins)
        );
        assert_eq!(with_entry("[1]", sock), Err(ConflistError::NoPlugins));
        assert_eq!(without_entry("{}"), Err(ConflistError::NoPlugins));
    }

    #[test]
    fn removing_the_entry_restores_the_list() {
        let installed = with_entry(CALICO, Path::new("/s"))
            .expect("edits")
            .expect("changed");
        let removed = without_entry(&installed).expect("edits").expect("changed");
        assert_eq!(value(&removed), value(CALICO));
        assert_eq!(without_entry(CALICO), Ok(None));
    }

    #[test]
    fn install_and_uninstall_on_disk() {
        let conf = tempfile::tempdir().expect("tempdir");
        let bin = tempfile::tempdir().expect("tempdir");
        let sock = Path::new("/var/run/ambient-mesh/cni.sock");
        assert_eq!(
            ensure_entry(conf.path(), sock).expect("ok"),
            Ensured::NoConflist
        );

        // The first conflist by name is chosen; other files are ignored.
        let first = conf.path().join("10-calico.conflist");
        let second = conf.path().join("20-other.conflist");
        std::fs::write(&first, CALICO).expect("write");
        std::fs::write(&second, CALICO).expect("write");
        std::fs::write(conf.path().join("05-old.conf"), "{}").expect("write");
        std::fs::write(conf.path().join(".00-hidden.conflist"), "{").expect("write");
        std::fs::set_permissions(&first, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        assert_eq!(
            ensure_entry(conf.path(), sock).expect("ok"),
            Ensured::Written(first.clone())
        );
        let installed = value(&std::fs::read_to_string(&first).expect("read"));
        assert_eq!(
            installed["plugins"][2],
            json!({"type": "ambient-mesh-cni", "agent_socket": sock})
        );
        let mode = std::fs::metadata(&first)
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o640, "mode kept");
        assert_eq!(std::fs::read_to_string(&second).expect("read"), CALICO);
        assert_eq!(
            ensure_entry(conf.path(), sock).expect("ok"),
            Ensured::Unchanged(first.clone())
        );
        let leftovers: Vec<_> = std::fs::read_dir(conf.path())
            .expect("ls")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty(), "no temp files left");

        // The binary.
        let exe = conf.path().join("fake-exe");
        std::fs::write(&exe, b"\x7fELF binary").expect("write");
        let (target, written) = install_binary(&exe, &bin.path().join("sub")).expect("installs");
        assert!(written);
        assert_eq!(target, bin.path().join("sub/ambient-mesh-cni"));
        assert_eq!(std::fs::read(&target).expect("read"), b"\x7fELF binary");
        let mode = std::fs::metadata(&target)
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        let again = install_binary(&exe, &bin.path().join("sub")).expect("installs");
        assert_eq!(again, (target.clone(), false), "identical copy left alone");
        std::fs::write(&exe, b"\x7fELF binary v2").expect("write");
        assert!(
            install_binary(&exe, &bin.path().join("sub"))
                .expect("installs")
                .1
        );
        assert_eq!(std::fs::read(&target).expect("read"), b"\x7fELF binary v2");

        // A broken first conflist is left untouched, with an error naming it.
        std::fs::write(&first, "{broken").expect("write");
        let err = ensure_entry(conf.path(), sock).expect_err("refused");
        assert!(err.to_string().contains("10-calico.conflist"), "{err}");
        assert_eq!(std::fs::read_to_string(&first).expect("read"), "{broken");

        // Uninstall: our entry out of every conflist, the binary gone; broken files skipped.
        std::fs::write(&first, serde_json::to_string(&installed).expect("json")).expect("write");
        std::fs::write(&second, serde_json::to_string(&installed).expect("json")).expect("write");
        let done = uninstall(conf.path(), &bin.path().join("sub")).expect("uninstalls");
        assert_eq!(done.conflists, vec![first.clone(), second.clone()]);
        assert_eq!(done.binary, Some(target.clone()));
        assert!(!target.exists());
        assert_eq!(
            value(&std::fs::read_to_string(&first).expect("read")),
            value(CALICO)
        );
        assert_eq!(
            uninstall(conf.path(), &bin.path().join("sub")).expect("again"),
            Uninstalled::default()
        );
    }
}
