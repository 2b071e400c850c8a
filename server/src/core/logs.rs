//! Log routing: output chunks from a node's reader on their way to one
//! `Logs` caller. The routes live here under their own lock, apart from the
//! process table: a chunk never waits for (or holds up) a state change.
//!
//! Slow callers: each route is a bounded channel of [`ROUTE_CHUNKS`]
//! chunks. A caller that falls that far behind loses its stream, which ends
//! with [`CoreError::LogsTooSlow`] (`RESOURCE_EXHAUSTED`), and the node's
//! reader is cancelled. The other policy, back-pressure to the node's
//! reader, is not possible without stalling the node's one stream to the
//! coordinator, which also carries every launch and exit of that node: one
//! reader that does not read would hold up every process there.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll};

use tokio::sync::{mpsc, oneshot};

use super::error::CoreError;

/// Chunks buffered per caller: 1024 of the node's reads of at most 64 KiB,
/// the agent's default cap of one output file (64 MiB), so a caller that
/// reads a whole default-size file at once is never cut off.
pub const ROUTE_CHUNKS: usize = 1024;

/// Which output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Stdout,
    Stderr,
    Both,
}

/// Where a reader starts in each output file, in bytes: 0 for the
/// beginning; a reader resuming after a dropped connection gives what it
/// has already received.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offsets {
    pub stdout: u64,
    pub stderr: u64,
}

/// A piece of output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub stream: Output,
    pub data: Vec<u8>,
}

struct Route {
    node: String,
    tx: mpsc::Sender<Chunk>,
    /// Why the stream ended, if not at the end of the output.
    end: oneshot::Sender<CoreError>,
}

#[derive(Default)]
pub struct LogRoutes {
    routes: Mutex<HashMap<u64, Route>>,
}

/// What a node sent for one route.
pub enum Delivery {
    /// Forwarded (or nobody waits for it any more).
    Done,
    /// The caller is gone or too slow: cancel the node's reader on `node`.
    Cancel { node: String },
}

impl LogRoutes {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Route>> {
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A route for `request_id` from `node`.
    pub fn open(&self, request_id: u64, node: &str) -> LogReader {
        let (tx, chunks) = mpsc::channel(ROUTE_CHUNKS);
        let (end_tx, end) = oneshot::channel();
        self.lock().insert(
            request_id,
            Route {
                node: node.to_owned(),
                tx,
                end: end_tx,
            },
        );
        LogReader {
            request_id,
            chunks,
            end,
            done: false,
        }
    }

    /// Removes a route; its node, to cancel the reader there.
    pub fn remove(&self, request_id: u64) -> Option<String> {
        self.lock().remove(&request_id).map(|r| r.node)
    }

    /// Data, an error, or the end of the output from the node.
    pub fn deliver(
        &self,
        request_id: u64,
        chunk: Option<Chunk>,
        error: Option<String>,
        eof: bool,
    ) -> Delivery {
        let mut routes = self.lock();
        let Some(route) = routes.get(&request_id) else {
            return Delivery::Done;
        };
        let mut cut = None;
        if let Some(chunk) = chunk.filter(|c| !c.data.is_empty()) {
            match route.tx.try_send(chunk) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    cut = Some(Some(CoreError::LogsTooSlow {
                        chunks: ROUTE_CHUNKS,
                    }))
                }
                Err(mpsc::error::TrySendError::Closed(_)) => cut = Some(None),
            }
        }
        if cut.is_none() {
            if let Some(error) = error {
                cut = Some(Some(CoreError::LogsNode(error)));
            }
        }
        match cut {
            Some(why) => {
                let route = routes.remove(&request_id).expect("found above");
                if let Some(why) = why {
                    let _ = route.end.send(why);
                }
                if eof {
                    Delivery::Done
                } else {
                    Delivery::Cancel { node: route.node }
                }
            }
            None if eof => {
                routes.remove(&request_id);
                Delivery::Done
            }
            None => Delivery::Done,
        }
    }

    /// `node`'s session ended: its routes end with an error.
    pub fn node_gone(&self, node: &str) {
        let mut routes = self.lock();
        let gone: Vec<u64> = routes
            .iter()
            .filter(|(_, r)| r.node == node)
            .map(|(k, _)| *k)
            .collect();
        for k in gone {
            let route = routes.remove(&k).expect("listed above");
            let _ = route.end.send(CoreError::LogsNodeGone {
                node: node.to_owned(),
            });
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One caller's end of a route: the chunks, then the reason it ended early
/// if it did.
pub struct LogReader {
    pub request_id: u64,
    chunks: mpsc::Receiver<Chunk>,
    end: oneshot::Receiver<CoreError>,
    done: bool,
}

impl LogReader {
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Chunk, CoreError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.chunks.poll_recv(cx) {
            Poll::Ready(Some(c)) => Poll::Ready(Some(Ok(c))),
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                self.done = true;
                match Pin::new(&mut self.end).poll(cx) {
                    Poll::Ready(Ok(why)) => Poll::Ready(Some(Err(why))),
                    _ => Poll::Ready(None),
                }
            }
        }
    }
}

use std::future::Future as _;

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(b: &[u8]) -> Option<Chunk> {
        Some(Chunk {
            stream: Output::Stdout,
            data: b.to_vec(),
        })
    }

    async fn next(r: &mut LogReader) -> Option<Result<Chunk, CoreError>> {
        std::future::poll_fn(|cx| r.poll_next(cx)).await
    }

    #[tokio::test]
    async fn chunks_then_the_end() {
        let routes = LogRoutes::default();
        let mut r = routes.open(1, "n1");
        assert!(matches!(
            routes.deliver(1, chunk(b"hi"), None, false),
            Delivery::Done
        ));
        assert!(matches!(
            routes.deliver(1, None, None, true),
            Delivery::Done
        ));
        assert_eq!(next(&mut r).await.unwrap().unwrap().data, b"hi");
        assert!(next(&mut r).await.is_none());
        assert!(routes.is_empty());
    }

    #[tokio::test]
    async fn a_caller_that_does_not_read_loses_its_stream_with_a_reason() {
        let routes = LogRoutes::default();
        let mut r = routes.open(7, "n1");
        for _ in 0..ROUTE_CHUNKS {
            assert!(matches!(
                routes.deliver(7, chunk(b"x"), None, false),
                Delivery::Done
            ));
        }
        match routes.deliver(7, chunk(b"x"), None, false) {
            Delivery::Cancel { node } => assert_eq!(node, "n1"),
            Delivery::Done => panic!("the route should be cut"),
        }
        for _ in 0..ROUTE_CHUNKS {
            assert!(next(&mut r).await.unwrap().is_ok());
        }
        let end = next(&mut r).await.unwrap().unwrap_err();
        assert!(matches!(
            end,
            CoreError::LogsTooSlow {
                chunks: ROUTE_CHUNKS
            }
        ));
        assert!(next(&mut r).await.is_none());
    }

    #[tokio::test]
    async fn a_node_that_goes_away_ends_its_routes() {
        let routes = LogRoutes::default();
        let mut r = routes.open(3, "n2");
        routes.node_gone("n2");
        let end = next(&mut r).await.unwrap().unwrap_err();
        assert_eq!(end.to_string(), "node n2 disconnected while sending output");
    }
}
