//! Commit before effect on a real full disk (issue 12, item 1): the
//! coordinator's data directory is a 4 MiB tmpfs the test mounts and fills.
//!
//! - An exit reported while commits fail is neither acknowledged nor
//!   answered: `join` blocks (it does not answer 7 from memory); the node
//!   keeps the exit.
//! - A Start is answered UNAVAILABLE naming ENOSPC and the database path,
//!   and never launches (nor when the node registers again later).
//! - Once space returns the coordinator recovers by itself (no restart):
//!   it asks the node to resend, `join` answers 7, the Start's retry with
//!   the same request id launches exactly once, and after a coordinator
//!   restart the 7 is still there and nothing is `lost`.
//!
//! Needs root (or CAP_SYS_ADMIN) for `mount -t tmpfs`; skipped with a
//! printed reason otherwise.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use mpctl::proto::{process_manager_client::ProcessManagerClient, CommandTarget, StartRequest};
use mpctl::{Process, ProcessState, Security};
use mpctl_tests::{fifo, release, Options, TestCluster, READY};
use mpctl_transport::Role;

/// A tmpfs mounted by the test; lazily unmounted when dropped (even on a
/// failed assertion), so a daemon still holding a file cannot block it.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(at).map_err(|e| format!("mkdir {}: {e}", at.display()))?;
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
        }
        Ok(Tmpfs(at.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes `path` until the file system has no space left.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0xa5u8; 64 << 10];
    loop {
        if let Err(e) = f.write_all(&chunk).and_then(|_| f.sync_data()) {
            assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
            break;
        }
    }
    // Whatever is left in the last partial block.
    while f.write_all(&[0]).is_ok() {}
}

fn start_request(request_id: &str, marker: &Path) -> StartRequest {
    StartRequest {
        request_id: request_id.into(),
        command: Some(CommandTarget {
            argv: vec![
                "sh".into(),
                "-c".into(),
                format!("echo ran >> {}", marker.display()),
            ],
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_acknowledges_nothing_refuses_starts_and_recovers_without_a_restart() {
    let mut tc = TestCluster::without_server(Options::default());
    let _tmpfs = match Tmpfs::mount(&tc.server_dir(), "4m") {
        Ok(m) => m,
        Err(why) => {
            eprintln!("SKIPPED: cannot mount a tmpfs for the coordinator's data dir: {why}");
            return;
        }
    };
    tc.start_server();
    tc.start_agent("node-a", 2, &[]);
    let db = tc.server_dir().join("coordinator.sqlite");
    let gate = fifo(tc.path(), "gate");
    let marker = tc.path().join("marker");
    let c = tc.client().await;
    let script = format!("read _ < {}; exit 7", gate.display());
    let mut p = Process::new(&c, ["sh", "-c", &script]);
    p.start().await.unwrap();
    let id = p.id().unwrap().to_owned();

    let filler = tc.server_dir().join("filler");
    fill(&filler);
    release(&gate);
    let server = tc.server.as_ref().unwrap();
    let line = server.wait_line("state database commit failed", READY);
    assert!(line.contains("no space left on device (ENOSPC)"), "{line}");

    // A Start now: UNAVAILABLE (retryable), naming the cause and the path.
    // (The raw client: the SDK itself retries UNAVAILABLE with the same id.)
    let key = mpctl::AuthKey::load(&tc.key_path).unwrap();
    let channel = mpctl_transport::connect(&tc.addr, &key, Role::Client, Security::Tls)
        .await
        .unwrap();
    let mut api = ProcessManagerClient::new(channel);
    let status = api
        .start(start_request("disk-full-start", &marker))
        .await
        .expect_err("a start was accepted while nothing can be committed");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains(&format!(
            "cannot write the state database {}: no space left on device (ENOSPC)",
            db.display()
        )),
        "{}",
        status.message()
    );

    // join blocks: the 7 is not durable, so it is not answered.
    p.join(Some(Duration::from_secs(1))).await.unwrap();
    assert_eq!(p.exitcode(), None, "join answered from memory");
    assert_eq!(p.state(), Some(ProcessState::Started));

    // Space returns: no restart; the coordinator notices, asks the node to
    // resend, and the exit is recorded.
    std::fs::remove_file(&filler).unwrap();
    server.wait_line("state database writes work again", READY);
    p.join(Some(Duration::from_secs(20))).await.unwrap();
    assert_eq!(p.exitcode(), Some(7));

    // The refused start never ran; its retry runs exactly once.
    assert!(!marker.exists(), "the refused start ran");
    let started = api
        .start(start_request("disk-full-start", &marker))
        .await
        .expect("the retry once the disk has room")
        .into_inner()
        .process
        .unwrap();
    let mut retry = Process::attach(&c, &started.id).await.unwrap();
    retry.join(Some(Duration::from_secs(20))).await.unwrap();
    assert_eq!(retry.exitcode(), Some(0));
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "ran\n");

    // A coordinator restart (SIGKILL): the 7 was durable; nothing is lost,
    // and the node's registration launches nothing again.
    drop(c);
    tc.kill_server();
    tc.start_server();
    tc.agent("node-a")
        .wait_line("registered with the coordinator", READY);
    let c = tc.client().await;
    let mut again = Process::attach(&c, &id).await.unwrap();
    again.join(Some(Duration::from_secs(20))).await.unwrap();
    assert_eq!(
        (again.state(), again.exitcode()),
        (Some(ProcessState::Stopped), Some(7))
    );
    let all = c.list(true).await.unwrap();
    assert_eq!(all.len(), 2, "{all:?}");
    assert!(
        all.iter().all(|p| p.state == ProcessState::Stopped),
        "{all:?}"
    );
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "ran\n");
}
