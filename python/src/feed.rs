//! The data service's Rust side for Python: `gdrx.Dataset` (shards read by (shard, item)),
//! `gdrx.plan` (a rank's epoch order) and `_gdrx.feed` (one rank fed over RDMA), which
//! `gdrx.Feeder` (python/gdrx/feeder.py) drives.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use gdrx_feed::send::{feed as feed_rank, FeedError, FeedOptions};
use gdrx_feed::{Cursor, Dataset, EpochPlan, StreamSpec};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::errors::{self, raise};

/// A dataset of shards: a directory of .npy shards (`000.npy`, or `000.image.npy` with
/// `000.label.npy`) or WebDataset tar shards (`*.tar`, members `KEY.EXT`), indexed when opened.
///
/// Dataset(path); `len(ds)`, `ds.shard_sizes`, `ds.parts`, `ds.read(shard, item)` (a tuple of
/// numpy arrays, one per part: what a feeder sends for that sample).
#[pyclass(name = "Dataset", module = "gdrx._gdrx", frozen)]
#[derive(Debug)]
pub struct PyDataset {
    pub(crate) ds: Arc<Dataset>,
    path: PathBuf,
}

fn dataset_error(py: Python<'_>, e: impl std::fmt::Display) -> PyErr {
    raise(py, "ConfigError", e.to_string(), None)
}

#[pymethods]
impl PyDataset {
    #[new]
    fn new(py: Python<'_>, path: PathBuf) -> PyResult<PyDataset> {
        let ds = py
            .detach(|| Dataset::open(&path))
            .map_err(|e| dataset_error(py, e))?;
        Ok(PyDataset {
            ds: Arc::new(ds),
            path,
        })
    }

    /// Samples per shard, in shard order.
    #[getter]
    fn shard_sizes(&self) -> Vec<u64> {
        self.ds.shard_sizes()
    }

    /// The part names of each sample.
    #[getter]
    fn parts(&self) -> Vec<String> {
        self.ds.parts().to_vec()
    }

    /// The sample at (shard, item) as numpy arrays, one per part (copies, read from disk).
    fn read<'py>(
        &self,
        py: Python<'py>,
        shard: u32,
        item: u64,
    ) -> PyResult<Vec<Bound<'py, PyAny>>> {
        let s = py
            .detach(|| self.ds.read(shard, item))
            .map_err(|e| dataset_error(py, e))?;
        let np = py.import("numpy")?;
        s.parts
            .into_iter()
            .map(|p| {
                let dtype = p.dtype.name().unwrap_or("uint8");
                let shape: Vec<u64> = p.shape.clone();
                np.call_method1("frombuffer", (PyBytes::new(py, &p.data), dtype))?
                    .call_method1("reshape", (shape,))
            })
            .collect()
    }

    fn __len__(&self) -> usize {
        self.ds.len() as usize
    }

    fn __repr__(&self) -> String {
        format!(
            "<gdrx.Dataset {} : {} samples in {} shards, parts {:?}>",
            self.path.display(),
            self.ds.len(),
            self.ds.shard_sizes().len(),
            self.ds.parts()
        )
    }
}

/// A rank's samples of one epoch, in order: a list of (index, shard, item). `seed=None` keeps
/// the dataset's order. The same arguments give the same list on every run and machine; what
/// `gdrx-feed` and `gdrx.Feeder` send rank `rank` is exactly this.
#[pyfunction]
#[pyo3(signature = (shard_sizes, *, seed, epoch, world, rank))]
pub fn plan(
    py: Python<'_>,
    shard_sizes: Vec<u64>,
    seed: Option<u64>,
    epoch: u32,
    world: u32,
    rank: u32,
) -> PyResult<Vec<(u64, u32, u64)>> {
    let p = EpochPlan::new(&shard_sizes, seed, epoch, world, rank)
        .map_err(|e| raise(py, "ConfigError", e.to_string(), None))?;
    Ok(p.from_cursor(Cursor { epoch, next: 0 })
        .map(|s| (s.index, s.shard, s.item))
        .collect())
}

/// Feeds one rank: connects to `address` (its gdrx.Receiver) and sends its samples from
/// `cursor` (epoch, samples consumed) to the end of epoch `epochs - 1`, with the GIL released;
/// Ctrl-C stops it. `credits=False` ignores the rank's credits (RNR NAKs alone hold the feeder
/// back). `batch > 1` collates up to that many consecutive samples into one message per part
/// (a batch: shape `[n, ...]`, `header.batch`, `header.count == n`). With `done` (a callable),
/// the feed keeps the connection after the end of the stream until `done()` is true (asked
/// about every 250 ms): a rank that disconnects first raises `gdrx.PeerGone`, since it may
/// have died holding samples it had not consumed. Returns {"rank", "messages", "bytes",
/// "secs", "cursor", "credits"}.
#[pyfunction]
#[pyo3(signature = (dataset, address, *, rank, world, seed, epochs, cursor=(0, 0), device=None,
    timeout=60.0, credits=true, batch=1, done=None))]
#[allow(clippy::too_many_arguments)]
pub fn feed<'py>(
    py: Python<'py>,
    dataset: &PyDataset,
    address: (String, u16),
    rank: u32,
    world: u32,
    seed: Option<u64>,
    epochs: u32,
    cursor: (u32, u64),
    device: Option<String>,
    timeout: f64,
    credits: bool,
    batch: u32,
    done: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyDict>> {
    let to = errors::socket_addr(py, &address.0, address.1)?;
    let spec = StreamSpec {
        rank,
        world,
        seed,
        from: Cursor {
            epoch: cursor.0,
            next: cursor.1,
        },
        until_epoch: epochs,
        batch,
    };
    let opts = FeedOptions {
        device,
        timeout: Duration::from_secs_f64(timeout.max(0.001)),
        credits,
    };
    let ds = Arc::clone(&dataset.ds);
    // A Ctrl-C, or an exception raised by `done`, to raise once the feed returned.
    let interrupted = std::sync::Mutex::new(None);
    let interrupted = &interrupted;
    let keep_going = || {
        Python::attach(|py| match py.check_signals() {
            Ok(()) => true,
            Err(e) => {
                *interrupted.lock().expect("not poisoned") = Some(e);
                false
            }
        })
    };
    let mut until_done = done.map(|done| {
        move || {
            Python::attach(|py| match done.call0(py).and_then(|r| r.is_truthy(py)) {
                Ok(d) => d,
                Err(e) => {
                    *interrupted.lock().expect("not poisoned") = Some(e);
                    true
                }
            })
        }
    });
    let r = py.detach(|| {
        feed_rank(
            &ds,
            spec,
            to,
            &opts,
            keep_going,
            until_done.as_mut().map(|f| f as &mut dyn FnMut() -> bool),
        )
    });
    if let Some(e) = interrupted.lock().expect("not poisoned").take() {
        return Err(e);
    }
    let r = r.map_err(|e| match &e {
        FeedError::Send { source, .. } => {
            // The sender's class (PeerGone, Refused, NoDevice, ...) with the rank in the message.
            let class = errors::sender(py, source)
                .get_type(py)
                .name()
                .map_or_else(|_| "GdrxError".to_owned(), |n| n.to_string());
            raise(py, &class, e.to_string(), None)
        }
        FeedError::Stalled { .. } => raise(py, "Timeout", e.to_string(), None),
        FeedError::Gone { .. } => raise(py, "PeerGone", e.to_string(), None),
        _ => raise(py, "GdrxError", e.to_string(), None),
    })?;
    let d = PyDict::new(py);
    d.set_item("rank", rank)?;
    d.set_item("messages", r.messages)?;
    d.set_item("bytes", r.bytes)?;
    d.set_item("secs", r.secs)?;
    d.set_item("cursor", (r.cursor.epoch, r.cursor.next))?;
    match r.credits {
        Some(c) => {
            let cd = PyDict::new(py);
            cd.set_item("grant", c.grant)?;
            cd.set_item("reads", c.reads)?;
            cd.set_item("waits", c.waits)?;
            d.set_item("credits", cd)?;
        }
        None => d.set_item("credits", py.None())?,
    }
    Ok(d)
}
