//! A process's output as a stream of [`LogChunk`]s.
//!
//! Slow reader policy: there is no buffer here. Each chunk is pulled from the
//! coordinator's gRPC stream when the caller asks for the next one, so a
//! reader that falls behind holds the stream back through HTTP/2 flow
//! control instead of growing memory in this process; the output itself
//! waits in the node's size-capped log files.
//!
//! Resuming: [`Logs`] counts the bytes it has handed out of each file. When
//! the connection breaks under it (a network blip, a coordinator restart,
//! the process's node reconnecting), [`Logs::message`] opens the stream
//! again from those offsets, for up to the SDK's reconnect window, so the
//! caller sees every byte once and in order.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::{Stream, StreamExt};
use mpctl_proto::v1 as proto;
use mpctl_proto::v1::process_manager_client::ProcessManagerClient;
use mpctl_transport::trace::Traced;
use tonic::transport::Channel;

use crate::cluster::{connection_lost, reconnecting};
use crate::error::{Error, Result};
use crate::status::{LogChunk, LogStream};
use crate::wire;

/// Bytes of each output file already received: where a resumed reader
/// starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogOffsets {
    pub stdout: u64,
    pub stderr: u64,
}

/// The output of one process: stdout, stderr or both, up to now or (with
/// `follow`) until it stops and its output is drained. Read it with
/// [`Logs::message`] or as a [`Stream`]; both resume alike.
pub struct Logs {
    offsets: Arc<[AtomicU64; 2]>,
    chunks: Pin<Box<dyn Stream<Item = Result<LogChunk>> + Send>>,
}

/// The stream underneath: reopens itself from its offsets when the
/// connection breaks.
struct Reader {
    id: String,
    api: ProcessManagerClient<Traced<Channel>>,
    request: proto::LogsRequest,
    inner: tonic::Streaming<proto::LogChunk>,
    offsets: Arc<[AtomicU64; 2]>,
}

impl Logs {
    /// Opens the stream `request` asks for (its offsets included).
    pub(crate) async fn open(
        api: ProcessManagerClient<Traced<Channel>>,
        request: proto::LogsRequest,
    ) -> Result<Logs> {
        let id = request.id.clone();
        let offsets = Arc::new([
            AtomicU64::new(request.stdout_offset),
            AtomicU64::new(request.stderr_offset),
        ]);
        let inner = Reader::call(&api, &request)
            .await
            .map_err(|s| Error::rpc("logs", &id, s))?;
        let reader = Reader {
            id,
            api,
            request,
            inner,
            offsets: Arc::clone(&offsets),
        };
        let chunks = futures::stream::unfold(Some(reader), |reader| async move {
            let mut reader = reader?;
            match reader.message().await {
                Ok(Some(c)) => Some((Ok(c), Some(reader))),
                Ok(None) => None,
                Err(e) => Some((Err(e), None)),
            }
        });
        Ok(Logs {
            offsets,
            chunks: Box::pin(chunks),
        })
    }

    /// How far into each file this reader has got.
    pub fn offsets(&self) -> LogOffsets {
        LogOffsets {
            stdout: self.offsets[0].load(Ordering::Relaxed),
            stderr: self.offsets[1].load(Ordering::Relaxed),
        }
    }

    /// The next chunk, or `None` at the end.
    pub async fn message(&mut self) -> Result<Option<LogChunk>> {
        self.chunks.next().await.transpose()
    }
}

impl Stream for Logs {
    type Item = Result<LogChunk>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.chunks.as_mut().poll_next(cx)
    }
}

impl Reader {
    async fn call(
        api: &ProcessManagerClient<Traced<Channel>>,
        request: &proto::LogsRequest,
    ) -> std::result::Result<tonic::Streaming<proto::LogChunk>, tonic::Status> {
        reconnecting(None, || {
            let mut api = api.clone();
            let request = request.clone();
            async move { api.logs(request).await.map(|r| r.into_inner()) }
        })
        .await
    }

    async fn message(&mut self) -> Result<Option<LogChunk>> {
        loop {
            match self.inner.message().await {
                Ok(Some(c)) => {
                    let chunk = wire::log_chunk(c, &self.id)?;
                    let which = usize::from(chunk.stream == LogStream::Stderr);
                    self.offsets[which].fetch_add(chunk.data.len() as u64, Ordering::Relaxed);
                    return Ok(Some(chunk));
                }
                Ok(None) => return Ok(None),
                Err(s) if connection_lost(&s) => {
                    tracing::debug!(id = %self.id, status = %s.message(), "output stream broke; resuming");
                    self.request.stdout_offset = self.offsets[0].load(Ordering::Relaxed);
                    self.request.stderr_offset = self.offsets[1].load(Ordering::Relaxed);
                    self.inner = Self::call(&self.api, &self.request)
                        .await
                        .map_err(|s| Error::rpc("logs", &self.id, s))?;
                }
                Err(s) => return Err(Error::rpc("logs", &self.id, s)),
            }
        }
    }
}
