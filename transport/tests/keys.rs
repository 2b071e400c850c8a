//! Authkey files and role keys.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use hmac::{Hmac, KeyInit, Mac};
use mpctl_transport::handshake::client_mac;
use mpctl_transport::{AuthKey, Role, TransportError};

fn mode(path: &std::path::Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn write_new_creates_0600_file_and_load_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/dir/authkey");
    let key = AuthKey::write_new(&path, false).unwrap();
    assert_eq!(mode(&path), 0o600);
    let text = fs::read_to_string(&path).unwrap();
    assert_eq!(text.len(), 65);
    assert!(text.ends_with('\n'));
    assert!(text[..64]
        .bytes()
        .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
    let loaded = AuthKey::load(&path).unwrap();
    // Same key => same role keys.
    assert!(key
        .role_key(Role::Client)
        .ct_eq(&loaded.role_key(Role::Client)));
    assert!(key
        .role_key(Role::Agent)
        .ct_eq(&loaded.role_key(Role::Agent)));
}

#[test]
fn load_accepts_file_without_newline() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k");
    fs::write(&path, "00".repeat(32)).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    let k = AuthKey::load(&path).unwrap();
    assert!(k
        .role_key(Role::Client)
        .ct_eq(&AuthKey::from_bytes([0; 32]).role_key(Role::Client)));
}

#[test]
fn group_readable_file_is_refused_with_chmod_hint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("authkey");
    AuthKey::write_new(&path, false).unwrap();
    for bad in [0o640, 0o604, 0o620, 0o644] {
        fs::set_permissions(&path, fs::Permissions::from_mode(bad)).unwrap();
        let err = AuthKey::load(&path).unwrap_err();
        assert!(matches!(err, TransportError::AuthKeyPermissions { .. }));
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("chmod 600 {}", path.display())),
            "{msg}"
        );
    }
}

#[test]
fn overwrite_is_refused_unless_asked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("authkey");
    AuthKey::write_new(&path, false).unwrap();
    let before = fs::read(&path).unwrap();
    let err = AuthKey::write_new(&path, false).unwrap_err();
    assert!(matches!(err, TransportError::AuthKeyExists { .. }));
    assert!(err.to_string().contains(&path.display().to_string()));
    assert_eq!(fs::read(&path).unwrap(), before, "file must be untouched");

    // Explicit overwrite replaces it, still 0600 even if the old file was not.
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    AuthKey::write_new(&path, true).unwrap();
    assert_ne!(fs::read(&path).unwrap(), before);
    assert_eq!(mode(&path), 0o600);
    AuthKey::load(&path).unwrap();
}

#[test]
fn bad_content_is_refused_naming_path_and_keygen() {
    let dir = tempfile::tempdir().unwrap();
    for (name, content) in [
        ("short", "abcd\n".to_string()),
        ("long", "ab".repeat(33)),
        ("nonhex", format!("{}zz\n", "ab".repeat(31))),
        ("empty", String::new()),
        ("twolines", format!("{}\n\n", "ab".repeat(32))),
    ] {
        let path = dir.path().join(name);
        fs::write(&path, content).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let err = AuthKey::load(&path).unwrap_err();
        assert!(
            matches!(err, TransportError::AuthKeyMalformed { .. }),
            "{name}: {err}"
        );
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("mpctl keygen"), "{msg}");
    }
}

#[test]
fn missing_file_error_names_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope");
    let err = AuthKey::load(&path).unwrap_err();
    assert!(err.to_string().contains(&path.display().to_string()));
}

#[test]
fn role_keys_differ_between_roles_and_authkeys() {
    let a = AuthKey::from_bytes([1; 32]);
    let b = AuthKey::from_bytes([2; 32]);
    assert!(!a.role_key(Role::Client).ct_eq(&a.role_key(Role::Agent)));
    assert!(!a.role_key(Role::Client).ct_eq(&b.role_key(Role::Client)));
    assert!(!a.role_key(Role::Agent).ct_eq(&b.role_key(Role::Agent)));
    assert!(a.role_key(Role::Agent).ct_eq(&a.role_key(Role::Agent)));
    let g1 = AuthKey::generate();
    let g2 = AuthKey::generate();
    assert!(!g1.role_key(Role::Client).ct_eq(&g2.role_key(Role::Client)));
}

#[test]
fn role_key_is_hkdf_sha256_as_specified() {
    // Check the derivation through an observable output (the client MAC),
    // against an independent HKDF + HMAC computation.
    let raw = [7u8; 32];
    let key = AuthKey::from_bytes(raw);
    let (binding, ns, nc) = ([3u8; 32], [4u8; 32], [5u8; 32]);
    for role in Role::ALL {
        let rk = common::spec_role_key(&raw, role);
        let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&rk).unwrap();
        mac.update(b"mpctl-client");
        mac.update(&[role.wire_byte()]);
        mac.update(&binding);
        mac.update(&ns);
        mac.update(&nc);
        let expected: [u8; 32] = mac.finalize().into_bytes().into();
        assert_eq!(
            client_mac(&key.role_key(role), role, &binding, &ns, &nc),
            expected
        );
    }
}

#[test]
fn debug_output_is_redacted() {
    let raw = [0xabu8; 32];
    let key = AuthKey::from_bytes(raw);
    let dbg = format!("{key:?}");
    assert_eq!(dbg, "AuthKey(<redacted>)");
    for role in Role::ALL {
        let rk = key.role_key(role);
        assert_eq!(format!("{rk:?}"), "RoleKey(<redacted>)");
        assert_eq!(format!("{rk:#?}"), "RoleKey(<redacted>)");
        let spec = common::spec_role_key(&raw, role);
        assert!(!format!("{rk:?}").contains(&common::hex(&spec)));
    }
    assert!(!format!("{key:#?}").contains("ab"));
}

#[test]
fn role_display() {
    assert_eq!(Role::Client.to_string(), "client");
    assert_eq!(Role::Agent.to_string(), "agent");
}
