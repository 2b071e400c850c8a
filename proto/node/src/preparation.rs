//! The preparation data (`docs/node-contract.md` §4): what a function
//! target's child is told before it runs, as one JSON object on
//! [`crate::descriptors::PREP_FD`] followed by EOF. Versioned: a child that
//! reads a [`Preparation::version`] other than [`VERSION`] refuses to run.
//!
//! Built in one place for every start method ([`Preparation::new`] and its
//! setters): by the agent for spawn and forkserver, by a forking parent's
//! runtime for fork.

use serde::{Deserialize, Serialize};

/// The version of the preparation data this crate writes and accepts.
pub const VERSION: u32 = 1;
/// Largest result a function target may write (JSON bytes).
pub const MAX_RESULT: usize = 1 << 20;
/// Largest serialized argument of a function target: the preparation data
/// travels through the launcher's frames and a pipe.
pub const MAX_ARGS: usize = 256 << 10;

/// How the child was made (CPython's start methods).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartMethod {
    /// A fresh program exec'd by the launcher.
    Spawn,
    /// Forked by the program's forkserver after its preload hooks ran.
    Forkserver,
    /// Forked by its managed parent: a copy of the parent's memory.
    Fork,
}

/// How the child reaches the coordinator to start processes of its own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Security {
    /// TLS plus the authkey handshake.
    #[default]
    Tls,
    /// The handshake without TLS, on loopback only.
    Plaintext,
}

/// What a function target's child is told before it runs. The JSON field
/// names are the contract; fields after `start_method` may be absent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preparation {
    pub version: u32,
    /// Cluster-unique process id.
    pub id: String,
    /// `Process-N` (or `Process-N:M` for a child) or the name given.
    pub name: String,
    /// The agent it runs on.
    pub node: String,
    /// The managed process that started it, if any (empty: none).
    #[serde(default)]
    pub parent_id: String,
    /// The registered function to run.
    pub function: String,
    /// Its argument, JSON text.
    pub args: String,
    pub start_method: StartMethod,
    /// The coordinator, so the child can start processes of its own.
    #[serde(default)]
    pub coordinator: String,
    #[serde(default)]
    pub security: Security,
    /// This process's own job key (hex, 32 bytes): it authenticates to the
    /// coordinator as this process only (role job), for its own subtree,
    /// while it runs. Never the cluster's authkey. It only ever travels in
    /// this pipe and is never logged.
    #[serde(default)]
    pub job_key: String,
    /// The node launcher's adoption socket, for the fork start method.
    #[serde(default)]
    pub adopt_socket: String,
    /// Set for a pool worker: the agent's pool socket
    /// ([`crate::worker_frame`]) and the key the worker presents on it.
    /// `function` and `args` are then the pool's initializer (possibly
    /// empty) and its arguments.
    #[serde(default)]
    pub pool_socket: String,
    #[serde(default)]
    pub pool_key: String,
    /// A pool worker exits after this many tasks (0: never).
    #[serde(default)]
    pub pool_maxtasks: u32,
    /// The W3C trace context of the process's span (empty: not traced);
    /// the same values as `TRACEPARENT` / `TRACESTATE` in a spawned child's
    /// environment, here for every start method.
    #[serde(default)]
    pub traceparent: String,
    #[serde(default)]
    pub tracestate: String,
}

/// A pool worker's part of the preparation data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolWorker<'a> {
    pub socket: &'a str,
    pub key: &'a str,
    pub maxtasks: u32,
}

/// Why preparation data was refused.
#[derive(Debug, thiserror::Error)]
pub enum PreparationError {
    #[error("the preparation data is not valid JSON of version {VERSION}: {0}")]
    Malformed(String),
    #[error("preparation data of version {got}; this program speaks {VERSION}: rebuild it against the agent's mpctl")]
    Version { got: u32 },
}

impl Preparation {
    /// The data every start method fills; the rest is set with the
    /// builder methods below.
    pub fn new(
        id: impl Into<String>,
        name: impl Into<String>,
        node: impl Into<String>,
        start_method: StartMethod,
        function: impl Into<String>,
        args: impl Into<String>,
    ) -> Preparation {
        Preparation {
            version: VERSION,
            id: id.into(),
            name: name.into(),
            node: node.into(),
            parent_id: String::new(),
            function: function.into(),
            args: args.into(),
            start_method,
            coordinator: String::new(),
            security: Security::Tls,
            job_key: String::new(),
            adopt_socket: String::new(),
            pool_socket: String::new(),
            pool_key: String::new(),
            pool_maxtasks: 0,
            traceparent: String::new(),
            tracestate: String::new(),
        }
    }

    /// The trace context of the process's span.
    pub fn trace(
        mut self,
        traceparent: impl Into<String>,
        tracestate: impl Into<String>,
    ) -> Preparation {
        self.traceparent = traceparent.into();
        self.tracestate = tracestate.into();
        self
    }

    /// The managed process that starts it.
    pub fn parent(mut self, parent_id: impl Into<String>) -> Preparation {
        self.parent_id = parent_id.into();
        self
    }

    /// Where and how it reaches the coordinator, and its job key (hex).
    pub fn coordinator(
        mut self,
        addr: impl Into<String>,
        security: Security,
        job_key_hex: String,
    ) -> Preparation {
        self.coordinator = addr.into();
        self.security = security;
        self.job_key = job_key_hex;
        self
    }

    /// The node launcher's adoption socket (lets the child fork children).
    pub fn adopt_socket(mut self, path: impl Into<String>) -> Preparation {
        self.adopt_socket = path.into();
        self
    }

    /// Makes it a pool worker.
    pub fn pool_worker(
        mut self,
        socket: impl Into<String>,
        key: impl Into<String>,
        maxtasks: u32,
    ) -> Preparation {
        self.pool_socket = socket.into();
        self.pool_key = key.into();
        self.pool_maxtasks = maxtasks;
        self
    }

    /// The pool worker's part, when it is one.
    pub fn as_pool_worker(&self) -> Option<PoolWorker<'_>> {
        (!self.pool_socket.is_empty()).then_some(PoolWorker {
            socket: &self.pool_socket,
            key: &self.pool_key,
            maxtasks: self.pool_maxtasks,
        })
    }

    /// The JSON the child reads.
    pub fn encode(&self) -> Result<String, PreparationError> {
        let text =
            serde_json::to_string(self).map_err(|e| PreparationError::Malformed(e.to_string()))?;
        Ok(text)
    }

    /// Parses what the child read, refusing another version.
    pub fn decode(text: &str) -> Result<Preparation, PreparationError> {
        #[derive(Deserialize)]
        struct Versioned {
            version: u32,
        }
        // The version first, so a future shape is refused by its number.
        let v: Versioned =
            serde_json::from_str(text).map_err(|e| PreparationError::Malformed(e.to_string()))?;
        if v.version != VERSION {
            return Err(PreparationError::Version { got: v.version });
        }
        serde_json::from_str(text).map_err(|e| PreparationError::Malformed(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wire_shape_is_the_documented_one() {
        let prep = Preparation::new(
            "p1",
            "Process-1",
            "n1",
            StartMethod::Forkserver,
            "add",
            "[1,2]",
        )
        .parent("p0")
        .coordinator("127.0.0.1:7325", Security::Plaintext, "00ff".into());
        let v: serde_json::Value = serde_json::from_str(&prep.encode().unwrap()).unwrap();
        assert_eq!(v["version"], 1);
        assert_eq!(v["start_method"], "forkserver");
        assert_eq!(v["security"], "plaintext");
        assert_eq!(v["parent_id"], "p0");
        assert_eq!(Preparation::decode(&v.to_string()).unwrap(), prep);
    }

    #[test]
    fn optional_fields_default_and_other_versions_are_refused() {
        let text = r#"{"version":1,"id":"p","name":"n","node":"x","function":"f","args":"null","start_method":"spawn"}"#;
        let prep = Preparation::decode(text).unwrap();
        assert_eq!(prep.security, Security::Tls);
        assert_eq!(prep.as_pool_worker(), None);
        let v2 = text.replace("\"version\":1", "\"version\":2");
        assert!(matches!(
            Preparation::decode(&v2),
            Err(PreparationError::Version { got: 2 })
        ));
        let bad = text.replace("spawn", "vfork");
        assert!(matches!(
            Preparation::decode(&bad),
            Err(PreparationError::Malformed(_))
        ));
    }
}
