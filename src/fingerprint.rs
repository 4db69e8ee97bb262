//! The routing fingerprint: two short digests that are equal on two routers exactly when
//! they send every tenant to the same ordinal (`config`) and every ordinal to the same
//! pod (`membership`). Neither depends on the table's local version, its source, or the
//! order things happened in, so replicas that agree show the same fingerprint.
//!
//! Each digest is XXH3-64 (seed 0) of a canonical text, shown as 16 lowercase hex digits.
//! Another tool recomputes them from the same lines, each ending in `\n`:
//!
//! `config`:
//! ```text
//! wsrouter-routing 1 xxh3-64 jump
//! replicas {replicas}
//! override {namespace} {ordinal}        one per override, active or not, by namespace (bytewise)
//! ```
//! `membership`, one line per ordinal `0..replicas`:
//! ```text
//! {i} addr {host:port}                  a static list or a template
//! {i} pod {name} {uid} {ip:port}        a pod named by the EndpointSlices
//! {i} unknown                           no pod known yet
//! ```
//! With backend sets beyond the stable one, or a split, `config` goes on (nothing is
//! added for a router with one set and no split, so its digests are as they were):
//! ```text
//! set {name} {replicas}                 each set after the stable one, in flag order
//! canary {set} {weight}                 the weight in hundredths of a percent
//! rules {header} {cookie}               with a canary: the header and cookie names
//! pin {namespace} {set}                 one per pinned tenant, by namespace (bytewise)
//! ```
//! and `membership` goes on with `set {name}` then that set's lines, for each other set.
//!
//! Whether a pod is serving is not part of it: that flips while a pod restarts, and
//! does not change where its tenants belong.

use std::fmt::Write;

use twox_hash::XxHash3_64;

use crate::backends::Backend;
use crate::overrides::Overrides;
use crate::split::Split;
use crate::table::BackendSet;

/// The routing contract this router implements, first line of the `config` text.
pub const CONTRACT: &str = "wsrouter-routing 1 xxh3-64 jump";

/// A table's two digests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint {
    pub config: u64,
    pub membership: u64,
}

impl Fingerprint {
    pub fn of(replicas: u32, overrides: &Overrides, backends: &[Backend]) -> Self {
        Self {
            config: XxHash3_64::oneshot(config_text(replicas, overrides).as_bytes()),
            membership: XxHash3_64::oneshot(membership_text(backends).as_bytes()),
        }
    }

    /// A table's digests: its sets (the stable one first), overrides and split.
    pub fn of_sets(sets: &[BackendSet], overrides: &Overrides, split: &Split) -> Self {
        Self {
            config: XxHash3_64::oneshot(sets_config_text(sets, overrides, split).as_bytes()),
            membership: XxHash3_64::oneshot(sets_membership_text(sets).as_bytes()),
        }
    }

    pub fn config_hex(&self) -> String {
        format!("{:016x}", self.config)
    }

    pub fn membership_hex(&self) -> String {
        format!("{:016x}", self.membership)
    }
}

/// `config/membership`, as the 101 header and the logs show it.
impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}/{:016x}", self.config, self.membership)
    }
}

/// The canonical text the `config` digest is taken of.
pub fn config_text(replicas: u32, overrides: &Overrides) -> String {
    let mut out = format!("{CONTRACT}\nreplicas {replicas}\n");
    for (ns, ordinal) in overrides.sorted() {
        // Writing into a String cannot fail.
        let _ = writeln!(out, "override {ns} {ordinal}");
    }
    out
}

/// The `config` text of a table with sets and a split.
pub fn sets_config_text(sets: &[BackendSet], overrides: &Overrides, split: &Split) -> String {
    let stable = sets.first().map_or(0, BackendSet::replicas);
    let mut out = config_text(stable, overrides);
    for set in sets.iter().skip(1) {
        let _ = writeln!(out, "set {} {}", set.name(), set.replicas());
    }
    if let Some(c) = split.canary() {
        let _ = writeln!(out, "canary {} {}", c.set, c.weight);
        let _ = writeln!(out, "rules {} {}", split.header(), split.cookie());
    }
    for (ns, set) in split.pinned() {
        let _ = writeln!(out, "pin {ns} {set}");
    }
    out
}

/// The `membership` text of a table with sets.
pub fn sets_membership_text(sets: &[BackendSet]) -> String {
    let mut out = sets
        .first()
        .map_or_else(String::new, |s| membership_text(s.backends()));
    for set in sets.iter().skip(1) {
        let _ = writeln!(out, "set {}", set.name());
        out.push_str(&membership_text(set.backends()));
    }
    out
}

/// The canonical text the `membership` digest is taken of.
pub fn membership_text(backends: &[Backend]) -> String {
    let mut out = String::new();
    for (i, b) in backends.iter().enumerate() {
        let _ = match b {
            Backend::Addr(a) => writeln!(out, "{i} addr {a}"),
            Backend::Pod(m) => writeln!(out, "{i} pod {} {} {}", m.pod, m.uid, m.addr),
            Backend::Unknown => writeln!(out, "{i} unknown"),
        };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::members::Member;

    fn overrides(entries: &[(&str, &str)]) -> Overrides {
        Overrides::parse(entries.iter().copied(), "backend").unwrap()
    }

    /// The golden vectors: another implementation must print these.
    #[test]
    fn golden_vectors() {
        let none = Fingerprint::of(4, &Overrides::default(), &[]);
        assert_eq!(none.config_hex(), GOLDEN[0].0);
        let o = overrides(&[("ns-01", "0"), ("acme-prod", "backend-5")]);
        assert_eq!(
            config_text(4, &o),
            "wsrouter-routing 1 xxh3-64 jump\nreplicas 4\noverride acme-prod 5\noverride ns-01 0\n"
        );
        let addrs: Vec<Backend> = (0..2)
            .map(|i| Backend::Addr(format!("backend-{i}:9000").into()))
            .collect();
        let with = Fingerprint::of(4, &o, &addrs);
        assert_eq!(with.config_hex(), GOLDEN[1].0);
        assert_eq!(with.membership_hex(), GOLDEN[1].1);
        let pods = [
            Backend::Pod(Member {
                pod: "backend-0".into(),
                uid: "6f1c".into(),
                addr: "10.1.0.7:9000".parse().unwrap(),
                serving: true,
                terminating: false,
            }),
            Backend::Unknown,
        ];
        assert_eq!(
            membership_text(&pods),
            "0 pod backend-0 6f1c 10.1.0.7:9000\n1 unknown\n"
        );
        assert_eq!(Fingerprint::of(4, &o, &pods).membership_hex(), GOLDEN[2].1);
    }

    /// (config, membership) for: 4 replicas and no overrides; 4 replicas, the two
    /// overrides and two template addresses; the same with a pod and an unknown ordinal.
    /// Recomputed with Python's `xxhash.xxh3_64_hexdigest` over the texts above.
    const GOLDEN: [(&str, &str); 3] = [
        ("d2e5e9c64cd8821e", ""),
        ("78b59a0505046657", "c268f769d921d6a4"),
        ("78b59a0505046657", "41eee4eed4089428"),
    ];

    #[test]
    fn history_does_not_matter_but_every_input_does() {
        let a = overrides(&[("b", "1"), ("a", "2")]);
        let b = overrides(&[("a", "2"), ("b", "1")]);
        assert_eq!(Fingerprint::of(3, &a, &[]), Fingerprint::of(3, &b, &[]));
        assert_ne!(Fingerprint::of(3, &a, &[]), Fingerprint::of(4, &a, &[]));
        let c = overrides(&[("a", "2"), ("b", "0")]);
        assert_ne!(Fingerprint::of(3, &a, &[]), Fingerprint::of(3, &c, &[]));
        // An inactive override still counts: it becomes active when the StatefulSet grows.
        let d = overrides(&[("a", "2"), ("b", "1"), ("z", "9")]);
        assert_ne!(Fingerprint::of(3, &a, &[]), Fingerprint::of(3, &d, &[]));
        let pod = |serving| {
            Backend::Pod(Member {
                pod: "backend-0".into(),
                uid: "u".into(),
                addr: "10.0.0.1:1".parse().unwrap(),
                serving,
                terminating: false,
            })
        };
        // Serving flips do not change the membership; a new address does.
        assert_eq!(
            Fingerprint::of(1, &a, &[pod(true)]),
            Fingerprint::of(1, &a, &[pod(false)])
        );
        assert_ne!(
            Fingerprint::of(1, &a, &[pod(true)]),
            Fingerprint::of(1, &a, &[Backend::Unknown])
        );
    }
}
