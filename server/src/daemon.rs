//! Binding, loading state, and serving: the coordinator as a running thing.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mpctl_proto::v1::{
    agent_service_server::AgentServiceServer, pool_manager_server::PoolManagerServer,
    process_manager_server::ProcessManagerServer, FILE_DESCRIPTOR_SET,
};
use mpctl_transport::{check_listen_addr, incoming, AuthKey, Role, Security, ServerAuth};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::agent_service::AgentSessions;
use crate::core::model::AgentState;
use crate::core::retention::Retention;
use crate::core::table::Table;
use crate::core::{Core, Timings};
use crate::pool::{PoolService, Pools};
use crate::process_service::ProcessService;
use crate::store::Store;
use crate::wire;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Transport(#[from] mpctl_transport::TransportError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("gRPC server on {addr} failed: {source}")]
    Serve {
        addr: SocketAddr,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("reflection service: {0}")]
    Reflection(String),
}

/// Largest message on an agent or pool stream: pool tasks and results travel
/// in batches (a task's answer alone may take up to 16 MiB).
pub const MAX_STREAM_MESSAGE: usize = 64 << 20;

pub struct CoordinatorConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub authkey: AuthKey,
    pub security: Security,
    pub timings: Timings,
    /// How many finished processes are kept, and for how long.
    pub retention: Retention,
}

/// A running coordinator. Dropping it without [`Coordinator::shutdown`]
/// leaves the server task running until the runtime stops.
pub struct Coordinator {
    local_addr: SocketAddr,
    core: Arc<Core>,
    handshakes: Arc<mpctl_transport::HandshakeFailures>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServerError>>,
}

/// Creates the data directory 0700 and the state database's file 0600, or
/// makes them so if they exist (the database holds environment values).
/// SQLite gives its `-wal` and `-shm` files the database file's mode; those
/// left by an older version are made 0600 too.
fn private_state(dir: &std::path::Path, db: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let private = |path: &std::path::Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|e| {
            std::io::Error::new(e.kind(), format!("chmod {mode:o} {}: {e}", path.display()))
        })
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    private(dir, 0o700)?;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(db)
        .map_err(|e| std::io::Error::new(e.kind(), format!("create {}: {e}", db.display())))?;
    private(db, 0o600)?;
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut side = db.as_os_str().to_owned();
        side.push(suffix);
        match private(std::path::Path::new(&side), 0o600) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            other => other?,
        }
    }
    Ok(())
}

impl Coordinator {
    /// Opens the state in `data_dir`, binds `listen`, and starts serving.
    pub async fn start(config: CoordinatorConfig) -> Result<Coordinator, ServerError> {
        let db_path = config.data_dir.join("coordinator.sqlite");
        private_state(&config.data_dir, &db_path).map_err(|source| ServerError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        check_listen_addr(config.listen, config.security)?;
        let auth = ServerAuth::new(
            &config.authkey,
            config.security,
            &[Role::Client, Role::Agent, Role::Job],
        )?;
        let handshakes = auth.handshake_failures();
        let (store, loaded) = Store::open(&db_path)?;
        let now = tokio::time::Instant::now();
        let table = Table::restore(
            loaded
                .processes
                .into_iter()
                .map(|(info, request)| wire::proc_from_row(info, request))
                .collect(),
            loaded
                .agents
                .into_iter()
                .map(|a| wire::agent_from_row(a, now))
                .collect(),
            loaded.next_number,
        );
        let core = Core::new(table, store, config.timings);
        core.restore_node_credentials(loaded.node_credentials);
        core.start_lease_clocks();
        core.start_retention(config.retention);
        let pools = Pools::new(Arc::clone(&core));

        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| ServerError::Bind {
                addr: config.listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| ServerError::Bind {
            addr: config.listen,
            source,
        })?;

        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_serving::<ProcessManagerServer<ProcessService>>()
            .await;
        health
            .set_serving::<AgentServiceServer<AgentSessions>>()
            .await;
        health.set_serving::<PoolManagerServer<PoolService>>().await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| ServerError::Reflection(e.to_string()))?;

        let router = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .layer(mpctl_transport::trace::ServerLayer)
            .add_service(health_service)
            .add_service(reflection)
            .add_service(ProcessManagerServer::new(ProcessService {
                core: Arc::clone(&core),
                authkey: config.authkey.clone(),
            }))
            .add_service(
                AgentServiceServer::new(AgentSessions {
                    core: Arc::clone(&core),
                    pools: Arc::clone(&pools),
                })
                .max_decoding_message_size(MAX_STREAM_MESSAGE)
                .max_encoding_message_size(MAX_STREAM_MESSAGE),
            )
            .add_service(
                PoolManagerServer::new(PoolService { pools })
                    .max_decoding_message_size(MAX_STREAM_MESSAGE)
                    .max_encoding_message_size(MAX_STREAM_MESSAGE),
            );
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            router
                .serve_with_incoming_shutdown(incoming(listener, auth), async {
                    let _ = stopped.await;
                })
                .await
                .map_err(|source| ServerError::Serve {
                    addr: local_addr,
                    source,
                })
        });
        tracing::info!(%local_addr, "coordinator serving");
        Ok(Coordinator {
            local_addr,
            core,
            handshakes,
            stop: Some(stop),
            task,
        })
    }

    /// Readiness for the health listener: the store commits, and its
    /// directory `data_dir` takes a synced write.
    pub fn readiness(&self, data_dir: PathBuf) -> mpctl_transport::health::ReadyFn {
        let core = Arc::clone(&self.core);
        crate::health::readiness_with(
            data_dir,
            Arc::new(move || core.store_failing().map(|w| w.to_string())),
        )
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Adds the coordinator's metric families to `registry`
    /// (see [`crate::metrics`]).
    pub fn register_metrics(&self, registry: &mut mpctl_metrics::Registry) {
        crate::metrics::register(
            registry,
            Arc::clone(&self.core),
            Arc::clone(&self.handshakes),
        );
    }

    /// Waits until an agent called `name` is registered and ready.
    pub async fn wait_for_agent(&self, name: &str, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut changes = self.core.agents_changed();
        loop {
            changes.borrow_and_update();
            let ready = self
                .core
                .agents(|a| a.name == name && a.state == AgentState::Ready)
                .contains(&true);
            if ready {
                return true;
            }
            if tokio::time::timeout_at(deadline, changes.changed())
                .await
                .is_err()
            {
                return false;
            }
        }
    }

    /// Serves until `signal` resolves, then stops.
    pub async fn run_until(
        mut self,
        signal: impl std::future::Future<Output = ()>,
    ) -> Result<(), ServerError> {
        tokio::select! {
            _ = signal => {}
            r = &mut self.task => {
                return r.unwrap_or(Ok(()));
            }
        }
        self.shutdown().await
    }

    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match tokio::time::timeout(Duration::from_secs(5), &mut self.task).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Ok(()),
            Err(_) => {
                self.task.abort();
                Ok(())
            }
        }
    }
}
