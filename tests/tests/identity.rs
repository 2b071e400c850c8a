//! Node identity and job credentials (docs/design.md §5, §10), with a real
//! coordinator and agents: a second agent with a live node's name is
//! refused and nothing flaps; a function target holds only its own job key,
//! which acts on its own subtree while it runs and cannot register an agent;
//! the root authkey reaches no child.

use std::io::Read;
use std::time::Duration;

use mpctl::{Process, ProcessState};
use mpctl_proto::v1 as pb;
use mpctl_tests::{fifo, release, Daemon, TestCluster};
use serde_json::Value;

const WORKER: &str = env!("CARGO_BIN_EXE_mpctl-test-worker");
const READY: Duration = Duration::from_secs(30);

/// An agent named `name` with its own data dir `dir_name`, not waited for.
fn rival_agent(tc: &TestCluster, name: &str, dir_name: &str) -> Daemon {
    let mut cmd = tc.command();
    cmd.env_remove("MPCTL_ADDR").args([
        "agent",
        "--server",
        &tc.addr,
        "--name",
        name,
        "--data-dir",
        tc.path().join(dir_name).to_str().unwrap(),
        "--work-dir",
        tc.path().to_str().unwrap(),
    ]);
    Daemon::spawn(cmd)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_agent_with_a_live_nodes_name_is_refused_and_nothing_flaps() {
    let mut tc = TestCluster::start(Default::default());
    tc.start_agent("n1", 2, &[]);
    let credential = tc.agent_dir("n1").join("node.credential");
    let meta = std::fs::metadata(&credential).expect("the agent kept its node credential");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o600
    );
    let c = tc.client().await;
    let gate = fifo(tc.path(), "gate");
    let script = format!("read x < {}; exit 7", gate.display());
    let mut long = Process::new(&c, ["sh", "-c", script.as_str()]);
    long.start().await.expect("start on n1");
    assert_eq!(long.state(), Some(ProcessState::Started));

    let mut rival = rival_agent(&tc, "n1", "rival");
    let code = rival.wait_exit(READY).expect("the rival agent gives up");
    assert_eq!(code, 125, "{}", rival.log_text());
    let log = rival.log_text();
    assert!(
        log.contains("node n1 is held by another agent (registered at ")
            && log.contains("give this agent another --name, or stop the other one and run `mpctl agents forget n1`"),
        "{log}"
    );
    // The live session is untouched: one registration, the process started.
    let server_log = tc.server.as_ref().unwrap().log_text();
    assert_eq!(
        server_log.matches("agent registered").count(),
        1,
        "{server_log}"
    );
    let info = c.get(long.id().unwrap()).await.unwrap();
    assert_eq!(info.state, ProcessState::Started);
    let agents = c.agents().await.unwrap();
    assert_eq!(agents.len(), 1);
    assert_eq!(agents[0].state.as_str(), "ready");

    // `forget` refuses a connected node.
    let out = tc.cli(&["agents", "forget", "n1"]);
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("node n1 is connected; `mpctl agents forget` only clears the credential of a node no agent holds"),
        "{err}"
    );

    release(&gate);
    long.join(Some(READY)).await.unwrap();
    assert_eq!(long.state(), Some(ProcessState::Stopped));
    assert_eq!(long.exitcode(), Some(7));
    c.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_that_lost_its_data_dir_comes_back_after_forget() {
    let mut tc = TestCluster::start(Default::default());
    tc.start_agent("n1", 1, &[]);
    let mut n1 = tc.agents.remove("n1").unwrap();
    n1.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(n1.wait_exit(READY), Some(0));
    let c = tc.client().await;
    let deadline = std::time::Instant::now() + READY;
    while c.agents().await.unwrap()[0].state.as_str() == "ready" {
        assert!(
            std::time::Instant::now() < deadline,
            "n1 never disconnected"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Not connected, but its credential is still required.
    let mut fresh = rival_agent(&tc, "n1", "fresh");
    assert_eq!(fresh.wait_exit(READY), Some(125));
    let log = fresh.log_text();
    assert!(
        log.contains("node n1 was issued a node credential at ")
            && log.contains("and this agent presented none; if this is that node and its data directory was lost, run `mpctl agents forget n1`"),
        "{log}"
    );
    let out = tc.cli(&["agents", "forget", "n1"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "forgot the node credential of n1; the next agent named n1 is issued a new one\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again = rival_agent(&tc, "n1", "fresh");
    again.wait_line("registered with the coordinator", READY);
    assert!(tc.path().join("fresh").join("node.credential").exists());
    drop(again);
    c.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_acts_only_on_its_own_subtree_and_cannot_register_as_an_agent() {
    let tc = TestCluster::with_agent(4);
    let c = tc.client().await;
    let gate = fifo(tc.path(), "gate");
    let script = format!("read x < {}; exit 3", gate.display());
    let mut other = Process::new(&c, ["sh", "-c", script.as_str()]);
    other.start().await.unwrap();
    let other_id = other.id().unwrap().to_owned();

    let mut job = Process::function(&c, "job_probe", &(other_id.clone(), Vec::<String>::new()))
        .unwrap()
        .program(WORKER);
    job.start().await.unwrap();
    let job_id = job.id().unwrap().to_owned();
    job.join(Some(Duration::from_secs(60))).await.unwrap();
    assert_eq!(
        job.exitcode(),
        Some(0),
        "{}",
        mpctl_tests::output(&job, mpctl::LogStream::Stderr).await
    );
    let probe: Value = job.result().unwrap().unwrap();
    assert_eq!(
        probe["register"],
        "PermissionDenied: this endpoint is for agent connections; this connection authenticated as job (an agent key cannot be used by a client, and vice versa)"
    );
    assert_eq!(
        probe["kill_other"],
        format!("PermissionDenied: process {job_id} may kill only its own descendants; {other_id} is not one of them")
    );
    assert_eq!(
        probe["join_other"],
        format!("PermissionDenied: process {job_id} may join only itself, its ancestors and its descendants; {other_id} is none of them")
    );
    assert_eq!(
        probe["logs_other"],
        format!("PermissionDenied: process {job_id} may read the output of only its own descendants; {other_id} is not one of them")
    );
    assert_eq!(probe["child_exitcode"], 5);
    // Its child is its own, and nothing happened to the other process.
    let all = c.list(true).await.unwrap();
    let child = all
        .iter()
        .find(|p| p.parent_id == job_id)
        .expect("its child");
    assert_eq!(child.exitcode, Some(5));
    assert_eq!(c.get(&other_id).await.unwrap().state, ProcessState::Started);

    // Its credential is revoked now that it stopped.
    let key = mpctl::AuthKey::load(&tc.key_path).unwrap();
    let channel = mpctl_transport::connect_job(
        &tc.addr,
        &key.job_key(&job_id),
        &job_id,
        mpctl::Security::Tls,
    )
    .await
    .expect("the handshake itself still verifies the key");
    let err = pb::process_manager_client::ProcessManagerClient::new(channel)
        .list(pb::ListRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert_eq!(
        err.message(),
        format!("the job credential of process {job_id} is revoked: that process is not running")
    );

    release(&gate);
    other.join(Some(READY)).await.unwrap();
    assert_eq!(other.exitcode(), Some(3));
    c.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_root_authkey_reaches_no_child() {
    let tc = TestCluster::with_agent(2);
    let key = mpctl::AuthKey::load(&tc.key_path).unwrap();
    let key_hex = std::fs::read_to_string(&tc.key_path)
        .unwrap()
        .trim()
        .to_owned();
    let key_raw: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(&key_hex[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let out = fifo(tc.path(), "prep");
    let channel = mpctl_transport::connect(
        &tc.addr,
        &key,
        mpctl_transport::Role::Client,
        mpctl::Security::Tls,
    )
    .await
    .unwrap();
    let mut api = pb::process_manager_client::ProcessManagerClient::new(channel);
    // A "function target" whose program is a shell: it copies the
    // preparation data it got on fd 3, then stays alive to be inspected.
    let started = api
        .start(pb::StartRequest {
            function: Some(pb::FunctionTarget {
                program: "/bin/sh".into(),
                program_args: vec![
                    "-c".into(),
                    format!("cat <&3 > {}; exec sleep 600", out.display()),
                ],
                function: "noop".into(),
                args: b"null".to_vec(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let info = started.process.unwrap();
    assert!(
        started.job_key.is_empty(),
        "only a forking job gets a child key"
    );
    let mut prep = Vec::new();
    std::fs::File::open(&out)
        .unwrap()
        .read_to_end(&mut prep)
        .unwrap();
    let environ = std::fs::read(format!("/proc/{}/environ", info.pid)).unwrap();
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", info.pid)).unwrap();
    let prep_json: Value = serde_json::from_slice(&prep).unwrap();
    assert_eq!(prep_json["id"], info.id);
    assert_eq!(prep_json["job_key"], key.job_key(&info.id).expose_hex());
    assert!(prep_json.get("authkey").is_none(), "{prep_json}");
    for (what, bytes) in [
        ("preparation data", &prep),
        ("environ", &environ),
        ("cmdline", &cmdline),
    ] {
        let text = String::from_utf8_lossy(bytes).to_lowercase();
        assert!(
            !text.contains(&key_hex.to_lowercase()),
            "the authkey (hex) is in the child's {what}"
        );
        assert!(
            !bytes.windows(32).any(|w| w == key_raw.as_slice()),
            "the authkey (raw) is in the child's {what}"
        );
    }
    api.kill(pb::SignalRequest {
        id: info.id.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    let joined = api
        .join(pb::JoinRequest {
            id: info.id,
            timeout_ms: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(joined.process.unwrap().exitcode, Some(-9));
}

/// Needs root (the agent switches users); the test suite runs as root in CI
/// and in the containers. As another user it says so and checks nothing.
#[tokio::test(flavor = "multi_thread")]
async fn with_run_as_nobody_jobs_cannot_read_the_key_or_the_node_credential() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "SKIPPED: --run-as needs the agent to run as root; this test ran as uid {}",
            nix::unistd::geteuid()
        );
        return;
    }
    let tc = TestCluster::start(Default::default());
    let mut cmd = tc.command();
    cmd.env_remove("MPCTL_ADDR").args([
        "agent",
        "--server",
        &tc.addr,
        "--name",
        "n1",
        "--data-dir",
        tc.agent_dir("n1").to_str().unwrap(),
        "--work-dir",
        "/",
        "--run-as",
        "nobody",
    ]);
    let agent = Daemon::spawn(cmd);
    agent.wait_line("registered with the coordinator", READY);
    let credential = tc.agent_dir("n1").join("node.credential");
    assert!(credential.exists());
    let c = tc.client().await;
    let mut other = Process::new(&c, ["true"]);
    other.start().await.unwrap();
    let secrets = vec![
        tc.key_path.to_string_lossy().into_owned(),
        credential.to_string_lossy().into_owned(),
    ];
    let mut job = Process::function(
        &c,
        "job_probe",
        &(other.id().unwrap().to_owned(), secrets.clone()),
    )
    .unwrap()
    .program(WORKER);
    job.start().await.unwrap();
    job.join(Some(Duration::from_secs(60))).await.unwrap();
    assert_eq!(
        job.exitcode(),
        Some(0),
        "{}",
        mpctl_tests::output(&job, mpctl::LogStream::Stderr).await
    );
    let probe: Value = job.result().unwrap().unwrap();
    assert_eq!(probe["uid"], 65534);
    assert_eq!(probe["gid"], 65534);
    assert_eq!(
        probe["opened"],
        serde_json::json!([[secrets[0], libc::EACCES], [secrets[1], libc::EACCES]])
    );
    // Its own child ran (as nobody too) and joined with its real code.
    assert_eq!(probe["child_exitcode"], 5);
    c.close().await;
    drop(agent);
}
