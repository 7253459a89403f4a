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
//! Welcome (accept, 40 bytes):          magic u32 | version u8 | kind=2 u8 | flags u16 |
//!                                      recv_buf u32 | rkey u32 | addr u64 | len u64 | reserved u64
//! ```
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
pub use sample::{DType, SampleHeader};

const KIND_HELLO: u8 = 1;
const KIND_WELCOME: u8 = 2;
const KIND_SAMPLE: u8 = 3;

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

/// Sent by the accepting side with its accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Welcome {
    /// Flags (none defined yet).
    pub flags: u16,
    /// Size of each posted receive buffer: the largest SEND the receiver accepts.
    pub recv_buf: u32,
    /// Memory the sender may RDMA WRITE into, if any.
    pub window: Option<RemoteWindow>,
}

impl Welcome {
    /// Encoded length.
    pub const LEN: usize = 40;

    /// Encodes the message.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4] = VERSION;
        b[5] = KIND_WELCOME;
        b[6..8].copy_from_slice(&self.flags.to_le_bytes());
        b[8..12].copy_from_slice(&self.recv_buf.to_le_bytes());
        if let Some(w) = self.window {
            b[12..16].copy_from_slice(&w.rkey.to_le_bytes());
            b[16..24].copy_from_slice(&w.addr.to_le_bytes());
            b[24..32].copy_from_slice(&w.len.to_le_bytes());
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
        };
        let mut padded = [0u8; 196];
        padded[..Welcome::LEN].copy_from_slice(&w.encode());
        assert_eq!(Welcome::decode(&padded), Ok(w));
        let n = Welcome { window: None, ..w };
        assert_eq!(Welcome::decode(&n.encode()), Ok(n));
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
            Welcome::decode(&[h.as_slice(), &[0u8; 40]].concat()),
            Err(WireError::WrongKind { got: 1, want: 2 })
        );
        assert!(WireError::BadMagic(7)
            .to_string()
            .contains("not a gdrx peer"));
    }
}
