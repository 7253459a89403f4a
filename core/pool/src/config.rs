//! The pool's configuration and its registration policy.

use std::fmt;
use std::sync::Arc;

use gdrx_verbs::Access;

use crate::state::Shape;
use crate::Provider;

/// Which registration paths the pool may use for its regions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RegistrationPolicy {
    /// dma-buf (`ibv_reg_dmabuf_mr`) when the region has one and the NIC supports it, else the
    /// region's address (`ibv_reg_mr`); a fallback is reported with its reason.
    #[default]
    PreferDmabuf,
    /// dma-buf only: building the pool fails when it is not possible.
    RequireDmabuf,
    /// The region's address only (`ibv_reg_mr`).
    AddressOnly,
}

/// How a region was registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistrationPath {
    /// `ibv_reg_dmabuf_mr` on the region's dma-buf.
    Dmabuf,
    /// `ibv_reg_mr` on the region's address.
    Address {
        /// Why dma-buf was not used, when it was considered.
        fallback_from_dmabuf: Option<String>,
    },
}

impl RegistrationPath {
    /// Short name: `dmabuf` or `address`.
    pub fn name(&self) -> &'static str {
        match self {
            RegistrationPath::Dmabuf => "dmabuf",
            RegistrationPath::Address { .. } => "address",
        }
    }
}

impl fmt::Display for RegistrationPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegistrationPath::Dmabuf => f.write_str("dma-buf (ibv_reg_dmabuf_mr)"),
            RegistrationPath::Address {
                fallback_from_dmabuf: None,
            } => f.write_str("address (ibv_reg_mr)"),
            RegistrationPath::Address {
                fallback_from_dmabuf: Some(why),
            } => write!(f, "address (ibv_reg_mr), fallback from dma-buf: {why}"),
        }
    }
}

/// Header split: every receive scatters its first `bytes` bytes into a CPU-readable header slot
/// from `provider` and the rest into the payload slot (two SGEs), like devmem TCP's header split.
#[derive(Debug, Clone)]
pub struct HeaderSplit {
    /// Header bytes per receive.
    pub bytes: u32,
    /// Where header memory comes from; it must be CPU-readable.
    pub provider: Arc<dyn Provider>,
}

/// Pool configuration: [`PoolConfig::default`] and the setters, e.g.
/// `PoolConfig::default().slot_size(16384).slots_per_region(256).max_regions(4)`. Every value
/// is checked when the pool is built ([`ConfigError`](crate::ConfigError)).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PoolConfig {
    /// Name, used in reports and as the `pool` metric label.
    pub name: String,
    /// Bytes per payload slot: the largest payload accepted (with header split, the largest
    /// message is `header.bytes + slot_size`).
    pub slot_size: u32,
    /// Slots per region (one allocation and one MR).
    pub slots_per_region: u32,
    /// Regions allocated when the pool is built.
    pub initial_regions: u32,
    /// Regions the pool may grow to when it runs short of slots.
    pub max_regions: u32,
    /// Receives kept posted; 0 means every slot, up to the SRQ's depth.
    pub depth: u32,
    /// Refill once fewer than this many receives are posted; 0 means `depth` less one post
    /// batch, or less a quarter of `depth` when that is smaller.
    pub low_watermark: u32,
    /// Most work requests per post call.
    pub post_batch: u32,
    /// Most completions taken per CQ poll.
    pub poll_batch: u32,
    /// Accept memory the CPU cannot read (device memory). Leases then refuse
    /// [`Lease::payload`](crate::Lease::payload); consumers read on the device.
    pub allow_unreadable: bool,
    /// Header split, off by default.
    pub header_split: Option<HeaderSplit>,
    /// MR access flags; must include LOCAL_WRITE.
    pub access: Access,
    /// Registration paths allowed.
    pub registration: RegistrationPolicy,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            name: "gdrx".into(),
            slot_size: 8192,
            slots_per_region: 1024,
            initial_regions: 1,
            max_regions: 1,
            depth: 0,
            low_watermark: 0,
            post_batch: 64,
            poll_batch: 64,
            allow_unreadable: false,
            header_split: None,
            access: Access::recv(),
            registration: RegistrationPolicy::PreferDmabuf,
        }
    }
}

macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident: $ty:ty;)*) => {
        $(
            $(#[$doc])*
            #[must_use]
            pub fn $name(mut self, $name: $ty) -> Self {
                self.$name = $name;
                self
            }
        )*
    };
}

impl PoolConfig {
    /// The defaults under the name `name` (reports and the `pool` metric label).
    pub fn named(name: impl Into<String>) -> PoolConfig {
        PoolConfig {
            name: name.into(),
            ..PoolConfig::default()
        }
    }

    setters! {
        /// Bytes per payload slot.
        slot_size: u32;
        /// Slots per region (one allocation and one MR).
        slots_per_region: u32;
        /// Regions allocated when the pool is built.
        initial_regions: u32;
        /// Regions the pool may grow to.
        max_regions: u32;
        /// Receives kept posted (0: every slot, up to the queue's depth).
        depth: u32;
        /// Refill below this many posted (0: `depth` less one post batch, at most a quarter).
        low_watermark: u32;
        /// Most work requests per post call.
        post_batch: u32;
        /// Most completions per CQ poll.
        poll_batch: u32;
        /// Accept memory the CPU cannot read.
        allow_unreadable: bool;
        /// MR access flags (must include LOCAL_WRITE).
        access: Access;
        /// Registration paths allowed.
        registration: RegistrationPolicy;
    }

    /// Header split: the first `bytes` of every receive land in CPU-readable memory from
    /// `provider`.
    #[must_use]
    pub fn header_split(mut self, bytes: u32, provider: Arc<dyn Provider>) -> Self {
        self.header_split = Some(HeaderSplit { bytes, provider });
        self
    }

    pub(crate) fn shape(&self) -> Shape {
        Shape {
            slot_size: self.slot_size,
            slots_per_region: self.slots_per_region,
            initial_regions: self.initial_regions,
            max_regions: self.max_regions,
            depth: self.depth,
            low_watermark: self.low_watermark,
            post_batch: self.post_batch,
            poll_batch: self.poll_batch,
            header_bytes: self.header_split.as_ref().map(|h| h.bytes),
            access: self.access,
        }
    }
}
