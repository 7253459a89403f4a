//! Blocking waits without the GIL that Ctrl-C still interrupts: the wait is cut into slices,
//! and signals are checked between them.

use std::time::{Duration, Instant};

use pyo3::prelude::*;

/// How long one wait without the GIL lasts before signals (Ctrl-C) are checked.
pub const SLICE: Duration = Duration::from_millis(50);

/// Calls `step` with the GIL released, each time with the slice it may block for (at most
/// [`SLICE`], less near the deadline), until it returns `Some`, `timeout` seconds pass (`None`
/// waits forever), or a signal handler raises (Ctrl-C: `KeyboardInterrupt`). `Ok(None)`: the
/// timeout passed. `step`'s error becomes a Python exception through `error`.
pub fn in_slices<T: Send, E: Send>(
    py: Python<'_>,
    timeout: Option<f64>,
    mut step: impl FnMut(Duration) -> Result<Option<T>, E> + Send,
    error: impl FnOnce(Python<'_>, E) -> PyErr,
) -> PyResult<Option<T>> {
    let deadline = timeout.map(|t| Instant::now() + Duration::from_secs_f64(t.max(0.0)));
    loop {
        let slice = deadline.map_or(SLICE, |d| {
            d.saturating_duration_since(Instant::now()).min(SLICE)
        });
        match py.detach(|| step(slice)) {
            Ok(Some(v)) => return Ok(Some(v)),
            Ok(None) => {}
            Err(e) => return Err(error(py, e)),
        }
        py.check_signals()?;
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(None);
        }
    }
}
