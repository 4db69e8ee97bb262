//! The names the router defaults to (ConfigMap, StatefulSet, Service, ports, env vars,
//! paths) are the names in `k8s/`, so the two cannot drift apart.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use clap::CommandFactory;
use router::{Cli, DEFAULT_CONFIGMAP};
use serde::Deserialize;
use serde_json::Value;

/// Every object in k8s/base/*.yaml and k8s/monitoring/*.yaml, by "Kind/name".
fn manifests() -> Result<BTreeMap<String, Value>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../k8s");
    let mut out = BTreeMap::new();
    let mut paths = Vec::new();
    for dir in ["base", "monitoring"] {
        for entry in std::fs::read_dir(root.join(dir))? {
            paths.push(entry?.path());
        }
    }
    for path in paths {
        if path.extension().and_then(|e| e.to_str()) != Some("yaml")
            || path.ends_with("kustomization.yaml")
            || path.ends_with("rules-test.yaml")
        {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        for doc in serde_norway::Deserializer::from_str(&text) {
            let v: Value = serde_json::to_value(serde_norway::Value::deserialize(doc)?)?;
            let key = format!(
                "{}/{}",
                v["kind"].as_str().context("kind")?,
                v["metadata"]["name"].as_str().context("name")?
            );
            out.insert(key, v);
        }
    }
    Ok(out)
}

/// The default of `wsrouter serve --{flag}`.
fn serve_default(flag: &str) -> String {
    let cmd = Cli::command();
    let serve = cmd.find_subcommand("serve").expect("serve subcommand");
    let arg = serve
        .get_arguments()
        .find(|a| a.get_long() == Some(flag))
        .expect("flag exists");
    arg.get_default_values()
        .first()
        .map(|v| v.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn port_of(addr: &str) -> u64 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

fn container(obj: &Value) -> &Value {
    &obj["spec"]["template"]["spec"]["containers"][0]
}

fn named_port(c: &Value, name: &str) -> u64 {
    c["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or(0)
}

fn env_names(c: &Value) -> Vec<&str> {
    c["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["name"].as_str())
        .collect()
}

fn seconds(s: &str) -> u64 {
    humantime::parse_duration(s)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[test]
fn router_defaults_match_the_manifests() -> Result<()> {
    let m = manifests()?;
    let statefulset = serve_default("statefulset");
    let service = serve_default("service");

    // The overrides ConfigMap the router watches by default.
    assert!(
        m.contains_key(&format!("ConfigMap/{DEFAULT_CONFIGMAP}")),
        "{:?}",
        m.keys()
    );
    // The StatefulSet and its headless Service, named as the router's template expects.
    let sts = m
        .get(&format!("StatefulSet/{statefulset}"))
        .context("StatefulSet")?;
    assert_eq!(sts["spec"]["serviceName"], service.as_str());
    let svc = m
        .get(&format!("Service/{service}"))
        .context("headless Service")?;
    assert_eq!(svc["spec"]["clusterIP"], "None");
    // The template's port is the backend's port, end to end.
    let template_port = port_of(&serve_default("backend-template"));
    assert_eq!(named_port(container(sts), "ws"), template_port);
    assert_eq!(
        svc["spec"]["ports"][0]["port"].as_u64(),
        Some(template_port)
    );
    assert!(container(sts)["args"]
        .to_string()
        .contains(&format!(":{template_port}")));
    let backend_env = env_names(container(sts));
    assert!(
        backend_env.contains(&"POD_NAME") && backend_env.contains(&"POD_NAMESPACE"),
        "{backend_env:?}"
    );

    // The router: its listener and admin ports, probes, env, and the TLS mount.
    let dep = m.get("Deployment/wsrouter").context("Deployment")?;
    let c = container(dep);
    assert_eq!(named_port(c, "wss"), port_of(&serve_default("listen")));
    assert_eq!(
        named_port(c, "admin"),
        u64::from(router::default_admin_listen(None).port())
    );
    // The admin listener binds the pod's own address (the downward API's POD_IP), not
    // every interface.
    assert!(env_names(c).contains(&"POD_IP"));
    assert!(
        c["env"].to_string().contains("status.podIP"),
        "{}",
        c["env"]
    );
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "admin");
    assert!(env_names(c).contains(&"POD_NAMESPACE"));
    let args: Vec<&str> = c["args"]
        .as_array()
        .context("args")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(args[0], "serve");
    let mount = c["volumeMounts"][0]["mountPath"]
        .as_str()
        .context("tls mount")?;
    assert!(
        args.contains(&format!("--tls-cert={mount}/tls.crt").as_str()),
        "{args:?}"
    );
    assert!(
        args.contains(&format!("--tls-key={mount}/tls.key").as_str()),
        "{args:?}"
    );
    assert!(
        c["volumeMounts"][0].get("subPath").is_none(),
        "a subPath mount never sees rotations"
    );

    // Termination outlasts preStop + drain grace + close timeout.
    let flag = |name: &str| {
        args.iter()
            .find_map(|a| a.strip_prefix(&format!("--{name}=")))
            .map(str::to_owned)
    };
    let grace = seconds(&flag("drain-grace").unwrap_or_else(|| serve_default("drain-grace")));
    let close = seconds(&flag("close-timeout").unwrap_or_else(|| serve_default("close-timeout")));
    let pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .context("preStop sleep")?;
    let termination = dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .context("termination grace")?;
    assert!(
        termination > pre_stop + grace + close,
        "{termination} <= {pre_stop} + {grace} + {close}"
    );

    // Scaling: the HPA owns the replica count (none in the Deployment), never below 2,
    // scales down one pod at a time after a long quiet spell; replicas spread over
    // nodes and zones.
    assert!(
        dep["spec"].get("replicas").is_none(),
        "the HPA owns replicas"
    );
    let hpa = m.get("HorizontalPodAutoscaler/wsrouter").context("HPA")?;
    assert_eq!(hpa["apiVersion"], "autoscaling/v2");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "wsrouter");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "Deployment");
    assert!(hpa["spec"]["minReplicas"].as_u64() >= Some(2));
    let down = &hpa["spec"]["behavior"]["scaleDown"];
    assert!(down["stabilizationWindowSeconds"].as_u64() >= Some(300));
    for p in down["policies"].as_array().context("scale-down policies")? {
        assert!(p["type"] == "Pods" && p["value"] == 1, "{p}");
        assert!(p["periodSeconds"].as_u64() >= Some(60), "{p}");
    }
    let spread = dep["spec"]["template"]["spec"]["topologySpreadConstraints"]
        .as_array()
        .context("topology spread")?;
    let keys: Vec<_> = spread.iter().map(|t| &t["topologyKey"]).collect();
    assert!(
        keys.contains(&&Value::from("topology.kubernetes.io/zone"))
            && keys.contains(&&Value::from("kubernetes.io/hostname")),
        "{keys:?}"
    );
    for t in spread {
        assert_eq!(
            t["labelSelector"]["matchLabels"],
            dep["spec"]["template"]["metadata"]["labels"]
        );
    }

    // Monitoring: the PodMonitor scrapes the admin port of these pods; the rules alert
    // on disagreement.
    let pm = m.get("PodMonitor/wsrouter").context("PodMonitor")?;
    assert_eq!(
        pm["spec"]["selector"]["matchLabels"],
        dep["spec"]["template"]["metadata"]["labels"]
    );
    assert_eq!(pm["spec"]["podMetricsEndpoints"][0]["port"], "admin");
    let rules = m.get("PrometheusRule/wsrouter").context("PrometheusRule")?;
    assert!(rules.to_string().contains("WsrouterReplicasDisagree"));

    // Hardened pods.
    for obj in [dep, sts] {
        let pod = &obj["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        let sc = &container(obj)["securityContext"];
        assert_eq!(sc["readOnlyRootFilesystem"], true);
        assert_eq!(sc["allowPrivilegeEscalation"], false);
        assert_eq!(sc["capabilities"]["drop"][0], "ALL");
        assert!(container(obj)["resources"]["requests"].is_object());
    }

    // The Service, the PDB and the NetworkPolicy select what they should.
    let lb = m.get("Service/wsrouter").context("router Service")?;
    assert_eq!(lb["spec"]["type"], "LoadBalancer");
    assert_eq!(lb["spec"]["ports"][0]["port"], 443);
    assert_eq!(lb["spec"]["ports"][0]["targetPort"], "wss");
    let router_labels = &dep["spec"]["template"]["metadata"]["labels"];
    assert_eq!(
        m.get("PodDisruptionBudget/wsrouter").context("PDB")?["spec"]["selector"]["matchLabels"],
        *router_labels
    );
    let np = m
        .get("NetworkPolicy/backend-from-router")
        .context("NetworkPolicy")?;
    assert_eq!(
        np["spec"]["podSelector"]["matchLabels"],
        sts["spec"]["template"]["metadata"]["labels"]
    );
    assert_eq!(
        np["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"],
        *router_labels
    );
    assert_eq!(
        np["spec"]["ingress"][0]["ports"][0]["port"].as_u64(),
        Some(template_port)
    );

    // The router's own policy: the WebSocket port from anywhere, the admin port only
    // from namespaces labelled for it.
    let rnp = m
        .get("NetworkPolicy/wsrouter")
        .context("router NetworkPolicy")?;
    assert_eq!(rnp["spec"]["podSelector"]["matchLabels"], *router_labels);
    let rules = rnp["spec"]["ingress"].as_array().context("ingress")?;
    let port_rule = |port: u64| {
        rules
            .iter()
            .find(|r| r["ports"][0]["port"].as_u64() == Some(port))
            .cloned()
            .unwrap_or_default()
    };
    let wss = port_rule(port_of(&serve_default("listen")));
    assert!(wss.is_object() && wss.get("from").is_none(), "{wss}");
    let admin = port_rule(u64::from(router::default_admin_listen(None).port()));
    assert_eq!(
        admin["from"][0]["namespaceSelector"]["matchLabels"]["wsrouter.io/admin-access"], "true",
        "{admin}"
    );
    assert_eq!(rules.len(), 2, "nothing else is let in");

    // Behind a cloud load balancer every client would be a node address unless the
    // Service keeps them: externalTrafficPolicy Local.
    let svc = m.get("Service/wsrouter").context("Service wsrouter")?;
    assert_eq!(svc["spec"]["type"], "LoadBalancer");
    assert_eq!(svc["spec"]["externalTrafficPolicy"], "Local");

    // RBAC names the same objects, and binds the account the Deployment runs as.
    let role = m.get("Role/wsrouter").context("Role")?;
    let names: Vec<String> = role["rules"]
        .as_array()
        .context("rules")?
        .iter()
        .flat_map(|r| r["resourceNames"].as_array().cloned().unwrap_or_default())
        .filter_map(|n| n.as_str().map(str::to_owned))
        .collect();
    assert_eq!(names, [DEFAULT_CONFIGMAP.to_owned(), statefulset]);
    assert_eq!(
        dep["spec"]["template"]["spec"]["serviceAccountName"],
        "wsrouter"
    );
    let binding = m.get("RoleBinding/wsrouter").context("RoleBinding")?;
    assert_eq!(binding["subjects"][0]["name"], "wsrouter");
    assert!(m.contains_key("ServiceAccount/wsrouter"));
    Ok(())
}
