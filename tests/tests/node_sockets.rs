//! Node-local sockets check their peers (issue 12, item 4;
//! `docs/node-contract.md` §12): a process of another uid is refused on
//! `launcher.sock`, `adopt.sock` and `pool.sock`, first by the 0700
//! directories and 0600 sockets and, with those loosened, by the
//! `SO_PEERCRED` check itself; and a managed job cannot forge another
//! job's exit. The other-uid client is `/usr/bin/python3` run as uid and
//! gid 65534 (`nobody`); the tests run as root.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use mpctl::{Process, ProcessState};
use mpctl_tests::TestCluster;

const PYTHON: &str = "/usr/bin/python3";
const NOBODY: u32 = 65534;

/// Connects to `path` as `nobody` and says what happened: `connect:
/// ERRNO`, or `closed` when the server hung up without a word, or `data`.
const CLIENT: &str = r#"
import errno, socket, sys
kind = socket.SOCK_SEQPACKET if sys.argv[2] == "seqpacket" else socket.SOCK_STREAM
s = socket.socket(socket.AF_UNIX, kind)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print("connect: " + errno.errorcode[e.errno]); sys.exit(0)
s.settimeout(60)
try:
    print("closed" if s.recv(65536) == b"" else "data")
except ConnectionResetError:
    print("closed")
"#;

/// (pid, what the client printed).
fn connect_as_nobody(path: &Path, kind: &str) -> (u32, String) {
    assert!(
        Path::new(PYTHON).exists(),
        "this test runs {PYTHON} as another user: install it"
    );
    let child = Command::new(PYTHON)
        .args(["-c", CLIENT])
        .arg(path)
        .arg(kind)
        .env_clear()
        .current_dir("/")
        .uid(NOBODY)
        .gid(NOBODY)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the other-uid client");
    let pid = child.id();
    let out = child.wait_with_output().expect("other-uid client");
    assert!(out.status.success(), "client failed: {:?}", out.status);
    (pid, String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

fn refusal_line(socket: &str, pid: u32) -> String {
    let own = nix::unistd::geteuid().as_raw();
    format!(
        "{socket}: refused 1 connection or message since the last report (1 in all); latest: peer pid {pid} uid {NOBODY} gid {NOBODY}: uid not allowed (allowed: [{own}])"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn another_uid_is_refused_on_every_node_local_socket() {
    let tc = TestCluster::with_agent(2);
    let c = tc.client().await;
    let agent = tc.agent_dir("node-a");
    let launcher = agent.join("launcher");
    let sockets: [(PathBuf, &str); 3] = [
        (launcher.join("launcher.sock"), "stream"),
        (launcher.join("adopt.sock"), "seqpacket"),
        (agent.join("pool.sock"), "stream"),
    ];

    // The modes alone keep it out: it cannot even reach the sockets.
    for (path, kind) in &sockets {
        assert_eq!(connect_as_nobody(path, kind).1, "connect: EACCES");
    }

    // Loosened, so that only SO_PEERCRED stands in the way.
    let dirs = [
        tc.path().to_owned(),
        tc.path().join("agents"),
        agent.clone(),
        launcher.clone(),
    ];
    for d in &dirs {
        chmod(d, 0o711);
    }
    for (path, _) in &sockets {
        chmod(path, 0o666);
    }
    let mut pids = Vec::new();
    for (path, kind) in &sockets {
        let (pid, said) = connect_as_nobody(path, kind);
        assert_eq!(said, "closed", "{}", path.display());
        pids.push(pid);
    }
    // Each refusal is logged before the connection is closed.
    let log = fs::read_to_string(launcher.join("launcher.log")).unwrap();
    assert!(
        log.contains(&refusal_line("launcher.sock", pids[0])),
        "{log}"
    );
    assert!(log.contains(&refusal_line("adopt.sock", pids[1])), "{log}");
    tc.agent("node-a")
        .wait_line(&refusal_line("pool.sock", pids[2]), Duration::from_secs(30));

    // The agent's own connection was never replaced and still works.
    let mut p = Process::new(&c, ["sh", "-c", "exit 7"]);
    p.start().await.unwrap();
    p.join(None).await.unwrap();
    assert_eq!(p.exitcode(), Some(7));
    let log = fs::read_to_string(launcher.join("launcher.log")).unwrap();
    assert!(!log.contains("replaces the old one"), "{log}");

    for d in &dirs {
        chmod(d, 0o700);
    }
    for (path, _) in &sockets {
        chmod(path, 0o600);
    }
}

/// A managed job (a command) tells `adopt.sock` that another job exited
/// with 42: refused; the victim stays `started` and `kill` gives -9.
#[tokio::test(flavor = "multi_thread")]
async fn a_managed_job_cannot_forge_another_jobs_exit() {
    assert!(Path::new(PYTHON).exists(), "install {PYTHON}");
    let tc = TestCluster::with_agent(4);
    let c = tc.client().await;
    let mut victim = Process::new(&c, ["sleep", "1000"]);
    victim.start().await.unwrap();
    let victim_id = victim.id().unwrap().to_owned();
    let victim_pid = c.get(&victim_id).await.unwrap().pid.expect("pid");

    // The forged exit, then an adoption without descriptors whose refusal
    // comes back after the launcher handled the forged exit.
    let script = r#"
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.connect(sys.argv[1])
s.send(json.dumps({"exited": {"pid": int(sys.argv[2]), "exitcode": 42}}).encode())
s.send(b'{"adopt":{"id":"barrier","pid":1}}')
print(s.recv(65536).decode())
"#;
    let adopt = tc.agent_dir("node-a").join("launcher").join("adopt.sock");
    let mut attacker = Process::new(
        &c,
        [
            PYTHON,
            "-c",
            script,
            adopt.to_str().unwrap(),
            &victim_pid.to_string(),
        ],
    );
    attacker.start().await.unwrap();
    attacker.join(None).await.unwrap();
    assert_eq!(attacker.exitcode(), Some(0));
    let said = mpctl_tests::output(&attacker, mpctl::LogStream::Stdout).await;
    assert_eq!(
        said,
        "{\"refused\":{\"error\":\"an adoption carries exactly a pidfd and a result pipe\"}}\n"
    );
    let log = fs::read_to_string(tc.agent_dir("node-a").join("launcher/launcher.log")).unwrap();
    let attacker_pid = attacker.pid().unwrap();
    assert!(
        log.contains(&format!(
            "exit 42 refused: an exit for pid {victim_pid} from pid {attacker_pid}"
        )),
        "{log}"
    );

    // The attacker's exit went the same way after the forged one: had the
    // forged one been believed, the coordinator would have it by now.
    let info = c.get(&victim_id).await.unwrap();
    assert_eq!((info.state, info.exitcode), (ProcessState::Started, None));
    victim.kill().await.unwrap();
    victim.join(None).await.unwrap();
    assert_eq!(victim.exitcode(), Some(-9));
}
