//! Operator commands that need no running router, or only its admin endpoint:
//! `wsrouter route` (the routing contract, offline) and `wsrouter plan` (what an
//! overrides edit or a scale would move, before it is applied).

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroU32;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use thiserror::Error;
use wsrouter::{
    tenant_key, validate_namespace, BackendTemplate, Backends, ConfigMapData, NamespaceError,
    Overrides, RouteSource, RoutingTable, Split, TableSource, DEFAULT_STABLE_SET,
};

use super::exit::{print, usage_error};
use super::plan_sets::{set_why, split_plan, table_with_sets, SplitPlan};
use crate::admin::views::{ContractView, TableView};
use crate::config::{PlanArgs, RouteArgs};
use crate::control::overrides_file::{self, OverridesFileError};
use crate::data::admission::budget::{reconnect_time, BudgetConfig};

/// `wsrouter route`: the routing contract for one namespace, as a line or JSON.
pub(crate) fn run_route(args: &RouteArgs) -> ExitCode {
    let v = match route(
        &args.namespace,
        args.replicas,
        args.overrides.as_deref(),
        &args.statefulset,
    ) {
        Ok(v) => v,
        Err(e) => return usage_error(&e),
    };
    if args.json {
        match serde_json::to_string(&v) {
            Ok(json) => print(&format!("{json}\n")),
            Err(e) => usage_error(&e),
        }
    } else {
        print(&format!(
            "{} → {} (ordinal {}, {}; XXH3-64 {}, {} replicas; routing config {}; split bucket {})\n",
            v.namespace,
            v.pod,
            v.ordinal,
            v.source,
            v.xxh3_64,
            v.replicas,
            v.config_fingerprint,
            v.split_bucket
        ))
    }
}

/// `wsrouter plan`: what an overrides edit or a scale would move.
pub(crate) async fn run_plan(args: &PlanArgs) -> ExitCode {
    let current = match &args.admin {
        Some(url) => Current::from_admin(url, args.admin_token.as_deref(), &args.statefulset).await,
        None => Current::offline(
            args.current.as_deref(),
            args.current_replicas,
            &args.statefulset,
        )
        .map(|c| Current {
            stable_set: args.stable_set.clone(),
            ..c
        }),
    };
    let plan = current.and_then(|cur| {
        let new = overrides_file::read_configmap(&args.overrides, &args.statefulset)?;
        plan_configmap(&cur, new, args.replicas, &args.statefulset)
    });
    match plan {
        Ok(p) => print(&p.to_string()),
        Err(e) => usage_error(&e),
    }
}

#[derive(Debug, Error)]
pub enum OpsError {
    #[error("namespace {namespace:?}")]
    Namespace {
        namespace: String,
        #[source]
        source: NamespaceError,
    },
    #[error("replicas must be at least 1")]
    ZeroReplicas,
    #[error(transparent)]
    File(#[from] OverridesFileError),
    #[error(
        "offline, the current replica count is needed: give --current-replicas (or --admin URL)"
    )]
    NoCurrentReplicas,
    #[error("asking the router at {url}")]
    Admin {
        url: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("the router at {url} answered something that is not its /table: {detail}")]
    BadTable { url: String, detail: String },
}

/// A table for reasoning about ordinals; addresses do not matter here.
fn table(statefulset: &str, replicas: NonZeroU32, overrides: Overrides) -> RoutingTable {
    let template = BackendTemplate::parse("{statefulset}-{i}:1", statefulset, "", "")
        .unwrap_or_else(|_| unreachable!("the template is a constant with {{i}} and a port"));
    RoutingTable::build(
        0,
        TableSource::Flags,
        &Backends::Template(template),
        replicas,
        overrides,
    )
    .unwrap_or_else(|_| unreachable!("a template covers any replica count"))
}

fn replicas(n: u32) -> Result<NonZeroU32, OpsError> {
    NonZeroU32::new(n).ok_or(OpsError::ZeroReplicas)
}

/// `wsrouter route`: the routing contract for one namespace.
pub(crate) fn route(
    namespace: &str,
    replica_count: u32,
    overrides: Option<&Path>,
    statefulset: &str,
) -> Result<ContractView, OpsError> {
    validate_namespace(namespace).map_err(|source| OpsError::Namespace {
        namespace: namespace.to_owned(),
        source,
    })?;
    let overrides = match overrides {
        Some(p) => overrides_file::read_overrides(p, statefulset)?,
        None => Overrides::default(),
    };
    let t = table(statefulset, replicas(replica_count)?, overrides);
    let r = t.route(namespace);
    Ok(ContractView {
        namespace: namespace.to_owned(),
        xxh3_64: format!("{:#018x}", tenant_key(namespace)),
        replicas: replica_count,
        ordinal: r.ordinal,
        pod: format!("{statefulset}-{}", r.ordinal),
        source: r.source.as_str().to_owned(),
        inactive_override: r.inactive_override,
        config_fingerprint: t.fingerprint().config_hex(),
        split_bucket: wsrouter::split::split_bucket(namespace),
    })
}

/// One tenant a change would move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    pub tenant: String,
    /// Its backend set and pod ordinal there, now and after.
    pub from_set: String,
    pub from: u32,
    pub to_set: String,
    pub to: u32,
    pub why: &'static str,
    pub live_sockets: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub replicas_before: u32,
    pub replicas_after: u32,
    pub added: usize,
    pub changed: usize,
    pub removed: usize,
    pub moves: Vec<Move>,
    /// Share of hash-routed tenants (not listed) the replica change moves.
    pub hash_share_moved: f64,
    /// The routing config fingerprint now and after the change (16 hex digits each):
    /// what every router's `/table` will show once it is applied.
    pub config_before: String,
    pub config_after: String,
    /// How long reconnects take under the router's upgrade budgets, when it has any.
    pub reconnects: Option<Reconnects>,
    /// What the split does to each backend set, when there is more than one.
    pub split: Option<SplitPlan>,
}

/// How long the router's upgrade budgets make a full reconnect: of every live socket
/// here (this router restarting), and of the ones this change moves.
#[derive(Debug, Clone, PartialEq)]
pub struct Reconnects {
    pub live: u64,
    pub all: Duration,
    pub moved: u64,
    pub of_moved: Duration,
}

/// What the router runs now: replicas, overrides, live sockets per tenant, its budgets,
/// and its backend sets and split.
pub struct Current {
    pub replicas: u32,
    pub overrides: Overrides,
    pub live: BTreeMap<String, u64>,
    pub budget: BudgetConfig,
    pub split: Split,
    pub stable_set: String,
    /// The sets beside the stable one, with their replicas (offline: none known; the
    /// sets a split names count as one pod each).
    pub sets: Vec<(String, u32)>,
}

impl Current {
    /// Offline: a current overrides file (or none) and the current replica count.
    pub fn offline(
        file: Option<&Path>,
        replicas: Option<u32>,
        statefulset: &str,
    ) -> Result<Self, OpsError> {
        let now = match file {
            Some(p) => overrides_file::read_configmap(p, statefulset)?,
            None => ConfigMapData::default(),
        };
        Ok(Self {
            replicas: replicas.ok_or(OpsError::NoCurrentReplicas)?,
            overrides: now.overrides,
            live: BTreeMap::new(),
            budget: BudgetConfig::default(),
            split: now.split,
            stable_set: DEFAULT_STABLE_SET.to_owned(),
            sets: Vec::new(),
        })
    }

    /// From a running router's `/table`.
    pub async fn from_admin(
        url: &str,
        token: Option<&str>,
        statefulset: &str,
    ) -> Result<Self, OpsError> {
        let body = fetch(url, "/table", token).await?;
        let bad = |detail: String| OpsError::BadTable {
            url: url.to_owned(),
            detail,
        };
        let v: TableView = serde_json::from_slice(&body).map_err(|e| bad(e.to_string()))?;
        let replicas = v.replicas;
        let entries = v.overrides.into_iter().map(|(k, t)| (k, t.to_string()));
        let overrides = Overrides::parse(entries, statefulset).map_err(|e| bad(e.to_string()))?;
        let live = v.live_tenants;
        let budget = BudgetConfig {
            per_second: v.upgrade_budget.per_second,
            per_pod_per_second: v.upgrade_budget.per_pod_per_second,
            ..BudgetConfig::default()
        };
        let split = split_of(&v.split).map_err(bad)?;
        let stable_set = match v.stable_set.as_str() {
            "" => DEFAULT_STABLE_SET.to_owned(),
            name => name.to_owned(),
        };
        Ok(Self {
            replicas,
            overrides,
            live,
            budget,
            split,
            stable_set,
            sets: v
                .sets
                .iter()
                .map(|s| (s.name.clone(), s.replicas))
                .collect(),
        })
    }
}

/// The split a router's `/table` shows, as its ConfigMap said it.
fn split_of(v: &crate::admin::views::SplitView) -> Result<Split, String> {
    let mut entries: Vec<(String, String)> = Vec::new();
    if let Some(set) = &v.canary_set {
        entries.push(("canary.set".into(), set.clone()));
        entries.push((
            "canary.weight".into(),
            format!("{:.2}", v.canary_weight_percent),
        ));
    }
    if !v.header.is_empty() {
        entries.push(("canary.header".into(), v.header.clone()));
    }
    if !v.cookie.is_empty() {
        entries.push(("canary.cookie".into(), v.cookie.clone()));
    }
    for (ns, set) in &v.pinned {
        entries.push((format!("set.{ns}"), set.clone()));
    }
    Split::parse(entries).map_err(|e| format!("{e:?}"))
}

/// Which tenants `new_overrides` (and `new_replicas`) would move from where they are now,
/// the split as it is.
pub fn plan(
    current: &Current,
    new_overrides: Overrides,
    new_replicas: Option<u32>,
    statefulset: &str,
) -> Result<Plan, OpsError> {
    let new = ConfigMapData {
        overrides: new_overrides,
        split: current.split.clone(),
        ..ConfigMapData::default()
    };
    plan_configmap(current, new, new_replicas, statefulset)
}

/// Which tenants a whole new ConfigMap (overrides and split) and `new_replicas` would
/// move from where they are now, and what each backend set gains and loses.
pub fn plan_configmap(
    current: &Current,
    new: ConfigMapData,
    new_replicas: Option<u32>,
    statefulset: &str,
) -> Result<Plan, OpsError> {
    let before = table_with_sets(
        table(
            statefulset,
            replicas(current.replicas)?,
            current.overrides.clone(),
        ),
        &current.stable_set,
        &current.sets,
        &current.split,
    );
    let after_replicas = replicas(new_replicas.unwrap_or(current.replicas))?;
    let after = table(statefulset, after_replicas, new.overrides);
    let after =
        super::plan_sets::table_with_sets(after, &current.stable_set, &current.sets, &new.split);
    let diff = before.diff(&after);
    let moves = moves(current, &before, &after);
    let reconnects = reconnects(current, &before, &moves);
    let moved = moves
        .iter()
        .map(|m| (m.from_set.as_str(), m.to_set.as_str(), m.live_sockets));
    let split = split_plan(&before, &after, moved);
    let (n, m) = (f64::from(current.replicas), f64::from(after_replicas.get()));
    Ok(Plan {
        replicas_before: current.replicas,
        replicas_after: after_replicas.get(),
        added: diff.added.len(),
        changed: diff.changed.len(),
        removed: diff.removed.len(),
        moves,
        // Jump hash: growing N→M moves 1−N/M of tenants onto the new pods; shrinking
        // moves those on the removed pods, 1−M/N.
        hash_share_moved: if m >= n { 1.0 - n / m } else { 1.0 - m / n },
        config_before: before.fingerprint().config_hex(),
        config_after: after.fingerprint().config_hex(),
        reconnects,
        split,
    })
}

/// The tenants worth naming that move from `before` to `after`: every overridden or
/// pinned one, before or after, and every live one.
fn moves(current: &Current, before: &RoutingTable, after: &RoutingTable) -> Vec<Move> {
    let mut tenants: BTreeSet<&str> = BTreeSet::new();
    tenants.extend(before.overrides().iter().map(|(k, _)| k));
    tenants.extend(after.overrides().iter().map(|(k, _)| k));
    tenants.extend(current.live.keys().map(String::as_str));
    let pinned = [before.split(), after.split()].map(Split::pinned);
    tenants.extend(pinned.iter().flatten().map(|(ns, _)| *ns));
    tenants
        .into_iter()
        .filter_map(|t| {
            let (a, b) = (before.route(t), after.route(t));
            ((a.set, a.ordinal) != (b.set, b.ordinal)).then(|| Move {
                tenant: t.to_owned(),
                from_set: before.set(a.set).name().to_owned(),
                from: a.ordinal,
                to_set: after.set(b.set).name().to_owned(),
                to: b.ordinal,
                why: match (a.source, b.source) {
                    _ if a.set != b.set => set_why(a.why, b.why),
                    (RouteSource::Override, RouteSource::Override) => "override changed",
                    (RouteSource::Hash, RouteSource::Override) => "override added",
                    (RouteSource::Override, RouteSource::Hash) if b.inactive_override.is_some() => {
                        "override now inactive"
                    }
                    (RouteSource::Override, RouteSource::Hash) => "override removed",
                    (RouteSource::Hash, RouteSource::Hash) => "replicas changed",
                },
                live_sockets: current.live.get(t).copied().unwrap_or(0),
            })
        })
        .collect()
}

/// The reconnect times under `current`'s budgets: every live socket back through this
/// router (each to its pod now), and the moved ones to their new pods.
fn reconnects(current: &Current, before: &RoutingTable, moves: &[Move]) -> Option<Reconnects> {
    let busiest =
        |per_pod: &BTreeMap<(&str, u32), u64>| per_pod.values().copied().max().unwrap_or(0);
    let mut now: BTreeMap<(&str, u32), u64> = BTreeMap::new();
    for (tenant, n) in &current.live {
        let r = before.route(tenant);
        *now.entry((before.set(r.set).name(), r.ordinal))
            .or_default() += n;
    }
    let mut to: BTreeMap<(&str, u32), u64> = BTreeMap::new();
    for m in moves {
        *to.entry((&m.to_set, m.to)).or_default() += m.live_sockets;
    }
    let live = now.values().sum();
    let moved = to.values().sum();
    Some(Reconnects {
        live,
        all: reconnect_time(&current.budget, live, busiest(&now))?,
        moved,
        of_moved: reconnect_time(&current.budget, moved, busiest(&to))?,
    })
}

impl std::fmt::Display for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "plan: replicas {} → {}, overrides +{} ~{} -{}",
            self.replicas_before, self.replicas_after, self.added, self.changed, self.removed
        )?;
        writeln!(
            f,
            "routing config fingerprint: {} → {}",
            self.config_before, self.config_after
        )?;
        if self.moves.is_empty() {
            writeln!(f, "no listed tenant moves")?;
        }
        let sets = self.split.is_some();
        for m in &self.moves {
            let pod = |set: &str, ordinal: u32| match sets {
                true => format!("{set}/{ordinal}"),
                false => ordinal.to_string(),
            };
            writeln!(
                f,
                "  {:<32} {:>4} → {:<4} {:<22} live sockets here: {}",
                m.tenant,
                pod(&m.from_set, m.from),
                pod(&m.to_set, m.to),
                m.why,
                m.live_sockets
            )?;
        }
        if self.replicas_before != self.replicas_after {
            writeln!(
                f,
                "hash-routed tenants not listed: about {:.0}% move ({} → {} replicas)",
                self.hash_share_moved * 100.0,
                self.replicas_before,
                self.replicas_after
            )?;
        }
        if let Some(s) = &self.split {
            write!(f, "{s}")?;
        }
        if let Some(r) = &self.reconnects {
            writeln!(
                f,
                "reconnects under the router's upgrade budgets: all {} live sockets here in at least {:.1}s; the {} moved in at least {:.1}s",
                r.live,
                r.all.as_secs_f64(),
                r.moved,
                r.of_moved.as_secs_f64()
            )?;
        }
        Ok(())
    }
}

/// GET `{base}{path}` from a router's admin listener (with its bearer token, if it asks
/// for one): the body of a 2xx answer.
pub(crate) async fn fetch(base: &str, path: &str, token: Option<&str>) -> Result<Bytes, OpsError> {
    let err = |e: Box<dyn std::error::Error + Send + Sync>| OpsError::Admin {
        url: base.to_owned(),
        source: e,
    };
    let authority = base
        .trim_end_matches('/')
        .strip_prefix("http://")
        .unwrap_or(base)
        .to_owned();
    let tcp = tokio::net::TcpStream::connect(&authority)
        .await
        .map_err(|e| err(e.into()))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(tcp))
            .await
            .map_err(|e| err(e.into()))?;
    tokio::spawn(conn);
    let mut req = http::Request::get(path).header(http::header::HOST, &authority);
    if let Some(token) = token {
        req = req.header(
            http::header::AUTHORIZATION,
            format!("Bearer {}", token.trim()),
        );
    }
    let req = req.body(Empty::new()).map_err(|e| err(e.into()))?;
    let resp = sender.send_request(req).await.map_err(|e| err(e.into()))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| err(e.into()))?
        .to_bytes();
    if !status.is_success() {
        return Err(err(format!(
            "{status}: {}",
            String::from_utf8_lossy(&body).trim()
        )
        .into()));
    }
    Ok(body)
}

#[cfg(test)]
mod tests;
