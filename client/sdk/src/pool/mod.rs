//! `Pool`: CPython's `multiprocessing.Pool` over a cluster (docs/design.md §7).
//!
//! A pool is one stream to the coordinator's PoolManager ([`session`]): the
//! coordinator starts the workers on the nodes and feeds them the tasks sent
//! here; results come back on the same stream and land in their call
//! ([`call`]). Tasks name functions registered with
//! [`crate::runtime::Runtime`] in the workers' program, which by default is
//! this program.
//!
//! ```no_run
//! # async fn demo() -> Result<(), mpctl::PoolError> {
//! let cluster = mpctl::Cluster::from_env().await?;
//! let pool = mpctl::Pool::builder(&cluster).processes(4).create().await?;
//! let squares: Vec<i64> = pool.map("square", 0..100i64, None).await?;
//! pool.close()?;
//! pool.join().await?;
//! # Ok(()) }
//! ```
//!
//! Unlike CPython, a task whose worker dies is run again on another worker
//! (up to [`PoolBuilder::max_retries`] times), then fails with
//! [`PoolError::WorkerLost`]: a call always gets an answer.

mod call;
mod error;
mod session;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mpctl_proto::v1::{CreatePool, Limits, Placement, PoolTask};
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use call::{AsyncResult, Imap};
pub use error::PoolError;

use crate::cluster::Cluster;
use crate::status::StartMethod;
use crate::wire::start_method_wire;
use call::{decode_list, decode_single, Call, Done};
use session::{Session, ToPool};

/// Builds a [`Pool`]: `Pool(processes, initializer, initargs,
/// maxtasksperchild)` plus where and how workers start.
pub struct PoolBuilder {
    cluster: Cluster,
    spec: CreatePool,
    program: Option<String>,
    error: Option<PoolError>,
}

impl PoolBuilder {
    /// Number of workers; default: the cores of this machine.
    pub fn processes(mut self, n: usize) -> Self {
        self.spec.processes = n.min(u32::MAX as usize) as u32;
        self
    }

    /// A registered function each worker runs once, with `args`, before its
    /// first task. If it fails, the pool is broken and every task fails
    /// with [`PoolError::Broken`] (CPython respawns workers endlessly).
    pub fn initializer<A: Serialize>(mut self, function: &str, args: &A) -> Self {
        match serde_json::to_vec(args) {
            Ok(a) => {
                self.spec.initializer = function.to_owned();
                self.spec.initargs = a;
            }
            Err(e) => {
                self.error = Some(PoolError::Encode {
                    what: format!("the initargs of {function}"),
                    message: e.to_string(),
                })
            }
        }
        self
    }

    /// A worker exits after this many tasks and is replaced.
    pub fn maxtasksperchild(mut self, n: u32) -> Self {
        self.spec.maxtasksperchild = n;
        self
    }

    /// Spawn (default) or forkserver; fork cannot cross to a node.
    pub fn start_method(mut self, m: StartMethod) -> Self {
        self.spec.start_method = start_method_wire(m);
        self
    }

    /// Preload hooks for the workers' forkserver.
    pub fn preload<I: IntoIterator<Item = S>, S: Into<String>>(mut self, hooks: I) -> Self {
        self.spec.preload = hooks.into_iter().map(Into::into).collect();
        self
    }

    /// Runs workers only on `node` (empty: any).
    pub fn node(mut self, node: &str) -> Self {
        self.spec
            .placement
            .get_or_insert_with(Placement::default)
            .node = node.to_owned();
        self
    }

    /// Runs workers only on agents carrying label `key=value`.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.spec
            .placement
            .get_or_insert_with(Placement::default)
            .labels
            .insert(key.to_owned(), value.to_owned());
        self
    }

    /// How often a task whose worker died is run again (default 1).
    pub fn max_retries(mut self, n: u32) -> Self {
        self.spec.max_retries = Some(n);
        self
    }

    /// Tasks sent ahead to each worker; default: adaptive, about 2 ms of
    /// work (2 tasks for long ones, up to 256 tiny ones).
    pub fn prefetch(mut self, n: u32) -> Self {
        self.spec.prefetch = n;
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.spec.env.insert(key.to_owned(), value.to_owned());
        self
    }

    pub fn cwd(mut self, dir: &str) -> Self {
        self.spec.cwd = dir.to_owned();
        self
    }

    pub fn memory_limit(mut self, bytes: u64) -> Self {
        self.spec
            .limits
            .get_or_insert_with(Limits::default)
            .memory_bytes = bytes;
        self
    }

    /// The workers' program (a path on the nodes); default: this program.
    pub fn program(mut self, path: &str) -> Self {
        self.program = Some(path.to_owned());
        self
    }

    /// Workers run the node agent's own `mpctl` executable, whose built-in
    /// functions run commands (what `mpctl map` uses).
    pub fn agent_program(mut self) -> Self {
        self.program = Some(String::new());
        self
    }

    /// Creates the pool; workers start on the nodes in the background.
    pub async fn create(mut self) -> Result<Pool, PoolError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if self.spec.processes == 0 {
            return Err(PoolError::Invalid(
                "Number of processes must be at least 1".into(),
            ));
        }
        self.spec.program = match self.program {
            Some(p) => p,
            None => std::env::current_exe()
                .map_err(|e| PoolError::Invalid(format!("cannot find this program's path: {e}")))?
                .to_string_lossy()
                .into_owned(),
        };
        let processes = self.spec.processes as usize;
        let session = Session::open(&self.cluster, self.spec).await?;
        Ok(Pool {
            session,
            processes,
            next_task: AtomicU64::new(1),
            state: Mutex::new(PoolState::Running),
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum PoolState {
    Running,
    Closed,
    Terminated,
}

/// A pool of worker processes on the cluster's nodes.
pub struct Pool {
    session: Session,
    processes: usize,
    next_task: AtomicU64,
    state: Mutex<PoolState>,
}

/// CPython's default `map` chunksize: `len / (4 * processes)`, rounded up.
pub fn default_chunksize(len: usize, processes: usize) -> usize {
    if len == 0 {
        return 0;
    }
    let (chunksize, extra) = (len / (4 * processes), len % (4 * processes));
    chunksize + usize::from(extra > 0)
}

/// The items as JSON arrays of at most `chunksize` elements, with their
/// counts: one task each.
fn encode_chunks<A: Serialize>(
    function: &str,
    items: &[A],
    chunksize: usize,
) -> Result<Vec<(Vec<u8>, u32)>, PoolError> {
    items
        .chunks(chunksize.max(1))
        .map(|chunk| {
            serde_json::to_vec(chunk)
                .map(|json| (json, chunk.len() as u32))
                .map_err(|e| PoolError::Encode {
                    what: format!("an argument of {function}"),
                    message: e.to_string(),
                })
        })
        .collect()
}

impl Pool {
    /// A pool with default options (see [`Pool::builder`]).
    pub fn builder(cluster: &Cluster) -> PoolBuilder {
        PoolBuilder {
            cluster: cluster.clone(),
            spec: CreatePool {
                processes: std::thread::available_parallelism()
                    .map(|n| n.get() as u32)
                    .unwrap_or(1),
                start_method: start_method_wire(StartMethod::Spawn),
                ..Default::default()
            },
            program: None,
            error: None,
        }
    }

    /// The pool's id on the coordinator.
    pub fn id(&self) -> &str {
        &self.session.pool_id
    }

    pub fn processes(&self) -> usize {
        self.processes
    }

    fn check_running(&self) -> Result<(), PoolError> {
        match *self.state.lock().unwrap_or_else(|e| e.into_inner()) {
            PoolState::Running => Ok(()),
            _ => Err(PoolError::NotRunning),
        }
    }

    /// Sends `chunks` as tasks of one call.
    fn submit(
        &self,
        function: &str,
        chunks: Vec<(Vec<u8>, u32)>,
        on_done: Option<Done>,
    ) -> Result<Arc<Call>, PoolError> {
        self.check_running()?;
        if function.is_empty() {
            return Err(PoolError::Invalid("the function name is empty".into()));
        }
        let call = Call::new(chunks.len(), on_done);
        let mut tasks = Vec::with_capacity(chunks.len());
        let mut routes = HashMap::with_capacity(chunks.len());
        for (index, (items, count)) in chunks.into_iter().enumerate() {
            let id = self.next_task.fetch_add(1, Ordering::Relaxed);
            routes.insert(id, (Arc::clone(&call), index));
            tasks.push(PoolTask {
                id,
                function: function.to_owned(),
                items,
                count,
            });
        }
        self.session.send_tasks(routes, tasks)?;
        Ok(call)
    }

    /// `apply`: runs `function(args)` on a worker and returns its result.
    pub async fn apply<A: Serialize, R: DeserializeOwned>(
        &self,
        function: &str,
        args: &A,
    ) -> Result<R, PoolError> {
        self.apply_async(function, args)?.get(None).await
    }

    /// `apply_async`: the result arrives later.
    pub fn apply_async<A: Serialize, R: DeserializeOwned>(
        &self,
        function: &str,
        args: &A,
    ) -> Result<AsyncResult<R>, PoolError> {
        let chunks = encode_chunks(function, std::slice::from_ref(args), 1)?;
        let call = self.submit(function, chunks, None)?;
        Ok(AsyncResult::new(call, function, decode_single::<R>))
    }

    /// `apply_async(callback=..., error_callback=...)`: one of the two runs
    /// (on the pool's receiving task) when the result arrives; keep them short.
    pub fn apply_async_with<A, R, C, E>(
        &self,
        function: &str,
        args: &A,
        callback: C,
        error_callback: E,
    ) -> Result<AsyncResult<R>, PoolError>
    where
        A: Serialize,
        R: DeserializeOwned + 'static,
        C: FnOnce(R) + Send + 'static,
        E: FnOnce(PoolError) + Send + 'static,
    {
        let chunks = encode_chunks(function, std::slice::from_ref(args), 1)?;
        let name = function.to_owned();
        let done: Done =
            Box::new(
                move |outcome| match outcome.and_then(|v| decode_single::<R>(&name, v)) {
                    Ok(r) => callback(r),
                    Err(e) => error_callback(e),
                },
            );
        let call = self.submit(function, chunks, Some(done))?;
        Ok(AsyncResult::new(call, function, decode_single::<R>))
    }

    /// `map`: `function` over `items`, results in order. `chunksize` None:
    /// CPython's default rule ([`default_chunksize`]). If tasks fail, the
    /// first failure (once every chunk has answered) is the error.
    pub async fn map<A, R, I>(
        &self,
        function: &str,
        items: I,
        chunksize: Option<usize>,
    ) -> Result<Vec<R>, PoolError>
    where
        A: Serialize,
        R: DeserializeOwned,
        I: IntoIterator<Item = A>,
    {
        self.map_async(function, items, chunksize)?.get(None).await
    }

    pub fn map_async<A, R, I>(
        &self,
        function: &str,
        items: I,
        chunksize: Option<usize>,
    ) -> Result<AsyncResult<Vec<R>>, PoolError>
    where
        A: Serialize,
        R: DeserializeOwned,
        I: IntoIterator<Item = A>,
    {
        self.check_running()?;
        let items: Vec<A> = items.into_iter().collect();
        let chunksize = match chunksize {
            Some(0) => return Err(PoolError::Invalid("Chunksize must be 1+, not 0".into())),
            Some(c) => c,
            None => default_chunksize(items.len(), self.processes),
        };
        let call = self.submit(function, encode_chunks(function, &items, chunksize)?, None)?;
        Ok(AsyncResult::new(call, function, decode_list::<R>))
    }

    /// `starmap`: like `map` for functions of several arguments. A Rust
    /// function takes its arguments as one tuple, so each item is that tuple.
    pub async fn starmap<A, R, I>(
        &self,
        function: &str,
        items: I,
        chunksize: Option<usize>,
    ) -> Result<Vec<R>, PoolError>
    where
        A: Serialize,
        R: DeserializeOwned,
        I: IntoIterator<Item = A>,
    {
        self.map(function, items, chunksize).await
    }

    pub fn starmap_async<A, R, I>(
        &self,
        function: &str,
        items: I,
        chunksize: Option<usize>,
    ) -> Result<AsyncResult<Vec<R>>, PoolError>
    where
        A: Serialize,
        R: DeserializeOwned,
        I: IntoIterator<Item = A>,
    {
        self.map_async(function, items, chunksize)
    }

    /// `imap`: results in order, as they become available.
    pub fn imap<A, R, I>(
        &self,
        function: &str,
        items: I,
        chunksize: usize,
    ) -> Result<Imap<R>, PoolError>
    where
        A: Serialize,
        R: DeserializeOwned,
        I: IntoIterator<Item = A>,
    {
        self.imap_inner(function, items, chunksize, true)
    }

    /// `imap_unordered`: results in the order they complete.
    pub fn imap_unordered<A, R, I>(
        &self,
        function: &str,
        items: I,
        chunksize: usize,
    ) -> Result<Imap<R>, PoolError>
    where
        A: Serialize,
        R: DeserializeOwned,
        I: IntoIterator<Item = A>,
    {
        self.imap_inner(function, items, chunksize, false)
    }

    fn imap_inner<A, R, I>(
        &self,
        function: &str,
        items: I,
        chunksize: usize,
        ordered: bool,
    ) -> Result<Imap<R>, PoolError>
    where
        A: Serialize,
        R: DeserializeOwned,
        I: IntoIterator<Item = A>,
    {
        self.check_running()?;
        if chunksize < 1 {
            return Err(PoolError::Invalid(format!(
                "Chunksize must be 1+, not {chunksize}"
            )));
        }
        let items: Vec<A> = items.into_iter().collect();
        let chunks = encode_chunks(function, &items, chunksize)?;
        let n = chunks.len();
        let call = self.submit(function, chunks, None)?;
        Ok(Imap::new(call, function, n, chunksize, ordered))
    }

    /// No new tasks; the workers exit once the queued ones are done.
    pub fn close(&self) -> Result<(), PoolError> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if *state == PoolState::Running {
            *state = PoolState::Closed;
            self.session.send(ToPool::Close)?;
        }
        Ok(())
    }

    /// Stops the workers now; unfinished tasks fail with
    /// [`PoolError::Terminated`]. Returns once every worker has exited.
    pub async fn terminate(&self) -> Result<(), PoolError> {
        {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if *state != PoolState::Terminated {
                *state = PoolState::Terminated;
                let _ = self.session.send(ToPool::Terminate);
            }
        }
        self.session.finished(None).await.map(|_| ())
    }

    /// Waits for the workers to exit, after `close` or `terminate`. Returns
    /// the reason if the pool broke.
    pub async fn join(&self) -> Result<(), PoolError> {
        if *self.state.lock().unwrap_or_else(|e| e.into_inner()) == PoolState::Running {
            return Err(PoolError::StillRunning);
        }
        match self.session.finished(None).await? {
            Some(why) => Err(PoolError::Broken { message: why }),
            None => Ok(()),
        }
    }

    /// `join` with a timeout.
    pub async fn join_timeout(&self, timeout: Duration) -> Result<(), PoolError> {
        if *self.state.lock().unwrap_or_else(|e| e.into_inner()) == PoolState::Running {
            return Err(PoolError::StillRunning);
        }
        match self.session.finished(Some(timeout)).await? {
            Some(why) => Err(PoolError::Broken { message: why }),
            None => Ok(()),
        }
    }
}

impl Drop for Pool {
    /// Dropping a pool terminates it, as CPython's context manager does.
    fn drop(&mut self) {
        let state = *self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state != PoolState::Terminated && !self.session.is_finished() {
            let _ = self.session.send(ToPool::Terminate);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::default_chunksize;

    #[test]
    fn default_chunksize_follows_cpython() {
        // divmod(len, 4 * processes), plus one if there is a remainder.
        assert_eq!(default_chunksize(0, 4), 0);
        assert_eq!(default_chunksize(1, 4), 1);
        assert_eq!(default_chunksize(16, 4), 1);
        assert_eq!(default_chunksize(17, 4), 2);
        assert_eq!(default_chunksize(10_000, 4), 625);
        assert_eq!(default_chunksize(10_001, 2), 1251);
    }
}
