//! `CLUSTER NODES`, parsed: each node's view of the cluster.

use std::collections::BTreeMap;

/// One line of `CLUSTER NODES`, as seen by one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct NodeLine {
    pub(super) port: u16,
    pub(super) flags: Vec<String>,
    /// The primary's id, for a replica.
    pub(super) primary: Option<String>,
    pub(super) connected: bool,
    pub(super) slots: Vec<(u16, u16)>,
}

impl NodeLine {
    pub(super) fn is_primary(&self) -> bool {
        self.flags.iter().any(|f| f == "master")
    }

    pub(super) fn is_healthy(&self) -> bool {
        !self.flags.iter().any(|f| matches!(f.as_str(), "fail" | "fail?" | "handshake" | "noaddr"))
    }
}

/// A node's view of the whole cluster: node id -> line.
pub(super) type View = BTreeMap<String, NodeLine>;

/// One node's role in a view: id, is a primary, the primary it follows, its slots.
type Role<'a> = (&'a str, bool, Option<&'a str>, &'a [(u16, u16)]);

/// What all nodes must agree on: each node's role, primary and slots (not link details).
pub(super) fn roles_and_slots(view: &View) -> Vec<Role<'_>> {
    view.iter().map(|(id, l)| (id.as_str(), l.is_primary(), l.primary.as_deref(), l.slots.as_slice())).collect()
}

/// Parses `<id> <ip:port@cport[,hostname]> <flags> <primary|-> <ping> <pong> <epoch> <link> <slot>...`.
pub(super) fn parse_node_line(line: &str) -> (String, NodeLine) {
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert!(fields.len() >= 8, "unexpected CLUSTER NODES line: {line:?}");
    let port =
        fields[1].split('@').next().and_then(|addr| addr.rsplit(':').next()).and_then(|p| p.parse().ok()).unwrap_or(0);
    let slots = fields[8..]
        .iter()
        .filter(|s| !s.starts_with('[')) // `[slot->-id]`: a slot being migrated or imported
        .map(|s| match s.split_once('-') {
            Some((a, b)) => (a.parse().unwrap_or(0), b.parse().unwrap_or(0)),
            None => {
                let slot = s.parse().unwrap_or(0);
                (slot, slot)
            }
        })
        .collect();
    let node = NodeLine {
        port,
        flags: fields[2]
            .split(',')
            .map(|f| f.trim_start_matches("myself").to_string())
            .filter(|f| !f.is_empty())
            .collect(),
        primary: (fields[3] != "-").then(|| fields[3].to_string()),
        connected: fields[7] == "connected",
        slots,
    };
    (fields[0].to_string(), node)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cluster_nodes_lines() {
        let (id, line) = parse_node_line(
            "07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@40004,host replica,slave \
             e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected",
        );
        assert_eq!(id, "07c37dfeb235213a872192d90877d0cd55635b91");
        assert_eq!(line.port, 30004);
        assert!(!line.is_primary());
        assert_eq!(line.primary.as_deref(), Some("e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca"));
        assert!(line.connected && line.slots.is_empty());

        let (_, line) = parse_node_line(
            "e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30001@40001 myself,master - 0 0 1 connected \
             0-5460 5462 [5461->-292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f]",
        );
        assert_eq!(line.flags, vec!["master".to_string()]);
        assert!(line.is_primary() && line.is_healthy());
        assert_eq!(line.slots, vec![(0, 5460), (5462, 5462)]);

        let (_, line) = parse_node_line("abc 127.0.0.1:1@2 master,fail? - 0 0 1 disconnected");
        assert!(!line.is_healthy() && !line.connected);
    }
}
