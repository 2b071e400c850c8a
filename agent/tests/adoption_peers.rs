//! Who may say what on the launcher's adoption socket
//! (`docs/node-contract.md` §12): the real `mpctl-launcher` binary, the
//! tokio client as the agent, and real managed processes (Python scripts,
//! `/usr/bin/python3`) that talk to `adopt.sock` as a forking parent or as
//! an attacker would. Each script ends its conversation with an adoption
//! that carries no descriptors: its refusal comes back on the same
//! connection after everything sent before it was handled, so no test
//! waits on time.

use std::fs;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::Duration;

use mpctl_agent::launcher::{
    ExitRecord, LaunchSpec, LauncherClient, LauncherEvent, ADOPT_SOCKET_FILE, LOG_FILE,
};
use mpctl_node::adoption::{FromAdopt, ToAdopt};
use mpctl_node::seqpacket::{self, Received};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::timeout;

const DEADLINE: Duration = Duration::from_secs(30);
const PYTHON: &str = "/usr/bin/python3";

/// Helpers every script starts with: `tell(msg, fds)`, `barrier()`.
const PRELUDE: &str = r#"
import json, os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.connect(sys.argv[1])
def tell(msg, fds=()):
    socket.send_fds(s, [json.dumps(msg).encode()], list(fds))
def answer():
    return s.recv(65536).decode()
def barrier():
    tell({"adopt": {"id": "barrier", "pid": 1}})
    a = answer()
    assert "refused" in a, a
"#;

struct Node {
    dir: tempfile::TempDir,
    client: LauncherClient,
    events: UnboundedReceiver<LauncherEvent>,
}

impl Node {
    async fn start() -> Node {
        let dir = tempfile::tempdir().unwrap();
        let (client, _hello, events) = timeout(
            DEADLINE,
            LauncherClient::connect_or_start(
                dir.path(),
                &[env!("CARGO_BIN_EXE_mpctl-launcher").into()],
            ),
        )
        .await
        .expect("connect timed out")
        .expect("connect_or_start");
        Node {
            dir,
            client,
            events,
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn adopt_socket(&self) -> String {
        self.path().join(ADOPT_SOCKET_FILE).display().to_string()
    }

    async fn launch(&self, id: &str, argv: &[&str]) -> i32 {
        let spec = LaunchSpec {
            id: id.to_owned(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            cwd: None,
            stdout_path: self.path().join(format!("{id}.out")),
            stderr_path: self.path().join(format!("{id}.err")),
            log_limit_bytes: 1 << 20,
            bootstrap: None,
            forkserver: None,
            memory_limit: 0,
            cpu_limit: 0,
            run_as: None,
        };
        timeout(DEADLINE, self.client.launch(spec))
            .await
            .expect("launch timed out")
            .unwrap_or_else(|e| panic!("launch {id}: {e}"))
            .pid
    }

    /// Runs a script (after [`PRELUDE`]) as a managed process with the
    /// adoption socket and `args` as its arguments.
    async fn script(&self, id: &str, body: &str, args: &[&str]) -> i32 {
        let code = format!("{PRELUDE}{body}");
        let sock = self.adopt_socket();
        let mut argv = vec![PYTHON, "-c", &code, &sock];
        argv.extend_from_slice(args);
        self.launch(id, &argv).await
    }

    async fn signal(&self, id: &str, signo: i32) -> bool {
        timeout(DEADLINE, self.client.signal(id, signo, false))
            .await
            .expect("signal timed out")
            .expect("signal")
    }

    /// The next event; exits and adoptions in the order they came.
    async fn next(&mut self) -> LauncherEvent {
        timeout(DEADLINE, self.events.recv())
            .await
            .expect("no launcher event before the deadline")
            .expect("event channel closed")
    }

    async fn exit_of(&mut self, id: &str) -> ExitRecord {
        match self.next().await {
            LauncherEvent::Exited(rec) if rec.id == id => rec,
            LauncherEvent::Disconnected(r) => panic!("disconnected: {r}"),
            other => panic!("waiting for the exit of {id}, got {other:?}"),
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(self.path().join(LOG_FILE)).unwrap()
    }

    fn output(&self, id: &str) -> String {
        fs::read_to_string(self.path().join(format!("{id}.out"))).unwrap()
    }
}

fn python_present() {
    assert!(
        Path::new(PYTHON).exists(),
        "these tests run Python scripts as managed processes: install {PYTHON}"
    );
}

/// A managed job sends a forged exit for another job, and tries to adopt
/// it: both refused, the victim keeps running and is killable (-9).
#[tokio::test]
async fn a_forged_exit_for_another_job_is_refused() {
    python_present();
    let mut n = Node::start().await;
    let victim = n.launch("victim", &["sleep", "1000"]).await;
    let body = r#"
victim = int(sys.argv[2])
tell({"exited": {"pid": victim, "exitcode": 42}})
r, w = os.pipe()
tell({"adopt": {"id": "stolen", "pid": victim}}, [os.pidfd_open(victim), r])
print(answer(), flush=True)
barrier()
"#;
    n.script("attacker", body, &[&victim.to_string()]).await;
    let rec = n.exit_of("attacker").await;
    assert_eq!(rec.exitcode, 0, "{}", n.log());
    let out = n.output("attacker");
    assert!(
        out.contains(&format!("pid {victim} is not a child of the sender")),
        "{out}"
    );
    let log = n.log();
    assert!(
        log.contains(&format!(
            "exit 42 refused: an exit for pid {victim} from pid {}",
            rec.pid
        )),
        "{log}"
    );
    // Still running, and still ours to kill.
    assert!(n.signal("victim", 0).await);
    assert!(n.signal("victim", 9).await);
    let rec = n.exit_of("victim").await;
    assert_eq!((rec.pid, rec.exitcode), (victim, -9));
}

/// The adopting connection itself may not report an exit for a child that
/// is still running; once the child has really ended, its true code is
/// believed, even when the connection closes right after it.
#[tokio::test]
async fn an_exit_is_believed_only_once_the_adopted_child_has_ended() {
    python_present();
    let mut n = Node::start().await;
    let body = r#"
r, w = os.pipe()
kid = os.fork()
if kid == 0:
    os.execv("/bin/sleep", ["sleep", "1000"])
os.close(w)
tell({"adopt": {"id": "kid", "pid": kid}}, [os.pidfd_open(kid), r])
print(answer(), flush=True)
tell({"exited": {"pid": kid, "exitcode": 42}})
barrier()
os.kill(kid, 9)
code = os.waitstatus_to_exitcode(os.waitpid(kid, 0)[1])
tell({"exited": {"pid": kid, "exitcode": code}})
s.close()  # as the Rust runtime does: the last exit, then the close
"#;
    n.script("parent", body, &[]).await;
    let kid = match n.next().await {
        LauncherEvent::Adopted(l) if l.id == "kid" => l.pid,
        other => panic!("expected the adoption, got {other:?}"),
    };
    let mut codes = Vec::new();
    for _ in 0..2 {
        match n.next().await {
            LauncherEvent::Exited(rec) => codes.push((rec.id, rec.exitcode)),
            other => panic!("expected exits, got {other:?}"),
        }
    }
    codes.sort();
    assert_eq!(
        codes,
        vec![("kid".to_owned(), -9), ("parent".to_owned(), 0)]
    );
    assert_eq!(n.output("parent"), "\"adopted\"\n");
    let log = n.log();
    assert!(
        log.contains(&format!("exit 42 refused: pid {kid} is still running")),
        "{log}"
    );
}

/// A process that is not managed by this launcher cannot hand over even
/// its own child.
#[tokio::test]
async fn an_unmanaged_sender_cannot_adopt() {
    let n = Node::start().await;
    let mut child = std::process::Command::new("sleep")
        .arg("1000")
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let pidfd = mpctl_node::sys::pidfd::pidfd_open(pid).unwrap();
    let (r, _w) = nix::unistd::pipe().unwrap();
    let sock = seqpacket::connect_to(&n.path().join(ADOPT_SOCKET_FILE)).unwrap();
    let msg = ToAdopt::Adopt {
        id: "mine".into(),
        pid,
    };
    seqpacket::send(sock.as_fd(), &msg, &[pidfd.as_fd(), r.as_fd()]).unwrap();
    let answer = match seqpacket::recv::<FromAdopt>(sock.as_fd(), true).unwrap() {
        Received::Message(a, _) => a,
        _ => panic!("no answer"),
    };
    child.kill().unwrap();
    child.wait().unwrap();
    let me = std::process::id();
    assert_eq!(
        answer,
        FromAdopt::Refused {
            error: format!("the sender (pid {me}) is not a managed process of this node")
        }
    );
}
