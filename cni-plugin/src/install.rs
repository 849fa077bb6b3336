//! Installing the plugin into the node's CNI configuration, as a DaemonSet does (upstream
//! istio-cni's `install-cni`): the agent copies its own binary into the CNI bin directory and
//! chains itself into the primary CNI's network configuration list.
//!
//! - Binary: `/proc/self/exe` → `<bin-dir>/ambient-mesh-cni`, mode 0755, through a temp file
//!   and a rename (a runtime executing the old binary keeps its inode; none sees half a file).
//! - Config: the file the runtime uses, chosen as libcni's users do (containerd, CRI-O, the
//!   kubelet, upstream istio-cni): every `*.conf`, `*.conflist` and `*.json` of the conf dir,
//!   sorted by name, the first that loads. A `.conflist` loads when it is a JSON object with a
//!   string `name` and a non-empty `plugins` array; a `.conf` or `.json` is a single plugin
//!   config and loads when it has a `type` (a `.json` holding a `plugins` list has none, so
//!   runtimes skip it, and so do we). A file that does not load is skipped with a warning, as
//!   CRI-O and the kubelet skip it (containerd refuses the whole dir: then no pod starts).
//!   Waited for while the primary CNI has not written one.
//! - A list gets `{"type":"ambient-mesh-cni","agent_socket":"<--cni-socket>"}` appended to
//!   its `plugins`, or an existing entry of that type gets its `agent_socket` set (other
//!   entries of that type are dropped: the plugin must run once). Nothing else changes, and
//!   nothing is written when the entry is already right.
//! - A single plugin config is converted, as upstream istio-cni does, into `<stem>.conflist`
//!   `{"cniVersion", "name", "plugins": [<the old object without cniVersion and name>, ours]}`
//!   (the old file's `cniVersion` and `name` kept), and the old file is removed so that the
//!   list is what the runtime picks (`<stem>.conf` sorts before `<stem>.conflist`). Refused,
//!   with an error naming both files, when another loadable config would then come first.
//!   If the primary CNI writes its single config again, it is converted again.
//! - Writes are atomic (temp file + rename, same mode). Like upstream, object keys come out
//!   sorted (the file is re-serialised); no value changes.
//! - The install stays when the agent stops: while it is down, ADD fails with "try again
//!   later" (code 11) and no pod starts uncaptured. `cni-plugin uninstall` removes both.
//!
//! The agent installs once before it logs ready ([`Keeper::until_installed`]), then re-checks
//! every [`CHECK_EVERY`] ([`Keeper::keep`]), so the entry comes back if the primary CNI
//! rewrites its config.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Map, Value};

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
    /// A runtime would not load it (libcni's checks); it skips the file.
    #[error("not loadable as a CNI network config: {0}")]
    Unloadable(String),
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
    /// Converting the single plugin config would not make the list the runtime's choice.
    #[error(
        "{from} is a single plugin config; converted to {to}, {first} would come first: \
         left untouched (rename or remove one of them)"
    )]
    Shadowed {
        /// The single plugin config.
        from: PathBuf,
        /// The list it would become.
        to: PathBuf,
        /// The loadable config that would sort before the list.
        first: PathBuf,
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

/// The extensions of the files a runtime reads in the conf dir (libcni's `ConfFiles`).
const EXTENSIONS: [&str; 3] = [".conf", ".conflist", ".json"];

/// Every file of `conf_dir` a runtime considers (by extension, as libcni's `ConfFiles`:
/// directories skipped, dot-names included), sorted by name as the runtimes sort them.
fn config_files(conf_dir: &Path) -> Result<Vec<PathBuf>, InstallError> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(conf_dir)
        .map_err(io_err("reading the CNI conf dir", conf_dir))?
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            EXTENSIONS.iter().any(|ext| name.ends_with(ext))
        })
        .map(|e| e.path())
        .filter(|p| !p.is_dir())
        .collect();
    found.sort_by(|a, b| {
        a.as_os_str()
            .as_encoded_bytes()
            .cmp(b.as_os_str().as_encoded_bytes())
    });
    Ok(found)
}

/// A config file as a runtime loads it.
#[derive(Debug, Clone, PartialEq)]
pub enum Loaded {
    /// A network configuration list (`*.conflist`).
    List(Value),
    /// A single plugin config (`*.conf`, `*.json`): the runtime wraps it in a list.
    Single(Value),
}

/// How a runtime loads `path` with contents `text` (libcni's `ConfListFromBytes` for a
/// `.conflist`, `ConfFromBytes` plus the runtimes' `type` check otherwise).
pub fn load(path: &Path, text: &str) -> Result<Loaded, ConflistError> {
    let conf = parse(text)?;
    let Value::Object(map) = &conf else {
        return Err(ConflistError::Unloadable("not a JSON object".into()));
    };
    let bad = |why: &str| Err(ConflistError::Unloadable(why.to_string()));
    if let Some(v) = map.get("cniVersion") {
        if !v.is_string() {
            return bad("\"cniVersion\" is not a string");
        }
    }
    if path.to_string_lossy().ends_with(".conflist") {
        if !map.get("name").is_some_and(Value::is_string) {
            return bad("a list needs a string \"name\"");
        }
        return match map.get("plugins") {
            Some(Value::Array(list)) if list.is_empty() => bad("no plugins in the list"),
            Some(Value::Array(list)) if list.iter().all(Value::is_object) => Ok(Loaded::List(conf)),
            Some(Value::Array(_)) => bad("a plugin in the list is not an object"),
            Some(_) => bad("\"plugins\" is not an array"),
            None => Err(ConflistError::NoPlugins),
        };
    }
    match map.get("type") {
        Some(Value::String(t)) if !t.is_empty() => Ok(Loaded::Single(conf)),
        _ if map.contains_key("plugins") => {
            bad("no \"type\"; a list is only read from a *.conflist file")
        }
        _ => bad("no \"type\""),
    }
}

/// The single plugin config `single` as a list, with our entry after it.
fn converted(single: &Value, agent_socket: &Path) -> String {
    let mut plugin = single.clone();
    let mut list = Map::new();
    if let Value::Object(fields) = &mut plugin {
        for key in ["cniVersion", "name"] {
            if let Some(value) = fields.remove(key) {
                list.insert(key.to_string(), value);
            }
        }
    }
    let socket = agent_socket.display().to_string();
    let ours = json!({"type": PLUGIN_TYPE, "agent_socket": socket});
    list.insert("plugins".into(), Value::Array(vec![plugin, ours]));
    serialise(&Value::Object(list))
}

/// The config the runtime uses in a conf dir, and the files skipped before it.
#[derive(Debug)]
struct Choice {
    /// The first file that loads, as loaded.
    found: Option<(PathBuf, Loaded)>,
    /// The files before it that do not load, and why.
    skipped: Vec<String>,
}

/// The config the runtime uses in `conf_dir`: the first that loads.
fn chosen(conf_dir: &Path) -> Result<Choice, InstallError> {
    let mut skipped = Vec::new();
    for path in config_files(conf_dir)? {
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) => {
                skipped.push(format!("{}: {e}", path.display()));
                continue;
            }
        };
        match load(&path, &text) {
            Ok(loaded) => {
                let found = Some((path, loaded));
                return Ok(Choice { found, skipped });
            }
            Err(e) => skipped.push(format!("{}: {e}", path.display())),
        }
    }
    Ok(Choice {
        found: None,
        skipped,
    })
}

/// Writes `bytes` to `path` through a temp file in the same directory and a rename.
fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), InstallError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    // Not a config extension: neither the runtime nor `config_files` picks it up.
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
    /// No config a runtime would load yet: the primary CNI has not written its config.
    NoConfig,
    /// The entry was already right in this list.
    Unchanged(PathBuf),
    /// The entry was added or updated in this list.
    Written(PathBuf),
    /// The single plugin config `from` became the list `to`, with our entry.
    Converted {
        /// The single plugin config (removed).
        from: PathBuf,
        /// The list written.
        to: PathBuf,
    },
}

fn mode_of(path: &Path) -> Result<u32, InstallError> {
    Ok(std::fs::metadata(path)
        .map_err(io_err("reading the mode of", path))?
        .permissions()
        .mode()
        & 0o7777)
}

/// Puts our entry into the config the runtime uses in `conf_dir` (module docs), if there is
/// one. Also returns the files skipped before it (a runtime would not load them), and why.
pub fn ensure_entry(
    conf_dir: &Path,
    agent_socket: &Path,
) -> Result<(Ensured, Vec<String>), InstallError> {
    let Choice { found, skipped } = chosen(conf_dir)?;
    let Some((path, loaded)) = found else {
        return Ok((Ensured::NoConfig, skipped));
    };
    let single = match loaded {
        Loaded::Single(single) => single,
        Loaded::List(_) => {
            let text = std::fs::read_to_string(&path).map_err(io_err("reading", &path))?;
            let edited =
                with_entry(&text, agent_socket).map_err(|source| InstallError::Conflist {
                    path: path.clone(),
                    source,
                })?;
            let Some(edited) = edited else {
                return Ok((Ensured::Unchanged(path), skipped));
            };
            write_atomically(&path, edited.as_bytes(), mode_of(&path)?)?;
            return Ok((Ensured::Written(path), skipped));
        }
    };
    let to = path.with_extension("conflist");
    let to_name = to.as_os_str().as_encoded_bytes();
    // Every loadable config sorts after `path` (the first); one between it and `to` would
    // become the runtime's choice once `path` is gone.
    for other in config_files(conf_dir)? {
        let name = other.as_os_str().as_encoded_bytes();
        if other == path || other == to || name <= path.as_os_str().as_encoded_bytes() {
            continue;
        }
        if name >= to_name {
            break;
        }
        let loads = std::fs::read_to_string(&other).is_ok_and(|t| load(&other, &t).is_ok());
        if loads {
            return Err(InstallError::Shadowed {
                from: path,
                to,
                first: other,
            });
        }
    }
    write_atomically(
        &to,
        converted(&single, agent_socket).as_bytes(),
        mode_of(&path)?,
    )?;
    std::fs::remove_file(&path).map_err(io_err("removing the converted", &path))?;
    Ok((Ensured::Converted { from: path, to }, skipped))
}

/// What [`uninstall`] removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Uninstalled {
    /// Conflists our entry was removed from.
    pub conflists: Vec<PathBuf>,
    /// The binary, if it was there.
    pub binary: Option<PathBuf>,
}

/// Removes our entry from every config list of `conf_dir` and our binary from `bin_dir`.
/// A list converted from a single plugin config stays a list (of that one plugin), as with
/// upstream. Files that cannot be read as lists are left alone (they hold no entry of ours
/// we could remove).
pub fn uninstall(conf_dir: &Path, bin_dir: &Path) -> Result<Uninstalled, InstallError> {
    let mut done = Uninstalled::default();
    for path in config_files(conf_dir)? {
        let text = std::fs::read_to_string(&path).map_err(io_err("reading", &path))?;
        match without_entry(&text) {
            Ok(Some(edited)) => {
                write_atomically(&path, edited.as_bytes(), mode_of(&path)?)?;
                done.conflists.push(path);
            }
            Ok(None) => {}
            // A single plugin config, or not JSON: nothing of ours in it.
            Err(ConflistError::NoPlugins) => {}
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

/// Keeps our entry in the runtime's config of the conf dir (module docs), logging what it
/// does once per change.
#[derive(Debug)]
pub struct Keeper {
    conf_dir: PathBuf,
    agent_socket: PathBuf,
    waiting_logged: bool,
    installed_in: Option<PathBuf>,
    last_error: Option<String>,
    last_skipped: Vec<String>,
}

impl Keeper {
    /// A keeper of our entry (pointing at `agent_socket`) in `conf_dir`.
    pub fn new(conf_dir: PathBuf, agent_socket: PathBuf) -> Self {
        Keeper {
            conf_dir,
            agent_socket,
            waiting_logged: false,
            installed_in: None,
            last_error: None,
            last_skipped: Vec::new(),
        }
    }

    /// One check; whether our entry is in place now.
    async fn check(&mut self) -> bool {
        let (dir, socket) = (self.conf_dir.clone(), self.agent_socket.clone());
        let result = tokio::task::spawn_blocking(move || ensure_entry(&dir, &socket)).await;
        let socket = self.agent_socket.display().to_string();
        let (ensured, skipped) = match result {
            Ok(Ok(found)) => found,
            Ok(Err(e)) => {
                let e = e.to_string();
                // Once per distinct error: the check repeats every second.
                if self.last_error.as_ref() != Some(&e) {
                    tracing::error!(error = %e, "cannot install into the CNI config; retrying");
                    self.last_error = Some(e);
                }
                return false;
            }
            Err(e) => {
                tracing::error!(error = %e, "internal: install check panicked");
                return false;
            }
        };
        self.last_error = None;
        if skipped != self.last_skipped {
            for why in &skipped {
                tracing::warn!(file = %why, "skipped a CNI config file a runtime would not load");
            }
            self.last_skipped = skipped;
        }
        match ensured {
            Ensured::NoConfig => {
                if !self.waiting_logged {
                    tracing::info!(conf_dir = %self.conf_dir.display(), "waiting for the primary CNI plugin to write its network config (*.conflist, *.conf or *.json)");
                    self.waiting_logged = true;
                }
                self.installed_in = None;
                return false;
            }
            Ensured::Written(path) => {
                tracing::info!(conflist = %path.display(), agent_socket = %socket, changed = true, "installed into the CNI config");
                self.installed_in = Some(path);
            }
            Ensured::Converted { from, to } => {
                tracing::info!(from = %from.display(), conflist = %to.display(), agent_socket = %socket, changed = true, "converted the single plugin config into a list; installed into the CNI config");
                self.installed_in = Some(to);
            }
            Ensured::Unchanged(path) => {
                if self.installed_in.as_ref() != Some(&path) {
                    tracing::info!(conflist = %path.display(), agent_socket = %socket, changed = false, "installed into the CNI config");
                    self.installed_in = Some(path);
                }
            }
        }
        true
    }

    /// Checks every [`CHECK_EVERY`] until our entry is in place (waiting for the primary
    /// CNI's config meanwhile).
    pub async fn until_installed(&mut self) {
        while !self.check().await {
            tokio::time::sleep(CHECK_EVERY).await;
        }
    }

    /// Re-checks every [`CHECK_EVERY`] until the agent stops.
    pub async fn keep(mut self) {
        loop {
            tokio::time::sleep(CHECK_EVERY).await;
            self.check().await;
        }
    }
}

#[cfg(test)]
mod tests;
