//! Node identity: which agent may hold a node name (docs/design.md §10).
//!
//! A node's first registration is issued a node credential (32 random
//! bytes); the coordinator keeps only its hash ([`crate::store`]). Every
//! later registration with that name must present it. A registration
//! without it, or with another one, is refused with a message that names
//! the agent holding the name, and leaves the live session alone: nothing
//! flaps and no process becomes lost. An operator whose node lost its data
//! directory clears the credential with `mpctl agents forget NAME` (only
//! while no agent holds that name), and the next registration is issued a
//! new one.

use std::collections::HashMap;
use std::net::SocketAddr;

use mpctl_transport::credentials::{credential_hash, credential_matches};

/// A stored credential.
#[derive(Clone, Copy, Debug)]
struct Stored {
    hash: [u8; 32],
    issued_ms: i64,
}

/// Who registered a name last (for the message a rival agent gets).
#[derive(Clone, Copy, Debug)]
struct Holder {
    registered_ms: i64,
    remote: SocketAddr,
}

/// The node credentials and the last holder of each name.
#[derive(Default)]
pub struct NodeIdentities {
    stored: HashMap<String, Stored>,
    holders: HashMap<String, Holder>,
}

/// What an admitted registration brings.
#[derive(Debug, PartialEq, Eq)]
pub enum Admitted {
    /// It presented the node's credential.
    Known,
    /// The name had none: this new credential is issued (store its hash,
    /// then hand it to the agent).
    Issue {
        secret: [u8; 32],
        hash: [u8; 32],
        issued_ms: i64,
    },
}

/// Why a registration is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    #[error("node {name} is held by another agent (registered at {registered} from {remote}) and this agent did not present its node credential; give this agent another --name, or stop the other one and run `mpctl agents forget {name}`")]
    Held {
        name: String,
        registered: String,
        remote: String,
    },
    #[error("node {name} was issued a node credential at {issued} and this agent {presented}; if this is that node and its data directory was lost, run `mpctl agents forget {name}` and start this agent again; otherwise give this agent another --name")]
    NotItsCredential {
        name: String,
        issued: String,
        presented: &'static str,
    },
    #[error("node {name} is connected; `mpctl agents forget` only clears the credential of a node no agent holds (stop that agent first)")]
    ForgetConnected { name: String },
}

/// A wall-clock time in ms as RFC 3339 UTC (seconds), for messages.
pub fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

impl NodeIdentities {
    /// The credentials read back from the store.
    pub fn restore(rows: Vec<(String, [u8; 32], i64)>) -> NodeIdentities {
        NodeIdentities {
            stored: rows
                .into_iter()
                .map(|(name, hash, issued_ms)| (name, Stored { hash, issued_ms }))
                .collect(),
            holders: HashMap::new(),
        }
    }

    /// Whether an agent named `name` presenting `presented` (empty: none)
    /// may register, given whether a session of that name is `live`. An
    /// issued credential is recorded at once (so a concurrent rival is
    /// refused); [`NodeIdentities::unissue`] takes it back if storing fails.
    pub fn admit(
        &mut self,
        name: &str,
        presented: &[u8],
        live: bool,
        remote: SocketAddr,
        secret: impl FnOnce() -> Option<[u8; 32]>,
        now_ms: i64,
    ) -> Result<Admitted, Refused> {
        let admitted = match self.stored.get(name) {
            Some(s) if credential_matches(&s.hash, presented) => Admitted::Known,
            Some(s) => {
                return Err(match (live, self.holders.get(name)) {
                    (true, Some(h)) => Refused::Held {
                        name: name.to_owned(),
                        registered: rfc3339(h.registered_ms),
                        remote: h.remote.to_string(),
                    },
                    _ => Refused::NotItsCredential {
                        name: name.to_owned(),
                        issued: rfc3339(s.issued_ms),
                        presented: if presented.is_empty() {
                            "presented none"
                        } else {
                            "presented another one"
                        },
                    },
                })
            }
            // A name registered before node credentials existed, still
            // connected: the newcomer cannot prove it is the same node.
            None if live => {
                let h = self.holders.get(name).copied();
                return Err(Refused::Held {
                    name: name.to_owned(),
                    registered: h
                        .map_or_else(|| "an earlier time".into(), |h| rfc3339(h.registered_ms)),
                    remote: h.map_or_else(|| "an unknown address".into(), |h| h.remote.to_string()),
                });
            }
            None => {
                let Some(secret) = secret() else {
                    return Err(Refused::NotItsCredential {
                        name: name.to_owned(),
                        issued: "no time (the coordinator's random source failed)".into(),
                        presented: "cannot be issued one",
                    });
                };
                let hash = credential_hash(&secret);
                self.stored.insert(
                    name.to_owned(),
                    Stored {
                        hash,
                        issued_ms: now_ms,
                    },
                );
                Admitted::Issue {
                    secret,
                    hash,
                    issued_ms: now_ms,
                }
            }
        };
        self.holders.insert(
            name.to_owned(),
            Holder {
                registered_ms: now_ms,
                remote,
            },
        );
        Ok(admitted)
    }

    /// Takes back a credential issued by [`NodeIdentities::admit`] whose
    /// hash could not be stored.
    pub fn unissue(&mut self, name: &str, hash: &[u8; 32]) {
        if self.stored.get(name).is_some_and(|s| &s.hash == hash) {
            self.stored.remove(name);
        }
    }

    /// Clears `name`'s credential unless a session holds it; returns
    /// whether there was one.
    pub fn forget(&mut self, name: &str, live: bool) -> Result<bool, Refused> {
        if live {
            return Err(Refused::ForgetConnected {
                name: name.to_owned(),
            });
        }
        self.holders.remove(name);
        Ok(self.stored.remove(name).is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn first_registration_is_issued_then_only_that_credential_is_admitted() {
        let mut ids = NodeIdentities::default();
        let got = ids
            .admit("n1", &[], false, addr(1), || Some([7; 32]), 0)
            .unwrap();
        let Admitted::Issue { secret, .. } = got else {
            panic!("expected a new credential, got {got:?}");
        };
        assert_eq!(secret, [7; 32]);
        assert_eq!(
            ids.admit("n1", &[7; 32], true, addr(2), || None, 1_000),
            Ok(Admitted::Known)
        );
        let refused = ids
            .admit("n1", &[8; 32], true, addr(3), || None, 2_000)
            .unwrap_err();
        assert_eq!(
            refused,
            Refused::Held {
                name: "n1".into(),
                registered: "1970-01-01T00:00:01Z".into(),
                remote: "127.0.0.1:2".into(),
            }
        );
        let refused = ids
            .admit("n1", &[], false, addr(3), || None, 2_000)
            .unwrap_err();
        assert!(refused.to_string().contains("presented none"), "{refused}");
    }

    #[test]
    fn forget_clears_only_an_unheld_name() {
        let mut ids = NodeIdentities::default();
        ids.admit("n1", &[], false, addr(1), || Some([7; 32]), 0)
            .unwrap();
        assert!(matches!(
            ids.forget("n1", true),
            Err(Refused::ForgetConnected { .. })
        ));
        assert_eq!(ids.forget("n1", false), Ok(true));
        assert_eq!(ids.forget("n1", false), Ok(false));
        let again = ids.admit("n1", &[7; 32], false, addr(1), || Some([9; 32]), 0);
        assert!(
            matches!(again, Ok(Admitted::Issue { secret, .. }) if secret == [9; 32]),
            "{again:?}"
        );
    }

    #[test]
    fn rfc3339_of_a_known_instant() {
        assert_eq!(rfc3339(1_764_633_600_000), "2025-12-02T00:00:00Z");
    }
}
