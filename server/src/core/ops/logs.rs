//! The operations of `Logs`: open a route to the node's reader, forward
//! what it sends, cancel it. They take the table lock only to find the
//! process's node.

use super::*;

impl Core {
    /// Asks the process's agent for its output. `None`: the process never ran.
    pub fn open_logs(
        &self,
        id: &str,
        which: Output,
        follow: bool,
        from: Offsets,
    ) -> Result<Option<LogReader>, CoreError> {
        let node = {
            let st = self.lock();
            let p = st
                .table
                .get(id)
                .ok_or_else(|| CoreError::UnknownProcess(id.to_owned()))?;
            if p.node.is_empty() || p.state == ProcState::Failed {
                return Ok(None);
            }
            let node = p.node.clone();
            if st.table.session(&node).is_none() {
                return Err(CoreError::LogsNodeDown {
                    id: id.to_owned(),
                    node,
                });
            }
            node
        };
        let request_id = self.request_id();
        let reader = self.logs.open(request_id, &node);
        let read = ToNode::ReadLogs {
            request_id,
            process_id: id.to_owned(),
            stream: which,
            follow,
            from,
        };
        if !self.outbox.send_now(&node, read) {
            self.logs.remove(request_id);
            return Err(CoreError::LogsNodeDown {
                id: id.to_owned(),
                node,
            });
        }
        Ok(Some(reader))
    }

    /// The client went away: stop the agent's reader.
    pub fn cancel_logs(&self, request_id: u64) {
        if let Some(node) = self.logs.remove(request_id) {
            self.send_cancel(&node, request_id);
        }
    }

    fn send_cancel(&self, node: &str, request_id: u64) {
        self.outbox.send_now(node, ToNode::CancelLogs(request_id));
    }

    /// Output (or its end) from a node's reader; never takes the table lock.
    pub fn log_data(
        &self,
        request_id: u64,
        chunk: Option<Chunk>,
        error: Option<String>,
        eof: bool,
    ) {
        if let Delivery::Cancel { node } = self.logs.deliver(request_id, chunk, error, eof) {
            self.send_cancel(&node, request_id);
        }
    }
}
