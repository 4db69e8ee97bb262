//! `wsrouter plan` with backend sets: tables that hold the sets a split names, and what a
//! proposed split does to each set (the tenants and live sockets it gains and loses).

use std::collections::BTreeMap;

use wsrouter::split::BUCKETS;
use wsrouter::{BackendTemplate, Backends, RoutingTable, SetSource, SetSpec, Split};

/// A table for reasoning about sets and ordinals; addresses do not matter here. Every
/// set `split` names has a place: with the replicas `sets` gives it (the router's), else
/// one pod (offline, where only which set a tenant is on is known).
pub(crate) fn table_with_sets(
    table: RoutingTable,
    stable_set: &str,
    sets: &[(String, u32)],
    split: &Split,
) -> RoutingTable {
    let mut names: Vec<(String, u32)> = sets.to_vec();
    let named = split
        .canary()
        .map(|c| c.set.to_string())
        .into_iter()
        .chain(split.pinned().into_iter().map(|(_, s)| s.to_owned()));
    for name in named {
        if name != stable_set && !names.iter().any(|(n, _)| *n == name) {
            names.push((name, 1));
        }
    }
    let backends: Vec<Backends> = names
        .iter()
        .map(|(name, _)| {
            let t =
                BackendTemplate::parse("{statefulset}-{i}:1", name, "", "").unwrap_or_else(|_| {
                    unreachable!("the template is a constant with {{i}} and a port")
                });
            Backends::Template(t)
        })
        .collect();
    let specs: Vec<SetSpec<'_>> = names
        .iter()
        .zip(&backends)
        .map(|((name, replicas), backends)| SetSpec {
            name,
            backends,
            replicas: *replicas,
        })
        .collect();
    table
        .with_sets(stable_set, &specs, split.clone())
        .unwrap_or_else(|_| unreachable!("every set the split names has a place"))
}

/// What a proposed split does to one set, over the tenants the plan lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetChange {
    pub set: String,
    pub tenants_in: usize,
    pub sockets_in: u64,
    pub tenants_out: usize,
    pub sockets_out: u64,
}

/// The split now and after, and what it moves.
#[derive(Debug, Clone, PartialEq)]
pub struct SplitPlan {
    pub before: String,
    pub after: String,
    /// Share of the tenants the plan cannot list (hash-routed, no live socket here)
    /// whose set the weight change moves.
    pub share_moved: f64,
    pub sets: Vec<SetChange>,
}

/// How a split reads in a plan.
fn describe(split: &Split) -> String {
    let canary = match split.canary() {
        Some(c) => format!("canary {} at {}%", c.set, f64::from(c.weight) / 100.0),
        None => "no canary".to_owned(),
    };
    match split.pinned().len() {
        0 => canary,
        n => format!("{canary}, {n} tenants pinned"),
    }
}

/// The share of all tenants whose set a weight change moves: the bucket range between
/// the two weights on one canary, both ranges when the canary set changes.
fn share_moved(before: &Split, after: &Split) -> f64 {
    let w = |s: &Split| s.canary().map(|c| (c.set.clone(), c.weight));
    let moved = match (w(before), w(after)) {
        (Some((a, wa)), Some((b, wb))) if a == b => wa.abs_diff(wb),
        (Some((_, wa)), Some((_, wb))) => wa.max(wb),
        (Some((_, x)), None) | (None, Some((_, x))) => x,
        (None, None) => 0,
    };
    f64::from(moved) / f64::from(BUCKETS)
}

/// The split part of a plan, when either table has more than one set. `moves`: each
/// listed tenant that moves, as (set before, set after, its live sockets here).
pub(crate) fn split_plan<'m>(
    before: &RoutingTable,
    after: &RoutingTable,
    moves: impl Iterator<Item = (&'m str, &'m str, u64)>,
) -> Option<SplitPlan> {
    if before.sets().len() == 1 && after.sets().len() == 1 {
        return None;
    }
    let mut sets: BTreeMap<String, SetChange> = after
        .sets()
        .iter()
        .chain(before.sets())
        .map(|s| (s.name().to_owned(), SetChange::default()))
        .collect();
    for (from, to, live) in moves.filter(|(from, to, _)| from != to) {
        if let Some(s) = sets.get_mut(from) {
            s.tenants_out += 1;
            s.sockets_out += live;
        }
        if let Some(s) = sets.get_mut(to) {
            s.tenants_in += 1;
            s.sockets_in += live;
        }
    }
    Some(SplitPlan {
        before: describe(before.split()),
        after: describe(after.split()),
        share_moved: share_moved(before.split(), after.split()),
        sets: sets
            .into_iter()
            .map(|(set, c)| SetChange { set, ..c })
            .collect(),
    })
}

/// Why a tenant's set changed, from where it went.
pub(crate) fn set_why(from: SetSource, to: SetSource) -> &'static str {
    match (from, to) {
        (_, SetSource::Override) => "override added",
        (SetSource::Override, _) => "override removed",
        (_, SetSource::Pinned) => "pinned to a set",
        (SetSource::Pinned, _) => "pin removed",
        _ => "weight changed",
    }
}

impl std::fmt::Display for SplitPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "split: {} → {}", self.before, self.after)?;
        for s in &self.sets {
            writeln!(
                f,
                "  set {:<12} gains {} tenants ({} live sockets here), loses {} ({} live sockets here)",
                s.set, s.tenants_in, s.sockets_in, s.tenants_out, s.sockets_out
            )?;
        }
        if self.share_moved > 0.0 {
            writeln!(
                f,
                "tenants not listed: {:.2}% change set (the split buckets between the weights)",
                self.share_moved * 100.0
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(w: &str) -> Split {
        Split::parse([("canary.set", "v2"), ("canary.weight", w)])
            .unwrap_or_else(|e| panic!("{e:?}"))
    }

    #[test]
    fn shares_moved_between_two_splits() {
        let other = Split::parse([("canary.set", "v3"), ("canary.weight", "20")])
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert!((share_moved(&split("5"), &split("20")) - 0.15).abs() < 1e-9);
        assert!((share_moved(&split("20"), &split("5")) - 0.15).abs() < 1e-9);
        assert!((share_moved(&split("5"), &other) - 0.20).abs() < 1e-9);
        assert!((share_moved(&Split::default(), &split("100")) - 1.0).abs() < 1e-9);
        assert_eq!(share_moved(&Split::default(), &Split::default()), 0.0);
    }
}
