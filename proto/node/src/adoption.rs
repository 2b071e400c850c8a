//! The adoption protocol (`docs/node-contract.md` §8), for the fork start
//! method: a managed process that forked a child hands it to its node's
//! launcher on the adoption socket (`Preparation::adopt_socket`,
//! SOCK_SEQPACKET, one JSON object per datagram, [`crate::seqpacket`]).

use serde::{Deserialize, Serialize};

/// File name of the adoption socket in the launcher's directory.
pub const SOCKET_FILE: &str = "adopt.sock";

/// A managed process → its node's launcher.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToAdopt {
    /// "I forked `pid` for process `id`": carries by SCM_RIGHTS the child's
    /// pidfd and the read end of its result pipe, in that order.
    Adopt { id: String, pid: i32 },
    /// The forking parent reaped its child (while it lives, the parent is
    /// the child's real parent; after it dies the launcher, a subreaper, is).
    Exited { pid: i32, exitcode: i32 },
}

/// The launcher's answer to [`ToAdopt::Adopt`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FromAdopt {
    Adopted,
    Refused { error: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_shapes() {
        assert_eq!(
            serde_json::to_string(&FromAdopt::Adopted).unwrap(),
            r#""adopted""#
        );
        assert_eq!(
            serde_json::to_string(&ToAdopt::Adopt {
                id: "p".into(),
                pid: 9
            })
            .unwrap(),
            r#"{"adopt":{"id":"p","pid":9}}"#
        );
    }
}
