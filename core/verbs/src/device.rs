//! RDMA devices: listing, opening by name, the capability report and RoCE v2 GID selection.
//!
//! A [`Device`] owns one opened verbs context (through sideway's `DeviceContext`). Every object
//! created on it (PD, CQ, SRQ, QP, MR) holds an `Arc` of it, so the context is closed only after
//! the last of them is gone.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use sideway::ibverbs::address::{GidEntry, GidType};
use sideway::ibverbs::device::{DeviceInfo as _, DeviceList};
use sideway::ibverbs::device_context::{
    DeviceAttr, DeviceContext, LinkLayer, Mtu, PortState as SwPortState,
};

use crate::error::{Error, Result};
use crate::pd::Pd;
use crate::sys::sideway_io;

/// The soft-RoCE (rxe) driver reports this vendor id.
const RXE_VENDOR_ID: u32 = 0x00FF_FFFF;
/// The soft-iWARP (siw) driver reports this vendor id.
const SIW_VENDOR_ID: u32 = 0x0062_6d74;

/// Lists the names of the RDMA devices present.
///
/// # Errors
/// [`Error::NoRdma`] when libibverbs cannot be loaded or the kernel has no RDMA support.
pub fn device_names() -> Result<Vec<String>> {
    let list = device_list()?;
    Ok(list.iter().map(|d| d.name()).collect())
}

fn device_list() -> Result<DeviceList> {
    match DeviceList::new() {
        Ok(l) => Ok(l),
        Err(e) => {
            let io = sideway_io!(
                e.0,
                sideway::ibverbs::device::GetDeviceListErrorKind::Ibverbs
            );
            let (reason, hint) = match io.raw_os_error() {
                Some(libc::EOPNOTSUPP) => (
                    "libibverbs.so.1 could not be loaded".to_owned(),
                    "install rdma-core and ibverbs-providers (Debian: `apt install rdma-core \
                     ibverbs-providers`)",
                ),
                Some(libc::ENOSYS) => (
                    "the kernel exposes no RDMA devices (/sys/class/infiniband_verbs is missing)"
                        .to_owned(),
                    "load an RDMA driver: for soft-RoCE, `modprobe rdma_rxe` and `rdma link add \
                     rxe0 type rxe netdev IFACE` (in gdrx's repository: deploy/rxe-host.sh, or \
                     the VM testbed deploy/testbed.sh)",
                ),
                _ => (
                    format!("ibv_get_device_list failed: {io}"),
                    "check that rdma-core is installed and /dev/infiniband is accessible",
                ),
            };
            Err(Error::NoRdma {
                reason,
                hint,
                source: Some(io),
            })
        }
    }
}

/// What kind of RDMA device this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// Soft-RoCE (`rdma_rxe`): RoCE v2 in software over any Ethernet interface.
    SoftRoce,
    /// Soft-iWARP (`siw`).
    SoftIwarp,
    /// A hardware NIC.
    Hardware,
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeviceKind::SoftRoce => "soft-RoCE (rxe)",
            DeviceKind::SoftIwarp => "soft-iWARP (siw)",
            DeviceKind::Hardware => "hardware",
        })
    }
}

/// An opened RDMA device.
pub struct Device {
    ctx: Arc<DeviceContext>,
    name: String,
    vendor_id: u32,
    limits: Limits,
}

/// The device limits that queue creation checks against, read once at open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    pub max_cqe: u32,
    pub max_qp_wr: u32,
    pub max_sge: u32,
    pub max_srq_wr: u32,
    pub max_srq_sge: u32,
    pub max_qp_rd_atom: u32,
}

impl Limits {
    fn from_attr(a: &DeviceAttr) -> Limits {
        Limits {
            max_cqe: count(a.max_cqe()),
            max_qp_wr: count(a.max_qp_wr()),
            max_sge: count(a.max_sge()),
            max_srq_wr: count(a.max_srq_wr()),
            max_srq_sge: count(a.max_srq_sge()),
            max_qp_rd_atom: count(a.max_qp_rd_atom()),
        }
    }
}

/// A device limit as reported (a C `int`), never negative.
fn count(v: i32) -> u32 {
    v.max(0) as u32
}

/// `ibv_query_device_ex` on `ctx`, with gdrx's error.
fn query_attr(ctx: &DeviceContext, name: &str) -> Result<DeviceAttr> {
    ctx.query_device().map_err(|e| {
        let io = sideway_io!(
            e.0,
            sideway::ibverbs::device_context::QueryDeviceErrorKind::Ibverbs
        );
        Error::verb("ibv_query_device_ex", name, io)
    })
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Device").field("name", &self.name).finish()
    }
}

impl Device {
    /// Opens the device called `name` (as `ibv_devices` lists it, e.g. `rxe0` or `mlx5_0`).
    ///
    /// # Errors
    /// [`Error::NoRdma`] when RDMA is unavailable, [`Error::DeviceNotFound`] (listing the devices
    /// that do exist) when no device has that name, [`Error::Verbs`] when opening fails.
    pub fn open(name: &str) -> Result<Arc<Device>> {
        let list = device_list()?;
        let mut available = Vec::new();
        for dev in list.iter() {
            let n = dev.name();
            if n == name {
                return Self::open_listed(&dev, n);
            }
            available.push(n);
        }
        Err(Error::DeviceNotFound {
            name: name.to_owned(),
            hint: if available.is_empty() {
                "no RDMA device is configured: for soft-RoCE, `rdma link add rxe0 type rxe \
                 netdev IFACE` (in gdrx's repository: deploy/rxe-host.sh, or deploy/testbed.sh)"
            } else {
                "pick one of the devices present"
            },
            available,
        })
    }

    /// Opens the first device listed.
    ///
    /// # Errors
    /// As [`Device::open`]; [`Error::DeviceNotFound`] when there is no device at all.
    pub fn open_first() -> Result<Arc<Device>> {
        let list = device_list()?;
        match list.iter().next() {
            Some(dev) => {
                let n = dev.name();
                Self::open_listed(&dev, n)
            }
            None => Err(Error::DeviceNotFound {
                name: "<any>".to_owned(),
                available: Vec::new(),
                hint: "no RDMA device is configured: for soft-RoCE, `rdma link add rxe0 type \
                       rxe netdev IFACE` (in gdrx's repository: deploy/rxe-host.sh, or \
                       deploy/testbed.sh)",
            }),
        }
    }

    fn open_listed(
        dev: &sideway::ibverbs::device::Device<'_>,
        name: String,
    ) -> Result<Arc<Device>> {
        let ctx = dev.open().map_err(|e| {
            let io = sideway_io!(e.0, sideway::ibverbs::device::OpenDeviceErrorKind::Ibverbs);
            Error::verb("ibv_open_device", &name, io)
        })?;
        let attr = query_attr(&ctx, &name)?;
        let limits = Limits::from_attr(&attr);
        let dev = Arc::new(Device {
            vendor_id: attr.vendor_id(),
            ctx,
            name,
            limits,
        });
        dev.set_async_nonblocking()?;
        Ok(dev)
    }

    /// The device name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether this is soft-RoCE, soft-iWARP or a hardware NIC (from the vendor id the driver
    /// reports).
    pub fn kind(&self) -> DeviceKind {
        match self.vendor_id {
            RXE_VENDOR_ID => DeviceKind::SoftRoce,
            SIW_VENDOR_ID => DeviceKind::SoftIwarp,
            _ => DeviceKind::Hardware,
        }
    }

    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    pub(crate) fn context(&self) -> &Arc<DeviceContext> {
        &self.ctx
    }

    /// The raw `ibv_context`, valid for as long as `self` lives.
    pub(crate) fn raw_context(&self) -> *mut rdma_mummy_sys::ibv_context {
        // SAFETY: sideway hands out the pointer it owns; we only use it while `self` (and thus
        // the owning `Arc<DeviceContext>`) is alive.
        unsafe { self.ctx.context().as_ptr() }
    }

    /// Allocates a protection domain on this device.
    ///
    /// # Errors
    /// [`Error::Verbs`] when `ibv_alloc_pd` fails.
    pub fn alloc_pd(self: &Arc<Self>) -> Result<Arc<Pd>> {
        Pd::new(self)
    }

    /// Queries the device, its ports and their GID tables.
    ///
    /// # Errors
    /// [`Error::Verbs`] when a query verb fails.
    pub fn capabilities(&self) -> Result<Capabilities> {
        let a = query_attr(&self.ctx, &self.name)?;
        let l = Limits::from_attr(&a);
        // One GID table read serves every port.
        let table = self.gid_table()?;
        let mut ports = Vec::new();
        for p in 1..=a.phys_port_cnt() {
            ports.push(self.port_with(p, &table)?);
        }
        Ok(Capabilities {
            name: self.name.clone(),
            kind: self.kind(),
            node_guid: a.node_guid().as_u64(),
            firmware: a.firmware_version(),
            vendor_id: a.vendor_id(),
            vendor_part_id: a.vendor_part_id(),
            max_mr_size: a.max_mr_size(),
            max_qp: count(a.max_qp()),
            max_qp_wr: l.max_qp_wr,
            max_sge: l.max_sge,
            max_cq: count(a.max_cq()),
            max_cqe: l.max_cqe,
            max_mr: count(a.max_mr()),
            max_srq: count(a.max_srq()),
            max_srq_wr: l.max_srq_wr,
            max_srq_sge: l.max_srq_sge,
            max_qp_rd_atom: l.max_qp_rd_atom,
            ports,
        })
    }

    /// Queries one port (1-based), including its GID table.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when the device has no such port; [`Error::Verbs`] when a
    /// query verb fails.
    pub fn port(&self, port: u8) -> Result<PortInfo> {
        let ports = query_attr(&self.ctx, &self.name)?.phys_port_cnt();
        if port == 0 || port > ports {
            return Err(Error::InvalidConfig(format!(
                "`{}` has {ports} port(s), numbered from 1: there is no port {port}",
                self.name
            )));
        }
        self.port_with(port, &self.gid_table()?)
    }

    /// Every populated GID entry of every port (`ibv_query_gid_table`).
    fn gid_table(&self) -> Result<Vec<GidEntry>> {
        self.ctx.query_gid_table().map_err(|e| Error::Verbs {
            verb: "ibv_query_gid_table",
            device: self.name.clone(),
            source: std::io::Error::other(e.to_string()),
            hint: None,
        })
    }

    /// One port's state, with its entries from an already read GID `table`.
    fn port_with(&self, port: u8, table: &[GidEntry]) -> Result<PortInfo> {
        let pa = self.ctx.query_port(port).map_err(|e| {
            let io = sideway_io!(
                e.source,
                sideway::ibverbs::device_context::QueryPortErrorKind::Ibverbs
            );
            Error::verb("ibv_query_port", &self.name, io)
        })?;
        let gids = table
            .iter()
            .filter(|e| e.port_num() == u32::from(port))
            .map(|e| GidInfo {
                index: e.gid_index(),
                gid: Ipv6Addr::from(e.gid()),
                kind: match e.gid_type() {
                    GidType::InfiniBand => GidKind::InfiniBand,
                    GidType::RoceV1 => GidKind::RoceV1,
                    GidType::RoceV2 => GidKind::RoceV2,
                },
                netdev: e.netdev_name().ok(),
            })
            .collect();
        Ok(PortInfo {
            port,
            state: PortState::from(pa.port_state()),
            active_mtu: mtu_bytes(pa.active_mtu()),
            max_mtu: mtu_bytes(pa.max_mtu()),
            link_layer: match pa.link_layer() {
                LinkLayer::Ethernet => "Ethernet",
                LinkLayer::InfiniBand => "InfiniBand",
                LinkLayer::Unspecified => "unspecified",
            },
            gid_table_len: count(pa.gid_tbl_len()),
            gids,
        })
    }

    /// Returns the port's information if it is ACTIVE.
    ///
    /// # Errors
    /// [`Error::PortDown`] when it is not; [`Error::Verbs`] when the query fails.
    pub fn require_active_port(&self, port: u8) -> Result<PortInfo> {
        let info = self.port(port)?;
        if info.state != PortState::Active {
            return Err(Error::PortDown {
                device: self.name.clone(),
                port,
                state: info.state.name(),
                netdev: info.gids.iter().find_map(|g| g.netdev.clone()).or_else(|| {
                    // soft-RoCE names its interface in sysfs even when the GIDs are gone.
                    std::fs::read_to_string(format!("/sys/class/infiniband/{}/parent", self.name))
                        .ok()
                        .map(|s| s.trim().to_owned())
                        .filter(|s| !s.is_empty())
                }),
            });
        }
        Ok(info)
    }
}

fn mtu_bytes(m: Mtu) -> u32 {
    match m {
        Mtu::Mtu256 => 256,
        Mtu::Mtu512 => 512,
        Mtu::Mtu1024 => 1024,
        Mtu::Mtu2048 => 2048,
        Mtu::Mtu4096 => 4096,
    }
}

/// Logical port state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortState {
    /// Link down.
    Down,
    /// Physical link up, logical link initializing.
    Init,
    /// Armed.
    Armed,
    /// Ready for traffic.
    Active,
    /// Active, deferring.
    ActiveDefer,
    /// Reserved / unknown.
    Other,
}

impl PortState {
    /// The name `ibv_devinfo` prints.
    pub fn name(self) -> &'static str {
        match self {
            PortState::Down => "DOWN",
            PortState::Init => "INIT",
            PortState::Armed => "ARMED",
            PortState::Active => "ACTIVE",
            PortState::ActiveDefer => "ACTIVE_DEFER",
            PortState::Other => "NOP",
        }
    }
}

impl From<SwPortState> for PortState {
    fn from(s: SwPortState) -> Self {
        match s {
            SwPortState::Down => PortState::Down,
            SwPortState::Initializing => PortState::Init,
            SwPortState::Armed => PortState::Armed,
            SwPortState::Active => PortState::Active,
            SwPortState::ActiveDefer => PortState::ActiveDefer,
            SwPortState::Nop => PortState::Other,
        }
    }
}

/// The wire format a GID selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GidKind {
    /// Native InfiniBand.
    InfiniBand,
    /// RoCE v1 (Ethernet, not routable).
    RoceV1,
    /// RoCE v2 (UDP/IP, routable).
    RoceV2,
}

/// One GID table entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GidInfo {
    /// Index in the port's GID table.
    pub index: u32,
    /// The GID (an IPv6 address, IPv4-mapped for IPv4 RoCE addresses).
    pub gid: Ipv6Addr,
    /// RoCE v1, v2 or InfiniBand.
    pub kind: GidKind,
    /// The network interface the GID belongs to, when there is one.
    pub netdev: Option<String>,
}

impl GidInfo {
    /// The IPv4 address, for an IPv4-mapped GID.
    pub fn ipv4(&self) -> Option<Ipv4Addr> {
        self.gid.to_ipv4_mapped()
    }

    /// The IP address the GID stands for (IPv4 for mapped GIDs).
    pub fn ip(&self) -> IpAddr {
        match self.ipv4() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(self.gid),
        }
    }
}

/// One port's state and addressing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortInfo {
    /// Port number (1-based).
    pub port: u8,
    /// Logical state.
    pub state: PortState,
    /// Active MTU in bytes: the largest payload of one packet.
    pub active_mtu: u32,
    /// Largest MTU the port supports, in bytes.
    pub max_mtu: u32,
    /// `Ethernet` for RoCE, `InfiniBand` for IB.
    pub link_layer: &'static str,
    /// Size of the GID table.
    pub gid_table_len: u32,
    /// The populated GID entries.
    pub gids: Vec<GidInfo>,
}

impl PortInfo {
    /// Picks the RoCE v2 GID to use: the one for `ip` when given, else the first IPv4-mapped
    /// RoCE v2 GID, else the first RoCE v2 GID that is not link-local.
    pub fn select_roce_v2_gid(&self, ip: Option<IpAddr>) -> Option<&GidInfo> {
        let v2 = || self.gids.iter().filter(|g| g.kind == GidKind::RoceV2);
        match ip {
            Some(ip) => v2().find(|g| g.ip() == ip),
            None => v2()
                .find(|g| g.ipv4().is_some())
                .or_else(|| v2().find(|g| (g.gid.segments()[0] & 0xffc0) != 0xfe80)),
        }
    }
}

/// What a device can do: the limits that size queues and buffers, and its ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    /// Device name.
    pub name: String,
    /// rxe, siw or hardware.
    pub kind: DeviceKind,
    /// Node GUID (as the driver reports it, network byte order folded into a u64).
    pub node_guid: u64,
    /// Firmware version string.
    pub firmware: String,
    /// Vendor id.
    pub vendor_id: u32,
    /// Vendor part id.
    pub vendor_part_id: u32,
    /// Largest MR, in bytes.
    pub max_mr_size: u64,
    /// Maximum number of QPs.
    pub max_qp: u32,
    /// Maximum work requests per send or receive queue.
    pub max_qp_wr: u32,
    /// Maximum SGEs per work request on a QP.
    pub max_sge: u32,
    /// Maximum number of CQs.
    pub max_cq: u32,
    /// Maximum entries per CQ.
    pub max_cqe: u32,
    /// Maximum number of MRs.
    pub max_mr: u32,
    /// Maximum number of SRQs.
    pub max_srq: u32,
    /// Maximum work requests per SRQ.
    pub max_srq_wr: u32,
    /// Maximum SGEs per SRQ work request.
    pub max_srq_sge: u32,
    /// Maximum outstanding RDMA READ / atomic per QP as target.
    pub max_qp_rd_atom: u32,
    /// The ports.
    pub ports: Vec<PortInfo>,
}

impl fmt::Display for Capabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "device {} ({})", self.name, self.kind)?;
        writeln!(
            f,
            "  node_guid {:016x}  fw {}  vendor {:#x}/{:#x}",
            self.node_guid, self.firmware, self.vendor_id, self.vendor_part_id
        )?;
        writeln!(
            f,
            "  max_qp {}  max_qp_wr {}  max_sge {}  max_cq {}  max_cqe {}",
            self.max_qp, self.max_qp_wr, self.max_sge, self.max_cq, self.max_cqe
        )?;
        writeln!(
            f,
            "  max_srq {}  max_srq_wr {}  max_srq_sge {}  max_mr {}  max_mr_size {}",
            self.max_srq, self.max_srq_wr, self.max_srq_sge, self.max_mr, self.max_mr_size
        )?;
        for p in &self.ports {
            writeln!(
                f,
                "  port {}: {}  link {}  active_mtu {}  max_mtu {}  gid_tbl_len {}",
                p.port,
                p.state.name(),
                p.link_layer,
                p.active_mtu,
                p.max_mtu,
                p.gid_table_len
            )?;
            let chosen = p.select_roce_v2_gid(None).map(|g| g.index);
            for g in &p.gids {
                writeln!(
                    f,
                    "    gid[{}] {} {:?}{}{}",
                    g.index,
                    g.gid,
                    g.kind,
                    g.netdev
                        .as_deref()
                        .map(|n| format!(" dev {n}"))
                        .unwrap_or_default(),
                    if chosen == Some(g.index) {
                        "  <- RoCE v2 default"
                    } else {
                        ""
                    }
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gid(index: u32, gid: &str, kind: GidKind) -> GidInfo {
        GidInfo {
            index,
            gid: gid.parse().unwrap(),
            kind,
            netdev: Some("veth0".into()),
        }
    }

    fn port(gids: Vec<GidInfo>) -> PortInfo {
        PortInfo {
            port: 1,
            state: PortState::Active,
            active_mtu: 4096,
            max_mtu: 4096,
            link_layer: "Ethernet",
            gid_table_len: 16,
            gids,
        }
    }

    #[test]
    fn roce_v2_selection_prefers_ipv4_mapped() {
        let p = port(vec![
            gid(0, "fe80::1", GidKind::RoceV2),
            gid(1, "::ffff:10.77.0.1", GidKind::RoceV1),
            gid(2, "::ffff:10.77.0.1", GidKind::RoceV2),
            gid(3, "2001:db8::1", GidKind::RoceV2),
        ]);
        assert_eq!(p.select_roce_v2_gid(None).unwrap().index, 2);
        let ip6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(p.select_roce_v2_gid(Some(ip6)).unwrap().index, 3);
        let v4: IpAddr = "10.77.0.1".parse().unwrap();
        assert_eq!(p.select_roce_v2_gid(Some(v4)).unwrap().index, 2);
        let absent: IpAddr = "10.0.0.9".parse().unwrap();
        assert!(p.select_roce_v2_gid(Some(absent)).is_none());
    }

    #[test]
    fn roce_v2_selection_skips_link_local_without_ipv4() {
        let p = port(vec![
            gid(0, "fe80::1", GidKind::RoceV2),
            gid(1, "2001:db8::5", GidKind::RoceV2),
        ]);
        assert_eq!(p.select_roce_v2_gid(None).unwrap().index, 1);
        let p = port(vec![gid(0, "fe80::1", GidKind::RoceV1)]);
        assert!(p.select_roce_v2_gid(None).is_none());
    }
}
