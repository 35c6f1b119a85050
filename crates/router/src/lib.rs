//! User to fragment placement by a stable hash, and (later) the cluster membership view
