//! Which pod holds each ordinal, where it listens, and whether it takes new connections,
//! merged from every EndpointSlice of the backends' Service.
//!
//! Pods are matched to ordinals by name (`<statefulset>-<i>`, from the endpoint's
//! `targetRef` or `hostname`), never by address order. Conditions are read as Kubernetes
//! defines them: `serving` unset means as `ready`, `ready` unset means ready, `terminating`
//! unset means not terminating; `ready` is never true for a terminating pod, so `serving`
//! is what says a terminating pod still answers.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use crate::overrides::parse_target;

/// One endpoint as an EndpointSlice lists it, reduced to what routing needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceEndpoint {
    /// The pod's name (`targetRef.name`, else `hostname`).
    pub pod: String,
    /// The pod's UID (`targetRef.uid`), empty if the slice does not say.
    pub uid: String,
    /// The endpoint's first address.
    pub ip: IpAddr,
    pub ready: Option<bool>,
    pub serving: Option<bool>,
    pub terminating: Option<bool>,
}

/// The pod at one ordinal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Member {
    pub pod: String,
    pub uid: String,
    pub addr: SocketAddr,
    /// Answers requests (Kubernetes' `serving`).
    pub serving: bool,
    /// Being deleted: its live sockets are left alone, new ones are not sent to it.
    pub terminating: bool,
}

impl Member {
    /// Whether a new connection may be sent to it.
    pub fn accepts_new(&self) -> bool {
        self.serving && !self.terminating
    }

    /// How much this endpoint is preferred when two claim one ordinal (a dual-stack pair,
    /// or a terminating pod and its replacement while slices catch up): one that takes
    /// new connections, then IPv4, then the smallest UID and address, so every replica
    /// picks the same one.
    fn rank(&self) -> impl Ord + '_ {
        (
            !self.accepts_new(),
            !self.serving,
            !self.addr.is_ipv4(),
            &self.uid,
            self.addr,
        )
    }
}

/// Every ordinal's pod that the slices name. Ordinals they do not name are unknown.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Members {
    by_ordinal: BTreeMap<u32, Member>,
}

impl Members {
    /// Merges the endpoints of every slice of the Service. Endpoints that are not pods of
    /// `statefulset` are ignored; `port` is the backends' port.
    pub fn from_endpoints<'a>(
        statefulset: &str,
        port: u16,
        endpoints: impl IntoIterator<Item = &'a SliceEndpoint>,
    ) -> Self {
        let mut by_ordinal: BTreeMap<u32, Member> = BTreeMap::new();
        for ep in endpoints {
            let Ok(ordinal) = parse_target(&ep.pod, statefulset) else {
                continue;
            };
            // Only a pod's own name counts: `3` alone is a target, not a pod name.
            if ep.pod != format!("{statefulset}-{ordinal}") {
                continue;
            }
            let ready = ep.ready.unwrap_or(true);
            let member = Member {
                pod: ep.pod.clone(),
                uid: ep.uid.clone(),
                addr: SocketAddr::new(ep.ip, port),
                serving: ep.serving.unwrap_or(ready),
                terminating: ep.terminating.unwrap_or(false),
            };
            match by_ordinal.get(&ordinal) {
                Some(have) if have.rank() <= member.rank() => {}
                _ => {
                    by_ordinal.insert(ordinal, member);
                }
            }
        }
        Self { by_ordinal }
    }

    pub fn get(&self, ordinal: u32) -> Option<&Member> {
        self.by_ordinal.get(&ordinal)
    }

    pub fn len(&self) -> usize {
        self.by_ordinal.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_ordinal.is_empty()
    }

    /// Every known ordinal and its pod, in ordinal order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &Member)> {
        self.by_ordinal.iter().map(|(&o, m)| (o, m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(pod: &str, ip: &str, ready: Option<bool>) -> SliceEndpoint {
        SliceEndpoint {
            pod: pod.to_owned(),
            uid: format!("uid-{pod}"),
            ip: ip.parse().unwrap(),
            ready,
            serving: None,
            terminating: None,
        }
    }

    #[test]
    fn pods_are_matched_by_name_not_by_order() {
        let eps = [
            ep("backend-2", "10.0.0.9", Some(true)),
            ep("backend-0", "10.0.0.7", None),
            ep("other-1", "10.0.0.8", Some(true)),
            ep("backend-x", "10.0.0.6", Some(true)),
            ep("1", "10.0.0.5", Some(true)),
        ];
        let m = Members::from_endpoints("backend", 9000, &eps);
        assert_eq!(m.len(), 2);
        assert_eq!(m.get(0).unwrap().addr.to_string(), "10.0.0.7:9000");
        assert_eq!(m.get(2).unwrap().pod, "backend-2");
        assert!(m.get(1).is_none());
        // ready unset: ready; serving unset: as ready.
        assert!(m.get(0).unwrap().accepts_new());
    }

    #[test]
    fn conditions_follow_kubernetes() {
        let mut not_ready = ep("backend-0", "10.0.0.1", Some(false));
        let m = Members::from_endpoints("backend", 1, [&not_ready]);
        assert!(!m.get(0).unwrap().serving);
        // Terminating but still serving: known, not sent new connections.
        not_ready.serving = Some(true);
        not_ready.terminating = Some(true);
        let m = Members::from_endpoints("backend", 1, [&not_ready]);
        let p = m.get(0).unwrap();
        assert!(p.serving && p.terminating && !p.accepts_new());
    }

    #[test]
    fn one_pod_per_ordinal_whatever_the_order() {
        let mut old = ep("backend-1", "10.0.0.1", Some(false));
        old.uid = "old".into();
        old.terminating = Some(true);
        let mut new = ep("backend-1", "10.0.0.2", Some(true));
        new.uid = "new".into();
        let v6 = ep("backend-1", "fd00::2", Some(true));
        let a = Members::from_endpoints("backend", 9, [&old, &new, &v6]);
        let b = Members::from_endpoints("backend", 9, [&v6, &new, &old]);
        assert_eq!(a, b);
        let p = a.get(1).unwrap();
        assert_eq!(
            (p.uid.as_str(), p.addr.to_string()),
            ("new", "10.0.0.2:9".into())
        );
    }
}
