//! Redis Cluster on loopback (filled in by the distributed-tests work).

/// Placeholder until the cluster harness lands.
pub struct Cluster;
