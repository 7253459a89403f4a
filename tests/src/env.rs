//! Which soft-RoCE device and address the rxe suite runs on.
//!
//! `deploy/testbed.sh` exports `GDRX_RDMA_DEV` (the rxe device) and `GDRX_RDMA_IP` (the IPv4
//! address of the interface it is bound to). The rxe tests FAIL, with this message, when the
//! variables are missing or the device does not exist: they never pass silently.

use std::net::IpAddr;
use std::sync::Arc;

use gdrx_core::Device;

/// The device and address to test on.
#[derive(Debug, Clone)]
pub struct RxeEnv {
    /// rxe device name, e.g. `rxe0`.
    pub dev: String,
    /// IP address of the device's interface (RDMA CM binds and connects here).
    pub ip: IpAddr,
}

impl RxeEnv {
    /// Reads the environment.
    ///
    /// # Panics
    /// When `GDRX_RDMA_DEV` or `GDRX_RDMA_IP` is unset or malformed: the suite was started
    /// outside the testbed.
    pub fn from_env() -> RxeEnv {
        let dev = std::env::var("GDRX_RDMA_DEV").unwrap_or_else(|_| {
            panic!(
                "GDRX_RDMA_DEV is not set: the rxe suite must run where a soft-RoCE device \
                 exists; run it through `deploy/testbed.sh` (or `deploy/run-tests.sh`)"
            )
        });
        let ip = std::env::var("GDRX_RDMA_IP")
            .unwrap_or_else(|_| panic!("GDRX_RDMA_IP is not set (see deploy/testbed.sh)"));
        let ip = ip
            .parse()
            .unwrap_or_else(|e| panic!("GDRX_RDMA_IP={ip:?} is not an IP address: {e}"));
        RxeEnv { dev, ip }
    }

    /// Opens the device.
    ///
    /// # Panics
    /// When it cannot be opened: the test must fail, not skip.
    pub fn open(&self) -> Arc<Device> {
        match Device::open(&self.dev) {
            Ok(d) => d,
            Err(e) => panic!(
                "the rxe suite was told to use `{}` but cannot open it: {e}",
                self.dev
            ),
        }
    }
}
