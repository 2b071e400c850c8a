//! The laptop workflow through the `mpctl` command line against real
//! clusters: start methods, coming back to a job (`run -d`, `attach`, a
//! `run` across a coordinator restart), `map`'s joblog with `--resume-failed`,
//! `--retries` and `--halt`, contexts, completions.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};

use mpctl_tests::{fifo, mpctl_bin, release, Options, TestCluster};
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

/// The next line of a child's piped stdout (blocking: the child is bound to
/// print it, or end, which fails the test).
fn next_line(r: &mut impl BufRead) -> String {
    let mut line = String::new();
    r.read_line(&mut line).expect("read the child's stdout");
    line
}

#[test]
fn start_methods_through_the_cli() {
    let tc = TestCluster::with_agent(2);
    for method in ["spawn", "forkserver"] {
        for (script, status, exitcode) in [
            ("exit 0", 0, 0),
            ("exit 3", 3, 3),
            ("kill -TERM $$", 143, -15),
            ("kill -KILL $$", 137, -9),
        ] {
            let o = tc.cli(&[
                "run",
                "--start-method",
                method,
                "-o",
                "json",
                "--",
                "sh",
                "-c",
                script,
            ]);
            assert_eq!(
                o.status.code(),
                Some(status),
                "{method} {script}: {}",
                stderr(&o)
            );
            let v = json(&o);
            assert_eq!(v["exitcode"], exitcode, "{method} {script}");
            assert_eq!(v["start_method"], method);
        }
    }
    let id = stdout(&tc.cli(&["submit", "--start-method", "forkserver", "--", "true"]))
        .trim()
        .to_owned();
    let o = tc.cli(&["join", "-o", "json", &id]);
    assert_eq!(json(&o)["start_method"], "forkserver");

    for cmd in ["run", "submit"] {
        let o = tc.cli(&[cmd, "--start-method", "fork", "--", "true"]);
        assert_eq!(o.status.code(), Some(125));
        let err = stderr(&o);
        assert!(err.contains("--start-method spawn or forkserver"), "{err}");
    }
    let o = tc.cli(&["map", "--start-method", "fork", "--", "true"]);
    assert_eq!(o.status.code(), Some(125));
    // Nothing reached the cluster for the refused ones.
    assert_eq!(
        json(&tc.cli(&["ps", "-a", "-o", "json"]))
            .as_array()
            .unwrap()
            .len(),
        9
    );
}

#[test]
fn attach_comes_back_to_a_run_whose_client_was_killed() {
    let tc = TestCluster::with_agent(2);
    let gates: Vec<_> = (1..=2).map(|i| fifo(tc.path(), &format!("g{i}"))).collect();
    let script = format!(
        "echo 1; read _ < {}; echo 2; read _ < {}; echo 3; exit 4",
        gates[0].display(),
        gates[1].display()
    );
    let mut run = tc
        .command()
        .args(["run", "--", "sh", "-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(run.stdout.take().unwrap());
    assert_eq!(next_line(&mut out), "1\n");
    run.kill().unwrap();
    run.wait().unwrap();

    let running = json(&tc.cli(&["ps", "-o", "json"]));
    let running = running.as_array().unwrap();
    assert_eq!(running.len(), 1, "{running:?}");
    let id = running[0]["id"].as_str().unwrap().to_owned();

    let mut attach = tc
        .command()
        .args(["attach", &id])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(attach.stdout.take().unwrap());
    assert_eq!(next_line(&mut out), "1\n", "attach starts from the start");
    release(&gates[0]);
    assert_eq!(next_line(&mut out), "2\n");
    release(&gates[1]);
    assert_eq!(next_line(&mut out), "3\n");
    assert_eq!(next_line(&mut out), "", "then the end");
    assert_eq!(attach.wait().unwrap().code(), Some(4));

    // Attaching to a stopped process prints its output and its status.
    let o = tc.cli(&["attach", &id]);
    assert_eq!(
        (stdout(&o).as_str(), o.status.code()),
        ("1\n2\n3\n", Some(4))
    );
    let o = tc.cli(&["attach", "--tail", "1", &id]);
    assert_eq!((stdout(&o).as_str(), o.status.code()), ("3\n", Some(4)));
    let o = tc.cli(&["attach", "ffffffffffffffff"]);
    assert_eq!(o.status.code(), Some(125));

    // run -d is submit: it prints the id and returns.
    let o = tc.cli(&["run", "-d", "--", "sh", "-c", "exit 6"]);
    assert_eq!(o.status.code(), Some(0));
    let id = stdout(&o).trim().to_owned();
    assert_eq!(tc.cli(&["join", &id]).status.code(), Some(6));
}

#[test]
fn a_run_goes_on_across_a_coordinator_restart() {
    let mut tc = TestCluster::with_agent(2);
    let gate = fifo(tc.path(), "gate");
    let script = format!(
        "echo before; read _ < {}; echo after; exit 5",
        gate.display()
    );
    let mut run = tc
        .command()
        .args(["run", "--", "sh", "-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(run.stdout.take().unwrap());
    assert_eq!(next_line(&mut out), "before\n");
    tc.kill_server();
    tc.start_server();
    release(&gate);
    assert_eq!(next_line(&mut out), "after\n");
    assert_eq!(next_line(&mut out), "");
    let status = run.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(run.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(5), "stderr: {err}");
}

/// `seq 1 N | mpctl map ARGS`, the command appending its input to `ran`.
fn map(tc: &TestCluster, inputs: usize, args: &[&str], script: &str) -> Output {
    let mut child = tc
        .command()
        .arg("map")
        .args(args)
        .args(["--no-progress", "--", "sh", "-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let text: String = (1..=inputs).map(|i| format!("{i}\n")).collect();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), text.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn ran(tc: &TestCluster) -> Vec<u32> {
    let mut v: Vec<u32> = std::fs::read_to_string(tc.path().join("ran"))
        .unwrap_or_default()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    v.sort_unstable();
    v
}

#[test]
fn a_joblog_lets_map_rerun_exactly_the_failed_inputs() {
    let tc = TestCluster::with_agent(4);
    let log = tc.path().join("j.log");
    let ran_file = tc.path().join("ran");
    let failing = [3, 14, 25, 36, 47, 58, 69];
    let script = format!(
        "echo {{}} >> {}; case {{}} in 3|14|25|36|47|58|69) exit 1;; esac",
        ran_file.display()
    );
    let log_arg = log.to_str().unwrap();
    let o = map(&tc, 100, &["-j", "4", "--joblog", log_arg], &script);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("7 of 100 inputs failed"),
        "{}",
        stderr(&o)
    );
    assert_eq!(ran(&tc), (1..=100).collect::<Vec<_>>());

    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "Seq\tHost\tStarttime\tJobRuntime\tExitval\tSignal\tInput"
    );
    assert_eq!(lines.len(), 101);
    let mut failed: Vec<u32> = lines[1..]
        .iter()
        .map(|l| l.split('\t').collect::<Vec<_>>())
        .filter(|f| {
            assert_eq!(f[1], "node-a");
            assert_eq!(f[0], f[6], "Seq is the input's line number here");
            f[4] != "0"
        })
        .map(|f| f[0].parse().unwrap())
        .collect();
    failed.sort_unstable();
    assert_eq!(failed, failing);

    std::fs::remove_file(&ran_file).unwrap();
    let o = map(&tc, 100, &["--joblog", log_arg, "--resume-failed"], &script);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(ran(&tc), failing, "exactly the failed ones ran again");
    assert!(
        stderr(&o).contains("7 of 7 inputs failed"),
        "{}",
        stderr(&o)
    );
    assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 108);

    std::fs::remove_file(&ran_file).unwrap();
    let o = map(&tc, 100, &["--joblog", log_arg, "--resume"], &script);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(ran(&tc).is_empty());

    // Other inputs than the joblog's are refused, and nothing runs.
    let o = map(
        &tc,
        3,
        &["--joblog", log_arg, "--resume"],
        "echo {} > /dev/null",
    );
    assert_eq!(o.status.code(), Some(125));
    assert!(
        stderr(&o).contains("resume with the same inputs"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn map_retries_failed_inputs_and_halts_on_failure() {
    let tc = TestCluster::with_agent(2);
    let ran_file = tc.path().join("ran");
    let script = format!("echo {{}} >> {}; [ {{}} -ne 2 ]", ran_file.display());
    let o = map(&tc, 3, &["-j", "2", "--retries", "2"], &script);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(ran(&tc), [1, 2, 2, 2, 3], "input 2 ran three times in all");
    assert!(
        stderr(&o).contains("1 of 3 inputs failed"),
        "{}",
        stderr(&o)
    );

    std::fs::remove_file(&ran_file).unwrap();
    let o = map(
        &tc,
        2,
        &["-j", "1", "--keep-order", "--halt", "now,fail=1"],
        &script,
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("halted"), "{}", stderr(&o));
    let o = map(&tc, 2, &["--halt", "soon,fail=1"], &script);
    assert_eq!(o.status.code(), Some(125));
}

/// `mpctl` with only HOME set: the cluster comes from contexts alone.
fn bare(home: &std::path::Path) -> Command {
    let mut cmd = Command::new(mpctl_bin());
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home)
        .stdin(Stdio::null());
    cmd
}

fn agent_names(o: &Output) -> Vec<String> {
    json(o)
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn contexts_switch_clusters() {
    let a = TestCluster::with_agent(1);
    let mut b = TestCluster::start(Options::default());
    b.start_agent("node-b", 1, &[]);
    let home = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| bare(home.path()).args(args).output().unwrap();

    for (name, tc, extra) in [("a", &a, "--use"), ("b", &b, "")] {
        let mut args = vec![
            "context",
            "add",
            name,
            "--addr",
            &tc.addr,
            "--authkey-file",
            tc.key_path.to_str().unwrap(),
        ];
        if !extra.is_empty() {
            args.push(extra);
        }
        let o = run(&args);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    }
    assert_eq!(agent_names(&run(&["agents", "-o", "json"])), ["node-a"]);
    assert_eq!(
        agent_names(&run(&["--context", "b", "agents", "-o", "json"])),
        ["node-b"]
    );
    let o = run(&["context", "use", "b"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(agent_names(&run(&["agents", "-o", "json"])), ["node-b"]);

    let list = json(&run(&["context", "list", "-o", "json"]));
    let current: Vec<(&str, bool)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c["current"].as_bool().unwrap()))
        .collect();
    assert_eq!(current, [("a", false), ("b", true)]);

    let o = run(&["--context", "c", "agents"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(
        stderr(&o).contains("no context named \"c\" (there are: a, b)"),
        "{}",
        stderr(&o)
    );
    let o = run(&[
        "context",
        "add",
        "bad/name",
        "--addr",
        "x:1",
        "--authkey-file",
        "/nonexistent",
    ]);
    assert_eq!(o.status.code(), Some(125));
    let o = run(&[
        "context",
        "add",
        "c",
        "--addr",
        "x:1",
        "--authkey-file",
        "/nonexistent",
    ]);
    assert_eq!(o.status.code(), Some(125));
    assert!(stderr(&o).contains("/nonexistent"), "{}", stderr(&o));

    let o = run(&["context", "remove", "b"]);
    assert_eq!(o.status.code(), Some(0));
    let o = run(&["context", "unset"]);
    assert_eq!(o.status.code(), Some(0));
    let list = json(&run(&["context", "list", "-o", "json"]));
    assert_eq!(list.as_array().unwrap().len(), 1);
}

#[test]
fn completions_for_three_shells() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef mpctl"),
        ("fish", "complete -c mpctl"),
    ] {
        let o = Command::new(mpctl_bin())
            .args(["completions", shell])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "{shell}");
        let text = stdout(&o);
        assert!(text.contains(marker), "{shell}: {text}");
        assert!(text.contains("attach"), "{shell} completes the subcommands");
    }
    let o = Command::new(mpctl_bin())
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(125));
}
