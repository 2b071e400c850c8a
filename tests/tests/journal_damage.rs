//! A damaged exit journal never puts a wrong code in `join` (issue 12,
//! item 3): a process exits with 21 while the coordinator and the agent are
//! down, so the node's journal is the only record; the record is edited to
//! 31. When the node comes back its launcher does not believe the record,
//! says so (launcher log, agent log at ERROR), and the coordinator keeps
//! the process `lost`: no exit code at all rather than a made-up one.

use std::fs;
use std::time::Duration;

use mpctl::{Process, ProcessState};
use mpctl_tests::{fifo, release, TestCluster};

/// Blocks until the launcher serving `dir` has exited (it holds an
/// exclusive lock on `launcher.lock` while it runs).
async fn launcher_gone(dir: std::path::PathBuf) {
    let wait = tokio::task::spawn_blocking(move || {
        let f = fs::File::open(dir.join("launcher.lock")).unwrap();
        nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| e)
    });
    tokio::time::timeout(Duration::from_secs(20), wait)
        .await
        .expect("the launcher did not exit")
        .unwrap()
        .expect("flock");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_edited_exit_code_in_the_journal_never_reaches_join() {
    let mut tc = TestCluster::with_agent(1);
    let gate = fifo(tc.path(), "gate");
    let id = {
        let c = tc.client().await;
        let script = format!("read _ < {}; exit 21", gate.display());
        let mut p = Process::new(&c, ["sh", "-c", &script]);
        p.start().await.unwrap();
        p.id().unwrap().to_owned()
    };
    // A clean stop: the process's row (started) is committed. (A SIGKILL
    // could leave it `launching`; the coordinator would then send the
    // launch again, which the node refuses for an id whose exit record is
    // damaged: see the launcher's tests.)
    let mut server = tc.server.take().unwrap();
    server.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(server.wait_exit(Duration::from_secs(20)), Some(0));
    let mut agent = tc.kill_agent("node-a");
    let _ = agent.child.wait();
    // The exit happens with nobody to report it to: the journal has it, and
    // the launcher, idle, exits.
    release(&gate);
    let launcher_dir = tc.agent_dir("node-a").join("launcher");
    launcher_gone(launcher_dir.clone()).await;
    let journal = launcher_dir.join("exits.journal");
    let text = fs::read_to_string(&journal).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains(&format!(r#""id":"{id}""#)), "{text}");
    let edited = text.replacen(r#""exitcode":21"#, r#""exitcode":31"#, 1);
    assert_ne!(edited, text);
    fs::write(&journal, edited).unwrap();

    tc.start_server();
    // The agent says so before it registers.
    tc.start_agent("node-a", 1, &[]);
    let c = tc.client().await;
    let mut p = Process::attach(&c, &id).await.unwrap();
    p.join(Some(Duration::from_secs(20))).await.unwrap();
    assert_eq!(p.state(), Some(ProcessState::Lost));
    assert_eq!(p.exitcode(), None, "a damaged record gave a code");
    // The coordinator shows the node degraded, with the reason (SDK and
    // `mpctl agents`), and logged it at WARN.
    let agents = c.agents().await.unwrap();
    let reason = agents[0].degraded.clone().expect("node-a is degraded");
    assert!(
        reason.starts_with(&format!(
            "exit journal damaged: 1 record, the first at byte 0 of {}/exits.journal.damaged-",
            launcher_dir.display()
        )) && reason.contains("line 1: checksum mismatch")
            && reason.contains(&format!("it seems to name {id}")),
        "{reason}"
    );
    let out = tc.cli(&["agents"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let row = text
        .lines()
        .find(|l| l.starts_with("node-a "))
        .expect(&text);
    assert_eq!(row.split_whitespace().nth(1), Some("degraded"), "{text}");
    assert!(
        text.contains(&format!("node-a is degraded: {reason}")),
        "{text}"
    );
    let server_log = tc.server.as_ref().unwrap().log_text();
    assert!(
        server_log
            .lines()
            .any(|l| l.contains(" WARN ") && l.contains("node registered degraded")),
        "{server_log}"
    );
    let log = fs::read_to_string(launcher_dir.join("launcher.log")).unwrap();
    assert!(
        log.contains(&format!(
            "JOURNAL DAMAGED: damaged exit record at line 1 (byte 0) of {}/exits.journal.damaged-",
            launcher_dir.display()
        )) && log.contains(&format!("seems to name process {id}")),
        "{log}"
    );
    let agent_log = tc.agent("node-a").log_text();
    assert!(
        agent_log.lines().any(|l| l.contains(" ERROR ")
            && l.contains("the node's exit journal is damaged: damaged exit record at line 1")
            && l.contains(&format!("suspect={id}"))),
        "{agent_log}"
    );
}
