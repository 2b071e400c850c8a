//! The forkserver protocol (`docs/node-contract.md` §7): the messages on
//! the SOCK_SEQPACKET socket between a launcher and a forkserver (on the
//! server's [`crate::descriptors::FORKSERVER_FD`]), one JSON object per
//! datagram ([`crate::seqpacket`]).

use serde::{Deserialize, Serialize};

use crate::Limits;

/// Launcher → forkserver: one datagram per start, carrying by SCM_RIGHTS
/// the child's stdout and stderr write ends, the preparation pipe's read
/// end and the result pipe's write end, in that order ([`START_FDS`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToForkserver {
    Start {
        id: String,
        /// RLIMIT_AS and RLIMIT_CPU for the child (0: none).
        #[serde(flatten)]
        limits: Limits,
    },
}

/// The descriptors a start carries, and where the child puts each.
pub const START_FDS: [std::os::fd::RawFd; 4] = [
    1,
    2,
    crate::descriptors::PREP_FD,
    crate::descriptors::RESULT_FD,
];

/// Forkserver → launcher.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FromForkserver {
    /// Preload hooks done; starts are served from now on.
    Ready {
        pid: i32,
    },
    /// A preload hook is unknown or panicked; the server exits.
    PreloadFailed {
        error: String,
    },
    Started {
        id: String,
        pid: i32,
    },
    StartFailed {
        id: String,
        error: String,
    },
    /// A child it forked has exited ([`crate::exitcode`]).
    Exited {
        pid: i32,
        exitcode: i32,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_shapes() {
        let start = ToForkserver::Start {
            id: "p1".into(),
            limits: Limits {
                memory_bytes: 5,
                cpu_seconds: 0,
            },
        };
        assert_eq!(
            serde_json::to_string(&start).unwrap(),
            r#"{"start":{"id":"p1","memory_bytes":5,"cpu_seconds":0}}"#
        );
        let old: ToForkserver = serde_json::from_str(r#"{"start":{"id":"p1"}}"#).unwrap();
        assert_eq!(
            old,
            ToForkserver::Start {
                id: "p1".into(),
                limits: Limits::default()
            }
        );
        assert_eq!(
            serde_json::to_string(&FromForkserver::Exited {
                pid: 7,
                exitcode: -34
            })
            .unwrap(),
            r#"{"exited":{"pid":7,"exitcode":-34}}"#
        );
    }
}
