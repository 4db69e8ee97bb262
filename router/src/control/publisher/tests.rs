use super::*;
use wsrouter::BackendTemplate;

fn routing(replicas: Option<u32>, await_overrides: bool) -> RoutingConfig {
    let t = BackendTemplate::parse("{statefulset}-{i}:9000", "backend", "backend", "ns").unwrap();
    RoutingConfig {
        backends: Backends::Template(t),
        statefulset: "backend".into(),
        replicas: replicas.and_then(NonZeroU32::new),
        overrides: Overrides::default(),
        limits: TenantLimits::default(),
        source: TableSource::Flags,
        await_overrides,
        ..RoutingConfig::fixed(Backends::Static(Vec::new()), NonZeroU32::MIN)
    }
}

#[test]
fn tenant_caps_come_with_the_overrides_and_do_not_move_the_fingerprint() {
    let (mut c, table) = control(Some(4));
    let current = || table.load_full().unwrap();
    assert_eq!(
        c.apply(overrides(
            cm("1"),
            &[("ns-01", "0"), ("max-connections.ns-01", "2")]
        )),
        Applied::Published { version: 2 }
    );
    let before = current().fingerprint();
    assert_eq!(current().limits().max_connections("ns-01"), Some(Some(2)));
    // Only the cap changes: a new table (the data path must see it), same routes.
    assert_eq!(
        c.apply(overrides(
            cm("2"),
            &[("ns-01", "0"), ("max-connections.ns-01", "5")]
        )),
        Applied::Published { version: 3 }
    );
    assert_eq!(current().fingerprint(), before);
    assert_eq!(current().limits().max_connections("ns-01"), Some(Some(5)));
    // A bad setting rejects the whole update, routes included.
    assert_eq!(
        c.apply(overrides(
            cm("3"),
            &[("ns-01", "1"), ("max-connection.ns-01", "5")]
        )),
        Applied::Rejected(RejectReason::InvalidOverrides)
    );
    assert_eq!(current().version(), 3);
    assert_eq!(current().route("ns-01").ordinal, 0);
}

fn control_with(routing: RoutingConfig) -> (Control, Arc<ArcSwapOption<RoutingTable>>) {
    let table = Arc::new(ArcSwapOption::empty());
    let (c, _, _) = Control::new(ControlParts {
        table: table.clone(),
        routing,
        live: Arc::new(LiveTenants::default()),
        lifecycle: Lifecycle::default(),
        stats: Arc::default(),
        slots: Slots {
            stopping: CancellationToken::new(),
            tls: None,
        },
    });
    (c, table)
}

fn control(replicas: Option<u32>) -> (Control, Arc<ArcSwapOption<RoutingTable>>) {
    control_with(routing(replicas, false))
}

fn data(entries: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
    Some(
        entries
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    )
}

fn cm(rv: &str) -> TableSource {
    TableSource::ConfigMap {
        namespace: "ns".into(),
        name: "wsrouter-overrides".into(),
        resource_version: rv.into(),
    }
}

fn overrides(source: TableSource, entries: &[(&str, &str)]) -> Input {
    Input::Overrides {
        source,
        data: data(entries),
    }
}

#[test]
fn updates_publish_new_versions_and_bad_ones_keep_the_last_good_table() {
    let (mut c, table) = control(Some(4));
    let current = || table.load_full().unwrap();
    assert_eq!(current().version(), 1);
    assert_eq!(
        c.apply(overrides(cm("10"), &[("ns-01", "0")])),
        Applied::Published { version: 2 }
    );
    assert_eq!(current().route("ns-01").ordinal, 0);
    // Same data again (a resync): nothing to publish.
    assert_eq!(
        c.apply(overrides(cm("11"), &[("ns-01", "0")])),
        Applied::Unchanged
    );
    // One bad key rejects the whole update; the table stays.
    let bad = overrides(cm("12"), &[("ns-01", "1"), ("Bad_Key", "2")]);
    assert_eq!(
        c.apply(bad),
        Applied::Rejected(RejectReason::InvalidOverrides)
    );
    assert_eq!(current().version(), 2);
    assert_eq!(current().route("ns-01").ordinal, 0);
    assert_eq!(c.stats.rejected(RejectReason::InvalidOverrides), 1);
    // Deleted ConfigMap: no overrides.
    let deleted = Input::Overrides {
        source: cm(""),
        data: None,
    };
    assert_eq!(c.apply(deleted), Applied::Published { version: 3 });
    assert_eq!(current().route("ns-01").ordinal, 2);
    assert_eq!(c.stats.swaps.get(), 3);
}

#[test]
fn replicas_rebuild_and_inactive_overrides_wait_for_growth() {
    let (mut c, table) = control(Some(4));
    c.apply(overrides(cm("1"), &[("acme-prod", "backend-5")]));
    let t = table.load_full().unwrap();
    assert_eq!(t.route("acme-prod").inactive_override, Some(5));
    assert_eq!(c.stats.inactive_overrides.get(), 1);
    assert_eq!(
        c.apply(Input::Replicas(6)),
        Applied::Published { version: 3 }
    );
    let t = table.load_full().unwrap();
    assert_eq!((t.replicas().get(), t.route("acme-prod").ordinal), (6, 5));
    assert_eq!(c.stats.inactive_overrides.get(), 0);
    assert_eq!(
        c.apply(Input::Replicas(0)),
        Applied::Rejected(RejectReason::BadReplicas)
    );
    assert_eq!(table.load_full().unwrap().replicas().get(), 6);
}

#[test]
fn no_table_until_replicas_are_known() {
    let (mut c, table) = control(None);
    assert_eq!(
        c.apply(overrides(cm("1"), &[("ns-01", "1")])),
        Applied::Pending
    );
    assert!(table.load().is_none());
    assert!(!c.lifecycle.is_ready());
    assert_eq!(
        c.apply(Input::Replicas(3)),
        Applied::Published { version: 1 }
    );
    assert_eq!(table.load_full().unwrap().route("ns-01").ordinal, 1);
}

#[test]
fn a_watched_source_is_awaited_before_the_first_table() {
    let (mut c, table) = control_with(routing(Some(4), true));
    assert!(table.load().is_none());
    assert_eq!(c.apply(Input::Replicas(5)), Applied::Pending);
    // A bad first read does not unblock routing either.
    let bad = overrides(cm("1"), &[("X", "1")]);
    assert_eq!(
        c.apply(bad),
        Applied::Rejected(RejectReason::InvalidOverrides)
    );
    assert!(table.load().is_none());
    let good = overrides(cm("2"), &[("ns-01", "4")]);
    assert_eq!(c.apply(good), Applied::Published { version: 1 });
    let t = table.load_full().unwrap();
    assert_eq!((t.replicas().get(), t.route("ns-01").ordinal), (5, 4));
}

#[test]
fn static_lists_cannot_grow() {
    let backends = Backends::static_list(vec!["127.0.0.1:1".into(), "127.0.0.1:2".into()]).unwrap();
    let (mut c, table) = control_with(RoutingConfig::fixed(backends, NonZeroU32::new(2).unwrap()));
    assert_eq!(
        c.apply(Input::Replicas(3)),
        Applied::Rejected(RejectReason::BadReplicas)
    );
    assert_eq!(table.load_full().unwrap().replicas().get(), 2);
    // The rejected count is not remembered: the next overrides update still builds.
    let src = TableSource::File { path: "f".into() };
    assert_eq!(
        c.apply(overrides(src, &[("ns-01", "1")])),
        Applied::Published { version: 2 }
    );
    assert_eq!(table.load_full().unwrap().replicas().get(), 2);
}
