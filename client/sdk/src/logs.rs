//! A process's output as a stream of [`LogChunk`]s.
//!
//! Slow reader policy: there is no buffer here. Each chunk is pulled from the
//! coordinator's gRPC stream when the caller asks for the next one, so a
//! reader that falls behind holds the stream back through HTTP/2 flow
//! control instead of growing memory in this process; the output itself
//! waits in the node's size-capped log files.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use mpctl_proto::v1 as proto;

use crate::error::{Error, Result};
use crate::status::LogChunk;
use crate::wire;

/// The output of one process: stdout, stderr or both, up to now or (with
/// `follow`) until it stops and its output is drained.
pub struct Logs {
    id: String,
    inner: tonic::Streaming<proto::LogChunk>,
}

impl Logs {
    pub(crate) fn new(id: String, inner: tonic::Streaming<proto::LogChunk>) -> Logs {
        Logs { id, inner }
    }

    /// The next chunk, or `None` at the end.
    pub async fn message(&mut self) -> Result<Option<LogChunk>> {
        match self.inner.message().await {
            Ok(Some(c)) => wire::log_chunk(c, &self.id).map(Some),
            Ok(None) => Ok(None),
            Err(s) => Err(Error::rpc("logs", &self.id, s)),
        }
    }
}

impl Stream for Logs {
    type Item = Result<LogChunk>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        Pin::new(&mut this.inner).poll_next(cx).map(|next| {
            next.map(|r| match r {
                Ok(c) => wire::log_chunk(c, &this.id),
                Err(s) => Err(Error::rpc("logs", &this.id, s)),
            })
        })
    }
}
