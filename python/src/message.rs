//! A received message as a Python object, and its DLPack export.
//!
//! The message owns its [`Lease`] through an `Arc<Held>`. Every DLPack capsule (and so every
//! numpy array, torch tensor or JAX array made from it, and every view or slice of those) holds
//! another clone of that `Arc` as its manager context. The lease is returned to the pool, and
//! the slot reposted, when the last of them is dropped: by `Message.release()` or garbage
//! collection of the message, and by the DLPack deleter of each capsule. The deleter may run on
//! any thread without the GIL; it only drops the `Arc`, and the lease's return is the pool's
//! lock-free recycle ring. It never touches Python.

use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use dlpark::ffi::{
    DLDataType, DLDataTypeCode, DLDevice, DLManagedTensor, DLManagedTensorVersioned,
};
use dlpark::metadata::Dynamic;
use dlpark::python::{export_dlpack, DlpackExporter, ExportRequest};
use dlpark::{DlpackFlags, Managed, ManagedTensorBase};
use gdrx_core::wire::{DType, SampleHeader};
use gdrx_core::Lease;
use pyo3::exceptions::{PyBufferError, PyValueError};
use pyo3::prelude::*;

use crate::errors::raise;
use crate::sample::{protocol_error, PySampleHeader};

/// Counters shared by a receiver and its messages (they outlive the receiver).
#[derive(Debug, Default)]
pub struct Counters {
    /// Messages (or views of them) alive: leases not yet returned.
    pub alive: AtomicU64,
    /// Leases returned to the pool.
    pub returned: AtomicU64,
    /// Leases returned after the receiver was closed.
    pub returned_after_close: AtomicU64,
    /// `release()` called on an already released message.
    pub double_releases: AtomicU64,
    /// Set when the receiver closes.
    pub closed: AtomicBool,
}

/// What keeps a slot lent: dropped when the message and all its exported views are gone.
#[derive(Debug)]
pub struct Held {
    /// Its drop returns the slot.
    lease: Lease,
    /// CPU address of the payload.
    addr: usize,
    counters: Arc<Counters>,
}

impl Held {
    pub fn new(lease: Lease, addr: usize, counters: Arc<Counters>) -> Held {
        counters.alive.fetch_add(1, Ordering::Relaxed);
        Held {
            lease,
            addr,
            counters,
        }
    }

    /// The payload's bytes. Only for a `Held` from [`Message::held`], which refuses memory the
    /// CPU cannot read.
    fn payload(&self) -> &[u8] {
        self.lease
            .payload()
            .expect("Message::held refuses memory the CPU cannot read")
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let c = &self.counters;
        c.alive.fetch_sub(1, Ordering::Relaxed);
        c.returned.fetch_add(1, Ordering::Relaxed);
        if c.closed.load(Ordering::Relaxed) {
            c.returned_after_close.fetch_add(1, Ordering::Relaxed);
        }
        // `lease` drops after this body: its slot goes back through the recycle ring.
    }
}

/// One received message: its bytes stay in the receive buffer (zero copy) until the message and
/// every array made from it are gone.
///
/// Export it with `numpy.from_dlpack(msg)`, `torch.from_dlpack(msg)` or
/// `jax.dlpack.from_dlpack(msg)`, or use `msg.numpy()`; `msg.release()` gives the message's own
/// reference back early. A typed message (sent with `Sender.send_tensor`) has a `header`
/// (`SampleHeader`), and `msg.tensor()` is its payload with the header's dtype and shape.
#[pyclass(module = "gdrx._gdrx", frozen)]
#[derive(Debug)]
pub struct Message {
    held: Mutex<Option<Arc<Held>>>,
    nbytes: usize,
    imm: Option<u32>,
    peer: Option<u32>,
    qp_num: u32,
    slot: u32,
    addr: usize,
    /// The receiver splits headers off (the sample header is `Lease::header`, not the
    /// payload's first 64 bytes).
    split: bool,
    counters: Arc<Counters>,
}

impl Message {
    pub fn new(lease: Lease, peer: Option<u32>, split: bool, counters: &Arc<Counters>) -> Message {
        let nbytes = lease.payload_len();
        // Host, huge-page and udmabuf memory is CPU-readable; the receiver only builds
        // CPU-readable pools.
        let addr = lease.payload().map_or(0, |p| p.as_ptr() as usize);
        let meta = lease.meta();
        let slot = lease.slot();
        Message {
            held: Mutex::new(Some(Arc::new(Held::new(lease, addr, Arc::clone(counters))))),
            nbytes,
            imm: meta.imm,
            peer,
            qp_num: meta.qp_num,
            slot,
            addr,
            split,
            counters: Arc::clone(counters),
        }
    }

    /// The sample header, and the payload's offset after it.
    fn sample(&self, py: Python<'_>, held: &Held) -> PyResult<(SampleHeader, usize)> {
        let (bytes, offset) = if self.split {
            (held.lease.header(), 0)
        } else {
            let p = held.payload();
            (&p[..p.len().min(SampleHeader::LEN)], SampleHeader::LEN)
        };
        let h = SampleHeader::decode(bytes).map_err(|e| {
            protocol_error(
                py,
                &format!(
                    "message (slot {}, {} bytes) has no sample header (send typed messages \
                     with Sender.send_tensor)",
                    self.slot, self.nbytes
                ),
                &e,
            )
        })?;
        Ok((h, offset))
    }

    fn held(&self, py: Python<'_>) -> PyResult<Arc<Held>> {
        if self.addr == 0 {
            return Err(raise(
                py,
                "Unsupported",
                format!(
                    "message (slot {}) lies in memory the CPU cannot read",
                    self.slot
                ),
                None,
            ));
        }
        let g = self.held.lock().unwrap_or_else(|p| p.into_inner());
        g.clone().ok_or_else(|| {
            raise(
                py,
                "Released",
                format!(
                    "message (slot {}) was released: make arrays from it before release()",
                    self.slot
                ),
                None,
            )
        })
    }
}

#[pymethods]
impl Message {
    /// Payload bytes.
    #[getter]
    fn nbytes(&self) -> usize {
        self.nbytes
    }

    /// The immediate data (SEND_WITH_IMM), or None.
    #[getter]
    fn imm(&self) -> Option<u32> {
        self.imm
    }

    /// The sender's connection tag (from its Hello), or None when unknown.
    #[getter]
    fn peer(&self) -> Option<u32> {
        self.peer
    }

    /// The local QP number the message arrived on.
    #[getter]
    fn qp_num(&self) -> u32 {
        self.qp_num
    }

    /// The pool slot holding the message.
    #[getter]
    fn slot(&self) -> u32 {
        self.slot
    }

    /// The payload's address in this process (what every zero-copy view points at).
    #[getter]
    fn address(&self) -> usize {
        self.addr
    }

    /// Whether `release()` was called.
    #[getter]
    fn released(&self) -> bool {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
    }

    /// Gives the message's own reference back. The slot is reposted once every array made from
    /// the message is gone too. Returns False (and counts it) when already released.
    fn release(&self) -> bool {
        let taken = self.held.lock().unwrap_or_else(|p| p.into_inner()).take();
        if taken.is_none() {
            self.counters
                .double_releases
                .fetch_add(1, Ordering::Relaxed);
        }
        taken.is_some()
    }

    /// The message's `SampleHeader` (a `ProtocolError` when it has none).
    #[getter]
    fn header(&self, py: Python<'_>) -> PyResult<PySampleHeader> {
        let held = self.held(py)?;
        Ok(PySampleHeader(self.sample(py, &held)?.0))
    }

    /// The payload as a `Tensor` of the header's dtype and shape (zero copy: `Tensor.address`
    /// is in this message's buffer). Hand it to `torch.from_dlpack`, `numpy.from_dlpack` or
    /// `jax.dlpack.from_dlpack`, or call its `numpy()`. It keeps the buffer lent, like any view.
    /// `ProtocolError` when the message has no header or its length is not what the header
    /// says.
    fn tensor(&self, py: Python<'_>) -> PyResult<Tensor> {
        let held = self.held(py)?;
        let (h, offset) = self.sample(py, &held)?;
        let len = self.nbytes.saturating_sub(offset);
        h.check_payload(len).map_err(|e| {
            protocol_error(
                py,
                &format!(
                    "message (slot {}): {len} payload bytes for a {} tensor of shape {:?}",
                    self.slot,
                    h.dtype.name().unwrap_or("?"),
                    h.shape()
                ),
                &e,
            )
        })?;
        let addr = held.addr + offset;
        Ok(Tensor {
            export: Export {
                held,
                addr,
                shape: h.shape().iter().map(|&d| i64::from(d)).collect(),
                dtype: dl_dtype(h.dtype),
            },
            header: h,
        })
    }

    /// A zero-copy numpy view of the payload (uint8, `nbytes` long). It keeps the slot lent
    /// for as long as it (or any view of it) lives.
    fn numpy<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        slf.py()
            .import("numpy")?
            .call_method1("from_dlpack", (slf,))
    }

    /// A memoryview of the payload (zero copy, through a numpy view).
    #[getter]
    fn memoryview<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let arr = Self::numpy(slf)?;
        slf.py()
            .import("builtins")?
            .getattr("memoryview")?
            .call1((arr,))
    }

    /// A copy of the payload as bytes.
    fn tobytes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, pyo3::types::PyBytes>> {
        let held = self.held(py)?;
        Ok(pyo3::types::PyBytes::new(py, held.payload()))
    }

    /// DLPack device: (kDLCPU, 0).
    fn __dlpack_device__(&self) -> (u32, i32) {
        (1, 0)
    }

    /// Exports the payload as a 1-D uint8 DLPack tensor (legacy or versioned capsule, as the
    /// consumer's `max_version` asks). Zero copy: `copy=True` is refused.
    #[pyo3(signature = (*, stream=None, max_version=None, dl_device=None, copy=None))]
    fn __dlpack__<'py>(
        &self,
        py: Python<'py>,
        stream: Option<&Bound<'py, PyAny>>,
        max_version: Option<(u32, u32)>,
        dl_device: Option<(u32, i32)>,
        copy: Option<bool>,
    ) -> PyResult<Py<PyAny>> {
        let held = self.held(py)?;
        let export = Export {
            addr: held.addr,
            held,
            shape: vec![self.nbytes as i64],
            dtype: DLDataType::of::<u8>(),
        };
        export.export(py, stream, max_version, dl_device, copy)
    }

    fn __len__(&self) -> usize {
        self.nbytes
    }

    fn __repr__(&self) -> String {
        format!(
            "<gdrx.Message {} bytes, imm={:?}, peer={:?}, slot {}{}>",
            self.nbytes,
            self.imm,
            self.peer,
            self.slot,
            if self.released() { ", released" } else { "" }
        )
    }
}

/// A received tensor: a typed view of a message's payload (`Message.tensor()`).
///
/// It holds the message's buffer until it and every array made from it are gone. Export it with
/// `torch.from_dlpack(t)`, `numpy.from_dlpack(t)` or `jax.dlpack.from_dlpack(t)`, or call
/// `t.numpy()`.
#[pyclass(module = "gdrx._gdrx", frozen)]
#[derive(Debug)]
pub struct Tensor {
    export: Export,
    header: SampleHeader,
}

#[pymethods]
impl Tensor {
    /// The element type (numpy name).
    #[getter]
    fn dtype(&self) -> &'static str {
        self.header.dtype.name().expect("decoded dtypes have names")
    }

    #[getter]
    fn shape(&self) -> Vec<u32> {
        self.header.shape().to_vec()
    }

    #[getter]
    fn nbytes(&self) -> u64 {
        self.header.payload_bytes().expect("checked when decoded")
    }

    /// The data's address in this process (inside the message's buffer).
    #[getter]
    fn address(&self) -> usize {
        self.export.addr
    }

    /// The message's `SampleHeader`.
    #[getter]
    fn header(&self) -> PySampleHeader {
        PySampleHeader(self.header)
    }

    /// A zero-copy numpy array of the tensor's dtype and shape (bfloat16 needs a numpy dtype
    /// for it, such as ml_dtypes').
    fn numpy<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        slf.py()
            .import("numpy")?
            .call_method1("from_dlpack", (slf,))
    }

    /// DLPack device: (kDLCPU, 0).
    fn __dlpack_device__(&self) -> (u32, i32) {
        (1, 0)
    }

    /// Exports the tensor (legacy or versioned capsule, as `max_version` asks); zero copy.
    #[pyo3(signature = (*, stream=None, max_version=None, dl_device=None, copy=None))]
    fn __dlpack__<'py>(
        &self,
        py: Python<'py>,
        stream: Option<&Bound<'py, PyAny>>,
        max_version: Option<(u32, u32)>,
        dl_device: Option<(u32, i32)>,
        copy: Option<bool>,
    ) -> PyResult<Py<PyAny>> {
        self.export.export(py, stream, max_version, dl_device, copy)
    }

    fn __repr__(&self) -> String {
        format!(
            "<gdrx.Tensor {} {:?}, index {}>",
            self.dtype(),
            self.header.shape(),
            self.header.index
        )
    }
}

fn dl_dtype(d: DType) -> DLDataType {
    DLDataType {
        code: DLDataTypeCode(d.code),
        bits: d.bits,
        lanes: d.lanes,
    }
}

/// One export of a message's payload, or part of it, as a compact CPU tensor.
#[derive(Debug)]
struct Export {
    held: Arc<Held>,
    /// The data: `held`'s payload, or a header's length into it.
    addr: usize,
    shape: Vec<i64>,
    dtype: DLDataType,
}

impl Export {
    fn export<'py>(
        &self,
        py: Python<'py>,
        stream: Option<&Bound<'py, PyAny>>,
        max_version: Option<(u32, u32)>,
        dl_device: Option<(u32, i32)>,
        copy: Option<bool>,
    ) -> PyResult<Py<PyAny>> {
        if stream.is_some_and(|s| !s.is_none()) {
            // The array API: for CPU arrays the stream must be None.
            return Err(PyValueError::new_err(
                "a CPU tensor takes no stream (stream must be None)",
            ));
        }
        let request = ExportRequest::parse(None, max_version, dl_device, copy)?;
        export_dlpack(self, py, request)
    }

    fn tensor<M: ManagedTensorBase>(&self) -> PyResult<Managed<M>> {
        let mut t = Dynamic::compact(self.shape.clone())
            .initialize_as::<M>(Arc::clone(&self.held))
            .map_err(|e| PyBufferError::new_err(e.to_string()))?;
        t.set_data(self.addr as *mut c_void)
            .set_dtype(self.dtype)
            .set_device(DLDevice::CPU);
        // SAFETY: the data pointer lies in the payload of the lease held by the tensor's own
        // context (an Arc<Held>), so it stays valid until the tensor's deleter drops that
        // context; the shape times the dtype's size fits the payload (checked against the
        // sample header, or the payload's length itself); the shape and strides are dlpark's
        // compact copies; the memory is writable host memory
        // lent to the consumer alone (no READ_ONLY), and not a copy (no IS_COPIED).
        Ok(unsafe { t.finish() })
    }
}

impl DlpackExporter for Export {
    fn device(&self) -> DLDevice {
        DLDevice::CPU
    }

    fn flags(&self) -> DlpackFlags {
        DlpackFlags::empty()
    }

    fn prepare_export(&self, _py: Python<'_>, _request: &ExportRequest<'_>) -> PyResult<()> {
        Ok(())
    }

    fn export_legacy(&self, _py: Python<'_>) -> PyResult<Managed<DLManagedTensor>> {
        self.tensor()
    }

    fn export_versioned(&self, _py: Python<'_>) -> PyResult<Managed<DLManagedTensorVersioned>> {
        self.tensor()
    }
}
