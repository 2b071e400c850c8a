//! A connection to a cluster's coordinator (or an embedded one).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mpctl_proto::v1::{
    process_manager_client::ProcessManagerClient, GetRequest, ListAgentsRequest, ListRequest,
};
use mpctl_transport::trace::Traced;
use mpctl_transport::{AuthKey, Role, Security};
use tonic::transport::Channel;

use crate::config::{ClusterConfig, Overrides};
use crate::error::{Error, Result};
use crate::status::{AgentInfo, ProcessInfo};
use crate::wire;

/// One page of a listing ([`Cluster::list_page`]).
#[derive(Clone, Debug)]
pub struct ListPage {
    pub processes: Vec<ProcessInfo>,
    /// Where the next page starts; `None`: this was the last.
    pub next_page_token: Option<String>,
}

/// A handle on a cluster; cheap to clone. Every [`crate::Process`] belongs to one.
#[derive(Clone)]
pub struct Cluster {
    channel: Channel,
    api: ProcessManagerClient<Traced<Channel>>,
    #[cfg(feature = "embedded")]
    embedded: Option<Arc<tokio::sync::Mutex<Option<mpctl_embedded::Embedded>>>>,
    #[cfg(not(feature = "embedded"))]
    embedded: Option<Arc<()>>,
}

impl Cluster {
    /// Connects to the coordinator at `addr` with the client key derived from `authkey`.
    pub async fn connect(addr: &str, authkey: &AuthKey, security: Security) -> Result<Cluster> {
        let channel = mpctl_transport::connect(addr, authkey, Role::Client, security).await?;
        Ok(Cluster {
            api: ProcessManagerClient::new(Traced::new(channel.clone())),
            channel,
            embedded: None,
        })
    }

    /// Connects as managed process `id` with its job key (role job): it may
    /// start, watch and signal its own descendants only.
    pub async fn connect_job(
        addr: &str,
        id: &str,
        key: &mpctl_transport::JobKey,
        security: Security,
    ) -> Result<Cluster> {
        let channel = mpctl_transport::connect_job(addr, key, id, security).await?;
        Ok(Cluster {
            api: ProcessManagerClient::new(Traced::new(channel.clone())),
            channel,
            embedded: None,
        })
    }

    /// The cluster the environment names (see [`crate::config`]). Inside a
    /// managed process (a function target), the cluster that runs it, with
    /// its own job key (never the authkey). With nothing configured, an embedded
    /// coordinator and agent in this process.
    pub async fn from_env() -> Result<Cluster> {
        if std::env::var_os("MPCTL_ADDR").is_none() {
            if let Some((addr, id, key, security)) = mpctl_runtime::cluster_credentials() {
                return Cluster::connect_job(&addr, &id, key, security).await;
            }
        }
        Cluster::open(ClusterConfig::resolve(&Overrides::default())?).await
    }

    pub async fn open(config: ClusterConfig) -> Result<Cluster> {
        match config {
            ClusterConfig::Remote {
                addr,
                authkey_file,
                security,
            } => {
                let key = AuthKey::load(&authkey_file)?;
                Cluster::connect(&addr, &key, security).await
            }
            #[cfg(feature = "embedded")]
            ClusterConfig::Embedded { data_dir } => {
                let (embedded, addr, key) = mpctl_embedded::Embedded::start(&data_dir)
                    .await
                    .map_err(|e| Error::Embedded(e.to_string()))?;
                let mut cluster =
                    Cluster::connect(&addr.to_string(), &key, mpctl_embedded::SECURITY).await?;
                cluster.embedded = Some(Arc::new(tokio::sync::Mutex::new(Some(embedded))));
                Ok(cluster)
            }
            #[cfg(not(feature = "embedded"))]
            ClusterConfig::Embedded { .. } => Err(Error::Config(
                "no cluster configured (set MPCTL_ADDR and MPCTL_AUTHKEY_FILE); this build has no embedded cluster (feature `embedded`)".into(),
            )),
        }
    }

    /// True when this handle runs its own embedded coordinator and agent.
    pub fn is_embedded(&self) -> bool {
        self.embedded.is_some()
    }

    /// Stops an embedded coordinator and agent cleanly (processes keep running
    /// under the node's launcher). A no-op for a remote cluster.
    pub async fn close(&self) {
        #[cfg(feature = "embedded")]
        if let Some(e) = &self.embedded {
            if let Some(e) = e.lock().await.take() {
                e.stop().await;
            }
        }
    }

    /// The authenticated channel to the coordinator (for other services).
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// The raw gRPC client, for calls the SDK does not wrap (each call a
    /// span when tracing is on: `mpctl_transport::trace`).
    pub fn api(&self) -> ProcessManagerClient<Traced<Channel>> {
        self.api.clone()
    }

    pub async fn get(&self, id: &str) -> Result<ProcessInfo> {
        let info = self
            .api()
            .get(GetRequest { id: id.to_owned() })
            .await
            .map_err(|s| Error::rpc("get", id, s))?
            .into_inner();
        wire::process_info(info)
    }

    /// Processes not yet stopped, or all of them, oldest first (every
    /// page of [`Cluster::list_page`]).
    pub async fn list(&self, all: bool) -> Result<Vec<ProcessInfo>> {
        self.list_on("", all).await
    }

    /// [`Cluster::list`] for the processes on one node (`""`: every node).
    pub async fn list_on(&self, node: &str, all: bool) -> Result<Vec<ProcessInfo>> {
        self.list_all(node, all, None).await
    }

    /// Walks the pages of the listing until it ends or `limit` rows are in.
    /// Rows are listing rows (argv bounded, no results; see
    /// [`ProcessInfo::argv_omitted_bytes`]).
    pub async fn list_all(
        &self,
        node: &str,
        all: bool,
        limit: Option<usize>,
    ) -> Result<Vec<ProcessInfo>> {
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let left = limit.map(|l| l.saturating_sub(out.len()));
            if left == Some(0) {
                break;
            }
            let page_size = left.map_or(0, |l| l.min(u32::MAX as usize) as u32);
            let page = self.list_page(node, all, page_size, &token).await?;
            out.extend(page.processes);
            match page.next_page_token {
                Some(t) => token = t,
                None => break,
            }
        }
        if let Some(l) = limit {
            out.truncate(l);
        }
        Ok(out)
    }

    /// One page of the listing: up to `page_size` rows (0: the server's
    /// default; the server also caps it) after `page_token` (`""`: from the
    /// oldest process).
    pub async fn list_page(
        &self,
        node: &str,
        all: bool,
        page_size: u32,
        page_token: &str,
    ) -> Result<ListPage> {
        let r = self
            .api()
            .list(ListRequest {
                all,
                node: node.to_owned(),
                page_size,
                page_token: page_token.to_owned(),
            })
            .await
            .map_err(|s| Error::rpc("list", "", s))?
            .into_inner();
        Ok(ListPage {
            processes: wire::process_infos(r.processes)?,
            next_page_token: (!r.next_page_token.is_empty()).then_some(r.next_page_token),
        })
    }

    pub async fn agents(&self) -> Result<Vec<AgentInfo>> {
        let agents = self
            .api()
            .list_agents(ListAgentsRequest {})
            .await
            .map_err(|s| Error::rpc("list agents", "", s))?
            .into_inner()
            .agents;
        agents.into_iter().map(wire::agent_info).collect()
    }

    /// Clears the node credential of agent `name`, which must not be
    /// connected (`mpctl agents forget`); returns whether it had one.
    pub async fn forget_agent(&self, name: &str) -> Result<bool> {
        Ok(self
            .api()
            .forget_agent(mpctl_proto::v1::ForgetAgentRequest { name: name.into() })
            .await
            .map_err(|s| Error::rpc("forget agent", name, s))?
            .into_inner()
            .had_credential)
    }
}

/// How long an idempotent call (a start with its request id, a join) keeps
/// retrying while the coordinator is unreachable, e.g. restarting: the
/// channel reconnects by itself, so the next attempt reaches the new one.
pub(crate) const RECONNECT_WINDOW: Duration = Duration::from_secs(60);

/// Runs `call` again while it fails for want of a connection to the
/// coordinator ([`connection_lost`]), with backoff, for up to [`RECONNECT_WINDOW`] and never
/// past `deadline`; any other outcome is returned as it is.
pub(crate) async fn reconnecting<T, F, Fut>(
    deadline: Option<Instant>,
    mut call: F,
) -> std::result::Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, tonic::Status>>,
{
    let give_up = Instant::now() + RECONNECT_WINDOW;
    let give_up = deadline.map_or(give_up, |d| d.min(give_up));
    let mut backoff = Duration::from_millis(50);
    loop {
        match call().await {
            Err(s) if connection_lost(&s) && Instant::now() + backoff < give_up => {
                tracing::debug!(status = %s.message(), retry_in = ?backoff, "coordinator unreachable; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
            r => return r,
        }
    }
}

/// The call failed because the connection did, not because the coordinator
/// answered: `UNAVAILABLE` (no connection), or the `UNKNOWN` "transport
/// error" tonic makes locally when a connection breaks under a call (it
/// carries the transport error as its source; a status from the wire has
/// none).
pub(crate) fn connection_lost(s: &tonic::Status) -> bool {
    match s.code() {
        tonic::Code::Unavailable => true,
        tonic::Code::Unknown => std::error::Error::source(s).is_some(),
        _ => false,
    }
}
