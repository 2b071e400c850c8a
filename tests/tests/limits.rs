//! Per-process memory and CPU-time limits (rlimits), for every start method,
//! visible in `inspect`.

use std::time::Duration;

use futures::StreamExt;
use mpctl::{LogStream, Process, StartMethod};
use mpctl_tests::TestCluster;

const WORKER: &str = env!("CARGO_BIN_EXE_mpctl-test-worker");
const MIB: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread")]
async fn commands_run_under_their_limits() {
    let tc = TestCluster::with_agent(2);
    let c = tc.client().await;
    let mut p = Process::new(&c, ["sh", "-c", "ulimit -v; ulimit -t"])
        .memory_limit(256 * MIB)
        .cpu_limit(7);
    p.start().await.unwrap();
    p.join(Some(Duration::from_secs(20))).await.unwrap();
    assert_eq!(p.exitcode(), Some(0));
    let mut out = Vec::new();
    let mut s = p.logs(LogStream::Stdout, false).await.unwrap();
    while let Some(chunk) = s.next().await {
        out.extend(chunk.unwrap().data);
    }
    // ulimit -v is in KiB.
    assert_eq!(String::from_utf8(out).unwrap(), "262144\n7\n");
    let info = c.get(p.id().unwrap()).await.unwrap();
    let limits = info.limits.unwrap();
    assert_eq!((limits.memory_bytes, limits.cpu_seconds), (256 * MIB, 7));
}

#[tokio::test(flavor = "multi_thread")]
async fn function_targets_run_under_their_limits_with_each_method() {
    let tc = TestCluster::with_agent(2);
    let c = tc.client().await;
    for method in [StartMethod::Spawn, StartMethod::Forkserver] {
        let mut p = Process::function(&c, "rlimits", &())
            .unwrap()
            .program(WORKER)
            .start_method(method)
            .memory_limit(512 * MIB)
            .cpu_limit(9);
        p.start().await.unwrap();
        p.join(Some(Duration::from_secs(20))).await.unwrap();
        assert_eq!(p.exitcode(), Some(0), "{method:?}");
        let got: (u64, u64) = p.result().unwrap().unwrap();
        assert_eq!(got, (512 * MIB, 9), "{method:?}");
    }
}

#[test]
fn cpu_limit_ends_a_spinning_process_with_sigxcpu_and_inspect_shows_it() {
    let tc = TestCluster::with_agent(2);
    let o = tc.cli(&[
        "run",
        "-o",
        "json",
        "--cpu-seconds",
        "1",
        "--memory",
        "64M",
        "--",
        "sh",
        "-c",
        "while :; do :; done",
    ]);
    assert_eq!(
        o.status.code(),
        Some(128 + 24),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["exitcode"], -24);
    assert_eq!(v["limits"]["cpu_seconds"], 1);
    assert_eq!(v["limits"]["memory_bytes"], 64 * MIB);

    let o = tc.cli(&["run", "--memory", "1K", "--", "true"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&o.stderr).contains("at least 1 MiB"));
    let o = tc.cli(&["run", "--memory", "lots", "--", "true"]);
    assert_eq!(
        o.status.code(),
        Some(125),
        "a usage error is mpctl's own failure"
    );
}
