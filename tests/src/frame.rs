//! Test message framing and the deterministic size schedule both test processes agree on.
//!
//! Every message carries its per-connection sequence number and a CRC32C checksum:
//!
//! ```text
//! imm_data (SEND_WITH_IMM, WRITE_WITH_IMM): seq
//! payload, len >= 8:  seq u32 LE | crc u32 LE | body (len - 8 bytes)
//! payload, len <  8:  the first `len` bytes of  seq u32 LE | crc u32 LE
//! crc = crc32c(conn u32 LE | seq u32 LE | len u32 LE | body)
//! ```
//!
//! The receiver knows the next sequence number per connection (messages are in order per
//! connection) and the size the schedule gives it, so a lost, duplicated, reordered, truncated or
//! corrupted message fails verification. Body bytes are pseudo-random per (conn, seq), so a
//! message landing in a stale buffer does not verify by accident.

use std::fmt;

/// Header bytes at the front of a payload (seq and crc).
pub const HEADER: usize = 8;

/// splitmix64: a tiny, good-enough deterministic generator.
pub fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Size classes the schedule produces, for coverage counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SizeClass {
    /// 1 byte.
    One,
    /// 2..=7 bytes (shorter than the header).
    Tiny,
    /// Exactly MTU - 1.
    MtuMinus1,
    /// Exactly MTU.
    Mtu,
    /// Exactly MTU + 1.
    MtuPlus1,
    /// Exactly the maximum (the receive buffer size).
    Max,
    /// Anything else in 1..=max.
    Random,
}

/// The size of message `seq` on connection `conn`, in 1..=`max`, given the path MTU.
pub fn size_for(conn: u32, seq: u32, mtu: u32, max: u32) -> (u32, SizeClass) {
    assert!(max > mtu + 1 && mtu > 8, "schedule needs max > mtu + 1 > 9");
    let r = splitmix((u64::from(conn) << 32) | u64::from(seq));
    match r % 16 {
        0 => (1, SizeClass::One),
        1 => (2 + ((r >> 8) % 6) as u32, SizeClass::Tiny),
        2 => (mtu - 1, SizeClass::MtuMinus1),
        3 => (mtu, SizeClass::Mtu),
        4 => (mtu + 1, SizeClass::MtuPlus1),
        5 => (max, SizeClass::Max),
        _ => (1 + ((r >> 8) % u64::from(max)) as u32, SizeClass::Random),
    }
}

fn crc(conn: u32, seq: u32, len: u32, body: &[u8]) -> u32 {
    let mut head = [0u8; 12];
    head[0..4].copy_from_slice(&conn.to_le_bytes());
    head[4..8].copy_from_slice(&seq.to_le_bytes());
    head[8..12].copy_from_slice(&len.to_le_bytes());
    crc32c::crc32c_append(crc32c::crc32c(&head), body)
}

/// Fills `buf` (the whole message) with the frame for (`conn`, `seq`).
pub fn fill(buf: &mut [u8], conn: u32, seq: u32) {
    let len = buf.len();
    let mut state = splitmix((u64::from(conn) << 32) ^ u64::from(seq) ^ 0xA5A5_0000_0000);
    if len > HEADER {
        for chunk in buf[HEADER..].chunks_mut(8) {
            state = splitmix(state);
            let bytes = state.to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
    let body_crc = crc(
        conn,
        seq,
        len as u32,
        if len > HEADER { &buf[HEADER..] } else { &[] },
    );
    let mut head = [0u8; HEADER];
    head[0..4].copy_from_slice(&seq.to_le_bytes());
    head[4..8].copy_from_slice(&body_crc.to_le_bytes());
    let n = len.min(HEADER);
    buf[..n].copy_from_slice(&head[..n]);
}

/// Why a received message does not verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// Byte count differs from the schedule.
    Length {
        /// Expected.
        want: u32,
        /// Received.
        got: u32,
    },
    /// Immediate data differs from the expected sequence number (or is missing).
    Imm {
        /// Expected.
        want: u32,
        /// Received.
        got: Option<u32>,
    },
    /// Sequence number in the payload differs.
    Seq {
        /// Expected.
        want: u32,
        /// Received (the bytes present).
        got: u32,
    },
    /// The completion's opcode is not the one the operation produces (e.g. a plain receive where
    /// RDMA WRITE_WITH_IMM was sent).
    Opcode {
        /// Expected.
        want: &'static str,
        /// Received.
        got: String,
    },
    /// Checksum mismatch: corrupted payload.
    Checksum {
        /// From the header.
        header: u32,
        /// Computed over the body.
        computed: u32,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Length { want, got } => write!(f, "length {got}, expected {want}"),
            FrameError::Imm { want, got } => write!(f, "immediate {got:?}, expected {want}"),
            FrameError::Seq { want, got } => write!(f, "sequence {got}, expected {want}"),
            FrameError::Opcode { want, got } => write!(f, "opcode {got}, expected {want}"),
            FrameError::Checksum { header, computed } => {
                write!(
                    f,
                    "checksum {computed:#010x} over the body, header says {header:#010x}"
                )
            }
        }
    }
}

impl std::error::Error for FrameError {}

/// Verifies a received message against (`conn`, the expected `seq`, the expected length).
/// `imm` is the completion's immediate data, checked when `expect_imm`.
pub fn verify(
    payload: &[u8],
    conn: u32,
    seq: u32,
    want_len: u32,
    imm: Option<u32>,
    expect_imm: bool,
) -> Result<(), FrameError> {
    if payload.len() as u32 != want_len {
        return Err(FrameError::Length {
            want: want_len,
            got: payload.len() as u32,
        });
    }
    if expect_imm && imm != Some(seq) {
        return Err(FrameError::Imm {
            want: seq,
            got: imm,
        });
    }
    let len = payload.len();
    let body: &[u8] = if len > HEADER {
        &payload[HEADER..]
    } else {
        &[]
    };
    let computed = crc(conn, seq, len as u32, body);
    let mut expect_head = [0u8; HEADER];
    expect_head[0..4].copy_from_slice(&seq.to_le_bytes());
    expect_head[4..8].copy_from_slice(&computed.to_le_bytes());
    let n = len.min(HEADER);
    if payload[..n.min(4)] != expect_head[..n.min(4)] {
        let mut got = [0u8; 4];
        got[..n.min(4)].copy_from_slice(&payload[..n.min(4)]);
        return Err(FrameError::Seq {
            want: seq,
            got: u32::from_le_bytes(got),
        });
    }
    if n > 4 && payload[4..n] != expect_head[4..n] {
        let mut h = [0u8; 4];
        h[..n - 4].copy_from_slice(&payload[4..n]);
        return Err(FrameError::Checksum {
            header: u32::from_le_bytes(h),
            computed,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn schedule_covers_every_class_and_stays_in_range() {
        let mut seen = BTreeMap::new();
        for seq in 0..5000 {
            let (len, class) = size_for(3, seq, 4096, 65536);
            assert!((1..=65536).contains(&len));
            match class {
                SizeClass::MtuMinus1 => assert_eq!(len, 4095),
                SizeClass::Mtu => assert_eq!(len, 4096),
                SizeClass::MtuPlus1 => assert_eq!(len, 4097),
                SizeClass::Max => assert_eq!(len, 65536),
                SizeClass::One => assert_eq!(len, 1),
                SizeClass::Tiny => assert!((2..8).contains(&len)),
                SizeClass::Random => {}
            }
            *seen.entry(class).or_insert(0) += 1;
        }
        assert_eq!(seen.len(), 7, "{seen:?}");
        assert!(seen.values().all(|&n| n > 100), "{seen:?}");
        // Both processes compute the same schedule.
        assert_eq!(size_for(1, 77, 1024, 65536), size_for(1, 77, 1024, 65536));
    }

    #[test]
    fn roundtrip_at_every_edge_size() {
        for len in [
            1usize, 2, 3, 4, 5, 7, 8, 9, 1023, 1024, 1025, 4095, 4096, 4097, 65536,
        ] {
            let mut b = vec![0u8; len];
            fill(&mut b, 2, 1234);
            assert_eq!(
                verify(&b, 2, 1234, len as u32, Some(1234), true),
                Ok(()),
                "len {len}"
            );
        }
    }

    #[test]
    fn detects_loss_reorder_corruption_truncation() {
        let mut b = vec![0u8; 5000];
        fill(&mut b, 1, 10);
        // Wrong expected seq (a lost or duplicated message).
        assert!(matches!(
            verify(&b, 1, 11, 5000, None, false),
            Err(FrameError::Seq { want: 11, got: 10 })
        ));
        // Wrong connection.
        assert!(matches!(
            verify(&b, 2, 10, 5000, None, false),
            Err(FrameError::Checksum { .. })
        ));
        // One flipped bit in the body.
        let mut c = b.clone();
        c[4321] ^= 0x10;
        assert!(matches!(
            verify(&c, 1, 10, 5000, None, false),
            Err(FrameError::Checksum { .. })
        ));
        // Truncated.
        assert!(matches!(
            verify(&b[..4999], 1, 10, 5000, None, false),
            Err(FrameError::Length { .. })
        ));
        // Immediate data mismatch.
        assert!(matches!(
            verify(&b, 1, 10, 5000, Some(9), true),
            Err(FrameError::Imm { .. })
        ));
        assert!(matches!(
            verify(&b, 1, 10, 5000, None, true),
            Err(FrameError::Imm { .. })
        ));
        // Tiny messages carry the seq's low bytes and part of the checksum.
        let mut t = vec![0u8; 6];
        fill(&mut t, 1, 0x0102_0304);
        assert_eq!(verify(&t, 1, 0x0102_0304, 6, None, false), Ok(()));
        t[5] ^= 1;
        assert!(matches!(
            verify(&t, 1, 0x0102_0304, 6, None, false),
            Err(FrameError::Checksum { .. })
        ));
        let mut one = vec![0u8; 1];
        fill(&mut one, 1, 5);
        assert!(verify(&one, 1, 6, 1, None, false).is_err());
    }
}
