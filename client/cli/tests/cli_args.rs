//! Argument handling of the `mpctl` binary that needs no cluster. (Having an
//! integration test here also makes `cargo test --workspace` build the
//! `mpctl` binary that the cross-crate tests in `tests/` drive.)

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

fn mpctl() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mpctl"));
    cmd.env_remove("MPCTL_ADDR")
        .env_remove("MPCTL_AUTHKEY_FILE")
        .env_remove("RUST_LOG");
    cmd
}

#[test]
fn run_without_a_command_is_a_usage_error() {
    let o = mpctl().arg("run").output().unwrap();
    assert_eq!(o.status.code(), Some(125));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("COMMAND"), "{err}");
}

#[test]
fn address_without_authkey_is_refused_clearly() {
    let o = mpctl()
        .args(["ps"])
        .env("MPCTL_ADDR", "127.0.0.1:1")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(125));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("MPCTL_AUTHKEY_FILE"), "{err}");
}

#[test]
fn keygen_writes_a_private_key_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/authkey");
    let o = mpctl()
        .args(["keygen", "--out"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        path.to_str().unwrap()
    );
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.trim_end().len(), 64);
    assert!(text.trim_end().chars().all(|c| c.is_ascii_hexdigit()));
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let o = mpctl()
        .args(["keygen", "--out"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(125));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("refusing to overwrite") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);

    let o = mpctl()
        .args(["keygen", "--force", "--out"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0));
    assert_ne!(std::fs::read_to_string(&path).unwrap(), text);
}

#[test]
fn server_refuses_plaintext_off_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("authkey");
    assert!(mpctl()
        .args(["keygen", "--out"])
        .arg(&key)
        .status()
        .unwrap()
        .success());
    let o = mpctl()
        .args([
            "server",
            "--plaintext",
            "--listen",
            "0.0.0.0:0",
            "--data-dir",
        ])
        .arg(dir.path().join("state"))
        .arg("--authkey-file")
        .arg(&key)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(125));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("loopback"), "{err}");
}
