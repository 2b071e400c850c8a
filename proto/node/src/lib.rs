//! The node contract: everything a process on an mpctl node below the agent
//! daemon must agree on, and the OS calls that implement it. Specified for
//! runtimes in any language in `docs/node-contract.md`; this crate is the
//! reference, used by the launcher (`mpctl-launcher`), the agent (which
//! builds the preparation data) and the Rust child runtime
//! (`mpctl::runtime`).
//!
//! - [`descriptors`] and [`env`]: where a child finds its pipes and sockets,
//!   and the environment variables that say how it was started.
//! - [`preparation`]: the typed, versioned preparation data on fd 3, and
//!   the size limits of arguments and results.
//! - [`exitcode`]: CPython's rule from a raw wait status (the one place).
//! - [`limits`]: per-process rlimits.
//! - [`forkserver`] and [`adoption`]: the messages on the forkserver and
//!   adoption sockets; [`seqpacket`] sends and receives them with their
//!   descriptors.
//! - [`worker_frame`]: framing on the pool socket (agent ↔ pool worker).
//! - [`peer`]: who connected to a node-local socket (`SO_PEERCRED`), the
//!   uids allowed, throttled refusal logging; [`procfs`]: parent pids and
//!   pidfd state, for the adoption checks.
//! - [`sys`]: the only `unsafe` code of mpctl, one small module per concern
//!   (pidfds and signals, descriptors, waiting, fork, what runs between fork
//!   and exec), each block with a `// SAFETY:` comment.

pub mod adoption;
pub mod descriptors;
pub mod env;
pub mod exitcode;
pub mod forkserver;
pub mod limits;
pub mod peer;
pub mod preparation;
pub mod procfs;
pub mod seqpacket;
pub mod sys;
pub mod worker_frame;

pub use exitcode::exitcode;
pub use limits::Limits;
pub use peer::{Peer, PeerPolicy, Refusal, RefusalLog};
pub use preparation::{Preparation, PreparationError, Security, StartMethod, MAX_ARGS, MAX_RESULT};
