//! perftest's control protocol, server side, as its RDMA CM client (`ib_send_bw -R`) speaks it:
//! what `gdrx-bench server --perftest` needs to be fed by perftest's own, unchanged client.
//!
//! With `-R` perftest opens one RDMA CM connection for control, then (after the first key
//! exchange) one per queue pair for data, all to the same port, with no private data. Control
//! messages are SENDs on the control QP; the client always sends first and waits for a reply of
//! the same length, so the server answers each message in order and classifies it by its length:
//!
//! | bytes | what | reply |
//! |---|---|---|
//! | 16 | version string (NUL padded) | ours, [`VERSION`] |
//! | 4 | page size, then cache line (big endian) | the client's own value (it takes the max) |
//! | 2 | MTU enum as text | echoed |
//! | 56 (64 from perftest 6.29) | a `pingpong_dest` key exchange | ours, same layout |
//! | 312 or 320 | parameter negotiation (perftest 6.28+) | echoed byte for byte (it must match) |
//! | 8 | a bandwidth report field (`-b` only) | refused: bidirectional runs are not served |
//!
//! `ib_send_bw`'s key exchanges in a one-size run with `N` data connections: one before the
//! data connections (H0), one after all of them are established (H1, which is how the server
//! learns `N`: the requests it accepted), `N` + 1 + `N` exchanges of the QPs' keys, one barrier
//! just before the client sends (the receives must be posted by then), and one after its last
//! send completed (so every message was received and acknowledged). Sources: perftest's
//! `src/perftest_communication.c` (`ctx_xchg_data_rdma`, `exchange_versions`, `check_sys_data`,
//! `check_mtu`, `ctx_hand_shake`) and `src/send_bw.c`, versions 6.06 (Debian bookworm) to 6.29.

use std::fmt;

/// The version this server reports: at least 5.70 (older clients refuse anything below), and
/// below 6.28, so that a 6.29 client skips the parameter negotiation (a 6.28 client always
/// negotiates; that is echoed).
pub const VERSION: &str = "6.20";

/// `sizeof(struct pingpong_dest)` up to perftest 6.28.
pub const DEST_LEN: usize = 56;
/// `sizeof(struct pingpong_dest)` from perftest 6.29 (a `tail_markers_vaddr` at offset 32).
pub const DEST_LEN_629: usize = 64;
/// The negotiation message of perftest 6.28+ (`struct perftest_parameters_negotiate` and the
/// device attributes), without and with mlx5dv.
pub const NEGOTIATE_LENS: [usize; 2] = [312, 320];

/// Where the exchange is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Version, system data, MTU (and negotiation): before the first key exchange.
    Setup,
    /// After the reply to H0: the client opens its data connections now.
    Connecting,
    /// After H1: `left` key exchanges until the barrier before the data.
    Keys {
        /// Exchanges still to come, the barrier included.
        left: usize,
    },
    /// The barrier was answered: the client is sending.
    Running,
    /// The client's closing exchange was answered.
    Closed,
}

/// What the server does after answering a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Keep answering.
    Continue,
    /// Accept the client's data connections now (the reply to H0 was the signal).
    OpenData,
    /// The client starts sending once it has this reply: receives must be posted.
    Start,
    /// The client's last send completed before it sent this: the run is over.
    End,
}

/// A control message the server cannot answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// A length no perftest version sends in this phase.
    Unexpected {
        /// The length.
        len: usize,
        /// The phase.
        phase: Phase,
    },
    /// Bandwidth reports: the client runs bidirectionally (`-b`), which needs the server to send.
    Bidirectional,
    /// H1 came, but no data connection had been accepted.
    NoDataConnections,
    /// A client version this server does not speak.
    Version(String),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Unexpected { len, phase } => write!(
                f,
                "a {len} B control message in phase {phase:?}: not perftest's ib_send_bw -R \
                 protocol (or a perftest version this server does not know)"
            ),
            WireError::Bidirectional => f.write_str(
                "the client exchanges bandwidth reports, so it runs bidirectionally (-b): \
                 gdrx-bench server --perftest only receives; run the client without -b",
            ),
            WireError::NoDataConnections => f.write_str(
                "the client finished connecting but no data connection reached this server",
            ),
            WireError::Version(v) => write!(
                f,
                "perftest client version {v:?}: gdrx-bench server --perftest speaks 5.70 and later"
            ),
        }
    }
}

impl std::error::Error for WireError {}

/// What the server tells the client about itself in a key exchange.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dest {
    /// A QP number (printed by the client).
    pub qpn: u32,
    /// The packet sequence number (the CM negotiates the real one; printed).
    pub psn: u32,
    /// The SRQ number.
    pub srqn: u32,
}

impl Dest {
    /// Encodes as perftest's big-endian `pingpong_dest` of `len` bytes (56 or 64): LID, out
    /// reads, QPN, PSN, rkey, vaddr (0: nothing to write into), GID (zero: the CM resolved
    /// the path), SRQN and GID index.
    pub fn encode(&self, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        b[8..12].copy_from_slice(&self.qpn.to_be_bytes());
        b[12..16].copy_from_slice(&(self.psn & 0xff_ffff).to_be_bytes());
        let tail = len - 8;
        b[tail..tail + 4].copy_from_slice(&self.srqn.to_be_bytes());
        b
    }
}

/// Parameters a perftest 6.28+ client announced in its negotiation message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// `-s`.
    pub size: u64,
    /// `-n` per QP.
    pub iters: u64,
    /// `-q`.
    pub qps: u32,
    /// `-D`, seconds (0: iteration mode).
    pub duration: u32,
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// The server's side of one client's control exchange.
#[derive(Debug, Clone)]
pub struct Exchange {
    phase: Phase,
    /// Data connections, known at H1.
    data_conns: usize,
    /// The client's version string.
    client_version: Option<String>,
    /// What a 6.28+ client negotiated.
    negotiated: Option<Negotiated>,
    /// The client's page size (its cycle buffer) and cache line.
    sys: Vec<u32>,
    /// Key exchanges answered.
    keys: usize,
}

impl Default for Exchange {
    fn default() -> Self {
        Exchange::new()
    }
}

impl Exchange {
    /// A new client.
    pub fn new() -> Exchange {
        Exchange {
            phase: Phase::Setup,
            data_conns: 0,
            client_version: None,
            negotiated: None,
            sys: Vec::new(),
            keys: 0,
        }
    }

    /// Where the exchange is.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The data connections the client opened (known after H1).
    pub fn data_conns(&self) -> usize {
        self.data_conns
    }

    /// The client's version.
    pub fn client_version(&self) -> Option<&str> {
        self.client_version.as_deref()
    }

    /// What a 6.28+ client announced.
    pub fn negotiated(&self) -> Option<Negotiated> {
        self.negotiated
    }

    /// Answers one control message. `accepted` is the number of data connections accepted so
    /// far (read only at H1; any value elsewhere); `me` is what the server says about itself in
    /// key exchanges.
    ///
    /// # Errors
    /// A message this protocol has no place for; see [`WireError`].
    pub fn answer(
        &mut self,
        msg: &[u8],
        accepted: usize,
        me: Dest,
    ) -> Result<(Vec<u8>, Step), WireError> {
        let len = msg.len();
        let unexpected = || WireError::Unexpected {
            len,
            phase: self.phase,
        };
        match (self.phase, len) {
            (Phase::Setup, 16) if self.client_version.is_none() => {
                let v = String::from_utf8_lossy(msg.split(|&b| b == 0).next().unwrap_or(&[]))
                    .into_owned();
                if v.trim().parse::<f64>().map_or(true, |x| x < 5.70) {
                    return Err(WireError::Version(v));
                }
                self.client_version = Some(v);
                let mut reply = vec![0u8; 16];
                reply[..VERSION.len()].copy_from_slice(VERSION.as_bytes());
                Ok((reply, Step::Continue))
            }
            (Phase::Setup, 4) if self.sys.len() < 2 => {
                self.sys.push(be32(msg, 0));
                Ok((msg.to_vec(), Step::Continue))
            }
            (Phase::Setup, 2) => Ok((msg.to_vec(), Step::Continue)),
            (Phase::Setup, l) if NEGOTIATE_LENS.contains(&l) => {
                self.negotiated = Some(Negotiated {
                    size: be64(msg, 32),
                    iters: be64(msg, 40),
                    qps: be32(msg, 52),
                    duration: be32(msg, 56),
                });
                Ok((msg.to_vec(), Step::Continue))
            }
            (_, 8) => Err(WireError::Bidirectional),
            (phase, DEST_LEN | DEST_LEN_629) => {
                self.keys += 1;
                let reply = me.encode(len);
                let step = match phase {
                    Phase::Setup => {
                        self.phase = Phase::Connecting;
                        Step::OpenData
                    }
                    Phase::Connecting => {
                        if accepted == 0 {
                            return Err(WireError::NoDataConnections);
                        }
                        self.data_conns = accepted;
                        // N keys, one more, N more, then the barrier.
                        self.phase = Phase::Keys {
                            left: 2 * accepted + 2,
                        };
                        Step::Continue
                    }
                    Phase::Keys { left: 1 } => {
                        self.phase = Phase::Running;
                        Step::Start
                    }
                    Phase::Keys { left } => {
                        self.phase = Phase::Keys { left: left - 1 };
                        Step::Continue
                    }
                    Phase::Running => {
                        self.phase = Phase::Closed;
                        Step::End
                    }
                    Phase::Closed => return Err(unexpected()),
                };
                Ok((reply, step))
            }
            _ => Err(unexpected()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(v: &str) -> Vec<u8> {
        let mut b = vec![0u8; 16];
        b[..v.len()].copy_from_slice(v.as_bytes());
        b
    }

    /// Plays `ib_send_bw -R -q n`'s side of a one-size run, as perftest 6.06 sends it.
    fn client(x: &mut Exchange, n: usize, dest: usize) -> Vec<Step> {
        let me = Dest {
            qpn: 0x11,
            psn: 7,
            srqn: 3,
        };
        let mut steps = Vec::new();
        let mut say = |x: &mut Exchange, msg: Vec<u8>, accepted: usize| {
            let (reply, step) = x.answer(&msg, accepted, me).expect("answered");
            assert_eq!(reply.len(), msg.len(), "a reply as long as the message");
            steps.push(step);
            reply
        };
        let v = say(x, version("6.06"), 0);
        assert!(v.starts_with(VERSION.as_bytes()) && v[VERSION.len()] == 0);
        assert_eq!(
            say(x, 4096u32.to_be_bytes().to_vec(), 0),
            4096u32.to_be_bytes()
        );
        assert_eq!(say(x, 64u32.to_be_bytes().to_vec(), 0), 64u32.to_be_bytes());
        assert_eq!(say(x, b"5\0".to_vec(), 0), b"5\0");
        let keys = say(x, vec![0; dest], 0); // H0
        assert_eq!(keys[8..12], 0x11u32.to_be_bytes(), "our QPN at offset 8");
        for _ in 0..(2 * n + 3) {
            say(x, vec![0; dest], n); // H1, N, 1, N, barrier
        }
        say(x, vec![0; dest], n); // after the last send
        steps
    }

    #[test]
    fn a_send_bw_run_opens_data_then_starts_then_ends() {
        for n in [1, 4] {
            for dest in [DEST_LEN, DEST_LEN_629] {
                let mut x = Exchange::new();
                let steps = client(&mut x, n, dest);
                let at = |s: Step| steps.iter().position(|&t| t == s).expect("there");
                assert_eq!(at(Step::OpenData), 4, "the reply to H0");
                assert_eq!(at(Step::Start), 4 + 1 + 2 * n + 2, "the barrier");
                assert_eq!(at(Step::End), steps.len() - 1);
                assert_eq!(steps.iter().filter(|&&s| s != Step::Continue).count(), 3);
                assert_eq!(x.data_conns(), n);
                assert_eq!(x.phase(), Phase::Closed);
                assert_eq!(x.client_version(), Some("6.06"));
                // Nothing follows the closing exchange.
                assert!(matches!(
                    x.answer(&vec![0; dest], n, Dest::default()),
                    Err(WireError::Unexpected {
                        phase: Phase::Closed,
                        ..
                    })
                ));
            }
        }
    }

    #[test]
    fn a_negotiating_client_gets_its_bytes_back_and_is_read() {
        let mut x = Exchange::new();
        x.answer(&version("6.28"), 0, Dest::default()).unwrap();
        let mut neg = vec![0u8; 312];
        neg[32..40].copy_from_slice(&4096u64.to_be_bytes());
        neg[40..48].copy_from_slice(&5000u64.to_be_bytes());
        neg[52..56].copy_from_slice(&2u32.to_be_bytes());
        neg[100] = 0xab;
        let (reply, step) = x.answer(&neg, 0, Dest::default()).unwrap();
        assert_eq!((reply, step), (neg, Step::Continue));
        assert_eq!(
            x.negotiated(),
            Some(Negotiated {
                size: 4096,
                iters: 5000,
                qps: 2,
                duration: 0
            })
        );
    }

    #[test]
    fn what_it_cannot_serve_is_named() {
        let mut x = Exchange::new();
        assert_eq!(
            x.answer(&version("5.60"), 0, Dest::default()),
            Err(WireError::Version("5.60".into()))
        );
        let mut x = Exchange::new();
        x.answer(&version("6.06"), 0, Dest::default()).unwrap();
        x.answer(&[0; DEST_LEN], 0, Dest::default()).unwrap();
        assert_eq!(
            x.answer(&[0; DEST_LEN], 0, Dest::default()),
            Err(WireError::NoDataConnections),
            "H1 with no data connection"
        );
        let mut x = Exchange::new();
        assert_eq!(
            x.answer(&[0; 8], 0, Dest::default()),
            Err(WireError::Bidirectional)
        );
        assert!(x
            .answer(&[0; 100], 0, Dest::default())
            .unwrap_err()
            .to_string()
            .contains("100 B"));
        let e = WireError::Bidirectional.to_string();
        assert!(e.contains("-b"), "{e}");
    }
}
