//! The `gdrx._gdrx` extension module: `Receiver` (receiver.rs), `Sender` (sender.rs), `Message`
//! and `Tensor` (message.rs), `SampleHeader` (sample.rs), and the data service's `Dataset`, `plan`
//! and `feed` (feed.rs). The package `gdrx` (python/gdrx)
//! re-exports them with its exceptions and framework adapters.

mod errors;
mod feed;
mod message;
mod receiver;
mod sample;
mod sender;
mod wait;

use pyo3::prelude::*;

/// The device names present (`rdma link show` names).
#[pyfunction]
fn devices(py: Python<'_>) -> PyResult<Vec<String>> {
    gdrx_core::device_names().map_err(|e| errors::verbs(py, &e))
}

#[pymodule]
fn _gdrx(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<receiver::PyReceiver>()?;
    m.add_class::<sender::PySender>()?;
    m.add_class::<message::Message>()?;
    m.add_class::<message::Tensor>()?;
    m.add_class::<sample::PySampleHeader>()?;
    m.add_class::<feed::PyDataset>()?;
    m.add_function(wrap_pyfunction!(feed::plan, m)?)?;
    m.add_function(wrap_pyfunction!(feed::feed, m)?)?;
    m.add_function(wrap_pyfunction!(devices, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("END_OF_STREAM", gdrx_core::wire::END_OF_STREAM)?;
    Ok(())
}
