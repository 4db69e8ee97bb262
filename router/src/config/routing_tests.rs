use wsrouter::Backend;

use super::*;

fn args(f: impl FnOnce(&mut RoutingArgs)) -> RoutingArgs {
    let mut a = RoutingArgs::default();
    f(&mut a);
    a
}

fn outside(a: &RoutingArgs) -> Resolved {
    a.resolve("prod".into(), false).unwrap()
}

#[test]
fn a_template_with_replicas_resolves_names_outside_a_cluster() {
    let p = outside(&args(|a| a.replicas = Some(3)));
    let addrs = p.backends.backends(p.replicas.unwrap());
    assert_eq!(
        addrs[2].address().as_deref(),
        Some("backend-2.backend.prod.svc.cluster.local:9000")
    );
    assert!(!p.watch.needs_kube(), "nothing to watch");
    assert_eq!(p.watch.namespace, "prod");
    let p = outside(&args(|a| {
        a.replicas = Some(2);
        a.backend_template = "{statefulset}-{i}.{service}:7000".into();
        a.statefulset = "echo".into();
        a.service = "echo-hl".into();
    }));
    assert_eq!(
        p.backends.backends(p.replicas.unwrap()),
        [
            Backend::Addr("echo-0.echo-hl:7000".into()),
            Backend::Addr("echo-1.echo-hl:7000".into())
        ]
    );
}

#[test]
fn a_static_list_fixes_the_replicas() {
    let p = outside(&args(|a| {
        a.backends = vec!["127.0.0.1:9001".into(), "127.0.0.1:9002".into()];
    }));
    assert_eq!(p.replicas.map(NonZeroU32::get), Some(2));
    assert!(!p.watch.needs_kube());
    let same = args(|a| {
        a.backends = vec!["a:1".into()];
        a.replicas = Some(1);
    });
    assert!(same.resolve("prod".into(), true).is_ok());
}

#[test]
fn a_template_without_replicas_follows_the_statefulset_and_its_slices() {
    let p = outside(&RoutingArgs::default());
    assert_eq!(
        (
            p.watch.statefulset.as_deref(),
            p.watch.endpoint_slices.clone()
        ),
        (Some("backend"), Some(("backend".to_owned(), 9000)))
    );
    assert!(matches!(p.backends, Backends::Pods(_)));
    assert_eq!(p.replicas, None);
}

#[test]
fn overrides_come_from_the_flag_else_the_clusters_configmap() {
    let watched = |a: RoutingArgs, in_cluster| a.resolve("ns".into(), in_cluster).unwrap().watch;
    let fixed = |f: fn(&mut RoutingArgs)| {
        args(|a| {
            a.replicas = Some(2);
            f(a);
        })
    };
    assert_eq!(
        watched(fixed(|_| {}), false).overrides,
        OverridesWatch::None
    );
    assert_eq!(
        watched(fixed(|_| {}), true).overrides,
        OverridesWatch::ConfigMap(DEFAULT_CONFIGMAP.into())
    );
    let w = watched(fixed(|a| a.configmap = Some("routes".into())), false);
    assert_eq!(w.overrides, OverridesWatch::ConfigMap("routes".into()));
    assert_eq!(w.statefulset, None);
    // With the API at hand, pods come from the slices, never from DNS.
    assert_eq!(w.endpoint_slices, Some(("backend".to_owned(), 9000)));
    let w = watched(
        fixed(|a| a.overrides_dir = Some("/etc/wsrouter/overrides".into())),
        true,
    );
    assert_eq!(
        w.overrides,
        OverridesWatch::Dir("/etc/wsrouter/overrides".into())
    );
    let w = watched(fixed(|a| a.overrides_file = Some("o.yaml".into())), true);
    assert_eq!(w.overrides, OverridesWatch::File("o.yaml".into()));
    // In a cluster even a fixed template takes its pods from the slices.
    let p = fixed(|_| {}).resolve("ns".into(), true).unwrap();
    assert!(matches!(p.backends, Backends::Pods(_)));
    // A static list is never replaced.
    let p = args(|a| a.backends = vec!["a:1".into()])
        .resolve("ns".into(), true)
        .unwrap();
    assert!(matches!(p.backends, Backends::Static(_)));
}

#[test]
fn bad_routing_flags_are_errors() {
    let err = |a: RoutingArgs| a.resolve("ns".into(), false).unwrap_err().to_string();
    assert!(err(args(|a| a.replicas = Some(0))).contains("at least 1"));
    assert!(err(args(|a| a.backends = vec!["nope".into()])).contains("--backend"));
    assert!(err(args(|a| {
        a.backends = vec!["a:1".into()];
        a.replicas = Some(2);
    }))
    .contains("--replicas 2 but only 1"));
    assert!(err(args(|a| {
        a.replicas = Some(1);
        a.backend_template = "x:1".into();
    }))
    .contains("--backend-template"));
}

#[test]
fn backend_sets_come_from_lists_or_statefulsets_and_are_named_once() {
    let p = outside(&args(|a| {
        a.backends = vec!["127.0.0.1:9001".into()];
        a.backend_sets = vec!["v2=127.0.0.1:9101, 127.0.0.1:9102".into()];
    }));
    assert_eq!(p.sets.len(), 1);
    assert_eq!(
        (p.sets[0].name.as_str(), p.sets[0].replicas),
        ("v2", Some(2))
    );
    assert!(p.watch.sets.is_empty() && !p.watch.needs_kube());
    // In a cluster: the set's StatefulSet and, like the stable set, its pods from the
    // slices (of the stable set's Service unless named).
    let p = args(|a| {
        a.stable_set = "v1".into();
        a.backend_set_statefulsets = vec!["v2=backend-v2".into(), "v3=backend-v3/v3-hl".into()];
    })
    .resolve("prod".into(), true)
    .unwrap();
    let watched: Vec<_> = p
        .watch
        .sets
        .iter()
        .map(|s| (s.set, s.statefulset.as_str(), s.endpoint_slices.clone()))
        .collect();
    assert_eq!(
        watched,
        [
            (1, "backend-v2", Some(("backend".to_owned(), 9000))),
            (2, "backend-v3", Some(("v3-hl".to_owned(), 9000)))
        ]
    );
    assert!(p
        .sets
        .iter()
        .all(|s| s.replicas.is_none() && matches!(s.backends, Backends::Pods(_))));
    let bad = |f: fn(&mut RoutingArgs)| {
        let mut a = args(|a| a.backends = vec!["127.0.0.1:9001".into()]);
        f(&mut a);
        a.resolve("prod".into(), false).unwrap_err().to_string()
    };
    assert!(bad(|a| a.backend_sets = vec!["stable=127.0.0.1:1".into()]).contains("has this name"));
    assert!(
        bad(|a| a.backend_sets = vec!["v2=a:1".into(), "v2=b:1".into()]).contains("has this name")
    );
    assert!(bad(|a| a.backend_sets = vec!["V_2=a:1".into()]).contains("DNS-1123"));
    assert!(bad(|a| a.backend_sets = vec!["v2".into()]).contains("NAME="));
    assert!(bad(|a| a.backend_sets = vec!["v2=nope".into()]).contains("HOST:PORT"));
    assert!(bad(|a| a.stable_set = "Stable".into()).contains("--stable-set"));
}
