//! One pool call (an `apply_async`, a `map`, an `imap`...) and its results
//! as they arrive: [`AsyncResult`] waits for all of them, [`Imap`] yields
//! them in order or as they complete.

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::de::DeserializeOwned;
use tokio::sync::watch;

use super::PoolError;

/// Each chunk's results: a JSON array per chunk, in chunk order.
type Values = Vec<Vec<u8>>;
/// One chunk's answer: its results' JSON array, or why it failed.
type Chunk = Result<Vec<u8>, PoolError>;
pub(crate) type Done = Box<dyn FnOnce(Result<Values, PoolError>) + Send>;

pub(crate) struct CallState {
    /// Each chunk's answer, by chunk index.
    chunks: Vec<Option<Chunk>>,
    /// Chunk indexes in the order their answers arrived.
    arrival: VecDeque<usize>,
    remaining: usize,
    first_error: Option<PoolError>,
    on_done: Option<Done>,
}

/// Shared by the caller's handle and the pool's receiver.
pub(crate) struct Call {
    state: Mutex<CallState>,
    changed: watch::Sender<u64>,
}

impl Call {
    pub fn new(chunks: usize, on_done: Option<Done>) -> Arc<Call> {
        Arc::new(Call {
            state: Mutex::new(CallState {
                chunks: (0..chunks).map(|_| None).collect(),
                arrival: VecDeque::new(),
                remaining: chunks,
                first_error: None,
                on_done,
            }),
            changed: watch::channel(0).0,
        })
    }

    fn lock(&self) -> MutexGuard<'_, CallState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A chunk's answer arrived.
    pub fn set(&self, index: usize, outcome: Chunk) {
        let done = {
            let mut s = self.lock();
            if s.chunks.get(index).is_none_or(|c| c.is_some()) {
                return;
            }
            if let Err(e) = &outcome {
                s.first_error.get_or_insert_with(|| e.clone());
            }
            s.chunks[index] = Some(outcome);
            s.arrival.push_back(index);
            s.remaining -= 1;
            if s.remaining == 0 {
                s.on_done.take().map(|f| (f, collect(&s)))
            } else {
                None
            }
        };
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
        if let Some((f, all)) = done {
            f(all);
        }
    }

    /// Waits until `check` answers, or the timeout passes.
    async fn wait_for<T>(
        &self,
        timeout: Option<Duration>,
        mut check: impl FnMut(&mut CallState) -> Option<T>,
    ) -> Result<T, PoolError> {
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let mut rx = self.changed.subscribe();
        loop {
            rx.borrow_and_update();
            if let Some(v) = check(&mut self.lock()) {
                return Ok(v);
            }
            // The sender is `self.changed`: it outlives this wait.
            let changed = async {
                let _ = rx.changed().await;
            };
            match deadline {
                Some(d) => {
                    if tokio::time::timeout_at(d, changed).await.is_err() {
                        return Err(PoolError::Timeout);
                    }
                }
                None => changed.await,
            }
        }
    }
}

/// All values in chunk order, or the first error that arrived (CPython's
/// `map` keeps only the first failure, once every chunk has answered).
fn collect(s: &CallState) -> Result<Values, PoolError> {
    if let Some(e) = &s.first_error {
        return Err(e.clone());
    }
    Ok(s.chunks
        .iter()
        .filter_map(|c| match c {
            Some(Ok(v)) => Some(v.clone()),
            _ => None,
        })
        .collect())
}

/// The items of one chunk's JSON array of results.
pub(crate) fn decode_chunk<R: DeserializeOwned>(
    function: &str,
    json: &[u8],
) -> Result<Vec<R>, PoolError> {
    serde_json::from_slice(json).map_err(|e| PoolError::Decode {
        what: format!("a result of {function} as {}", std::any::type_name::<R>()),
        message: e.to_string(),
    })
}

/// How an [`AsyncResult`] turns the chunks' results into its result.
pub(crate) type Decode<T> = fn(&str, Values) -> Result<T, PoolError>;

pub(crate) fn decode_single<R: DeserializeOwned>(
    function: &str,
    v: Values,
) -> Result<R, PoolError> {
    let mut all = decode_list::<R>(function, v)?;
    match all.len() {
        1 => Ok(all.remove(0)),
        n => Err(PoolError::Decode {
            what: format!("the result of {function}"),
            message: format!("expected one value, got {n}"),
        }),
    }
}

pub(crate) fn decode_list<R: DeserializeOwned>(
    function: &str,
    v: Values,
) -> Result<Vec<R>, PoolError> {
    let mut out = Vec::new();
    for chunk in v {
        out.extend(decode_chunk::<R>(function, &chunk)?);
    }
    Ok(out)
}

/// The result of `apply_async` / `map_async` (CPython's `AsyncResult`).
pub struct AsyncResult<T> {
    call: Arc<Call>,
    function: String,
    decode: Decode<T>,
}

impl<T> AsyncResult<T> {
    pub(crate) fn new(call: Arc<Call>, function: &str, decode: Decode<T>) -> AsyncResult<T> {
        AsyncResult {
            call,
            function: function.to_owned(),
            decode,
        }
    }

    /// The result, once every part has arrived; the task's error if it
    /// failed; [`PoolError::Timeout`] if `timeout` passes first.
    pub async fn get(&self, timeout: Option<Duration>) -> Result<T, PoolError> {
        let all = self
            .call
            .wait_for(timeout, |s| (s.remaining == 0).then(|| collect(s)))
            .await??;
        (self.decode)(&self.function, all)
    }

    /// Waits until ready or the timeout passes, without the result.
    pub async fn wait(&self, timeout: Option<Duration>) {
        let _ = self
            .call
            .wait_for(timeout, |s| (s.remaining == 0).then_some(()))
            .await;
    }

    pub fn ready(&self) -> bool {
        self.call.lock().remaining == 0
    }

    /// Whether the call succeeded; [`PoolError::NotReady`] before it is ready.
    pub fn successful(&self) -> Result<bool, PoolError> {
        let s = self.call.lock();
        if s.remaining > 0 {
            return Err(PoolError::NotReady);
        }
        Ok(s.first_error.is_none())
    }
}

/// Results of `imap` (in order) or `imap_unordered` (as they complete).
pub struct Imap<R> {
    call: Arc<Call>,
    function: String,
    ordered: bool,
    /// Next chunk to yield (ordered).
    next_chunk: usize,
    /// Chunks yielded so far.
    yielded: usize,
    chunks: usize,
    chunksize: usize,
    /// Decoded results with their input index.
    buffer: VecDeque<(usize, Result<R, PoolError>)>,
    _r: PhantomData<fn() -> R>,
}

impl<R: DeserializeOwned> Imap<R> {
    pub(crate) fn new(
        call: Arc<Call>,
        function: &str,
        chunks: usize,
        chunksize: usize,
        ordered: bool,
    ) -> Imap<R> {
        Imap {
            chunksize,
            call,
            function: function.to_owned(),
            ordered,
            next_chunk: 0,
            yielded: 0,
            chunks,
            buffer: VecDeque::new(),
            _r: PhantomData,
        }
    }

    /// The next result, or `None` when all are out. A failed chunk yields
    /// one error in its place.
    pub async fn next(&mut self) -> Option<Result<R, PoolError>> {
        self.next_indexed().await.map(|(_, r)| r)
    }

    /// As [`Imap::next`], with the position of the item in the input (for a
    /// failed chunk: its first item's).
    pub async fn next_indexed(&mut self) -> Option<(usize, Result<R, PoolError>)> {
        match self.next_timeout_indexed(None).await {
            Ok(r) => r,
            Err(e) => Some((self.yielded * self.chunksize, Err(e))),
        }
    }

    /// As [`Imap::next`], failing with [`PoolError::Timeout`] if nothing
    /// arrives within `timeout` (CPython's `next(timeout)`).
    pub async fn next_timeout(
        &mut self,
        timeout: Option<Duration>,
    ) -> Result<Option<Result<R, PoolError>>, PoolError> {
        Ok(self.next_timeout_indexed(timeout).await?.map(|(_, r)| r))
    }

    async fn next_timeout_indexed(
        &mut self,
        timeout: Option<Duration>,
    ) -> Result<Option<(usize, Result<R, PoolError>)>, PoolError> {
        loop {
            if let Some(r) = self.buffer.pop_front() {
                return Ok(Some(r));
            }
            if self.yielded == self.chunks {
                return Ok(None);
            }
            let ordered = self.ordered;
            let next_chunk = self.next_chunk;
            let (index, chunk) = self
                .call
                .wait_for(timeout, |s| {
                    let index = if ordered {
                        s.chunks[next_chunk].is_some().then_some(next_chunk)?
                    } else {
                        s.arrival.pop_front()?
                    };
                    Some((index, s.chunks[index].take()?))
                })
                .await?;
            self.next_chunk += 1;
            self.yielded += 1;
            let first = index * self.chunksize;
            match chunk.and_then(|json| decode_chunk::<R>(&self.function, &json)) {
                Ok(values) => self.buffer.extend(
                    values
                        .into_iter()
                        .enumerate()
                        .map(|(k, v)| (first + k, Ok(v))),
                ),
                Err(e) => self.buffer.push_back((first, Err(e))),
            }
        }
    }

    /// Everything that remains, in the order `next` would give it.
    pub async fn collect(mut self) -> Vec<Result<R, PoolError>> {
        let mut out = Vec::new();
        while let Some(r) = self.next().await {
            out.push(r);
        }
        out
    }
}
