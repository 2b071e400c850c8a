//! Authentication against the real coordinator and agent processes (docs/design.md
//! §5): wrong keys, role separation, handshake replay, plaintext refusal, no
//! secret in logs, argv or environment, and `mpctl keygen`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use mpctl::proto::{
    agent_message::Msg, agent_service_client::AgentServiceClient,
    process_manager_client::ProcessManagerClient, AgentMessage, ListRequest, Register,
};
use mpctl::{AuthKey, Cluster, Error, LogStream, Process, Security};
use mpctl_tests::{mpctl_bin, output, pids_with_cmdline, Daemon, Options, TestCluster, READY};
use mpctl_transport::handshake::{
    client_mac, server_mac, HELLO_LEN, MAC_LEN, MAGIC, NONCE_LEN, PLAINTEXT_BINDING, STATUS_FAIL,
    STATUS_OK,
};
use mpctl_transport::{Role, TransportError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a process that should stop by itself may take.
const EXIT: Duration = Duration::from_secs(20);

/// What the transport says to a client whose key the server rejects.
fn rejected(addr: &str, role: &str) -> String {
    format!(
        "authentication failed: {addr} rejected this connection's proof for role {role}; the authkey file does not match the cluster's (check MPCTL_AUTHKEY_FILE / --authkey-file)"
    )
}

/// The text of a log line without its terminal colour codes (the daemons'
/// tracing output carries ANSI escapes even when stderr is a pipe).
fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(ch) = chars.next() {
        if ch == '\u{1b}' {
            // CSI: ESC [ parameters final-byte
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(ch);
        }
    }
    out
}

/// A second, different authkey file in the cluster's directory.
fn wrong_key(tc: &TestCluster) -> (std::path::PathBuf, AuthKey) {
    let path = tc.path().join("wrong.authkey");
    let key = AuthKey::write_new(&path, false).expect("write the wrong key");
    (path, key)
}

/// The authkey file's text: 64 lowercase hex characters.
fn key_hex(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let hex = text.trim_end().to_owned();
    assert_eq!(hex.len(), 64, "{hex:?}");
    assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()), "{hex:?}");
    hex
}

fn key_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

/// Every way the key could show up in text: hex in either case, and the
/// start of its `Debug` byte-array rendering.
fn key_renderings(hex: &str) -> Vec<String> {
    let bytes = key_bytes(hex);
    let debug = format!("{:?}", &bytes[..8]);
    vec![
        hex.to_lowercase(),
        hex.to_uppercase(),
        debug.trim_end_matches(']').to_owned(),
    ]
}

fn assert_no_key(what: &str, text: &str, hex: &str) {
    for r in key_renderings(hex) {
        assert!(
            !text.contains(&r),
            "{what} contains the authkey ({r}):\n{text}"
        );
    }
}

/// Runs `cmd` to completion within `timeout` (killing it and failing
/// otherwise), with stdin on /dev/null and output captured.
fn output_within(mut cmd: Command, timeout: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("spawn mpctl");
    let pid = child.id() as i32;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => out.expect("wait for mpctl"),
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            panic!("mpctl (pid {pid}) did not exit within {timeout:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_authkey_client_is_refused_with_one_clear_error() {
    let tc = TestCluster::with_agent(1);
    let (wrong_path, wrong) = wrong_key(&tc);

    // SDK: a transport error naming the failure and the key file to check.
    let err = match Cluster::connect(&tc.addr, &wrong, Security::Tls).await {
        Ok(_) => panic!("a client with the wrong authkey was accepted"),
        Err(e) => e,
    };
    match &err {
        Error::Transport(TransportError::Rejected { addr, role }) => {
            assert_eq!(addr, &tc.addr);
            assert_eq!(*role, Role::Client);
        }
        other => panic!("expected Error::Transport(Rejected), got {other:?}"),
    }
    assert_eq!(err.to_string(), rejected(&tc.addr, "client"));

    // The same key file through the configuration path of the SDK.
    let config = mpctl::ClusterConfig::Remote {
        addr: tc.addr.clone(),
        authkey_file: wrong_path.clone(),
        security: Security::Tls,
    };
    match Cluster::open(config).await {
        Err(Error::Transport(TransportError::Rejected { .. })) => {}
        Err(other) => panic!("expected Error::Transport(Rejected), got {other:?}"),
        Ok(_) => panic!("a client with the wrong authkey was accepted"),
    }

    // CLI: exit 125, one line on stderr, no panic or backtrace.
    let out = tc
        .command()
        .env("MPCTL_AUTHKEY_FILE", &wrong_path)
        .env("RUST_BACKTRACE", "1")
        .args(["ps"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "stderr:\n{stderr}");
    assert!(
        out.stdout.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        stderr,
        format!("mpctl: {}\n", rejected(&tc.addr, "client")),
        "stderr must be exactly one line"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    // The coordinator logged each of the three refusals once, at warn level;
    // the right key still works afterwards.
    let server = tc.server.as_ref().unwrap();
    for _ in 0..3 {
        let line = plain(&server.wait_line("did not prove knowledge of the authkey", READY));
        assert!(line.contains("WARN"), "{line}");
        assert!(line.contains("authentication failed: 127.0.0.1:"), "{line}");
        assert!(
            line.contains("(role client) did not prove knowledge of the authkey"),
            "{line}"
        );
        assert!(line.contains("role=client"), "{line}");
    }
    let failures = server
        .log_text()
        .matches("did not prove knowledge of the authkey")
        .count();
    assert_eq!(failures, 3, "{}", server.log_text());
    let c = tc.client().await;
    assert_eq!(c.list(true).await.unwrap().len(), 0);
}

/// Runs `mpctl agent` with the wrong authkey until it exits by itself.
fn run_wrong_key_agent(tc: &TestCluster) -> Output {
    let (wrong_path, _) = wrong_key(tc);
    let mut cmd = tc.command();
    cmd.env_remove("MPCTL_ADDR")
        .env("MPCTL_AUTHKEY_FILE", &wrong_path)
        .env("RUST_BACKTRACE", "1")
        .args([
            "agent",
            "--server",
            &tc.addr,
            "--name",
            "rogue",
            "--slots",
            "1",
            "--data-dir",
            tc.agent_dir("rogue").to_str().unwrap(),
            "--work-dir",
            tc.path().to_str().unwrap(),
        ]);
    // It must give up by itself: retrying cannot fix a wrong key.
    output_within(cmd, EXIT)
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_authkey_agent_exits_by_itself() {
    let tc = TestCluster::start(Options::default());
    let out = run_wrong_key_agent(&tc);
    let stderr = plain(&String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(125), "stderr:\n{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    let expected = format!(
        "mpctl: cannot connect to the coordinator at {}: {}",
        tc.addr,
        rejected(&tc.addr, "agent")
    );
    // (The exact line, said once, is checked by
    // `wrong_authkey_agent_says_it_once`.)
    assert!(last.starts_with(&expected), "stderr:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        !stderr.contains("WARN"),
        "no retry on a wrong key:\n{stderr}"
    );
    assert!(
        !stderr.contains("registered with the coordinator"),
        "{stderr}"
    );

    let server = tc.server.as_ref().unwrap();
    let line = plain(&server.wait_line("did not prove knowledge of the authkey", READY));
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("role=agent"), "{line}");
    assert!(line.contains("authentication failed"), "{line}");
    // One attempt: a wrong key is not retried.
    let failures = server
        .log_text()
        .matches("did not prove knowledge of the authkey")
        .count();
    assert_eq!(failures, 1, "{}", server.log_text());

    // The coordinator never heard of it.
    let c = tc.client().await;
    assert!(c.agents().await.unwrap().is_empty());
}

/// Errors whose message already embeds their cause (`"...: {source}"`) and
/// also return it from `source()` are printed twice by the CLI's
/// `eprintln!("mpctl: {e:#}")`, which appends the whole cause chain.
#[tokio::test(flavor = "multi_thread")]
async fn wrong_authkey_agent_says_it_once() {
    let tc = TestCluster::start(Options::default());
    let out = run_wrong_key_agent(&tc);
    let stderr = plain(&String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(125), "stderr:\n{stderr}");
    assert_eq!(
        stderr.lines().last().unwrap_or_default(),
        format!(
            "mpctl: cannot connect to the coordinator at {}: {}",
            tc.addr,
            rejected(&tc.addr, "agent")
        ),
        "stderr:\n{stderr}"
    );

    // Same root cause for a client whose key file cannot be read.
    let missing = tc.path().join("no-such-key");
    let out = tc
        .command()
        .env("MPCTL_AUTHKEY_FILE", &missing)
        .args(["ps"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "mpctl: cannot read the authkey file {}: No such file or directory (os error 2)\n",
            missing.display()
        )
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_of_one_role_does_not_work_for_the_other() {
    let tc = TestCluster::with_agent(1);
    let key = AuthKey::load(&tc.key_path).unwrap();

    // The agent role authenticates (it is a valid agent), but the client API
    // refuses it.
    let agent_channel = mpctl_transport::connect(&tc.addr, &key, Role::Agent, Security::Tls)
        .await
        .expect("the agent role authenticates");
    let status = ProcessManagerClient::new(agent_channel.clone())
        .list(ListRequest {
            all: true,
            ..ListRequest::default()
        })
        .await
        .expect_err("an agent connection listed processes");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert_eq!(
        status.message(),
        "this endpoint is for client connections; this connection authenticated as agent (an agent key cannot be used by a client, and vice versa)"
    );
    // Start too: nothing may run through an agent connection.
    let status = ProcessManagerClient::new(agent_channel)
        .start(mpctl::proto::StartRequest {
            request_id: "from-an-agent".into(),
            command: Some(mpctl::proto::CommandTarget {
                argv: vec!["true".into()],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect_err("an agent connection started a process");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);

    // The client role cannot open an agent session (and so cannot register).
    let client_channel = mpctl_transport::connect(&tc.addr, &key, Role::Client, Security::Tls)
        .await
        .unwrap();
    let register = AgentMessage {
        msg: Some(Msg::Register(Register {
            name: "intruder".into(),
            slots: 1,
            ..Default::default()
        })),
    };
    let status = AgentServiceClient::new(client_channel)
        .session(futures::stream::iter(vec![register]))
        .await
        .expect_err("a client connection opened an agent session");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert_eq!(
        status.message(),
        "this endpoint is for agent connections; this connection authenticated as client (an agent key cannot be used by a client, and vice versa)"
    );

    let c = tc.client().await;
    let names: Vec<String> = c
        .agents()
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.name)
        .collect();
    assert_eq!(names, ["node-a"]);
    assert!(c.list(true).await.unwrap().is_empty());
}

/// Replay against a real coordinator. The crate-level test replays over TLS,
/// where the per-session exporter alone defeats it; here the coordinator runs
/// in plaintext loopback mode, where the binding is a constant, so only the
/// coordinator's fresh nonce stands between a recorded proof and a session.
#[tokio::test(flavor = "multi_thread")]
async fn replayed_handshake_is_rejected_by_the_real_coordinator() {
    let tc = TestCluster::start(Options::default());
    let mut cmd = tc.command();
    cmd.env_remove("MPCTL_ADDR").args([
        "--plaintext",
        "server",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        tc.path().join("plain-server").to_str().unwrap(),
    ]);
    let server = Daemon::spawn(cmd);
    let line = server.wait_line("listening on", READY);
    let addr = line.rsplit(' ').next().unwrap().trim().to_owned();

    let key = AuthKey::load(&tc.key_path).unwrap();
    let role_key = key.role_key(Role::Client);
    let nonce_c = [0x42u8; NONCE_LEN];
    let mut hello = Vec::with_capacity(HELLO_LEN);
    hello.extend_from_slice(MAGIC);
    hello.push(Role::Client.wire_byte());
    hello.extend_from_slice(&nonce_c);

    // Connection 1: a genuine handshake, done by hand and recorded.
    let mut s1 = TcpStream::connect(&addr).await.unwrap();
    s1.write_all(&hello).await.unwrap();
    let mut nonce_s1 = [0u8; NONCE_LEN];
    s1.read_exact(&mut nonce_s1).await.unwrap();
    let mac_c = client_mac(
        &role_key,
        Role::Client,
        &PLAINTEXT_BINDING,
        &nonce_s1,
        &nonce_c,
    );
    s1.write_all(&mac_c).await.unwrap();
    let mut reply = [0u8; 1 + MAC_LEN];
    s1.read_exact(&mut reply).await.unwrap();
    assert_eq!(reply[0], STATUS_OK);
    assert_eq!(
        reply[1..],
        server_mac(
            &role_key,
            Role::Client,
            &PLAINTEXT_BINDING,
            &nonce_c,
            &nonce_s1
        ),
        "the coordinator proved the key"
    );
    drop(s1);

    // Connection 2: the same hello and the same proof.
    let mut s2 = TcpStream::connect(&addr).await.unwrap();
    s2.write_all(&hello).await.unwrap();
    let mut nonce_s2 = [0u8; NONCE_LEN];
    s2.read_exact(&mut nonce_s2).await.unwrap();
    assert_ne!(nonce_s1, nonce_s2, "the coordinator's nonce must be fresh");
    s2.write_all(&mac_c).await.unwrap();
    let mut status = [0u8; 1];
    s2.read_exact(&mut status).await.unwrap();
    assert_eq!(status[0], STATUS_FAIL);
    // Then the connection closes with nothing more said.
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(EXIT, s2.read_to_end(&mut rest))
        .await
        .expect("the coordinator did not close the replayed connection");
    assert!(rest.is_empty(), "{rest:?}");

    let line = plain(&server.wait_line("did not prove knowledge of the authkey", READY));
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("role=client"), "{line}");

    // The coordinator still serves a genuine client.
    let c = Cluster::connect(&addr, &key, Security::PlaintextLoopback)
        .await
        .unwrap();
    assert!(c.list(true).await.unwrap().is_empty());
}

#[test]
fn plaintext_server_refuses_a_non_loopback_address() {
    let tc = TestCluster::start(Options::default());
    let mut cmd = tc.command();
    cmd.env_remove("MPCTL_ADDR").args([
        "server",
        "--plaintext",
        "--listen",
        "0.0.0.0:0",
        "--data-dir",
        tc.path().join("plain-server").to_str().unwrap(),
    ]);
    let out = output_within(cmd, EXIT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "stderr:\n{stderr}");
    assert_eq!(
        stderr,
        "mpctl: plaintext (no TLS) connections are only allowed on loopback addresses, and 0.0.0.0:0 is not one; use TLS for this address\n"
    );
    // The same through the environment variable.
    let mut cmd = tc.command();
    cmd.env_remove("MPCTL_ADDR")
        .env("MPCTL_PLAINTEXT", "1")
        .args([
            "server",
            "--listen",
            "0.0.0.0:0",
            "--data-dir",
            tc.path().join("plain-server").to_str().unwrap(),
        ]);
    let out = output_within(cmd, EXIT);
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("only allowed on loopback addresses, and 0.0.0.0:0 is not one"));
}

/// `/proc/PID/cmdline` and `/proc/PID/environ` of a process, NULs as spaces.
fn proc_text(pid: i32) -> String {
    let mut s = String::new();
    for f in ["cmdline", "environ"] {
        let b = std::fs::read(format!("/proc/{pid}/{f}"))
            .unwrap_or_else(|e| panic!("read /proc/{pid}/{f}: {e}"));
        s.push_str(&String::from_utf8_lossy(&b).replace('\0', " "));
        s.push('\n');
    }
    s
}

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_in_logs_argv_or_environment() {
    let mut tc = TestCluster::start(Options {
        log_filter: "trace".into(),
        ..Default::default()
    });
    tc.start_agent("node-a", 2, &[]);
    let hex = key_hex(&tc.key_path);
    let (wrong_path, wrong) = wrong_key(&tc);
    let wrong_hex = key_hex(&wrong_path);
    let c = tc.client().await;

    // A few processes: ok, non-zero, a start error.
    for (argv, code) in [(vec!["true"], 0), (vec!["sh", "-c", "exit 3"], 3)] {
        let mut p = Process::new(&c, argv);
        p.start().await.unwrap();
        p.join(None).await.unwrap();
        assert_eq!(p.exitcode(), Some(code));
    }
    let mut p = Process::new(&c, ["/no/such/binary"]);
    assert!(matches!(p.start().await, Err(Error::Start { .. })));
    // Function targets get the authkey in their preparation data (as CPython
    // children inherit it); that path must not leak it either. This one
    // uses it: it starts children of its own.
    let mut p = Process::function(&c, "spawn_children", &1u32)
        .unwrap()
        .program(env!("CARGO_BIN_EXE_mpctl-test-worker"));
    p.start().await.unwrap();
    p.join(None).await.unwrap();
    assert_eq!(p.exitcode(), Some(0));
    assert!(!output(&p, LogStream::Stdout).await.contains(&hex));

    // A wrong-key client, through the SDK and the CLI (at trace level too).
    assert!(Cluster::connect(&tc.addr, &wrong, Security::Tls)
        .await
        .is_err());
    let cli = tc
        .command()
        .env("MPCTL_AUTHKEY_FILE", &wrong_path)
        .args(["ps"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(cli.status.code(), Some(125));
    // A successful CLI call at trace level.
    let ok_cli = tc.cli(&["ps", "-a"]);
    assert_eq!(ok_cli.status.code(), Some(0));

    // What a managed process sees: its environment and its parent's argv.
    let script = "env; echo ---; cat /proc/$PPID/cmdline | tr '\\0' ' '; echo";
    let mut p = Process::new(&c, ["sh", "-c", script]);
    p.start().await.unwrap();
    p.join(None).await.unwrap();
    assert_eq!(p.exitcode(), Some(0));
    let seen = output(&p, LogStream::Stdout).await;
    let (env, parent) = seen.split_once("---\n").expect("both parts printed");
    assert!(env.contains("PATH="), "{seen}");
    assert!(
        parent.contains(&format!("launcher --dir {}", tc.path().display())),
        "the parent is the node's launcher: {seen}"
    );
    assert_no_key("the managed process's view", &seen, &hex);
    let key_path = tc.key_path.to_str().unwrap();
    assert!(!seen.contains(key_path), "{seen}");
    assert!(!seen.to_uppercase().contains("AUTHKEY"), "{seen}");

    // The daemons' argv and environment: the key file's path may be there,
    // the key never.
    let server_pid = tc.server.as_ref().unwrap().child.id() as i32;
    let agent_pid = tc.agent("node-a").child.id() as i32;
    let launchers = pids_with_cmdline(&format!("launcher --dir {}", tc.path().display()));
    assert_eq!(launchers.len(), 1, "{launchers:?}");
    for pid in [server_pid, agent_pid, launchers[0]] {
        let text = proc_text(pid);
        assert!(text.contains("mpctl"), "{text}");
        assert_no_key(&format!("/proc/{pid}"), &text, &hex);
    }

    // Every log: daemons (at trace level), the CLI runs, the launcher's file.
    let launcher_log =
        std::fs::read_to_string(tc.agent_dir("node-a").join("launcher").join("launcher.log"))
            .unwrap_or_default();
    let logs = plain(&format!(
        "{}\n{}\n{}\n{}",
        tc.all_logs(),
        String::from_utf8_lossy(&cli.stderr),
        String::from_utf8_lossy(&ok_cli.stderr),
        launcher_log
    ));
    assert!(
        logs.contains("TRACE") || logs.contains("DEBUG"),
        "the daemons did not log at trace level"
    );
    assert!(
        logs.contains("did not prove knowledge of the authkey"),
        "the failed authentication is logged"
    );
    assert_no_key("the logs", &logs, &hex);
    assert_no_key("the logs", &logs, &wrong_hex);

    // Nor in the coordinator's state file.
    let mut db = Vec::new();
    for entry in std::fs::read_dir(tc.path().join("server")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            db.extend(std::fs::read(&path).unwrap());
        }
    }
    let db_text = String::from_utf8_lossy(&db);
    assert_no_key("the coordinator's state", &db_text, &hex);
    let raw = key_bytes(&hex);
    assert!(!db.windows(raw.len()).any(|w| w == raw.as_slice()));
}

#[test]
fn keygen_writes_a_private_key_and_never_overwrites_silently() {
    let dir = tempfile::Builder::new()
        .prefix("mpctl-keygen-")
        .tempdir()
        .unwrap();
    let path = dir.path().join("sub").join("authkey");
    let keygen = |extra: &[&str]| {
        Command::new(mpctl_bin())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", dir.path())
            .args(["keygen", "--out", path.to_str().unwrap()])
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };

    let out = keygen(&[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{}\n", path.display())
    );
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let dir_mode = std::fs::metadata(path.parent().unwrap())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(dir_mode & 0o777, 0o700);
    let first = std::fs::read_to_string(&path).unwrap();
    assert_eq!(first.len(), 65, "{first:?}");
    assert!(first.ends_with('\n'));
    assert!(first[..64]
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    AuthKey::load(&path).expect("keygen's file loads");
    // The key is written to the file, not printed.
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&first[..64]));
    assert!(!String::from_utf8_lossy(&out.stderr).contains(&first[..64]));

    let out = keygen(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert_eq!(
        stderr,
        format!(
            "mpctl: refusing to overwrite the existing authkey file {}: every process of the cluster uses it; remove it yourself or ask for overwrite explicitly (pass --force to replace it)\n",
            path.display()
        )
    );
    assert!(out.stdout.is_empty());
    assert_eq!(std::fs::read_to_string(&path).unwrap(), first);

    let out = keygen(&["--force"]);
    assert_eq!(out.status.code(), Some(0));
    let second = std::fs::read_to_string(&path).unwrap();
    assert_eq!(second.len(), 65);
    assert_ne!(second, first);
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
}
