//! `gdrx.Receiver`: the Rust [`Receiver`] behind a lock, polled with the GIL released.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use gdrx_core::receiver::{Event, ReceiverError};
use gdrx_core::wire::SampleHeader;
use gdrx_core::{Lease, Provider, Receiver, RecvEvent};
use pyo3::exceptions::PyStopIteration;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::{self, raise};
use crate::message::{Counters, Message};
use crate::wait;

#[derive(Debug)]
struct State {
    rx: Option<Receiver>,
    pending: VecDeque<(Lease, Option<u32>)>,
    tags: HashMap<u32, u32>,
    connected: u64,
    refused: Vec<String>,
    gone: u64,
    failed: u64,
    exhausted: u64,
    /// Senders the stream has (`expect_senders`); by default the stream ends when every sender
    /// that connected has left.
    expect: u64,
}

impl State {
    /// Waits up to `slice` for the receiver's next event and files it.
    fn step(&mut self, slice: Duration) -> Result<(), ReceiverError> {
        let Some(rx) = self.rx.as_mut() else {
            return Ok(());
        };
        match rx.next(Some(slice))? {
            Event::Batch(batch) => {
                for ev in batch {
                    match ev {
                        RecvEvent::Message(l) => {
                            let tag = self.tags.get(&l.qp_num()).copied();
                            self.pending.push_back((l, tag));
                        }
                        RecvEvent::Failed(e) => {
                            self.failed += 1;
                            tracing::warn!("a receive failed: {e}");
                        }
                        RecvEvent::Exhausted { .. } => self.exhausted += 1,
                    }
                }
            }
            Event::Connected(p) => {
                self.tags.insert(p.qp_num, p.tag);
                self.connected += 1;
            }
            Event::Refused { reason, .. } => self.refused.push(reason),
            Event::Gone(_) => self.gone += 1,
            Event::Timeout => {}
        }
        Ok(())
    }

    /// The expected senders connected, every sender that connected has left, and nothing is
    /// left to hand out.
    fn ended(&self) -> bool {
        self.connected >= self.expect.max(1)
            && self.gone == self.connected
            && self.pending.is_empty()
    }
}

/// Receives messages from gdrx senders into a pool of registered buffers.
///
/// Receiver(ip=None, port=0, *, device=None, provider="host", slot_size=65536, slots=256,
///          max_peers=64, events=True, timeout=None, expect_senders=None, header_split=False,
///          credits=True, handshake_timeout=10.0)
///
/// Listens on `ip:port` (port 0 picks one; see `address`), or on the RoCE address of `device`.
/// `provider` is where the buffers live: "host", "hugepage" or "udmabuf" ("gpu" needs a CUDA
/// build). `events=False` spins on the completion queue instead of sleeping. Iterating yields
/// `Message`s until every sender that connected has left (and at least `expect_senders`
/// connected); `timeout` (seconds) bounds each wait of the iteration (`gdrx.Timeout`). Use it as
/// a context manager, or call `close()`. Senders are accepted (or refused) while the receiver is
/// polled or iterated.
///
/// `header_split=True` receives the 64-byte `SampleHeader` of typed messages
/// (`Sender.send_tensor`) into separate host memory, so that each `slot_size` buffer holds the
/// tensor alone (and the largest message is `slot_size + 64`); without it the header is the
/// buffer's first 64 bytes. `Message.tensor()` reads either.
///
/// `credits=True` (the default) grants each sender credits from the free buffers, so that
/// senders wait at the source instead of hitting an empty queue (RNR NAKs); `False` leaves
/// flow control to RNR NAKs alone.
///
/// `handshake_timeout` (seconds) bounds accepting one sender: a sender that never completes
/// its connection handshake delays the others by that much at most, and is then refused (it
/// appears in `stats()["refused"]`), not raised.
#[pyclass(name = "Receiver", module = "gdrx._gdrx", frozen)]
#[derive(Debug)]
pub struct PyReceiver {
    state: Mutex<State>,
    counters: Arc<Counters>,
    addr: SocketAddr,
    timeout: Option<f64>,
    provider: String,
    split: bool,
}

fn provider(py: Python<'_>, name: &str) -> PyResult<Arc<dyn Provider>> {
    Ok(match name {
        "host" => Arc::new(gdrx_providers::HostProvider::new()),
        "hugepage" => Arc::new(gdrx_providers::HugePageProvider::new()),
        "udmabuf" => Arc::new(gdrx_providers::UdmabufProvider::new()),
        "gpu" => {
            return Err(raise(
                py,
                "Unsupported",
                "provider \"gpu\" is not in this build of gdrx: GPU pools are gdrx-gpu's \
                 (Rust) for now"
                    .into(),
                Some("use provider=\"host\", \"hugepage\" or \"udmabuf\"".into()),
            ))
        }
        other => {
            return Err(raise(
                py,
                "ConfigError",
                format!(
                "unknown provider {other:?}: choose \"host\", \"hugepage\", \"udmabuf\" or \"gpu\""
            ),
                None,
            ))
        }
    })
}

impl PyReceiver {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits (GIL released, in slices, checking signals) until a message is pending, the stream
    /// ended, or `timeout` passed.
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<()> {
        wait::in_slices(
            py,
            timeout,
            |slice| {
                let mut st = self.lock();
                if st.rx.is_none() {
                    return Ok(Some(()));
                }
                if st.pending.is_empty() && !st.ended() {
                    st.step(slice)?;
                }
                Ok::<_, ReceiverError>((!st.pending.is_empty() || st.ended()).then_some(()))
            },
            |py, e| errors::receiver(py, &e),
        )?;
        Ok(())
    }

    fn closed_error(py: Python<'_>) -> PyErr {
        raise(py, "Closed", "the receiver is closed".into(), None)
    }
}

#[pymethods]
impl PyReceiver {
    #[new]
    #[pyo3(signature = (ip=None, port=0, *, device=None, provider="host", slot_size=65536,
        slots=256, max_peers=64, events=true, timeout=None, expect_senders=None,
        header_split=false, credits=true, handshake_timeout=10.0))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        ip: Option<&str>,
        port: u16,
        device: Option<&str>,
        provider: &str,
        slot_size: u32,
        slots: u32,
        max_peers: usize,
        events: bool,
        timeout: Option<f64>,
        expect_senders: Option<u64>,
        header_split: bool,
        credits: bool,
        handshake_timeout: f64,
    ) -> PyResult<PyReceiver> {
        if !(handshake_timeout.is_finite() && handshake_timeout > 0.0) {
            return Err(raise(
                py,
                "ConfigError",
                format!("handshake_timeout must be a positive number of seconds, not {handshake_timeout}"),
                None,
            ));
        }
        let prov = self::provider(py, provider)?;
        let builder = match (ip, device) {
            (Some(ip), _) => Receiver::builder(errors::socket_addr(py, ip, port)?, prov),
            (None, Some(dev)) => Receiver::on_device(dev, port, prov),
            (None, None) => {
                return Err(raise(
                    py,
                    "ConfigError",
                    "give the receiver an ip (an address of an RDMA device's interface) or a \
                     device name"
                        .into(),
                    None,
                ))
            }
        };
        let builder = if header_split {
            builder.header_split(
                SampleHeader::LEN as u32,
                Arc::new(gdrx_providers::HostProvider::new()),
            )
        } else {
            builder
        };
        let built = py.detach(|| {
            builder
                .slots(slot_size, slots)
                .event_mode(events)
                .max_peers(max_peers)
                .credits(credits)
                .handshake_timeout(std::time::Duration::from_secs_f64(handshake_timeout))
                .build()
        });
        let rx = built.map_err(|e| errors::receiver(py, &e))?;
        Ok(PyReceiver {
            addr: rx.local_addr(),
            state: Mutex::new(State {
                rx: Some(rx),
                pending: VecDeque::new(),
                tags: HashMap::new(),
                connected: 0,
                refused: Vec::new(),
                gone: 0,
                failed: 0,
                exhausted: 0,
                expect: expect_senders.unwrap_or(1),
            }),
            counters: Arc::new(Counters::default()),
            timeout,
            provider: provider.to_owned(),
            split: header_split,
        })
    }

    /// Senders the stream has: iteration (and a blocking `poll`) ends only once this many have
    /// connected and every one has left. Raising it after a sender left early keeps the
    /// receiver accepting, for a sender that comes back (what `gdrx.feeder.receive` does when
    /// a feeder dies).
    #[getter]
    fn expect_senders(&self) -> u64 {
        self.lock().expect
    }

    #[setter]
    fn set_expect_senders(&self, n: u64) {
        self.lock().expect = n;
    }

    /// (ip, port) the receiver listens on.
    #[getter]
    fn address(&self) -> (String, u16) {
        (self.addr.ip().to_string(), self.addr.port())
    }

    /// Waits up to `timeout` seconds (None: until a message arrives or the stream ends) and
    /// returns the messages received, at most `max` (an empty list on timeout).
    #[pyo3(signature = (timeout=None, max=None))]
    fn poll(
        &self,
        py: Python<'_>,
        timeout: Option<f64>,
        max: Option<usize>,
    ) -> PyResult<Vec<Message>> {
        self.wait(py, timeout)?;
        let mut st = self.lock();
        if st.rx.is_none() && st.pending.is_empty() {
            return Err(Self::closed_error(py));
        }
        let n = max.unwrap_or(usize::MAX).min(st.pending.len());
        Ok(st
            .pending
            .drain(..n)
            .map(|(l, tag)| Message::new(l, tag, self.split, &self.counters))
            .collect())
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Message> {
        // Fast path: a message already polled, taken without releasing the GIL. `try_lock`:
        // another thread waiting inside the receiver (GIL released) holds the lock for up to a
        // slice, and this thread must not block the interpreter on it.
        if let Ok(mut st) = self.state.try_lock() {
            if let Some((l, tag)) = st.pending.pop_front() {
                return Ok(Message::new(l, tag, self.split, &self.counters));
            }
        }
        self.wait(py, self.timeout)?;
        let mut st = self.lock();
        if let Some((l, tag)) = st.pending.pop_front() {
            return Ok(Message::new(l, tag, self.split, &self.counters));
        }
        if st.rx.is_none() {
            return Err(Self::closed_error(py));
        }
        if st.ended() {
            return Err(PyStopIteration::new_err(()));
        }
        Err(raise(
            py,
            "Timeout",
            format!(
                "no message within {:.3} s (senders connected: {}, gone: {})",
                self.timeout.unwrap_or_default(),
                st.connected,
                st.gone
            ),
            Some("is a sender pointed at this receiver's address?".into()),
        ))
    }

    /// Whether every sender that connected has left (and all messages were handed out).
    #[getter]
    fn ended(&self) -> bool {
        self.lock().ended()
    }

    /// Counters: the pool's completions, bytes and slot states, and the Python side's messages
    /// alive, returned (after close too) and double releases.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        let st = self.lock();
        if let Some(rx) = st.rx.as_ref() {
            let s = rx.pool().stats();
            d.set_item("completions", s.completions)?;
            d.set_item("completion_errors", s.completion_errors)?;
            d.set_item("bytes", s.bytes)?;
            d.set_item("recycles", s.recycles)?;
            d.set_item("free", s.slots.free)?;
            d.set_item("posted", s.slots.posted)?;
            d.set_item("lent", s.slots.lent)?;
            d.set_item("returned_undrained", s.slots.returned)?;
            d.set_item("peers", rx.peers().count())?;
        }
        let c = &self.counters;
        d.set_item("pending", st.pending.len())?;
        d.set_item("messages_alive", c.alive.load(Ordering::Relaxed))?;
        d.set_item("returned", c.returned.load(Ordering::Relaxed))?;
        d.set_item(
            "returned_after_close",
            c.returned_after_close.load(Ordering::Relaxed),
        )?;
        d.set_item("double_releases", c.double_releases.load(Ordering::Relaxed))?;
        d.set_item("connected", st.connected)?;
        d.set_item("gone", st.gone)?;
        d.set_item("refused", st.refused.clone())?;
        d.set_item("failed_receives", st.failed)?;
        d.set_item("exhausted", st.exhausted)?;
        d.set_item("closed", st.rx.is_none())?;
        Ok(d)
    }

    /// What the pool was built from: provider, memory kind, device, slot size and count, page
    /// size and registration path of each region.
    fn report<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let st = self.lock();
        let rx = st.rx.as_ref().ok_or_else(|| Self::closed_error(py))?;
        let r = rx.pool().report();
        let d = PyDict::new(py);
        d.set_item("provider", &self.provider)?;
        d.set_item("provider_name", &r.provider)?;
        d.set_item("kind", format!("{:?}", r.kind))?;
        d.set_item("device", &r.device)?;
        d.set_item("slot_size", r.slot_size)?;
        d.set_item("slots", r.slots.0)?;
        d.set_item("max_message", rx.max_message())?;
        let regions = r
            .regions
            .iter()
            .map(|g| {
                let e = PyDict::new(py);
                e.set_item("len", g.len)?;
                e.set_item("page_size", g.page_size)?;
                e.set_item("registration", g.path.name())?;
                e.set_item("origin", &g.origin)?;
                e.set_item("cpu_readable", g.cpu_readable)?;
                Ok(e)
            })
            .collect::<PyResult<Vec<_>>>()?;
        if let Some(first) = r.regions.first() {
            d.set_item("page_size", first.page_size)?;
            d.set_item("registration", first.path.name())?;
        }
        d.set_item("regions", regions)?;
        d.set_item("text", r.to_string())?;
        Ok(d)
    }

    /// Closes the receiver: disconnects every sender and frees the queues. Messages still alive
    /// stay readable (the pool's memory lives until the last of them is gone); their number is
    /// returned and reported with a ResourceWarning. Closing twice is harmless.
    fn close(&self, py: Python<'_>) -> PyResult<u64> {
        let rx = self.lock().rx.take();
        let Some(rx) = rx else {
            return Ok(0);
        };
        self.counters.closed.store(true, Ordering::Relaxed);
        py.detach(|| drop(rx));
        let alive = self.counters.alive.load(Ordering::Relaxed);
        if alive > 0 {
            let warnings = py.import("warnings")?;
            let category = py.get_type::<pyo3::exceptions::PyResourceWarning>();
            warnings.call_method1(
                "warn",
                (
                    format!(
                        "gdrx.Receiver closed with {alive} messages alive: their memory stays \
                         valid until they are released or collected"
                    ),
                    category,
                ),
            )?;
        }
        Ok(alive)
    }

    fn __enter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        self.close(py)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        format!(
            "<gdrx.Receiver {} provider={}{}>",
            self.addr,
            self.provider,
            if self.lock().rx.is_none() {
                " closed"
            } else {
                ""
            }
        )
    }
}
