//! Where a user's data lives.
//!
//! Every user belongs to one mailbox fragment, chosen by a stable hash of the
//! phone number; the fragment count is fixed when the cluster is created, so the
//! mapping never changes while the cluster lives. This crate holds that
//! mapping ([`Placement`]). The cluster membership view and forwarding between
//! nodes will live here too; a single node owns every fragment itself.

mod placement;

pub use placement::{FragmentId, Placement, PlacementError};
