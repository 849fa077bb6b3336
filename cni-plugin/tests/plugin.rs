//! The built binary in CNI plugin mode: environment and stdin in, JSON and exit status out,
//! against a fake node agent (a unix socket served by a thread of this test) or none.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::JoinHandle;

use serde_json::{json, Value};

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {:?}; stderr: {}",
                self.stdout, self.stderr
            )
        })
    }
}

fn plugin(command: &str, stdin: &str) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cni-plugin"))
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", "ctr-1")
        .env("CNI_NETNS", "/proc/self/ns/net")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/opt/cni/bin")
        .env(
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME=sleep-1",
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the plugin");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn socket_path(test: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(format!("{test}.sock"));
    (dir, path)
}

/// Serves one request with `reply`; returns the request it got.
fn fake_agent(path: &Path, reply: &'static str) -> JoinHandle<Value> {
    let listener = UnixListener::bind(path).expect("bind fake agent");
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().expect("accept");
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line).expect("read");
        (&stream)
            .write_all(format!("{reply}\n").as_bytes())
            .expect("reply");
        serde_json::from_str(&line).expect("request is JSON")
    })
}

fn conf(socket: &Path, prev: Option<&Value>) -> String {
    let mut c = json!({
        "cniVersion": "1.0.0",
        "name": "k8s-pod-network",
        "type": "cni-plugin",
        "agent_socket": socket,
    });
    if let Some(prev) = prev {
        c["prevResult"] = prev.clone();
    }
    c.to_string()
}

fn prev_result() -> Value {
    json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "mac": "aa:bb:cc:dd:ee:ff", "sandbox": "/var/run/netns/x"}],
        "ips": [
            {"address": "10.11.0.2/24", "gateway": "10.11.0.1", "interface": 0},
            {"address": "fd00::2/64", "interface": 0}
        ],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dns": {"nameservers": ["10.96.0.10"], "search": ["demo.svc.cluster.local"]},
        "vendorExtension": {"nested": [1, 2.5, null, true]}
    })
}

#[test]
fn add_tells_the_agent_and_passes_prev_result_through_unchanged() {
    let (_dir, sock) = socket_path("add");
    let agent = fake_agent(&sock, r#"{"ok":true,"enrolled":true}"#);
    let prev = prev_result();
    let run = plugin("ADD", &conf(&sock, Some(&prev)));
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    assert_eq!(run.json(), prev);
    let req = agent.join().expect("agent thread");
    assert_eq!(
        req,
        json!({"command":"add","container_id":"ctr-1","netns":"/proc/self/ns/net",
            "pod_name":"sleep-1","pod_namespace":"demo","pod_ips":["10.11.0.2","fd00::2"]})
    );
}

#[test]
fn add_of_a_pod_outside_the_mesh_also_passes_through() {
    let (_dir, sock) = socket_path("notenrolled");
    let agent = fake_agent(&sock, r#"{"ok":true,"enrolled":false}"#);
    let run = plugin("ADD", &conf(&sock, Some(&prev_result())));
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    assert_eq!(run.json(), prev_result());
    agent.join().expect("agent thread");
}

#[test]
fn add_without_agent_fails_closed_with_try_again_later() {
    let (_dir, sock) = socket_path("none");
    let run = plugin("ADD", &conf(&sock, Some(&prev_result())));
    assert_ne!(run.code, 0);
    let err = run.json();
    assert_eq!(err["code"], json!(11));
    assert_eq!(err["cniVersion"], json!("1.0.0"));
    let details = err["details"].as_str().expect("details");
    assert!(
        details.contains("DaemonSet") && details.contains(&sock.display().to_string()),
        "{details}"
    );
}

#[test]
fn add_refused_by_the_agent_is_a_plugin_error() {
    let (_dir, sock) = socket_path("refused");
    let agent = fake_agent(
        &sock,
        r#"{"ok":false,"enrolled":false,"error":"iptables-restore: boom"}"#,
    );
    let run = plugin("ADD", &conf(&sock, Some(&prev_result())));
    assert_ne!(run.code, 0);
    let err = run.json();
    assert_eq!(err["code"], json!(999));
    assert_eq!(err["details"], json!("iptables-restore: boom"));
    agent.join().expect("agent thread");
}

#[test]
fn del_succeeds_with_and_without_agent_and_prints_nothing() {
    let (_dir, sock) = socket_path("del");
    let run = plugin("DEL", &conf(&sock, None));
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    assert_eq!(run.stdout, "");
    assert!(run.stderr.contains("unreachable"), "{}", run.stderr);

    let agent = fake_agent(&sock, r#"{"ok":true,"enrolled":false}"#);
    let run = plugin("DEL", &conf(&sock, None));
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    assert_eq!(run.stdout, "");
    assert_eq!(agent.join().expect("agent thread")["command"], json!("del"));
}

#[test]
fn check_needs_prev_result() {
    let (_dir, sock) = socket_path("check");
    let run = plugin("CHECK", &conf(&sock, Some(&prev_result())));
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    assert_eq!(run.stdout, "");
    let run = plugin("CHECK", &conf(&sock, None));
    assert_ne!(run.code, 0);
    assert_eq!(run.json()["code"], json!(7));
}

#[test]
fn version_lists_the_supported_versions() {
    let run = plugin("VERSION", r#"{"cniVersion":"1.0.0"}"#);
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    assert_eq!(
        run.json(),
        json!({"cniVersion":"1.0.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0"]})
    );
}

#[test]
fn bad_input_gives_the_spec_error_codes() {
    let run = plugin("ADD", "not json");
    assert_ne!(run.code, 0);
    assert_eq!(run.json()["code"], json!(6));
    let run = plugin("ADD", r#"{"cniVersion":"2.0.0","name":"n","type":"t"}"#);
    assert_eq!(run.json()["code"], json!(1));
    let run = plugin("BOGUS", "{}");
    assert_eq!(run.json()["code"], json!(4));
}
