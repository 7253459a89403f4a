//! `gdrx.Sender`: the Rust [`Sender`], sending with the GIL released.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use gdrx_core::Sender;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::errors::{self, raise};
use crate::wait;

/// Sends messages to a gdrx receiver over RDMA (SEND, or SEND_WITH_IMM with `imm`).
///
/// Sender(ip, port, *, max_msg=65536, device=None, tag=0, depth=16, timeout=20.0, credits=True)
///
/// Each message is copied into one of `depth` registered buffers. A receiver whose consumer
/// holds every buffer makes `send` wait, never drop: for the credits a gdrx receiver grants
/// (`credits=False`: for RNR NAKs); `timeout` (seconds) bounds that wait, and connecting. `tag`
/// is reported by the receiver as `Message.peer`.
#[pyclass(name = "Sender", module = "gdrx._gdrx", frozen)]
#[derive(Debug)]
pub struct PySender {
    tx: Mutex<Option<Sender>>,
    timeout: Option<f64>,
}

impl PySender {
    fn lock(&self) -> MutexGuard<'_, Option<Sender>> {
        self.tx.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends `parts` as one message, waiting for a free buffer in slices with the GIL
    /// released, checking signals between them.
    fn send_all(&self, py: Python<'_>, parts: &[&[u8]], imm: Option<u32>) -> PyResult<()> {
        // Some(true): sent; Some(false): the sender is closed; None: no buffer came free yet.
        let sent = wait::in_slices(
            py,
            self.timeout,
            |slice| match self.lock().as_mut() {
                Some(tx) => Ok(tx.send_parts(parts, imm, Some(slice))?.then_some(true)),
                None => Ok(Some(false)),
            },
            |py, e| errors::sender(py, &e),
        )?;
        match sent {
            Some(true) => Ok(()),
            Some(false) => Err(raise(py, "Closed", "the sender is closed".into(), None)),
            None => Err(raise(
                py,
                "Timeout",
                format!(
                    "no send buffer came free within {:.3} s: the receiver is not taking \
                     messages (its consumer holds every buffer?)",
                    self.timeout.unwrap_or_default()
                ),
                None,
            )),
        }
    }
}

#[pymethods]
impl PySender {
    #[new]
    #[pyo3(signature = (ip, port, *, max_msg=65536, device=None, tag=0, depth=16, timeout=Some(20.0),
        credits=true))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        ip: &str,
        port: u16,
        max_msg: u32,
        device: Option<String>,
        tag: u32,
        depth: u32,
        timeout: Option<f64>,
        credits: bool,
    ) -> PyResult<PySender> {
        let mut b = Sender::builder(errors::socket_addr(py, ip, port)?, max_msg)
            .tag(tag)
            .depth(depth)
            .credits(credits);
        if let Some(t) = timeout {
            b = b.timeout(Duration::from_secs_f64(t.max(0.001)));
        }
        if let Some(d) = device {
            b = b.device(d);
        }
        let tx = py
            .detach(|| b.connect())
            .map_err(|e| errors::sender(py, &e))?;
        Ok(PySender {
            tx: Mutex::new(Some(tx)),
            timeout,
        })
    }

    /// Sends `data` (bytes; `gdrx.Sender.send` takes any buffer), with immediate data `imm`
    /// when given. Waits for a free buffer up to the sender's timeout (`gdrx.Timeout`); Ctrl-C
    /// interrupts the wait.
    #[pyo3(signature = (data, imm=None))]
    fn send(&self, py: Python<'_>, data: &Bound<'_, PyBytes>, imm: Option<u32>) -> PyResult<()> {
        self.send_all(py, &[data.as_bytes()], imm)
    }

    /// Sends one message made of `header` then `payload` (bytes), as `send` does: the raw form
    /// of `gdrx.Sender.send_tensor`.
    #[pyo3(signature = (header, payload, imm=None))]
    fn send_parts(
        &self,
        py: Python<'_>,
        header: &Bound<'_, PyBytes>,
        payload: &Bound<'_, PyBytes>,
        imm: Option<u32>,
    ) -> PyResult<()> {
        self.send_all(py, &[header.as_bytes(), payload.as_bytes()], imm)
    }
    /// Messages sent so far.
    #[getter]
    fn sent(&self) -> u64 {
        self.lock().as_ref().map_or(0, Sender::sent)
    }

    /// What the receiver's credits did: {"grant", "reads", "waits"} (messages granted in all,
    /// credit reads, sends that waited for credit), or None when the receiver grants none or
    /// `credits=False`.
    #[getter]
    fn credits<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, pyo3::types::PyDict>>> {
        let Some(c) = self.lock().as_ref().and_then(Sender::credits) else {
            return Ok(None);
        };
        let d = pyo3::types::PyDict::new(py);
        d.set_item("grant", c.grant)?;
        d.set_item("reads", c.reads)?;
        d.set_item("waits", c.waits)?;
        Ok(Some(d))
    }

    /// The receiver's buffer size (from its Welcome).
    #[getter]
    fn recv_buf(&self) -> u32 {
        self.lock().as_ref().map_or(0, |t| t.welcome().recv_buf)
    }

    /// Waits for every message to complete, then disconnects. Closing twice is harmless.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let Some(tx) = self.lock().take() else {
            return Ok(());
        };
        let t = self.timeout.map(|t| Duration::from_secs_f64(t.max(0.0)));
        py.detach(|| tx.close(t))
            .map_err(|e| errors::sender(py, &e))
    }

    fn __enter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        self.close(py)?;
        Ok(false)
    }
}
