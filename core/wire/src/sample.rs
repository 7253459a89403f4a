//! The sample header: 64 bytes that lead each typed message on the data path and say what the
//! payload after them is (a dtype and a shape) and where it comes from in the dataset (epoch,
//! shard, item, a global index, how many samples it holds).
//!
//! A receiver with header split (`PoolConfig::header_split(SampleHeader::LEN, host)`) takes
//! the header into CPU-readable host memory and the payload into any provider, GPU included;
//! without header split the header is the first 64 bytes of the buffer, and the payload starts
//! 64 bytes in (so a payload stays 64-byte aligned either way).
//!
//! ```text
//!  0 magic "GDRX" u32 | version u8 | kind=3 u8 | flags u16
//!  8 dtype: code u8 | bits u8 | lanes u16            (DLPack's DLDataType)
//! 12 ndim u8 | part u8 | parts u8 | reserved u8
//! 16 shape [u32; 6]                                  (ndim used, the rest 0)
//! 40 index u64                                       (sample or batch index in the epoch)
//! 48 epoch u32 | shard u32
//! 56 item u32                                        (first sample's position in its shard)
//! 60 count u32                                       (samples in the message)
//! ```
//!
//! `part`/`parts` let one sample travel as several tensors (an image and its label): parts
//! `0..parts` of one index are sent back to back on one connection, which RC delivers in order.
//! All integers are little-endian.

use crate::{header, u32_at, u64_at, WireError, KIND_SAMPLE, MAGIC, VERSION};

/// A tensor element type, as DLPack encodes it (`DLDataType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DType {
    /// `DLDataTypeCode`: 0 int, 1 uint, 2 float, 4 bfloat, 5 complex, 6 bool.
    pub code: u8,
    /// Bits per lane.
    pub bits: u8,
    /// Lanes (1 for scalars).
    pub lanes: u16,
}

/// The dtypes gdrx carries, by their numpy names.
const NAMED: [(&str, DType); 14] = [
    ("bool", DType::new(6, 8)),
    ("int8", DType::new(0, 8)),
    ("int16", DType::new(0, 16)),
    ("int32", DType::new(0, 32)),
    ("int64", DType::new(0, 64)),
    ("uint8", DType::new(1, 8)),
    ("uint16", DType::new(1, 16)),
    ("uint32", DType::new(1, 32)),
    ("uint64", DType::new(1, 64)),
    ("float16", DType::new(2, 16)),
    ("float32", DType::new(2, 32)),
    ("float64", DType::new(2, 64)),
    ("bfloat16", DType::new(4, 16)),
    ("complex64", DType::new(5, 64)),
];

impl DType {
    /// A one-lane dtype.
    pub const fn new(code: u8, bits: u8) -> DType {
        DType {
            code,
            bits,
            lanes: 1,
        }
    }

    /// `u8`, the dtype of untyped bytes.
    pub const U8: DType = DType::new(1, 8);

    /// The dtype called `name` (numpy's names: `"float32"`, `"uint8"`, `"bfloat16"`, ...).
    pub fn from_name(name: &str) -> Option<DType> {
        NAMED.iter().find(|(n, _)| *n == name).map(|(_, d)| *d)
    }

    /// Its numpy name, if it has one.
    pub fn name(&self) -> Option<&'static str> {
        NAMED.iter().find(|(_, d)| d == self).map(|(n, _)| *n)
    }

    /// Bytes per element (all lanes).
    pub fn itemsize(&self) -> u64 {
        u64::from(self.bits / 8) * u64::from(self.lanes)
    }

    fn check(&self) -> Result<(), WireError> {
        if self.name().is_none() {
            return Err(WireError::Invalid(
                "unknown dtype (code, bits, lanes) in the sample header",
            ));
        }
        Ok(())
    }
}

/// The immediate data of the message that ends a typed stream: a SEND_WITH_IMM of 0 bytes
/// carrying this value (`b"GEND"` read as a little-endian u32) says the sender sent everything
/// it meant to. A connection that goes away without it ended early (the sender died or was
/// stopped), and a rank waits for a feeder to resume the stream. Typed messages carry no
/// immediate data of their own, so the two cannot be confused.
pub const END_OF_STREAM: u32 = u32::from_le_bytes(*b"GEND");

/// The header of one typed message; see the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampleHeader {
    /// Flags ([`SampleHeader::BATCH`]; unknown bits are ignored).
    pub flags: u16,
    /// The payload's element type.
    pub dtype: DType,
    /// The payload's shape: `shape[..ndim]`.
    shape: [u32; SampleHeader::MAX_NDIM],
    ndim: u8,
    /// This tensor's part of the sample, `0..parts`.
    pub part: u8,
    /// Tensors per sample (at least 1).
    pub parts: u8,
    /// The sample's (or batch's) index in its epoch.
    pub index: u64,
    /// The epoch.
    pub epoch: u32,
    /// The shard the sample comes from.
    pub shard: u32,
    /// The (first) sample's position in its shard.
    pub item: u32,
    /// Samples in the message (1 for a sample, the batch size for a batch).
    pub count: u32,
}

impl SampleHeader {
    /// Encoded length, and the payload's offset when there is no header split.
    pub const LEN: usize = 64;
    /// Most dimensions a header describes.
    pub const MAX_NDIM: usize = 6;
    /// The first dimension is the batch: the message holds `count == shape[0]` samples.
    pub const BATCH: u16 = 1;

    /// A header for one sample of `dtype` and `shape`; the dataset fields are 0, `count` 1.
    ///
    /// # Errors
    /// [`WireError::Invalid`] for more than [`Self::MAX_NDIM`] dimensions, a dimension over
    /// `u32::MAX`, or a dtype with no name.
    pub fn new(dtype: DType, shape: &[u64]) -> Result<SampleHeader, WireError> {
        dtype.check()?;
        if shape.len() > Self::MAX_NDIM {
            return Err(WireError::Invalid(
                "a sample header holds at most 6 dimensions",
            ));
        }
        let mut s = [0u32; Self::MAX_NDIM];
        for (d, &n) in s.iter_mut().zip(shape) {
            *d = u32::try_from(n).map_err(|_| WireError::Invalid("a dimension over u32::MAX"))?;
        }
        let h = SampleHeader {
            flags: 0,
            dtype,
            shape: s,
            ndim: shape.len() as u8,
            part: 0,
            parts: 1,
            index: 0,
            epoch: 0,
            shard: 0,
            item: 0,
            count: 1,
        };
        h.payload_bytes()?;
        Ok(h)
    }

    /// The shape.
    pub fn shape(&self) -> &[u32] {
        &self.shape[..usize::from(self.ndim)]
    }

    /// Bytes the payload holds: the product of the shape times the item size.
    ///
    /// # Errors
    /// [`WireError::Invalid`] when that overflows a u64.
    pub fn payload_bytes(&self) -> Result<u64, WireError> {
        self.shape()
            .iter()
            .try_fold(self.dtype.itemsize(), |acc, &d| {
                acc.checked_mul(u64::from(d))
            })
            .ok_or(WireError::Invalid("the shape's size overflows a u64"))
    }

    /// Encodes the header.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4] = VERSION;
        b[5] = KIND_SAMPLE;
        b[6..8].copy_from_slice(&self.flags.to_le_bytes());
        b[8] = self.dtype.code;
        b[9] = self.dtype.bits;
        b[10..12].copy_from_slice(&self.dtype.lanes.to_le_bytes());
        b[12] = self.ndim;
        b[13] = self.part;
        b[14] = self.parts;
        for (i, d) in self.shape.iter().enumerate() {
            b[16 + 4 * i..20 + 4 * i].copy_from_slice(&d.to_le_bytes());
        }
        b[40..48].copy_from_slice(&self.index.to_le_bytes());
        b[48..52].copy_from_slice(&self.epoch.to_le_bytes());
        b[52..56].copy_from_slice(&self.shard.to_le_bytes());
        b[56..60].copy_from_slice(&self.item.to_le_bytes());
        b[60..64].copy_from_slice(&self.count.to_le_bytes());
        b
    }

    /// Decodes and checks a header: the magic, kind and version, a known dtype, at most 6
    /// dimensions (unused ones 0), `part < parts`, and a size that fits a u64.
    ///
    /// # Errors
    /// [`WireError`] saying which check failed.
    pub fn decode(buf: &[u8]) -> Result<SampleHeader, WireError> {
        let flags = header(buf, Self::LEN, KIND_SAMPLE)?;
        let dtype = DType {
            code: buf[8],
            bits: buf[9],
            lanes: u16::from_le_bytes([buf[10], buf[11]]),
        };
        dtype.check()?;
        let ndim = buf[12];
        if usize::from(ndim) > Self::MAX_NDIM {
            return Err(WireError::Invalid(
                "a sample header holds at most 6 dimensions",
            ));
        }
        let mut shape = [0u32; Self::MAX_NDIM];
        for (i, d) in shape.iter_mut().enumerate() {
            *d = u32_at(buf, 16 + 4 * i);
        }
        if shape[usize::from(ndim)..].iter().any(|&d| d != 0) {
            return Err(WireError::Invalid(
                "a sample header's unused dimensions are not 0",
            ));
        }
        let (part, parts) = (buf[13], buf[14]);
        if part >= parts {
            return Err(WireError::Invalid(
                "a sample header's part is not below its parts",
            ));
        }
        let h = SampleHeader {
            flags,
            dtype,
            shape,
            ndim,
            part,
            parts,
            index: u64_at(buf, 40),
            epoch: u32_at(buf, 48),
            shard: u32_at(buf, 52),
            item: u32_at(buf, 56),
            count: u32_at(buf, 60),
        };
        h.payload_bytes()?;
        Ok(h)
    }

    /// Checks that a payload of `len` bytes is what the header describes.
    ///
    /// # Errors
    /// [`WireError::Invalid`] when the lengths differ.
    pub fn check_payload(&self, len: usize) -> Result<(), WireError> {
        if self.payload_bytes()? != len as u64 {
            return Err(WireError::Invalid(
                "the payload's length is not what the sample header's dtype and shape say",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> SampleHeader {
        let mut h = SampleHeader::new(DType::from_name("float32").unwrap(), &[3, 8, 8]).unwrap();
        h.index = 1 << 40;
        h.epoch = 7;
        h.shard = 12;
        h.item = 99;
        h.part = 1;
        h.parts = 2;
        h
    }

    #[test]
    fn roundtrip_and_size() {
        let h = image();
        let b = h.encode();
        assert_eq!(&b[0..4], b"GDRX");
        assert_eq!(b[5], 3);
        let d = SampleHeader::decode(&b).unwrap();
        assert_eq!(d, h);
        assert_eq!(d.shape(), &[3, 8, 8]);
        assert_eq!(d.payload_bytes(), Ok(3 * 8 * 8 * 4));
        assert_eq!(d.check_payload(768), Ok(()));
        assert!(d.check_payload(767).is_err());
        // A scalar: ndim 0, one element.
        let s = SampleHeader::new(DType::from_name("int64").unwrap(), &[]).unwrap();
        assert_eq!(
            SampleHeader::decode(&s.encode()).unwrap().payload_bytes(),
            Ok(8)
        );
    }

    #[test]
    fn dtype_names() {
        for (name, d) in NAMED {
            assert_eq!(DType::from_name(name), Some(d));
            assert_eq!(d.name(), Some(name));
        }
        assert_eq!(DType::from_name("float8"), None);
        assert_eq!(DType::U8.name(), Some("uint8"));
        assert_eq!(DType::from_name("bfloat16").unwrap().itemsize(), 2);
    }

    #[test]
    fn bad_headers_are_rejected_with_the_reason() {
        let good = image().encode();
        let with = |i: usize, v: u8| {
            let mut b = good;
            b[i] = v;
            SampleHeader::decode(&b)
        };
        assert_eq!(
            SampleHeader::decode(&good[..40]),
            Err(WireError::TooShort { need: 64, got: 40 })
        );
        assert_eq!(with(5, 1), Err(WireError::WrongKind { got: 1, want: 3 }));
        assert!(matches!(with(8, 3), Err(WireError::Invalid(m)) if m.contains("dtype")));
        assert!(matches!(with(9, 12), Err(WireError::Invalid(m)) if m.contains("dtype")));
        assert!(matches!(with(12, 7), Err(WireError::Invalid(m)) if m.contains("6 dimensions")));
        // ndim 2 while the third dimension is 8.
        assert!(matches!(with(12, 2), Err(WireError::Invalid(m)) if m.contains("unused")));
        assert!(matches!(with(13, 2), Err(WireError::Invalid(m)) if m.contains("part")));
        // Six dimensions of u32::MAX overflow a u64.
        let mut b = good;
        b[12] = 6;
        b[16..40].fill(0xff);
        assert!(
            matches!(SampleHeader::decode(&b), Err(WireError::Invalid(m)) if m.contains("overflows"))
        );
        assert!(SampleHeader::new(DType::U8, &[1; 7]).is_err());
        assert!(SampleHeader::new(DType::U8, &[1 << 33]).is_err());
        assert!(SampleHeader::new(DType::new(2, 24), &[1]).is_err());
    }
}
