//! The `mpctl` command line against a real cluster, the embedded default,
//! and `mpctl dev`.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use mpctl_tests::{fifo, kill_launcher_sessions, mpctl_bin, release, Daemon, TestCluster, READY};
use serde_json::Value;

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}\nstderr: {}", stdout(o), stderr(o)))
}

#[test]
fn run_exit_statuses() {
    let tc = TestCluster::with_agent(4);

    let o = tc.cli(&["run", "--", "sh", "-c", "echo hi; exit 3"]);
    assert_eq!(stdout(&o), "hi\n");
    assert_eq!(o.status.code(), Some(3));

    let o = tc.cli(&["run", "-o", "json", "--", "sh", "-c", "kill -TERM $$"]);
    assert_eq!(o.status.code(), Some(143), "{}", stderr(&o));
    let v = json(&o);
    assert_eq!(v["exitcode"], -15);
    assert_eq!(v["state"], "stopped");

    let o = tc.cli(&["run", "--", "sh", "-c", "kill -KILL $$"]);
    assert_eq!(o.status.code(), Some(137));

    let o = tc.cli(&["run", "--", "/no/such/binary"]);
    assert_eq!(o.status.code(), Some(127));
    let err = stderr(&o);
    assert!(err.contains("/no/such/binary"), "{err}");
    assert!(err.contains("No such file or directory"), "{err}");
    assert_eq!(err.lines().count(), 1, "one clear line: {err}");

    let o = tc.cli(&[
        "run",
        "-e",
        "A=1",
        "-e",
        "B=two",
        "--",
        "sh",
        "-c",
        "echo $A$B >&2",
    ]);
    assert_eq!(stderr(&o), "1two\n");
    assert_eq!(o.status.code(), Some(0));

    let o = tc.cli(&["run", "--label", "nonsense", "--", "true"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(stderr(&o).contains("KEY=VALUE"), "{}", stderr(&o));
}

#[test]
fn submit_ps_terminate_join_wait_logs() {
    let tc = TestCluster::with_agent(4);

    let o = tc.cli(&["submit", "--name", "sleeper", "--", "sleep", "30"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let id = stdout(&o).trim().to_owned();
    assert_eq!(id.len(), 16, "{id}");

    let o = tc.cli(&["ps"]);
    let table = stdout(&o);
    let row = table.lines().find(|l| l.starts_with(&id)).expect("listed");
    assert!(
        row.contains("sleeper") && row.contains("started") && row.contains("node-a"),
        "{row}"
    );

    let v = json(&tc.cli(&["ps", "-o", "json"]));
    let listed: Vec<&Value> = v
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["id"] == id.as_str())
        .collect();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["state"], "started");
    assert!(listed[0]["pid"].as_i64().unwrap() > 0);

    let o = tc.cli(&["join", "--timeout", "0.2", &id]);
    assert_eq!(o.status.code(), Some(124));

    let o = tc.cli(&["terminate", &id]);
    assert_eq!(stdout(&o).trim(), id);
    let o = tc.cli(&["join", &id]);
    assert_eq!(o.status.code(), Some(143));
    assert_eq!(stdout(&o).trim(), format!("{id} stopped, exitcode -15"));
    let v = json(&tc.cli(&["join", "-o", "json", &id]));
    assert_eq!(v["exitcode"], -15);

    // ps hides stopped processes; ps -a shows them.
    assert!(!stdout(&tc.cli(&["ps"])).contains(&id));
    assert!(stdout(&tc.cli(&["ps", "-a"])).contains(&id));

    let v = json(&tc.cli(&["inspect", "-o", "json", &id]));
    assert_eq!(v[0]["name"], "sleeper");
    assert_eq!(v[0]["argv"], serde_json::json!(["sleep", "30"]));
    let o = tc.cli(&["inspect", "ffffffffffffffff"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(stderr(&o).contains("ffffffffffffffff"));

    // wait: exactly the one that stopped.
    let gates: Vec<_> = (0..2).map(|i| fifo(tc.path(), &format!("g{i}"))).collect();
    let ids: Vec<String> = gates
        .iter()
        .map(|g| {
            let script = format!("read _ < {}; echo done", g.display());
            stdout(&tc.cli(&["submit", "--", "sh", "-c", &script]))
                .trim()
                .to_owned()
        })
        .collect();
    let o = tc.cli(&["wait", "--timeout", "0.1", &ids[0], &ids[1]]);
    assert_eq!(o.status.code(), Some(124));
    release(&gates[1]);
    let o = tc.cli(&["wait", &ids[0], &ids[1]]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(stdout(&o).trim(), format!("{} stopped, exitcode 0", ids[1]));
    release(&gates[0]);
    let o = tc.cli(&["wait", "--all", "-o", "json", &ids[0], &ids[1]]);
    assert_eq!(json(&o).as_array().unwrap().len(), 2);

    let o = tc.cli(&["logs", &ids[1]]);
    assert_eq!(stdout(&o), "done\n");

    let o = tc.cli(&["kill", "ffffffffffffffff"]);
    assert_eq!(o.status.code(), Some(125));
}

/// `mpctl submit -- sh -c SCRIPT`, then `mpctl logs -f` of it, stdout piped.
fn submit_and_follow(tc: &TestCluster, script: &str) -> std::process::Child {
    let id = stdout(&tc.cli(&["submit", "--", "sh", "-c", script]))
        .trim()
        .to_owned();
    tc.command()
        .args(["logs", "-f", &id])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn logs_follow_streams_until_exit() {
    let tc = TestCluster::with_agent(2);
    let gate = fifo(tc.path(), "gate");
    let script = format!("echo one; read _ < {}; echo two; exit 2", gate.display());
    let mut follow = submit_and_follow(&tc, &script);
    let mut out = std::io::BufReader::new(follow.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line, "one\n");
    release(&gate);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert_eq!(rest, "two\n");
    assert_eq!(follow.wait().unwrap().code(), Some(0));
}

/// A process that writes nothing has no output files until its first byte:
/// a follower waits for them to appear, and a silent process's logs are
/// empty, not an error.
#[test]
fn logs_follow_a_process_silent_at_first() {
    let tc = TestCluster::with_agent(2);
    let gate = fifo(tc.path(), "gate");
    let script = format!("read _ < {}; echo late", gate.display());
    let follow = submit_and_follow(&tc, &script);
    release(&gate);
    let out = follow.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "late\n");
    assert_eq!(out.status.code(), Some(0));

    let silent = stdout(&tc.cli(&["submit", "--", "true"])).trim().to_owned();
    let done = tc.cli(&["logs", "-f", &silent]);
    assert_eq!(stdout(&done), "");
    let again = tc.cli(&["logs", &silent]);
    assert_eq!(stdout(&again), "");
}

#[test]
fn agents_listing() {
    let tc = TestCluster::with_agent(3);
    let v = json(&tc.cli(&["agents", "-o", "json"]));
    let agents = v.as_array().unwrap();
    assert_eq!(agents.len(), 1);
    assert_eq!(agents[0]["name"], "node-a");
    assert_eq!(agents[0]["state"], "ready");
    assert_eq!(agents[0]["slots"], 3);
    assert_eq!(agents[0]["used"], 0);
    assert_eq!(agents[0]["running"], 0);
    let table = stdout(&tc.cli(&["agents"]));
    assert!(table.starts_with("NAME"), "{table}");
}

/// A command environment with nothing configured: HOME is a fresh directory.
fn bare(home: &std::path::Path) -> Command {
    let mut cmd = Command::new(mpctl_bin());
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home)
        .stdin(Stdio::null());
    cmd
}

#[test]
fn embedded_default_keeps_state_between_commands() {
    let home = tempfile::Builder::new()
        .prefix("mpctl-home-")
        .tempdir()
        .unwrap();
    let run = |args: &[&str]| bare(home.path()).args(args).output().unwrap();

    let o = run(&["run", "--", "sh", "-c", "echo hi; exit 3"]);
    assert_eq!(stdout(&o), "hi\n", "{}", stderr(&o));
    assert_eq!(o.status.code(), Some(3));
    assert_eq!(stderr(&o), "", "nothing but the process's output");

    let id = stdout(&run(&["submit", "--", "sleep", "30"]))
        .trim()
        .to_owned();
    assert_eq!(id.len(), 16);
    let listed = json(&run(&["ps", "-o", "json"]));
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["state"], "started");
    assert_eq!(listed[0]["node"], "local");
    assert_eq!(stdout(&run(&["terminate", &id])).trim(), id);
    let o = run(&["join", &id]);
    assert_eq!(o.status.code(), Some(143), "{}", stderr(&o));
    let all = json(&run(&["ps", "-a", "-o", "json"]));
    assert_eq!(all.as_array().unwrap().len(), 2);
    assert_eq!(all[0]["exitcode"], 3);
    assert_eq!(all[1]["exitcode"], -15);

    // One embedded command at a time: a second one is refused clearly.
    let gate = fifo(home.path(), "gate");
    let script = format!("read _ < {}; exit 0", gate.display());
    let mut busy = bare(home.path())
        .args(["run", "--", "sh", "-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // The run holds the cluster once its process reads the gate: opening the
    // FIFO for writing completes only then. Keep it open until after the check.
    let writer = std::fs::OpenOptions::new().write(true).open(&gate).unwrap();
    let o = run(&["ps"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(stderr(&o).contains("mpctl dev"), "{}", stderr(&o));
    drop(writer);
    assert_eq!(busy.wait().unwrap().code(), Some(0));
    kill_launcher_sessions(home.path());
}

/// Blocks until nobody holds `path`'s flock (a launcher holds its
/// `launcher.lock` until it exits), or fails after `READY`.
fn wait_unlocked(path: &std::path::Path) {
    use nix::fcntl::{Flock, FlockArg};
    let file = std::fs::File::open(path).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(Flock::lock(file, FlockArg::LockExclusive).is_ok());
    });
    assert_eq!(
        rx.recv_timeout(READY),
        Ok(true),
        "{} still locked",
        path.display()
    );
}

#[test]
fn an_embedded_run_leaves_no_exit_for_the_next_to_report_again() {
    let home = tempfile::Builder::new()
        .prefix("mpctl-home-")
        .tempdir()
        .unwrap();
    let o = bare(home.path())
        .args(["run", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // The launcher leaves when the agent has and nothing runs: then its
    // journal is final.
    let dir = home
        .path()
        .join(".local/share/mpctl/embedded/agent/launcher");
    wait_unlocked(&dir.join("launcher.lock"));
    let journal = std::fs::read_to_string(dir.join("exits.journal")).unwrap();
    let (mut exits, mut acks) = (Vec::new(), Vec::new());
    for line in journal.lines() {
        // A record is "CRC32C JSON".
        let (_crc, json) = line.split_once(' ').expect("a checked record");
        let v: Value = serde_json::from_str(json).unwrap();
        if let Some(id) = v["exit"]["id"].as_str() {
            exits.push(id.to_owned());
        } else if let Some(id) = v["ack"].as_str() {
            acks.push(id.to_owned());
        }
    }
    assert_eq!(exits.len(), 1, "{journal}");
    assert_eq!(
        exits, acks,
        "the exit was acknowledged before the run ended: {journal}"
    );
    kill_launcher_sessions(home.path());
}

#[test]
fn dev_cluster_serves_later_commands() {
    let home = tempfile::Builder::new()
        .prefix("mpctl-home-")
        .tempdir()
        .unwrap();
    let mut dev_cmd = bare(home.path());
    dev_cmd.env("RUST_LOG", "info").args([
        "dev",
        "--listen",
        "127.0.0.1:0",
        "--name",
        "devnode",
        "--slots",
        "3",
    ]);
    let mut dev = Daemon::spawn(dev_cmd);
    dev.wait_line("client config written", READY);
    let config = home.path().join(".config/mpctl/config.json");
    assert!(config.is_file());

    let o = bare(home.path())
        .args(["run", "--", "sh", "-c", "echo via-dev"])
        .output()
        .unwrap();
    assert_eq!(stdout(&o), "via-dev\n", "{}", stderr(&o));
    let v = json(
        &bare(home.path())
            .args(["agents", "-o", "json"])
            .output()
            .unwrap(),
    );
    assert_eq!(v[0]["name"], "devnode");
    assert_eq!(v[0]["slots"], 3);
    // Several commands at once are fine against dev.
    let id = stdout(
        &bare(home.path())
            .args(["submit", "--", "sleep", "30"])
            .output()
            .unwrap(),
    )
    .trim()
    .to_owned();
    let o = bare(home.path()).args(["kill", &id]).output().unwrap();
    assert_eq!(o.status.code(), Some(0));
    let o = bare(home.path()).args(["join", &id]).output().unwrap();
    assert_eq!(o.status.code(), Some(137));

    dev.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(dev.wait_exit(Duration::from_secs(20)), Some(0));
    assert!(
        !config.exists(),
        "dev removes its client config when it stops"
    );
    kill_launcher_sessions(home.path());
}
