//! Where a user's data lives.
//!
//! Every user belongs to one mailbox fragment, chosen by a stable hash of the
//! phone number; the fragment count is fixed when the cluster is created, so the
//! mapping never changes while the cluster lives. This crate holds that
//! mapping ([`Placement`]) and, for a cluster, fragment → island → owner
//! with epochs ([`islands`]). A single node owns every fragment itself.

pub mod islands;
mod placement;

pub use islands::{FragmentOwnership, Islands, Owner, Role};
pub use placement::{FragmentId, Placement, PlacementError};
