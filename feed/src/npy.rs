//! The `.npy` header: what a shard's array holds and where its data starts.
//!
//! Written here rather than taken from a crate (npyz, ndarray-npy): the feeder needs only the
//! header (dtype, shape, data offset) so that it can send byte ranges of the file as they are;
//! those crates parse the data into typed elements. Format: numpy's NEP 1 (versions 1 to 3).

use std::io::Read;

use gdrx_wire::DType;

/// Why a header does not parse.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NpyError {
    /// Reading failed.
    #[error("reading the .npy header: {0}")]
    Io(#[from] std::io::Error),
    /// Not a `.npy` file.
    #[error("not a .npy file (no \\x93NUMPY magic)")]
    Magic,
    /// A version this reader does not know.
    #[error(".npy format version {0}.{1} (this reader knows 1.0 to 3.0)")]
    Version(u8, u8),
    /// The header dictionary is malformed.
    #[error("malformed .npy header {header:?}: {why}")]
    Header {
        /// The header text.
        header: String,
        /// What is wrong.
        why: &'static str,
    },
    /// A dtype the wire cannot carry.
    #[error(
        ".npy dtype {0:?} cannot be sent: use a little-endian bool, (u)int8-64, float16/32/64 or \
         complex64 array"
    )]
    Dtype(String),
    /// Fortran order.
    #[error("a Fortran-ordered .npy array: save it in C order (numpy.ascontiguousarray)")]
    FortranOrder,
}

/// A parsed header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NpyHeader {
    /// The element type.
    pub dtype: DType,
    /// The shape.
    pub shape: Vec<u64>,
    /// Where the data starts in the file.
    pub data_offset: u64,
}

impl NpyHeader {
    /// Reads the header at the start of `r`.
    ///
    /// # Errors
    /// [`NpyError`] saying what is wrong.
    pub fn read(r: &mut impl Read) -> Result<NpyHeader, NpyError> {
        let mut pre = [0u8; 8];
        r.read_exact(&mut pre)?;
        if &pre[..6] != b"\x93NUMPY" {
            return Err(NpyError::Magic);
        }
        let (major, minor) = (pre[6], pre[7]);
        let (len, at) = match major {
            1 => {
                let mut b = [0u8; 2];
                r.read_exact(&mut b)?;
                (u64::from(u16::from_le_bytes(b)), 10)
            }
            2 | 3 => {
                let mut b = [0u8; 4];
                r.read_exact(&mut b)?;
                (u64::from(u32::from_le_bytes(b)), 12)
            }
            _ => return Err(NpyError::Version(major, minor)),
        };
        if len > 1 << 20 {
            return Err(NpyError::Header {
                header: String::new(),
                why: "longer than 1 MiB",
            });
        }
        let mut text = vec![0u8; len as usize];
        r.read_exact(&mut text)?;
        let text = String::from_utf8_lossy(&text).into_owned();
        let (dtype, shape) = parse_dict(&text)?;
        Ok(NpyHeader {
            dtype,
            shape,
            data_offset: at + len,
        })
    }

    /// Elements per item along the first axis (the product of the other dimensions).
    pub fn item_elements(&self) -> u64 {
        self.shape.iter().skip(1).product()
    }

    /// Bytes per item along the first axis.
    pub fn item_bytes(&self) -> u64 {
        self.item_elements() * self.dtype.itemsize()
    }

    /// Items along the first axis (1 for a 0-d array).
    pub fn items(&self) -> u64 {
        self.shape.first().copied().unwrap_or(1)
    }
}

fn parse_dict(text: &str) -> Result<(DType, Vec<u64>), NpyError> {
    let bad = |why| NpyError::Header {
        header: text.trim_end().to_owned(),
        why,
    };
    let value = |key: &str| -> Result<&str, NpyError> {
        let at = text
            .find(&format!("'{key}'"))
            .ok_or_else(|| bad("a key is missing"))?;
        let rest = &text[at + key.len() + 2..];
        let colon = rest.find(':').ok_or_else(|| bad("no ':' after a key"))?;
        Ok(rest[colon + 1..].trim_start())
    };
    let descr = value("descr")?;
    let descr = descr
        .strip_prefix('\'')
        .and_then(|d| d.split('\'').next())
        .ok_or_else(|| bad("descr is not a string (structured dtypes cannot be sent)"))?;
    let fortran = value("fortran_order")?;
    if fortran.starts_with("True") {
        return Err(NpyError::FortranOrder);
    }
    if !fortran.starts_with("False") {
        return Err(bad("fortran_order is neither True nor False"));
    }
    let shape = value("shape")?;
    let inner = shape
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| bad("shape is not a tuple"))?;
    let shape = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_end_matches('L').parse::<u64>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| bad("a dimension is not a number"))?;
    Ok((dtype(descr)?, shape))
}

fn dtype(descr: &str) -> Result<DType, NpyError> {
    let unsupported = || NpyError::Dtype(descr.to_owned());
    let (order, code) = descr.split_at(1.min(descr.len()));
    // '<' little-endian, '|' not applicable (one byte), '=' native: this crate runs on
    // little-endian hosts only (x86-64 and aarch64 Linux), where '=' is '<'.
    if !matches!(order, "<" | "|" | "=") {
        return Err(unsupported());
    }
    let name = match code {
        "b1" => "bool",
        "i1" => "int8",
        "i2" => "int16",
        "i4" => "int32",
        "i8" => "int64",
        "u1" => "uint8",
        "u2" => "uint16",
        "u4" => "uint32",
        "u8" => "uint64",
        "f2" => "float16",
        "f4" => "float32",
        "f8" => "float64",
        "c8" => "complex64",
        _ => return Err(unsupported()),
    };
    DType::from_name(name).ok_or_else(unsupported)
}

/// Encodes a version-1 header for `dtype` (a numpy name) and `shape`, padded to 64 bytes: what
/// `numpy.save` writes. For tests and tools that write shards.
pub fn encode_header(descr: &str, shape: &[u64]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(u64::to_string).collect();
    let tuple = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {tuple}, }}");
    let total = (10 + dict.len() + 1).div_ceil(64) * 64;
    while 10 + dict.len() + 1 < total {
        dict.push(' ');
    }
    dict.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numpy_headers_parse() {
        // As numpy 2 writes them.
        let h = encode_header("<f4", &[100, 3, 8, 8]);
        assert_eq!(h.len() % 64, 0);
        let p = NpyHeader::read(&mut &h[..]).unwrap();
        assert_eq!(p.dtype, DType::from_name("float32").unwrap());
        assert_eq!(p.shape, [100, 3, 8, 8]);
        assert_eq!(p.data_offset, h.len() as u64);
        assert_eq!(
            (p.items(), p.item_elements(), p.item_bytes()),
            (100, 192, 768)
        );
        let v = NpyHeader::read(&mut &encode_header("<i8", &[7])[..]).unwrap();
        assert_eq!((v.items(), v.item_bytes()), (7, 8));
        let s = NpyHeader::read(&mut &encode_header("|b1", &[])[..]).unwrap();
        assert_eq!((s.shape.len(), s.items()), (0, 1));
        // Version 2 (u32 length).
        let dict = "{'descr': '|u1', 'fortran_order': False, 'shape': (4, 2), }\n";
        let mut v2 = b"\x93NUMPY\x02\x00".to_vec();
        v2.extend_from_slice(&(dict.len() as u32).to_le_bytes());
        v2.extend_from_slice(dict.as_bytes());
        let p = NpyHeader::read(&mut &v2[..]).unwrap();
        assert_eq!(
            (p.shape.clone(), p.data_offset),
            (vec![4, 2], v2.len() as u64)
        );
    }

    #[test]
    fn bad_headers_say_why() {
        let err = |b: &[u8]| NpyHeader::read(&mut &b[..]).unwrap_err().to_string();
        assert!(err(b"PK\x03\x04xxxxxxxx").contains("no \\x93NUMPY magic"));
        assert!(err(b"\x93NUMPY\x04\x00\x00\x00").contains("version 4.0"));
        assert!(err(&encode_header(">f4", &[1])).contains("cannot be sent"));
        assert!(err(&encode_header("<U5", &[1])).contains("cannot be sent"));
        assert!(err(&encode_header("<f4", &[1])[..20]).contains("reading"));
        let edit = |from: &str, to: &str| {
            let h = encode_header("<f4", &[2, 2]);
            let at = h
                .windows(from.len())
                .position(|w| w == from.as_bytes())
                .unwrap();
            [&h[..at], to.as_bytes(), &h[at + from.len()..]].concat()
        };
        assert!(err(&edit("False", "True ")).contains("C order"));
        assert!(err(&edit("'<f4'", "[('a', '<f4')]")).contains("structured"));
        assert!(err(&edit("'shape'", "'shope'")).contains("missing"));
        assert!(err(&edit("(2, 2)", "(2, x)")).contains("not a number"));
    }
}
