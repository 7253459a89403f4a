//! `gdrx.SampleHeader`: the 64-byte header of a typed message (gdrx-wire's [`SampleHeader`]).

use gdrx_core::wire::{DType, SampleHeader, WireError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::errors::raise;

/// The header that leads each typed message: the payload's dtype and shape, and where it comes
/// from in the dataset.
///
/// SampleHeader(dtype, shape, *, index=0, epoch=0, shard=0, item=0, count=None, part=0,
///              parts=1, batch=False)
///
/// `dtype` is a numpy dtype name ("float32", "uint8", "bfloat16", ...), `shape` at most 6
/// dimensions. `index` is the sample's (or batch's) index in its epoch, `item` the (first)
/// sample's position in `shard`; `count` is the samples the message holds (default: `shape[0]`
/// for a batch, else 1). A sample made of several tensors (an image and its label) is sent as
/// `parts` messages, `part` 0, 1, ... of one index. `encode()` gives the 64 bytes,
/// `SampleHeader.decode(b)` reads them back.
#[pyclass(name = "SampleHeader", module = "gdrx._gdrx", frozen, eq)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PySampleHeader(pub SampleHeader);

pub(crate) fn protocol_error(py: Python<'_>, what: &str, e: &WireError) -> PyErr {
    raise(py, "ProtocolError", format!("{what}: {e}"), None)
}

#[pymethods]
impl PySampleHeader {
    #[new]
    #[pyo3(signature = (dtype, shape, *, index=0, epoch=0, shard=0, item=0, count=None, part=0,
        parts=1, batch=false))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        dtype: &str,
        shape: Vec<u64>,
        index: u64,
        epoch: u32,
        shard: u32,
        item: u32,
        count: Option<u32>,
        part: u8,
        parts: u8,
        batch: bool,
    ) -> PyResult<PySampleHeader> {
        let config = |msg: String| raise(py, "ConfigError", msg, None);
        let dt = DType::from_name(dtype).ok_or_else(|| {
            config(format!(
                "dtype {dtype:?} cannot travel in a sample header: use bool, (u)int8-64, \
                 float16/32/64, bfloat16 or complex64"
            ))
        })?;
        let mut h = SampleHeader::new(dt, &shape).map_err(|e| config(e.to_string()))?;
        if part >= parts {
            return Err(config(format!("part {part} is not below parts {parts}")));
        }
        if batch && shape.is_empty() {
            return Err(config("a batch needs a first (batch) dimension".into()));
        }
        h.index = index;
        h.epoch = epoch;
        h.shard = shard;
        h.item = item;
        h.part = part;
        h.parts = parts;
        if batch {
            h.flags |= SampleHeader::BATCH;
        }
        h.count = count.unwrap_or(if batch { h.shape()[0] } else { 1 });
        Ok(PySampleHeader(h))
    }

    /// Reads a header from the first 64 bytes of `data`.
    #[staticmethod]
    fn decode(py: Python<'_>, data: &[u8]) -> PyResult<PySampleHeader> {
        SampleHeader::decode(data)
            .map(PySampleHeader)
            .map_err(|e| protocol_error(py, "not a sample header", &e))
    }

    /// The 64 bytes.
    fn encode<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.0.encode())
    }

    /// The payload's dtype, by its numpy name.
    #[getter]
    fn dtype(&self) -> &'static str {
        self.0.dtype.name().expect("decoded dtypes have names")
    }

    /// The payload's shape.
    #[getter]
    fn shape(&self) -> Vec<u32> {
        self.0.shape().to_vec()
    }

    /// Bytes of the payload the header describes.
    #[getter]
    fn nbytes(&self) -> u64 {
        self.0.payload_bytes().expect("checked when built")
    }

    /// The sample's (or batch's) index in its epoch.
    #[getter]
    fn index(&self) -> u64 {
        self.0.index
    }

    #[getter]
    fn epoch(&self) -> u32 {
        self.0.epoch
    }

    #[getter]
    fn shard(&self) -> u32 {
        self.0.shard
    }

    /// The (first) sample's position in its shard.
    #[getter]
    fn item(&self) -> u32 {
        self.0.item
    }

    /// Samples in the message.
    #[getter]
    fn count(&self) -> u32 {
        self.0.count
    }

    #[getter]
    fn part(&self) -> u8 {
        self.0.part
    }

    #[getter]
    fn parts(&self) -> u8 {
        self.0.parts
    }

    /// Whether the first dimension is a batch.
    #[getter]
    fn batch(&self) -> bool {
        self.0.flags & SampleHeader::BATCH != 0
    }

    fn __repr__(&self) -> String {
        let h = &self.0;
        format!(
            "SampleHeader({:?}, {:?}, index={}, epoch={}, shard={}, item={}, count={}, part={}, \
             parts={}, batch={})",
            self.dtype(),
            h.shape(),
            h.index,
            h.epoch,
            h.shard,
            h.item,
            h.count,
            h.part,
            h.parts,
            if self.batch() { "True" } else { "False" }
        )
    }
}
