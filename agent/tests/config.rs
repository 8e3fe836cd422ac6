//! Bad configuration stops the agent at start, non-zero, naming the key or the path.

use std::process::Command;

fn agent_with(config_text: Option<&str>, path_override: Option<&str>) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("berth.toml");
    if let Some(text) = config_text {
        std::fs::write(&path, text).unwrap();
    }
    let path = path_override.map(Into::into).unwrap_or(path);
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["agent", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn an_unknown_key_stops_the_agent_and_is_named() {
    let (ok, err) = agent_with(
        Some("[http]\nlisten = \"127.0.0.1:1\"\nbogus_key = 1\n"),
        None,
    );
    assert!(!ok);
    assert!(err.contains("bogus_key"), "{err}");
    assert!(err.contains("berth.toml"), "{err}");
}

#[test]
fn a_bad_listen_address_stops_the_agent_and_is_named() {
    let (ok, err) = agent_with(Some("[http]\nlisten = \"nowhere:port\"\n"), None);
    assert!(!ok);
    assert!(err.contains("listen"), "{err}");
    assert!(err.contains("nowhere:port"), "{err}");
}

#[test]
fn a_missing_config_file_stops_the_agent_and_names_the_path() {
    let (ok, err) = agent_with(None, Some("/nonexistent/berth-test/berth.toml"));
    assert!(!ok);
    assert!(err.contains("/nonexistent/berth-test/berth.toml"), "{err}");
}

#[test]
fn an_invalid_value_stops_the_agent_and_names_the_key() {
    let (ok, err) = agent_with(Some("[cgroup]\nroot = \"../escape\"\n"), None);
    assert!(!ok);
    assert!(err.contains("cgroup.root"), "{err}");
}

#[test]
fn print_config_shows_the_defaults_merged_with_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("berth.toml");
    std::fs::write(&path, "[http]\nlisten = \"127.0.0.1:19999\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["agent", "--print-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("listen = \"127.0.0.1:19999\""), "{text}");
    assert!(text.contains("root = \"berth\""), "{text}");
    assert!(text.contains("interval = \"1s\""), "{text}");
}
