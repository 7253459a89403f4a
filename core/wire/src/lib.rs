//! # gdrx-wire
//!
//! The private-data messages gdrx peers exchange in the RDMA CM handshake, and the header of
//! typed messages on the data path. This crate is
//! FFI-free (it depends on nothing but `thiserror`), so the format is tested in-process and the
//! sender side can be written against it without linking RDMA libraries.
//!
//! RDMA CM delivers private data zero-padded to the transport's size (56 bytes for a connect
//! request, 196 for an accept), so each message starts with a magic number, a kind and a version,
//! and has a fixed length; trailing bytes are ignored. All integers are little-endian.
//!
//! ```text
//! Hello   (connect request, 16 bytes): magic u32 | version u8 | kind=1 u8 | flags u16 |
//!                                      conn_tag u32 | max_msg u32
//! Welcome (accept, 56 bytes):          magic u32 | version u8 | kind=2 u8 | flags u16 |
//!                                      recv_buf u32 | rkey u32 | addr u64 | len u64 | reserved u64 |
//!                                      credit_rkey u32 | credit_initial u32 | credit_addr u64
//! ```
//!
//! A Welcome with flag [`WELCOME_CREDITS`] grants the sender credits: `credit_addr` (remote key
//! `credit_rkey`) is a little-endian u64 in the receiver's memory that the sender RDMA READs, the
//! number of messages it may have sent in all on this connection (see [`CreditWord`]).
//!
//! The [`sample`] module has the 64-byte header that leads each typed message (dtype, shape,
//! epoch, shard and index) on the data path.

/// `b"GDRX"` read as a little-endian u32.
pub const MAGIC: u32 = u32::from_le_bytes(*b"GDRX");
/// The protocol version this build speaks.
pub const VERSION: u8 = 1;

// That both messages fit in what RDMA CM carries is asserted in gdrx-verbs, against its
// private-data limits (`cm::MAX_CONNECT_PRIVATE_DATA`, `cm::MAX_ACCEPT_PRIVATE_DATA`).

pub mod sample;
pub use sample::{DType, SampleHeader, END_OF_STREAM};

const KIND_HELLO: u8 = 1;
const KIND_WELCOME: u8 = 2;
const KIND_SAMPLE: u8 = 3;

/// [`Welcome::flags`] bit: the Welcome carries a [`CreditWord`].
pub const WELCOME_CREDITS: u16 = 1;

/// Why private data does not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// Fewer bytes than the message needs.
    #[error("{got} bytes, need {need}")]
    TooShort {
        /// Bytes needed.
        need: usize,
        /// Bytes present.
        got: usize,
    },
    /// Not a gdrx message.
    #[error("bad magic {0:#010x} (not a gdrx peer?)")]
    BadMagic(u32),
    /// A gdrx message of another kind.
    #[error("message kind {got}, expected {want}")]
    WrongKind {
        /// Kind found.
        got: u8,
        /// Kind expected.
        want: u8,
    },
    /// A version this build does not speak.
    #[error("protocol version {0}, this build speaks {VERSION}")]
    Version(u8),
    /// A field out of range (a sample header's dtype, rank or shape).
    #[error("{0}")]
    Invalid(&'static str),
}

fn header(buf: &[u8], need: usize, kind: u8) -> Result<u16, WireError> {
    if buf.len() < need {
        return Err(WireError::TooShort {
            need,
            got: buf.len(),
        });
    }
    let magic = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes"));
    if magic != MAGIC {
        return Err(WireError::BadMagic(magic));
    }
    if buf[5] != kind {
        return Err(WireError::WrongKind {
            got: buf[5],
            want: kind,
        });
    }
    if buf[4] != VERSION {
        return Err(WireError::Version(buf[4]));
    }
    Ok(u16::from_le_bytes([buf[6], buf[7]]))
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

/// Sent by the connecting side with its connect request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    /// Flags (none defined yet; unknown bits are ignored).
    pub flags: u16,
    /// An id the sender picks for this connection (e.g. its index).
    pub conn_tag: u32,
    /// Largest message the sender will send (0 = not said).
    pub max_msg: u32,
}

impl Hello {
    /// Encoded length.
    pub const LEN: usize = 16;

    /// Encodes the message.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4] = VERSION;
        b[5] = KIND_HELLO;
        b[6..8].copy_from_slice(&self.flags.to_le_bytes());
        b[8..12].copy_from_slice(&self.conn_tag.to_le_bytes());
        b[12..16].copy_from_slice(&self.max_msg.to_le_bytes());
        b
    }

    /// Decodes a message (trailing padding ignored).
    ///
    /// # Errors
    /// [`WireError`] when the bytes are not a version-1 Hello.
    pub fn decode(buf: &[u8]) -> Result<Hello, WireError> {
        let flags = header(buf, Self::LEN, KIND_HELLO)?;
        Ok(Hello {
            flags,
            conn_tag: u32_at(buf, 8),
            max_msg: u32_at(buf, 12),
        })
    }
}

/// A window of receiver memory a sender may RDMA WRITE into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteWindow {
    /// Address (as registered: virtual address or IOVA).
    pub addr: u64,
    /// Length in bytes.
    pub len: u64,
    /// Remote key.
    pub rkey: u32,
}

/// Credits a receiver grants one sender: where its grant lives, and the grant at accept time.
///
/// The grant is a little-endian u64 at `addr` (remote key `rkey`, RDMA READ access) that only
/// grows: the number of messages the sender may have sent in all on this connection. A sender
/// that has sent `grant` messages waits (re-reading the word) instead of sending into an empty
/// receive queue, so that it is not stalled by RNR NAKs and their retry timer. The receiver
/// computes the grant from what it has received from that sender and its share of the receives
/// posted; a grant read too early only makes the sender wait, one read torn or too high costs
/// an RNR retry, never a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreditWord {
    /// Address of the u64 (as registered).
    pub addr: u64,
    /// Remote key.
    pub rkey: u32,
    /// The grant when the connection was accepted.
    pub initial: u32,
}

/// Sent by the accepting side with its accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Welcome {
    /// Flags ([`WELCOME_CREDITS`]; unknown bits are ignored).
    pub flags: u16,
    /// Size of each posted receive buffer: the largest SEND the receiver accepts.
    pub recv_buf: u32,
    /// Memory the sender may RDMA WRITE into, if any.
    pub window: Option<RemoteWindow>,
    /// Credits, when the receiver grants them (flag [`WELCOME_CREDITS`]).
    pub credits: Option<CreditWord>,
}

impl Welcome {
    /// Encoded length.
    pub const LEN: usize = 56;

    /// Encodes the message.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4] = VERSION;
        b[5] = KIND_WELCOME;
        let flags = match self.credits {
            Some(_) => self.flags | WELCOME_CREDITS,
            None => self.flags & !WELCOME_CREDITS,
        };
        b[6..8].copy_from_slice(&flags.to_le_bytes());
        b[8..12].copy_from_slice(&self.recv_buf.to_le_bytes());
        if let Some(w) = self.window {
            b[12..16].copy_from_slice(&w.rkey.to_le_bytes());
            b[16..24].copy_from_slice(&w.addr.to_le_bytes());
            b[24..32].copy_from_slice(&w.len.to_le_bytes());
        }
        if let Some(c) = self.credits {
            b[40..44].copy_from_slice(&c.rkey.to_le_bytes());
            b[44..48].copy_from_slice(&c.initial.to_le_bytes());
            b[48..56].copy_from_slice(&c.addr.to_le_bytes());
        }
        b
    }

    /// Decodes a message (trailing padding ignored). A window of length 0 means none.
    ///
    /// # Errors
    /// [`WireError`] when the bytes are not a version-1 Welcome.
    pub fn decode(buf: &[u8]) -> Result<Welcome, WireError> {
        let flags = header(buf, Self::LEN, KIND_WELCOME)?;
        let len = u64_at(buf, 24);
        Ok(Welcome {
            flags,
            recv_buf: u32_at(buf, 8),
            window: (len > 0).then(|| RemoteWindow {
                rkey: u32_at(buf, 12),
                addr: u64_at(buf, 16),
                len,
            }),
            credits: (flags & WELCOME_CREDITS != 0).then(|| CreditWord {
                rkey: u32_at(buf, 40),
                initial: u32_at(buf, 44),
                addr: u64_at(buf, 48),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_roundtrip_with_cm_padding() {
        let h = Hello {
            flags: 3,
            conn_tag: 0xdead_beef,
            max_msg: 65536,
        };
        let mut padded = [0u8; 56];
        padded[..Hello::LEN].copy_from_slice(&h.encode());
        assert_eq!(Hello::decode(&padded), Ok(h));
    }

    #[test]
    fn welcome_roundtrip_with_and_without_window() {
        let w = Welcome {
            flags: 0,
            recv_buf: 65536,
            window: Some(RemoteWindow {
                addr: 0x7f00_0000_1000,
                len: 1 << 20,
                rkey: 0x1234,
            }),
            credits: None,
        };
        let mut padded = [0u8; 196];
        padded[..Welcome::LEN].copy_from_slice(&w.encode());
        assert_eq!(Welcome::decode(&padded), Ok(w));
        let n = Welcome { window: None, ..w };
        assert_eq!(Welcome::decode(&n.encode()), Ok(n));
    }

    #[test]
    fn welcome_credits_roundtrip_and_set_their_flag() {
        let w = Welcome {
            flags: 0,
            recv_buf: 4096,
            window: None,
            credits: Some(CreditWord {
                addr: 0x7f12_3456_7008,
                rkey: 0xabcd,
                initial: 255,
            }),
        };
        let b = w.encode();
        assert_eq!(
            u16::from_le_bytes([b[6], b[7]]) & WELCOME_CREDITS,
            WELCOME_CREDITS
        );
        let back = Welcome::decode(&b).unwrap();
        assert_eq!(back.credits, w.credits);
        assert_eq!(back.flags & WELCOME_CREDITS, WELCOME_CREDITS);
        // A flag without credits is dropped on encode; a Welcome without the flag has none.
        let none = Welcome {
            flags: WELCOME_CREDITS,
            credits: None,
            ..w
        };
        assert_eq!(Welcome::decode(&none.encode()).unwrap().credits, None);
    }

    #[test]
    fn malformed_messages_are_rejected() {
        let h = Hello {
            flags: 0,
            conn_tag: 1,
            max_msg: 0,
        }
        .encode();
        assert_eq!(
            Hello::decode(&h[..10]),
            Err(WireError::TooShort { need: 16, got: 10 })
        );
        assert_eq!(Hello::decode(&[0u8; 56]), Err(WireError::BadMagic(0)));
        let mut v = h;
        v[4] = 9;
        assert_eq!(Hello::decode(&v), Err(WireError::Version(9)));
        assert_eq!(
            Welcome::decode(&[h.as_slice(), &[0u8; 56]].concat()),
            Err(WireError::WrongKind { got: 1, want: 2 })
        );
        assert!(WireError::BadMagic(7)
            .to_string()
            .contains("not a gdrx peer"));
    }
}
