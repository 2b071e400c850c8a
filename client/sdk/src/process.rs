//! `Process`, `Sentinel` and `wait`: multiprocessing's process API over a cluster.

use std::collections::HashMap;
use std::time::Duration;

use mpctl_proto::v1 as proto;
use mpctl_proto::v1::{
    CommandTarget, FunctionTarget, JoinRequest, LogsRequest, Placement, SignalRequest,
    StartRequest, WaitMode, WaitRequest,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::cluster::Cluster;
use crate::error::{Error, Result};
use crate::logs::{LogOffsets, Logs};
use crate::status::{LogStream, ProcessInfo, ProcessState, StartMethod};
use crate::wire;

/// A process of the cluster: built, then started, joined, signalled.
///
/// ```no_run
/// # async fn demo() -> mpctl::Result<()> {
/// let cluster = mpctl::Cluster::from_env().await?;
/// let mut p = mpctl::Process::new(&cluster, ["sh", "-c", "exit 3"]);
/// p.start().await?;
/// p.join(None).await?;
/// assert_eq!(p.exitcode(), Some(3));
/// # Ok(()) }
/// ```
pub struct Process {
    cluster: Cluster,
    request: StartRequest,
    info: Option<ProcessInfo>,
    closed: bool,
}

/// Becomes ready when its process has stopped (or failed to start, or was
/// lost with its node). Wait on many with [`wait`].
#[derive(Clone)]
pub struct Sentinel {
    cluster: Cluster,
    id: String,
}

impl Sentinel {
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl std::fmt::Debug for Sentinel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sentinel({})", self.id)
    }
}

/// The parent of processes started here: this process, if it is managed.
fn parent_id() -> String {
    crate::runtime::current_process()
        .map(|me| me.id.clone())
        .unwrap_or_default()
}

fn new_request_id() -> String {
    mpctl_transport::random_hex(16)
}

fn millis(d: Option<Duration>) -> Option<u64> {
    d.map(|d| d.as_millis().min(u64::MAX as u128) as u64)
}

impl Process {
    /// A process that will run `argv` (a command target), not yet started.
    pub fn new<I, S>(cluster: &Cluster, argv: I) -> Process
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Process {
            cluster: cluster.clone(),
            request: StartRequest {
                request_id: new_request_id(),
                command: Some(CommandTarget {
                    argv: argv.into_iter().map(Into::into).collect(),
                    env: HashMap::new(),
                    cwd: String::new(),
                }),
                placement: Some(Placement::default()),
                start_method: proto::StartMethod::Spawn as i32,
                parent_id: parent_id(),
                child_number: crate::runtime::next_child_number().unwrap_or(0),
                ..Default::default()
            },
            info: None,
            closed: false,
        }
    }

    /// A process that runs `function`, registered with
    /// [`crate::runtime::Runtime`] in this program, with `args` (serialized
    /// as JSON): the analogue of `Process(target=f, args=...)`. The node runs
    /// this program's executable (same path; see [`Process::program`]) in
    /// bootstrap mode.
    pub fn function<A: Serialize>(cluster: &Cluster, function: &str, args: &A) -> Result<Process> {
        let program = std::env::current_exe()
            .map_err(|e| Error::Config(format!("cannot find this program's path: {e}")))?;
        let args = serde_json::to_vec(args).map_err(|e| Error::Encode {
            what: format!("the argument of {function}"),
            message: e.to_string(),
        })?;
        Ok(Process {
            cluster: cluster.clone(),
            request: StartRequest {
                request_id: new_request_id(),
                function: Some(FunctionTarget {
                    program: program.to_string_lossy().into_owned(),
                    function: function.to_owned(),
                    args,
                    ..Default::default()
                }),
                placement: Some(Placement::default()),
                start_method: proto::StartMethod::Spawn as i32,
                parent_id: parent_id(),
                child_number: crate::runtime::next_child_number().unwrap_or(0),
                ..Default::default()
            },
            info: None,
            closed: false,
        })
    }

    /// How the node starts the process (default spawn). Forkserver starts
    /// function targets by forking a server of their program that ran its
    /// preload hooks once (see [`Process::preload`]); for commands the node's
    /// launcher plays the server. Fork forks this (managed) process on its
    /// own node.
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.request.start_method = wire::start_method_wire(method);
        self
    }

    /// For a function target started by forkserver: the preload hooks
    /// (registered with `Runtime::preload`) its server runs once.
    pub fn preload<I, S>(mut self, hooks: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        if let Some(f) = &mut self.request.function {
            f.preload = hooks.into_iter().map(Into::into).collect();
        }
        self
    }

    /// For a function target: the program on the node that registers the
    /// function (default: this program's path).
    pub fn program(mut self, path: impl Into<String>) -> Self {
        if let Some(f) = &mut self.request.function {
            f.program = path.into();
        }
        self
    }

    /// What a function target returned, once it has stopped (after `join`).
    /// `None` before that, for command targets, and when the function did not
    /// return (exit code other than 0).
    pub fn result<R: DeserializeOwned>(&self) -> Option<Result<R>> {
        let bytes = self.info.as_ref()?.result.as_ref()?;
        Some(serde_json::from_slice(bytes).map_err(|e| Error::Decode {
            what: format!("the result of {}", self.name()),
            message: e.to_string(),
        }))
    }

    /// A handle on a process that already exists (started by anyone).
    pub async fn attach(cluster: &Cluster, id: &str) -> Result<Process> {
        let info = cluster.get(id).await?;
        Ok(Process {
            cluster: cluster.clone(),
            request: StartRequest::default(),
            info: Some(info),
            closed: false,
        })
    }

    /// The environment and working directory of whichever target this is.
    fn target_env(&mut self) -> &mut HashMap<String, String> {
        let r = &mut self.request;
        match &mut r.function {
            Some(f) => &mut f.env,
            None => &mut r.command.get_or_insert_with(Default::default).env,
        }
    }

    fn target_cwd(&mut self) -> &mut String {
        let r = &mut self.request;
        match &mut r.function {
            Some(f) => &mut f.cwd,
            None => &mut r.command.get_or_insert_with(Default::default).cwd,
        }
    }

    fn placement(&mut self) -> &mut Placement {
        self.request.placement.get_or_insert_with(Default::default)
    }

    /// The process name (default: `Process-N`, assigned at start).
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.request.name = name.into();
        self
    }

    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.target_env().insert(key.into(), value.into());
        self
    }

    pub fn cwd(mut self, dir: impl Into<String>) -> Self {
        *self.target_cwd() = dir.into();
        self
    }

    pub fn daemon(mut self, daemon: bool) -> Self {
        self.request.daemon = daemon;
        self
    }

    /// Run on this agent only.
    pub fn node(mut self, node: impl Into<String>) -> Self {
        self.placement().node = node.into();
        self
    }

    /// Run on an agent carrying this label.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.placement().labels.insert(key.into(), value.into());
        self
    }

    /// Caps the process's address space (RLIMIT_AS): allocations past it fail.
    pub fn memory_limit(mut self, bytes: u64) -> Self {
        self.request
            .limits
            .get_or_insert_with(Default::default)
            .memory_bytes = bytes;
        self
    }

    /// Caps the process's CPU time (RLIMIT_CPU): past it the process gets
    /// SIGXCPU (exit code -24), a second later SIGKILL.
    pub fn cpu_limit(mut self, seconds: u64) -> Self {
        self.request
            .limits
            .get_or_insert_with(Default::default)
            .cpu_seconds = seconds;
        self
    }

    /// Cap for each of stdout and stderr on the node.
    pub fn log_limit(mut self, bytes: u64) -> Self {
        self.request.log_limit_bytes = bytes;
        self
    }

    /// Idempotency key: a start retried with the same key never runs twice.
    /// A random one is chosen by default.
    pub fn request_id(mut self, key: impl Into<String>) -> Self {
        self.request.request_id = key.into();
        self
    }

    fn check_open(&self) -> Result<()> {
        if self.closed {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    fn started(&self, op: &'static str) -> Result<&ProcessInfo> {
        self.check_open()?;
        self.info.as_ref().ok_or(Error::NotStarted { op })
    }

    /// Starts the process. A command that cannot be executed is
    /// [`Error::Start`] with the node's OS reason.
    pub async fn start(&mut self) -> Result<()> {
        self.check_open()?;
        if self.info.is_some() {
            return Err(Error::AlreadyStarted);
        }
        if self.request.start_method == proto::StartMethod::Fork as i32 {
            return self.start_fork().await;
        }
        // The request id makes a retry after a lost connection the same start.
        let api = self.cluster.api();
        let request = &self.request;
        let response = crate::cluster::reconnecting(None, || {
            let mut api = api.clone();
            let request = request.clone();
            async move { api.start(request).await }
        })
        .await;
        match response {
            Ok(r) => {
                self.info = r.into_inner().process.map(wire::process_info).transpose()?;
                Ok(())
            }
            Err(s) if s.code() == tonic::Code::FailedPrecondition => Err(Error::Start {
                message: s.message().to_owned(),
            }),
            Err(s) => Err(Error::rpc("start", "", s)),
        }
    }

    /// Fork: this (managed) process forks itself on its node; the node's
    /// launcher adopts the child. See [`crate::runtime`].
    async fn start_fork(&mut self) -> Result<()> {
        use crate::runtime::fork;
        let start_error = |message: String| Error::Start { message };
        let me = crate::runtime::current_process()
            .ok_or_else(|| start_error(fork::NOT_ON_A_NODE.into()))?;
        let f = self.request.function.clone().ok_or_else(|| {
            start_error(
                "start method fork starts function targets: the child runs a registered function of this program".into(),
            )
        })?;
        let (addr, _, _, security) = crate::runtime::cluster_credentials()
            .ok_or_else(|| start_error(fork::NOT_ON_A_NODE.into()))?;
        self.request
            .placement
            .get_or_insert_with(Default::default)
            .node = me.node.clone();
        self.request.parent_id = me.id.clone();
        let (info, child_key) = match self.cluster.api().start(self.request.clone()).await {
            Ok(r) => {
                let r = r.into_inner();
                (r.process.unwrap_or_default(), r.job_key)
            }
            Err(s) if s.code() == tonic::Code::FailedPrecondition => {
                return Err(start_error(s.message().to_owned()))
            }
            Err(s) => return Err(Error::rpc("start", "", s)),
        };
        let security = match security {
            crate::Security::Tls => mpctl_node::Security::Tls,
            crate::Security::PlaintextLoopback => mpctl_node::Security::Plaintext,
        };
        let prep = mpctl_node::Preparation::new(
            &info.id,
            &info.name,
            &me.node,
            mpctl_node::StartMethod::Fork,
            &f.function,
            String::from_utf8_lossy(&f.args),
        )
        .parent(&me.id)
        // The child's own job key, from the coordinator's answer (empty if
        // this parent was connected with the authkey: the child then cannot
        // start children of its own).
        .coordinator(
            addr,
            security,
            <[u8; 32]>::try_from(child_key.as_slice())
                .map(|k| mpctl_transport::JobKey::from_bytes(k).expose_hex())
                .unwrap_or_default(),
        );
        let limits = self
            .request
            .limits
            .map_or_else(Default::default, |l| mpctl_node::Limits {
                memory_bytes: l.memory_bytes,
                cpu_seconds: l.cpu_seconds,
            });
        let pid = fork::start(prep, limits).map_err(|message| Error::Start {
            message: format!("cannot fork {}: {message}", info.name),
        })?;
        self.info = Some(wire::process_info(proto::ProcessInfo {
            pid,
            state: proto::ProcessState::Started as i32,
            ..info
        })?);
        Ok(())
    }

    /// Waits until the process stops or `timeout` passes; like CPython,
    /// `exitcode()` is still `None` after a timeout.
    pub async fn join(&mut self, timeout: Option<Duration>) -> Result<()> {
        let id = self.started("join")?.id.clone();
        let deadline = timeout.map(|t| std::time::Instant::now() + t);
        let api = self.cluster.api();
        let r = crate::cluster::reconnecting(deadline, || {
            let mut api = api.clone();
            // What is left of the timeout, for an attempt after a reconnect.
            let timeout = deadline.map(|d| d.saturating_duration_since(std::time::Instant::now()));
            let id = id.clone();
            async move {
                api.join(JoinRequest {
                    id,
                    timeout_ms: millis(timeout),
                })
                .await
            }
        })
        .await
        .map_err(|s| Error::rpc("join", &id, s))?
        .into_inner();
        if let Some(info) = r.process {
            self.info = Some(wire::process_info(info)?);
        }
        Ok(())
    }

    /// Asks the coordinator whether the process is still running.
    pub async fn is_alive(&mut self) -> Result<bool> {
        let Some(info) = &self.info else {
            self.check_open()?;
            return Ok(false);
        };
        self.check_open()?;
        // Stopped and failed are final; a lost process may come back.
        if matches!(info.state, ProcessState::Stopped | ProcessState::Failed) {
            return Ok(false);
        }
        let id = info.id.clone();
        let fresh = self.cluster.get(&id).await?;
        let alive = !fresh.state.is_settled() && fresh.state != ProcessState::Queued;
        self.info = Some(fresh);
        Ok(alive)
    }

    /// `None` until the process has stopped; `-N` if signal N killed it.
    pub fn exitcode(&self) -> Option<i32> {
        self.info
            .as_ref()
            .filter(|i| i.state == ProcessState::Stopped)
            .and_then(|i| i.exitcode)
    }

    pub fn pid(&self) -> Option<i32> {
        self.info.as_ref().and_then(|i| i.pid)
    }

    /// Cluster-unique id, once started.
    pub fn id(&self) -> Option<&str> {
        self.info.as_ref().map(|i| i.id.as_str())
    }

    /// The name given, or the one the cluster assigned at start (`Process-N`).
    pub fn name(&self) -> &str {
        self.info
            .as_ref()
            .map(|i| i.name.as_str())
            .unwrap_or(&self.request.name)
    }

    pub fn state(&self) -> Option<ProcessState> {
        self.info.as_ref().map(|i| i.state)
    }

    /// The last state seen from the coordinator.
    pub fn info(&self) -> Option<&ProcessInfo> {
        self.info.as_ref()
    }

    async fn signal(&mut self, kill: bool, tree: bool) -> Result<()> {
        let op = if kill { "kill" } else { "terminate" };
        let id = self.started(op)?.id.clone();
        let req = SignalRequest {
            id: id.clone(),
            tree,
        };
        let api = &mut self.cluster.api();
        let r = if kill {
            api.kill(req).await
        } else {
            api.terminate(req).await
        };
        self.info = Some(wire::process_info(
            r.map_err(|s| Error::rpc(op, &id, s))?.into_inner(),
        )?);
        Ok(())
    }

    /// SIGTERM to the process (not its children).
    pub async fn terminate(&mut self) -> Result<()> {
        self.signal(false, false).await
    }

    /// SIGKILL to the process (not its children).
    pub async fn kill(&mut self) -> Result<()> {
        self.signal(true, false).await
    }

    /// SIGTERM (`kill` false) or SIGKILL to the process and its whole tree.
    pub async fn signal_tree(&mut self, kill: bool) -> Result<()> {
        self.signal(kill, true).await
    }

    /// The sentinel; an error before start, like CPython's `ValueError`.
    pub fn sentinel(&self) -> Result<Sentinel> {
        let id = self.started("get the sentinel of")?.id.clone();
        Ok(Sentinel {
            cluster: self.cluster.clone(),
            id,
        })
    }

    /// Releases the handle; refused while the process runs.
    pub async fn close(&mut self) -> Result<()> {
        if self.closed {
            return Ok(());
        }
        if self.is_alive().await? {
            return Err(Error::StillRunning {
                id: self.id().unwrap_or_default().to_owned(),
            });
        }
        self.closed = true;
        Ok(())
    }

    /// Output of the process; with `follow`, until it stops and is drained.
    pub async fn logs(&self, stream: LogStream, follow: bool) -> Result<Logs> {
        self.logs_from(stream, follow, LogOffsets::default()).await
    }

    /// As [`Process::logs`], starting `from` bytes into each file (what an
    /// earlier reader's [`Logs::offsets`] said it had received).
    pub async fn logs_from(
        &self,
        stream: LogStream,
        follow: bool,
        from: LogOffsets,
    ) -> Result<Logs> {
        let id = self.started("read the output of")?.id.clone();
        let request = LogsRequest {
            id,
            stream: proto::LogStream::from(stream) as i32,
            follow,
            stdout_offset: from.stdout,
            stderr_offset: from.stderr,
        };
        Logs::open(self.cluster.api(), request).await
    }
}

/// Like `multiprocessing.connection.wait`: blocks until at least one sentinel
/// is ready or `timeout` passes, and returns the ready ones (empty on timeout).
pub async fn wait(sentinels: &[Sentinel], timeout: Option<Duration>) -> Result<Vec<Sentinel>> {
    wait_mode(sentinels, timeout, WaitMode::Any).await
}

/// [`wait`] until every sentinel is ready (or the timeout passes).
pub async fn wait_all(sentinels: &[Sentinel], timeout: Option<Duration>) -> Result<Vec<Sentinel>> {
    wait_mode(sentinels, timeout, WaitMode::All).await
}

async fn wait_mode(
    sentinels: &[Sentinel],
    timeout: Option<Duration>,
    mode: WaitMode,
) -> Result<Vec<Sentinel>> {
    let Some(first) = sentinels.first() else {
        return Ok(Vec::new());
    };
    let ids: Vec<String> = sentinels.iter().map(|s| s.id.clone()).collect();
    // The first call waits; the later pages (a large answer) do not.
    let mut ready = std::collections::HashSet::new();
    let mut page_token = String::new();
    loop {
        let r = first
            .cluster
            .api()
            .wait(WaitRequest {
                ids: ids.clone(),
                timeout_ms: millis(timeout),
                mode: mode as i32,
                page_size: 0,
                page_token: std::mem::take(&mut page_token),
            })
            .await
            .map_err(|s| Error::rpc("wait", "", s))?
            .into_inner();
        ready.extend(r.ready.into_iter().map(|p| p.id));
        if r.next_page_token.is_empty() {
            break;
        }
        page_token = r.next_page_token;
    }
    Ok(sentinels
        .iter()
        .filter(|s| ready.contains(&s.id))
        .cloned()
        .collect())
}

/// The running children of this process (CPython's `active_children()`):
/// processes it started that have not stopped. Empty outside a managed
/// process.
pub async fn active_children(cluster: &Cluster) -> Result<Vec<ProcessInfo>> {
    let me = parent_id();
    if me.is_empty() {
        return Ok(Vec::new());
    }
    Ok(cluster
        .list(false)
        .await?
        .into_iter()
        .filter(|p| p.parent_id == me)
        .collect())
}

/// The process that started this one (CPython's `parent_process()`), if
/// this is a managed process started by another managed process.
pub async fn parent_process(cluster: &Cluster) -> Result<Option<Process>> {
    match crate::runtime::current_process() {
        Some(me) if !me.parent_id.is_empty() => {
            Ok(Some(Process::attach(cluster, &me.parent_id).await?))
        }
        _ => Ok(None),
    }
}
