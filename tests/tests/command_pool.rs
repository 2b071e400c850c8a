//! `mpctl map`: a command pool over real agents, driven as a user would.

use std::io::Write;
use std::process::{Output, Stdio};

use mpctl_tests::{Options, TestCluster};

fn map(tc: &TestCluster, args: &[&str], input: &str) -> Output {
    let mut child = tc
        .command()
        .arg("map")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run mpctl map");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().expect("mpctl map output")
}

fn two_agents() -> TestCluster {
    let mut tc = TestCluster::start(Options::default());
    tc.start_agent("node-a", 4, &[]);
    tc.start_agent("node-b", 4, &[]);
    tc
}

#[test]
fn a_thousand_inputs_with_eight_workers_report_each_failure() {
    let tc = two_agents();
    let input: String = (1..=1000).map(|i| format!("{i}\n")).collect();
    let out = map(
        &tc,
        &[
            "-j",
            "8",
            "--maxtasksperchild",
            "100",
            "--",
            "sh",
            "-c",
            "echo out {}; [ $(( {} % 100 )) -ne 0 ] || exit 3",
        ],
        &input,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let mut seen: Vec<u32> = stdout
        .lines()
        .map(|l| l.strip_prefix("out ").unwrap().parse().unwrap())
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, (1..=1000).collect::<Vec<u32>>());
    assert!(
        stderr.starts_with("mpctl map: 10 of 1000 inputs failed:\n"),
        "{stderr}"
    );
    for i in (100..=1000).step_by(100) {
        assert!(
            stderr.contains(&format!("  line {i} \"{i}\": exit code 3\n")),
            "{stderr}"
        );
    }
    // Every worker is gone once map returns.
    let ps = tc.cli(&["ps", "-o", "json"]);
    assert_eq!(String::from_utf8_lossy(&ps.stdout).trim(), "[]");
}

#[test]
fn keep_order_prints_in_input_order_and_success_exits_zero() {
    let tc = two_agents();
    let input: String = (1..=200).map(|i| format!("{i}\n")).collect();
    let out = map(&tc, &["-j", "4", "--keep-order", "--", "echo", "n"], &input);
    assert_eq!(out.status.code(), Some(0));
    let expected: String = (1..=200).map(|i| format!("n {i}\n")).collect();
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected);
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    // The workers were processes of one pool, daemonic, all exited with 0.
    let ps = tc.cli(&["ps", "-a", "-o", "json"]);
    let ps: serde_json::Value = serde_json::from_slice(&ps.stdout).unwrap();
    let workers = ps.as_array().unwrap();
    assert_eq!(workers.len(), 4, "{ps}");
    let pool = workers[0]["pool_id"].as_str().unwrap();
    assert!(!pool.is_empty());
    for w in workers {
        assert_eq!(w["pool_id"], pool, "{w}");
        assert_eq!(w["exitcode"], 0, "{w}");
        assert_eq!(w["daemon"], true, "{w}");
        assert!(
            w["name"].as_str().unwrap().starts_with("SpawnPoolWorker-"),
            "{w}"
        );
    }
}

#[test]
fn an_input_that_kills_its_worker_is_named_and_the_rest_run() {
    let tc = two_agents();
    let input: String = (1..=20).map(|i| format!("{i}\n")).collect();
    let out = map(
        &tc,
        &[
            "-j",
            "2",
            "--retries",
            "0",
            "--keep-order",
            "--",
            "sh",
            "-c",
            "[ {} = 5 ] && kill -9 $PPID; echo {}",
        ],
        &input,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let expected: String = (1..=20)
        .filter(|i| *i != 5)
        .map(|i| format!("{i}\n"))
        .collect();
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected);
    assert!(
        stderr.contains("mpctl map: 1 of 20 inputs failed:\n  line 5 \"5\": worker "),
        "{stderr}"
    );
    assert!(stderr.contains("was killed by signal 9"), "{stderr}");
}

#[test]
fn bad_usage_is_refused_clearly() {
    let tc = two_agents();
    let out = map(&tc, &["-j", "0", "--", "echo"], "1\n");
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&out.stderr).contains("-j must be at least 1"));
    // No inputs: nothing runs, success.
    let out = map(&tc, &["--", "echo"], "");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(out.stdout, b"");
}
