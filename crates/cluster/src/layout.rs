//! The cluster layout: the settings every node must share for requests to
//! reach the right node (how many fragments, which nodes, which islands,
//! when a send is acknowledged). Nodes exchange it when a link comes up and
//! refuse a peer whose layout differs, naming the difference: a node with
//! another island list would otherwise place users' data on other nodes
//! than its peers do, silently.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ClusterConfig;

/// Named settings, compared one by one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout(BTreeMap<String, String>);

impl Layout {
    /// The settings of `config` that placement depends on; the caller adds
    /// its own (the fragment count) with [`Layout::with`].
    pub fn of(config: &ClusterConfig) -> Self {
        let mut nodes: Vec<&str> = config.nodes.iter().map(|n| n.name.as_str()).collect();
        nodes.sort_unstable();
        let islands: Vec<String> = config
            .islands
            .iter()
            .map(|[a, b]| format!("{a}+{b}"))
            .collect();
        Self::default()
            .with("nodes", nodes.join(","))
            .with("islands", islands.join(","))
            .with("ack_policy", format!("{:?}", config.ack_policy))
    }

    /// Adds (or replaces) one setting.
    pub fn with(mut self, name: &str, value: impl Into<String>) -> Self {
        self.0.insert(name.to_owned(), value.into());
        self
    }

    /// Each setting that differs, as `name: this node V, peer W`; empty if
    /// the layouts are equal.
    pub fn differences(&self, peer: &Layout) -> Vec<String> {
        let mut names: Vec<&String> = self.0.keys().chain(peer.0.keys()).collect();
        names.sort_unstable();
        names.dedup();
        names
            .into_iter()
            .filter_map(|name| {
                let (ours, theirs) = (self.0.get(name), peer.0.get(name));
                (ours != theirs).then(|| {
                    let show =
                        |v: Option<&String>| v.map_or("(unset)".to_owned(), |v| format!("{v:?}"));
                    format!("{name}: this node {}, peer {}", show(ours), show(theirs))
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_name_each_setting_and_both_values() {
        let ours = Layout::default()
            .with("fragments", "64")
            .with("islands", "n1+n2,n3+n4");
        let theirs = Layout::default()
            .with("fragments", "64")
            .with("islands", "n1+n3,n2+n4")
            .with("extra", "1");
        assert!(ours.differences(&ours.clone()).is_empty());
        assert_eq!(
            ours.differences(&theirs),
            [
                "extra: this node (unset), peer \"1\"",
                "islands: this node \"n1+n2,n3+n4\", peer \"n1+n3,n2+n4\"",
            ]
        );
    }
}
