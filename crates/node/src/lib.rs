//! Node configuration, start-up, the supervision tree and the extension builder
