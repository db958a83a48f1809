//! The relay mesh's metrics (`nowconnect_mesh_*` and the fencing counters), registered
//! with the others by [`super::Metrics`].

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabel {
    /// A configured or discovered peer's `replica_id` (bounded by `MAX_MESH_PEERS`), or
    /// `unauthenticated` for a `/mesh` caller that was refused.
    pub peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LinkStateLabels {
    pub peer: String,
    /// `up`, `connecting` or `down`: exactly one is 1 for each peer.
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MeshFrameLabels {
    /// `tx` or `rx`.
    pub dir: &'static str,
    /// The frame type, lower case (`forward`, `data`, `fin`, `rst`, `window`).
    pub r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerReasonLabels {
    pub peer: String,
    pub reason: &'static str,
}

/// The relay mesh (`ha`): links to the other relays and the streams forwarded over them.
#[derive(Debug)]
pub struct MeshMetrics {
    pub links: Family<LinkStateLabels, Gauge>,
    pub frames: Family<MeshFrameLabels, Counter>,
    pub rtt: Family<PeerLabel, Histogram, fn() -> Histogram>,
    pub backpressure_drops: Family<PeerReasonLabels, Counter>,
    pub link_reconnects: Family<PeerLabel, Counter>,
    pub link_errors: Family<PeerLabel, Counter>,
    pub owner_epoch_mismatch: Counter<u64, AtomicU64>,
    pub cid_dedup_dropped: Counter<u64, AtomicU64>,
}

fn rtt_histogram() -> Histogram {
    // 100 µs .. 2.5 s
    Histogram::new([
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    ])
}

impl MeshMetrics {
    pub(super) fn new() -> MeshMetrics {
        MeshMetrics {
            rtt: Family::new_with_constructor(rtt_histogram),
            links: Family::default(),
            frames: Family::default(),
            backpressure_drops: Family::default(),
            link_reconnects: Family::default(),
            link_errors: Family::default(),
            owner_epoch_mismatch: Counter::default(),
            cid_dedup_dropped: Counter::default(),
        }
    }

    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            "nowconnect_mesh_links",
            "Mesh links to each peer relay by state (up, connecting, down): 1 for the current one",
            self.links.clone(),
        );
        registry.register(
            "nowconnect_mesh_frames",
            "Frames on mesh links by direction (tx, rx) and type",
            self.frames.clone(),
        );
        registry.register(
            "nowconnect_mesh_rtt_seconds",
            "Round-trip time of mesh link pings, by peer",
            self.rtt.clone(),
        );
        registry.register(
            "nowconnect_mesh_backpressure_drops",
            "Frames or streams a mesh link dropped because a bound was reached (queue_full, link_down, table_full)",
            self.backpressure_drops.clone(),
        );
        registry.register(
            "nowconnect_mesh_link_reconnects",
            "Mesh links dialed again after they were lost, by peer",
            self.link_reconnects.clone(),
        );
        registry.register(
            "nowconnect_mesh_link_errors",
            "Mesh link failures (dial, TLS, refused upgrade, lost link), by peer",
            self.link_errors.clone(),
        );
        registry.register(
            "nowconnect_owner_epoch_mismatch",
            "Forwarded streams refused because their epoch is not the owner's current claim",
            self.owner_epoch_mismatch.clone(),
        );
        registry.register(
            "nowconnect_cid_dedup_dropped",
            "Forwarded OPENs dropped because their stream id is already live on the link",
            self.cid_dedup_dropped.clone(),
        );
    }
}
