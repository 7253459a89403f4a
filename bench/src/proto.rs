//! What the benchmark's client and server agree on, without a device: the run descriptor each
//! connect request carries after gdrx's [`Hello`], the immediate data of every message, and the
//! payload pattern the receiver verifies.
//!
//! ```text
//! connect private data (44 of 56 bytes): Hello (16) | magic "GBEN" u32 | run_id u32 |
//!     qps u16 | op u8 | flags u8 | iters u64 (per connection; 0 = duration) | duration_ms u32 |
//!     tx_depth u32
//! immediate data: bit 31 = last message of this connection, bits 0..31 = sequence number
//! payload byte k of message (conn, seq): little-endian bytes of word(conn, seq, k / 8)
//! ```

use gdrx_core::wire::Hello;

use crate::opts::{Op, SEQ_MASK};

/// `b"GBEN"` as a little-endian u32.
pub const RUN_MAGIC: u32 = u32::from_le_bytes(*b"GBEN");
/// Flag: the client fills payloads with the pattern; the receiver verifies them.
pub const FLAG_VERIFY: u8 = 1;
/// Flag: this is the client's last run; a server started without `--runs` exits after it.
pub const FLAG_LAST_RUN: u8 = 2;
/// The last message of a connection carries this bit in its immediate data.
pub const IMM_LAST: u32 = 1 << 31;

/// One run (one message size) as the client describes it to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunSpec {
    /// Client-chosen id, the same on every connection of the run.
    pub run_id: u32,
    /// This connection's index, `0..qps`.
    pub conn: u16,
    /// Connections in the run.
    pub qps: u16,
    /// Message size.
    pub size: u32,
    /// The operation.
    pub op: Op,
    /// Payloads carry the pattern.
    pub verify: bool,
    /// The client's last run.
    pub last_run: bool,
    /// Messages per connection; 0 in duration mode.
    pub iters: u64,
    /// Duration mode: milliseconds (0 = iteration mode).
    pub duration_ms: u32,
    /// Sends the client keeps in flight per connection (sizes the WRITE window).
    pub tx_depth: u32,
}

/// Why a connect request is not a benchmark run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// Not a gdrx Hello.
    #[error("not a gdrx connect request: {0}")]
    Hello(gdrx_core::wire::WireError),
    /// A gdrx peer, but not `gdrx-bench client`.
    #[error("no gdrx-bench run descriptor (is the peer `gdrx-bench client`?)")]
    NotBench,
    /// A value out of range.
    #[error("invalid run descriptor: {0}")]
    Invalid(&'static str),
}

impl RunSpec {
    /// Encoded length.
    pub const LEN: usize = Hello::LEN + 28;

    /// Encodes the connect request's private data.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        let hello = Hello {
            flags: 0,
            conn_tag: u32::from(self.conn),
            max_msg: self.size,
        };
        b[..Hello::LEN].copy_from_slice(&hello.encode());
        let o = Hello::LEN;
        b[o..o + 4].copy_from_slice(&RUN_MAGIC.to_le_bytes());
        b[o + 4..o + 8].copy_from_slice(&self.run_id.to_le_bytes());
        b[o + 8..o + 10].copy_from_slice(&self.qps.to_le_bytes());
        b[o + 10] = self.op.code();
        b[o + 11] = if self.verify { FLAG_VERIFY } else { 0 }
            | if self.last_run { FLAG_LAST_RUN } else { 0 };
        b[o + 12..o + 20].copy_from_slice(&self.iters.to_le_bytes());
        b[o + 20..o + 24].copy_from_slice(&self.duration_ms.to_le_bytes());
        b[o + 24..o + 28].copy_from_slice(&self.tx_depth.to_le_bytes());
        b
    }

    /// Decodes a connect request's private data (trailing padding ignored).
    ///
    /// # Errors
    /// [`SpecError`] when it is not a valid run descriptor.
    pub fn decode(buf: &[u8]) -> Result<RunSpec, SpecError> {
        let hello = Hello::decode(buf).map_err(SpecError::Hello)?;
        let o = Hello::LEN;
        if buf.len() < Self::LEN || u32_at(buf, o) != RUN_MAGIC {
            return Err(SpecError::NotBench);
        }
        let op = Op::from_code(buf[o + 10]).ok_or(SpecError::Invalid("unknown operation"))?;
        let spec = RunSpec {
            run_id: u32_at(buf, o + 4),
            conn: u16::try_from(hello.conn_tag)
                .map_err(|_| SpecError::Invalid("connection index"))?,
            qps: u16::from_le_bytes([buf[o + 8], buf[o + 9]]),
            size: hello.max_msg,
            op,
            verify: buf[o + 11] & FLAG_VERIFY != 0,
            last_run: buf[o + 11] & FLAG_LAST_RUN != 0,
            iters: u64::from_le_bytes(buf[o + 12..o + 20].try_into().expect("8 bytes")),
            duration_ms: u32_at(buf, o + 20),
            tx_depth: u32_at(buf, o + 24),
        };
        if spec.qps == 0 || spec.conn >= spec.qps {
            return Err(SpecError::Invalid(
                "connection index not below the QP count",
            ));
        }
        if spec.size == 0 || spec.size > crate::opts::MAX_SIZE {
            return Err(SpecError::Invalid("message size"));
        }
        if (spec.iters == 0) == (spec.duration_ms == 0) {
            return Err(SpecError::Invalid(
                "exactly one of iterations and duration must be set",
            ));
        }
        if spec.iters > u64::from(SEQ_MASK) {
            return Err(SpecError::Invalid("too many iterations"));
        }
        if spec.tx_depth == 0 || spec.tx_depth > 1 << 20 {
            return Err(SpecError::Invalid("send depth"));
        }
        Ok(spec)
    }

    /// True when `other` is another connection of the same run.
    pub fn same_run(&self, other: &RunSpec) -> bool {
        RunSpec { conn: 0, ..*self } == RunSpec { conn: 0, ..*other }
    }
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}

/// Immediate data of message `seq` (the last one flagged).
pub fn imm(seq: u64, last: bool) -> u32 {
    (seq as u32 & SEQ_MASK) | if last { IMM_LAST } else { 0 }
}

/// Splits immediate data into (sequence number mod 2^31, last).
pub fn split_imm(imm: u32) -> (u32, bool) {
    (imm & SEQ_MASK, imm & IMM_LAST != 0)
}

/// Word `w` of message (`conn`, `seq`): splitmix64's finalizer, so every byte depends on all
/// three inputs.
fn word(conn: u16, seq: u32, w: u64) -> u64 {
    let mut z = ((u64::from(conn) << 32) | u64::from(seq))
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(w.wrapping_mul(0xd1b5_4a32_d192_ed03));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Fills `buf` with the pattern of message (`conn`, `seq`).
pub fn fill(buf: &mut [u8], conn: u16, seq: u32) {
    for (w, chunk) in buf.chunks_mut(8).enumerate() {
        let bytes = word(conn, seq, w as u64).to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
}

/// Checks that `buf` holds the pattern of message (`conn`, `seq`); on a mismatch returns the
/// offset of the first wrong byte.
pub fn check(buf: &[u8], conn: u16, seq: u32) -> Result<(), usize> {
    for (w, chunk) in buf.chunks(8).enumerate() {
        let bytes = word(conn, seq, w as u64).to_le_bytes();
        if chunk != &bytes[..chunk.len()] {
            let i = chunk
                .iter()
                .zip(bytes.iter())
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            return Err(w * 8 + i);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> RunSpec {
        RunSpec {
            run_id: 0xdead_beef,
            conn: 2,
            qps: 4,
            size: 65536,
            op: Op::WriteImm,
            verify: true,
            last_run: false,
            iters: 5000,
            duration_ms: 0,
            tx_depth: 128,
        }
    }

    #[test]
    fn run_spec_round_trips_and_fits_a_connect_request() {
        const _: () = assert!(RunSpec::LEN <= gdrx_core::cm::MAX_CONNECT_PRIVATE_DATA);
        let s = spec();
        let mut padded = s.encode().to_vec();
        padded.resize(56, 0); // RDMA CM pads private data
        assert_eq!(RunSpec::decode(&padded).unwrap(), s);
        let d = RunSpec {
            iters: 0,
            duration_ms: 2500,
            last_run: true,
            verify: false,
            op: Op::Send,
            ..s
        };
        assert_eq!(RunSpec::decode(&d.encode()).unwrap(), d);
        assert!(s.same_run(&RunSpec { conn: 3, ..s }));
        assert!(!s.same_run(&RunSpec { size: 64, ..s }));
    }

    #[test]
    fn malformed_run_specs_are_refused() {
        let good = spec().encode();
        assert!(matches!(
            RunSpec::decode(&good[..20]),
            Err(SpecError::NotBench)
        ));
        assert!(matches!(
            RunSpec::decode(&[0u8; 56]),
            Err(SpecError::Hello(_))
        ));
        let plain = Hello {
            flags: 0,
            conn_tag: 0,
            max_msg: 64,
        }
        .encode();
        assert_eq!(RunSpec::decode(&plain), Err(SpecError::NotBench));
        let bad = |f: &dyn Fn(&mut RunSpec)| {
            let mut s = spec();
            f(&mut s);
            RunSpec::decode(&s.encode())
        };
        assert!(matches!(bad(&|s| s.conn = 4), Err(SpecError::Invalid(_))));
        assert!(matches!(bad(&|s| s.qps = 0), Err(SpecError::Invalid(_))));
        assert!(matches!(bad(&|s| s.size = 0), Err(SpecError::Invalid(_))));
        assert!(matches!(bad(&|s| s.iters = 0), Err(SpecError::Invalid(_))));
        assert!(matches!(
            bad(&|s| s.duration_ms = 10),
            Err(SpecError::Invalid(_))
        ));
        assert!(matches!(
            bad(&|s| s.tx_depth = 0),
            Err(SpecError::Invalid(_))
        ));
        let mut b = good;
        b[Hello::LEN + 10] = 9; // unknown op
        assert!(matches!(RunSpec::decode(&b), Err(SpecError::Invalid(_))));
    }

    #[test]
    fn imm_carries_sequence_and_last_flag() {
        assert_eq!(split_imm(imm(5, false)), (5, false));
        assert_eq!(split_imm(imm(5, true)), (5, true));
        assert_eq!(split_imm(imm(u64::from(SEQ_MASK) + 3, false)), (2, false));
    }

    #[test]
    fn pattern_is_checked_byte_for_byte() {
        for len in [1usize, 2, 7, 8, 9, 64, 4097] {
            let mut b = vec![0u8; len];
            fill(&mut b, 3, 77);
            assert_eq!(check(&b, 3, 77), Ok(()));
            if len >= 8 {
                // (A single byte matches another message's with probability 1/256.)
                assert!(check(&b, 3, 78).is_err(), "another sequence number");
                assert!(check(&b, 2, 77).is_err(), "another connection");
            }
            b[len - 1] ^= 0x40;
            assert_eq!(check(&b, 3, 77), Err(len - 1));
        }
    }
}
