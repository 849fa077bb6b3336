//! Unit tests of the install: config file choice, conflist edits, conversion, binary copy.
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
        (Ensured::NoConfig, vec![])
    );

    // The first loadable config by name is chosen; files that do not load are skipped
    // (and reported), later ones and other extensions ignored.
    let first = conf.path().join("10-calico.conflist");
    let second = conf.path().join("20-other.conflist");
    std::fs::write(&first, CALICO).expect("write");
    std::fs::write(&second, CALICO).expect("write");
    std::fs::write(conf.path().join("05-old.conf"), "{}").expect("write");
    std::fs::write(conf.path().join(".00-hidden.conflist"), "{").expect("write");
    std::fs::write(conf.path().join("00-notes.txt"), "{").expect("write");
    std::fs::set_permissions(&first, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let (ensured, skipped) = ensure_entry(conf.path(), sock).expect("ok");
    assert_eq!(ensured, Ensured::Written(first.clone()));
    assert_eq!(skipped.len(), 2, "{skipped:?}");
    assert!(skipped[0].contains(".00-hidden.conflist"), "{skipped:?}");
    assert!(skipped[1].contains("05-old.conf") && skipped[1].contains("type"));
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
        ensure_entry(conf.path(), sock).expect("ok").0,
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

    // A broken first list is skipped, like the runtime skips it: the next one gets the
    // entry, the broken file is left untouched.
    std::fs::write(&first, "{broken").expect("write");
    let (ensured, skipped) = ensure_entry(conf.path(), sock).expect("ok");
    assert_eq!(ensured, Ensured::Written(second.clone()));
    assert!(
        skipped.iter().any(|s| s.contains("10-calico.conflist")),
        "{skipped:?}"
    );
    assert_eq!(std::fs::read_to_string(&first).expect("read"), "{broken");

    // Uninstall: our entry out of every list, the binary gone; broken files skipped.
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

const BRIDGE: &str = r#"{"cniVersion": "0.4.0", "name": "mynet", "type": "bridge",
    "bridge": "cni0", "ipam": {"type": "host-local", "subnet": "10.22.0.0/16"}}"#;

#[test]
fn the_runtime_choice_is_by_name_among_conf_conflist_and_json() {
    let conf = tempfile::tempdir().expect("tempdir");
    // `.conf` before `.conflist` before `.json`, by name: `10-a.conf` wins over
    // `10-a.conflist` (a prefix sorts first) and over `20-b.conflist`.
    std::fs::write(conf.path().join("20-b.conflist"), CALICO).expect("write");
    std::fs::write(conf.path().join("10-a.json"), BRIDGE).expect("write");
    std::fs::write(conf.path().join("10-a.conf"), BRIDGE).expect("write");
    let Choice {
        found: loaded,
        skipped,
    } = chosen(conf.path()).expect("reads");
    assert!(skipped.is_empty());
    let (path, loaded) = loaded.expect("one loads");
    assert_eq!(path, conf.path().join("10-a.conf"));
    assert!(matches!(loaded, Loaded::Single(_)));

    // A `.json` holding a list has no `type`: runtimes skip it (a list is only read from
    // a *.conflist), so do we.
    let list_json = conf.path().join("05-list.json");
    std::fs::write(&list_json, CALICO).expect("write");
    let Choice {
        found: loaded,
        skipped,
    } = chosen(conf.path()).expect("reads");
    assert_eq!(loaded.expect("one loads").0, conf.path().join("10-a.conf"));
    assert!(skipped[0].contains("05-list.json") && skipped[0].contains("*.conflist"));

    // What libcni refuses in a list.
    let list = Path::new("x.conflist");
    for (text, why) in [
        (r#"{"plugins": [{"type": "a"}]}"#, "name"),
        (r#"{"name": "n", "plugins": []}"#, "no plugins"),
        (r#"{"name": "n", "plugins": [1]}"#, "not an object"),
        (
            r#"{"name": "n", "cniVersion": 1, "plugins": [{"type": "a"}]}"#,
            "cniVersion",
        ),
        ("[]", "object"),
    ] {
        let err = load(list, text).expect_err(text).to_string();
        assert!(err.contains(why), "{text}: {err}");
    }
    assert!(matches!(load(list, CALICO), Ok(Loaded::List(_))));
    assert!(matches!(
        load(Path::new("x.json"), BRIDGE),
        Ok(Loaded::Single(_))
    ));
    assert!(load(Path::new("x.conf"), r#"{"type": ""}"#).is_err());
}

#[test]
fn a_single_plugin_config_is_converted_into_a_list_that_the_runtime_then_picks() {
    let sock = Path::new("/run/am/cni.sock");
    let conf = tempfile::tempdir().expect("tempdir");
    let single = conf.path().join("10-bridge.conf");
    let later = conf.path().join("20-later.conflist");
    std::fs::write(&single, BRIDGE).expect("write");
    std::fs::write(&later, CALICO).expect("write");
    std::fs::set_permissions(&single, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let list = conf.path().join("10-bridge.conflist");
    assert_eq!(
        ensure_entry(conf.path(), sock).expect("ok").0,
        Ensured::Converted {
            from: single.clone(),
            to: list.clone()
        }
    );
    assert!(
        !single.exists(),
        "the single config is gone, so the list comes first"
    );
    assert_eq!(
        value(&std::fs::read_to_string(&list).expect("read")),
        json!({"cniVersion": "0.4.0", "name": "mynet", "plugins": [
            {"type": "bridge", "bridge": "cni0",
             "ipam": {"type": "host-local", "subnet": "10.22.0.0/16"}},
            {"type": "ambient-mesh-cni", "agent_socket": "/run/am/cni.sock"}]})
    );
    let mode = std::fs::metadata(&list).expect("stat").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "mode kept");
    assert_eq!(std::fs::read_to_string(&later).expect("read"), CALICO);
    // It is now the runtime's choice, and right.
    assert_eq!(
        ensure_entry(conf.path(), sock).expect("ok").0,
        Ensured::Unchanged(list.clone())
    );
    // The primary CNI writes its single config again: converted again.
    std::fs::write(&single, BRIDGE).expect("write");
    assert!(matches!(
        ensure_entry(conf.path(), sock).expect("ok").0,
        Ensured::Converted { .. }
    ));
    assert!(!single.exists());

    // A `.json` single config becomes `<stem>.conflist`, which sorts before it anyway.
    let conf = tempfile::tempdir().expect("tempdir");
    let json_single = conf.path().join("05-net.json");
    std::fs::write(&json_single, BRIDGE).expect("write");
    assert_eq!(
        ensure_entry(conf.path(), sock).expect("ok").0,
        Ensured::Converted {
            from: json_single.clone(),
            to: conf.path().join("05-net.conflist")
        }
    );
    assert!(!json_single.exists());
}

#[test]
fn a_conversion_that_would_hand_the_choice_to_another_file_is_refused() {
    let sock = Path::new("/s");
    let conf = tempfile::tempdir().expect("tempdir");
    let single = conf.path().join("10-a.conf");
    // Sorts between `10-a.conf` and `10-a.conflist`.
    let between = conf.path().join("10-a.conf.d.json");
    std::fs::write(&single, BRIDGE).expect("write");
    std::fs::write(&between, BRIDGE).expect("write");
    let err = ensure_entry(conf.path(), sock).expect_err("refused");
    let shown = err.to_string();
    assert!(
        shown.contains("10-a.conf ") && shown.contains("10-a.conf.d.json"),
        "{shown}"
    );
    assert_eq!(std::fs::read_to_string(&single).expect("read"), BRIDGE);
    assert!(!conf.path().join("10-a.conflist").exists());
}
