//! Node and coordinator state is private to its user (issue 12, item 7):
//! directories 0700, files 0600, sockets 0600, exactly; and state left
//! world-readable by an older version is made private when the daemons
//! start again.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use mpctl::Process;
use mpctl_tests::TestCluster;

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// Every path that must be private, with its mode.
fn private_paths(tc: &TestCluster, id: &str) -> Vec<(PathBuf, u32)> {
    let server = tc.path().join("server");
    let agent = tc.agent_dir("node-a");
    let launcher = agent.join("launcher");
    let procs = agent.join("procs");
    vec![
        (server.clone(), 0o700),
        (server.join("coordinator.sqlite"), 0o600),
        (server.join("coordinator.sqlite-wal"), 0o600),
        (server.join("coordinator.sqlite-shm"), 0o600),
        (agent.clone(), 0o700),
        (agent.join("pool.sock"), 0o600),
        (procs.clone(), 0o700),
        (procs.join(id), 0o700),
        (procs.join(id).join("stdout"), 0o600),
        (procs.join(id).join("stderr"), 0o600),
        (launcher.clone(), 0o700),
        (launcher.join("launcher.sock"), 0o600),
        (launcher.join("adopt.sock"), 0o600),
        (launcher.join("launcher.lock"), 0o600),
        (launcher.join("launcher.log"), 0o600),
        (launcher.join("exits.journal"), 0o600),
    ]
}

fn assert_private(tc: &TestCluster, id: &str) {
    let got: Vec<(PathBuf, u32)> = private_paths(tc, id)
        .into_iter()
        .map(|(p, _)| {
            let m = mode(&p);
            (p, m)
        })
        .collect();
    let want = private_paths(tc, id);
    let show = |v: &[(PathBuf, u32)]| {
        v.iter()
            .map(|(p, m)| format!("{m:04o} {}", p.display()))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(show(&got), show(&want));
}

async fn run_one(tc: &TestCluster) -> String {
    let c = tc.client().await;
    let mut p = Process::new(&c, ["sh", "-c", "echo out; echo err >&2; exit 5"]);
    p.start().await.unwrap();
    p.join(None).await.unwrap();
    assert_eq!(p.exitcode(), Some(5));
    p.id().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn state_files_are_private_and_are_made_so_on_restart() {
    let mut tc = TestCluster::with_agent(1);
    let id = run_one(&tc).await;
    assert_private(&tc, &id);

    // State as an older version left it: world-readable everywhere.
    for (path, m) in private_paths(&tc, &id) {
        let open = if m == 0o700 { 0o755 } else { 0o644 };
        fs::set_permissions(&path, fs::Permissions::from_mode(open)).unwrap();
    }
    let mut agent = tc.kill_agent("node-a");
    let _ = agent.child.wait();
    tc.kill_server();
    tc.start_server();
    tc.start_agent("node-a", 1, &[]);
    // Everything the daemons own is private again, the earlier output
    // included, and so is what the next process makes.
    assert_private(&tc, &id);
    let id2 = run_one(&tc).await;
    assert_private(&tc, &id2);
}
