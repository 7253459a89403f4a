//! Counts of user-space RDMA resources on a device, from `rdma -j resource show` (iproute2): the
//! leak check after teardown.
//!
//! The kernel attributes each object to the *thread* that created it (its restrack `pid` is a
//! TID, and is omitted once that thread has exited), so counting by process id misses objects.
//! The testbed's rxe device is used by the suite alone (tests run one at a time), so the check
//! counts every object on the device, kernel ones included (those stay constant), and compares
//! before and after.

use std::collections::BTreeMap;
use std::process::Command;

/// Resource kinds checked.
pub const KINDS: &[&str] = &["qp", "cq", "mr", "pd", "srq", "cm_id"];

/// Per-kind counts of the resources on RDMA device `dev`.
///
/// # Errors
/// When the `rdma` tool is missing or its output does not parse.
pub fn counts(dev: &str) -> anyhow::Result<BTreeMap<&'static str, usize>> {
    let mut out = BTreeMap::new();
    for &kind in KINDS {
        let o = Command::new("rdma")
            .args(["-j", "resource", "show", kind])
            .output()
            .map_err(|e| anyhow::anyhow!("running `rdma resource show {kind}` (iproute2): {e}"))?;
        if !o.status.success() {
            anyhow::bail!(
                "`rdma -j resource show {kind}` failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        let text = String::from_utf8_lossy(&o.stdout);
        let text = text.trim();
        let n = if text.is_empty() {
            0
        } else {
            let v: serde_json::Value = serde_json::from_str(text).map_err(|e| {
                anyhow::anyhow!("parsing `rdma -j resource show {kind}`: {e}: {text}")
            })?;
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter(|e| e.get("ifname").and_then(|n| n.as_str()) == Some(dev))
                        .count()
                })
                .unwrap_or(0)
        };
        out.insert(kind, n);
    }
    Ok(out)
}
