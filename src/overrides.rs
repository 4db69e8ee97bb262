//! Per-tenant overrides: `namespace → target`, where a target is a pod ordinal (`"3"`)
//! or a pod name of the StatefulSet (`"backend-3"`). Parsed and validated once, when a
//! table is built, never at request time.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::{fmt, num::NonZeroU32};

use thiserror::Error;
use twox_hash::XxHash3_64;

use crate::namespace::{validate_namespace, NamespaceError};
use crate::split::{is_split_key, Split, SplitError};

/// Kubernetes pod ordinals are `int32`, so no valid target is larger.
pub const MAX_ORDINAL: u32 = i32::MAX as u32;

/// Why an override target is not usable.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TargetError {
    #[error("target is empty")]
    Empty,
    #[error("target {target:?} is neither an ordinal (\"3\") nor a pod name of StatefulSet {statefulset:?} (\"{statefulset}-3\")")]
    Unrecognized { target: String, statefulset: String },
    #[error("target {target:?} has a leading zero; write the ordinal as Kubernetes does")]
    LeadingZero { target: String },
    #[error("target {target:?} is larger than any pod ordinal")]
    OutOfRange { target: String },
}

/// Parses an override target into a pod ordinal. Surrounding whitespace is ignored because
/// files in a mounted ConfigMap often end in a newline.
pub fn parse_target(raw: &str, statefulset: &str) -> Result<u32, TargetError> {
    let target = raw.trim();
    if target.is_empty() {
        return Err(TargetError::Empty);
    }
    let digits = target
        .strip_prefix(statefulset)
        .and_then(|rest| rest.strip_prefix('-'))
        .unwrap_or(target);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(TargetError::Unrecognized {
            target: target.to_owned(),
            statefulset: statefulset.to_owned(),
        });
    }
    if digits.len() > 1 && digits.starts_with('0') {
        return Err(TargetError::LeadingZero {
            target: target.to_owned(),
        });
    }
    match digits.parse::<u32>() {
        Ok(n) if n <= MAX_ORDINAL => Ok(n),
        _ => Err(TargetError::OutOfRange {
            target: target.to_owned(),
        }),
    }
}

/// One offending entry of an overrides update.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum OverrideError {
    #[error("key {key:?} is not a valid namespace: {source}")]
    Key {
        key: String,
        #[source]
        source: NamespaceError,
    },
    #[error("key {key:?}: {source}")]
    Target {
        key: String,
        #[source]
        source: TargetError,
    },
    #[error("key {key:?} appears more than once")]
    Duplicate { key: String },
    #[error("key {key:?} is not a setting: the settings are max-connections.<namespace>, canary.set, canary.weight, canary.header, canary.cookie and set.<namespace>")]
    UnknownSetting { key: String },
    #[error(
        "key {key:?}: {value:?} is not a number of connections (0 to 1000000) or \"unlimited\""
    )]
    BadLimit { key: String, value: String },
    /// A version split entry (`canary.*`, `set.<namespace>`).
    #[error(transparent)]
    Split(#[from] SplitError),
}

impl OverrideError {
    /// The key this error is about, for logs and metrics.
    pub fn key(&self) -> &str {
        match self {
            Self::Key { key, .. }
            | Self::Target { key, .. }
            | Self::Duplicate { key }
            | Self::UnknownSetting { key }
            | Self::BadLimit { key, .. } => key,
            Self::Split(e) => e.key(),
        }
    }
}

/// An overrides update that was rejected whole. Lists every offending key so an operator
/// fixes them in one edit rather than one per rejection.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub struct OverridesError {
    pub errors: Vec<OverrideError>,
}

impl fmt::Display for OverridesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} invalid override(s)", self.errors.len())?;
        for e in &self.errors {
            write!(f, "; {e}")?;
        }
        Ok(())
    }
}

type Hasher = BuildHasherDefault<XxHash3_64>;

/// A validated set of overrides: namespace → pod ordinal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    map: HashMap<Box<str>, u32, Hasher>,
}

impl Overrides {
    /// Validates every entry; any bad entry rejects the whole update.
    pub fn parse<K, V>(
        entries: impl IntoIterator<Item = (K, V)>,
        statefulset: &str,
    ) -> Result<Self, OverridesError>
    where
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let entries = entries.into_iter();
        let mut map = HashMap::with_capacity_and_hasher(entries.size_hint().0, Hasher::default());
        let mut errors = Vec::new();
        for (key, value) in entries {
            let key = key.as_ref();
            if let Err(source) = validate_namespace(key) {
                errors.push(OverrideError::Key {
                    key: key.to_owned(),
                    source,
                });
                continue;
            }
            match parse_target(value.as_ref(), statefulset) {
                Ok(ordinal) => {
                    if map.insert(Box::from(key), ordinal).is_some() {
                        errors.push(OverrideError::Duplicate {
                            key: key.to_owned(),
                        });
                    }
                }
                Err(source) => errors.push(OverrideError::Target {
                    key: key.to_owned(),
                    source,
                }),
            }
        }
        if errors.is_empty() {
            Ok(Self { map })
        } else {
            errors.sort_by(|a, b| a.key().cmp(b.key()));
            Err(OverridesError { errors })
        }
    }

    #[inline]
    pub fn get(&self, namespace: &str) -> Option<u32> {
        if self.map.is_empty() {
            return None;
        }
        self.map.get(namespace).copied()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Entries in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u32)> {
        self.map.iter().map(|(k, &o)| (&**k, o))
    }

    /// Entries in namespace order, so listings are stable.
    pub fn sorted(&self) -> Vec<(&str, u32)> {
        let mut v: Vec<_> = self.map.iter().map(|(k, &o)| (&**k, o)).collect();
        v.sort_unstable();
        v
    }

    /// Overrides whose target is beyond `replicas`: kept, but inactive until the
    /// StatefulSet grows back.
    pub fn inactive(&self, replicas: NonZeroU32) -> Vec<(&str, u32)> {
        let mut v: Vec<_> = self
            .map
            .iter()
            .filter(|(_, &o)| o >= replicas.get())
            .map(|(k, &o)| (&**k, o))
            .collect();
        v.sort_unstable();
        v
    }
}

/// The key prefix of a tenant's connection cap in the overrides ConfigMap:
/// `max-connections.<namespace>: "200"` (or `"unlimited"`). ConfigMap keys may hold dots;
/// namespaces may not, so the two kinds of key cannot collide.
pub const MAX_CONNECTIONS_KEY: &str = "max-connections.";

/// The largest per-tenant cap accepted: far above what one router holds.
pub const MAX_TENANT_CAP: u32 = 1_000_000;

/// Per-tenant settings from the overrides ConfigMap.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantLimits {
    /// namespace → its cap (`None`: unlimited, whatever the default).
    max_connections: HashMap<Box<str>, Option<u32>, Hasher>,
}

impl TenantLimits {
    /// The tenant's own cap if the ConfigMap sets one: `Some(None)` for unlimited.
    #[inline]
    pub fn max_connections(&self, namespace: &str) -> Option<Option<u32>> {
        if self.max_connections.is_empty() {
            return None;
        }
        self.max_connections.get(namespace).copied()
    }

    pub fn len(&self) -> usize {
        self.max_connections.len()
    }

    /// Every tenant's own cap (`None`: unlimited), in namespace order.
    pub fn sorted(&self) -> Vec<(&str, Option<u32>)> {
        let mut v: Vec<_> = self
            .max_connections
            .iter()
            .map(|(k, &c)| (&**k, c))
            .collect();
        v.sort_unstable();
        v
    }

    pub fn is_empty(&self) -> bool {
        self.max_connections.is_empty()
    }
}

/// What a ConfigMap says: who goes where, and per-tenant settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigMapData {
    pub overrides: Overrides,
    pub limits: TenantLimits,
    pub split: Split,
}

/// A whole ConfigMap's data: routing overrides (`<namespace>: target`), per-tenant
/// settings (`max-connections.<namespace>: N`) and the version split (`canary.*`,
/// `set.<namespace>`), validated together; any bad entry rejects the update, and every
/// bad key is listed.
pub fn parse_configmap<K, V>(
    entries: impl IntoIterator<Item = (K, V)>,
    statefulset: &str,
) -> Result<ConfigMapData, OverridesError>
where
    K: AsRef<str>,
    V: AsRef<str>,
{
    let mut routes = Vec::new();
    let mut split_entries = Vec::new();
    let mut limits = TenantLimits::default();
    let mut errors = Vec::new();
    for (key, value) in entries {
        let (key, value) = (key.as_ref(), value.as_ref());
        if is_split_key(key) {
            split_entries.push((key.to_owned(), value.to_owned()));
            continue;
        }
        if !key.contains('.') {
            routes.push((key.to_owned(), value.to_owned()));
            continue;
        }
        let Some(ns) = key.strip_prefix(MAX_CONNECTIONS_KEY) else {
            errors.push(OverrideError::UnknownSetting {
                key: key.to_owned(),
            });
            continue;
        };
        if let Err(source) = validate_namespace(ns) {
            errors.push(OverrideError::Key {
                key: key.to_owned(),
                source,
            });
            continue;
        }
        let v = value.trim();
        let cap = match v {
            "unlimited" => None,
            _ => match v.parse::<u32>() {
                Ok(n) if n <= MAX_TENANT_CAP && (v == "0" || !v.starts_with('0')) => Some(n),
                _ => {
                    errors.push(OverrideError::BadLimit {
                        key: key.to_owned(),
                        value: value.to_owned(),
                    });
                    continue;
                }
            },
        };
        if limits.max_connections.insert(ns.into(), cap).is_some() {
            errors.push(OverrideError::Duplicate {
                key: key.to_owned(),
            });
        }
    }
    let overrides = match Overrides::parse(routes, statefulset) {
        Ok(o) => o,
        Err(e) => {
            errors.extend(e.errors);
            Overrides::default()
        }
    };
    let split = match Split::parse(split_entries) {
        Ok(s) => s,
        Err(e) => {
            errors.extend(e.into_iter().map(OverrideError::Split));
            Split::default()
        }
    };
    if errors.is_empty() {
        Ok(ConfigMapData {
            overrides,
            limits,
            split,
        })
    } else {
        errors.sort_by(|a, b| a.key().cmp(b.key()));
        Err(OverridesError { errors })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configmaps_carry_routes_and_caps() {
        let ConfigMapData {
            overrides: o,
            limits: l,
            split,
        } = parse_configmap(
            [
                ("acme", "backend-2"),
                ("max-connections.acme", "200"),
                ("max-connections.big", "unlimited"),
                ("max-connections.off", "0"),
                ("canary.set", "v2"),
                ("canary.weight", "5"),
                ("set.vip", "stable"),
            ],
            "backend",
        )
        .unwrap();
        assert_eq!(
            split.canary().map(|c| (&*c.set, c.weight)),
            Some(("v2", 500))
        );
        assert_eq!(split.pinned(), [("vip", "stable")]);
        assert_eq!((o.len(), o.get("acme")), (1, Some(2)));
        assert_eq!(l.max_connections("acme"), Some(Some(200)));
        assert_eq!(l.max_connections("big"), Some(None));
        assert_eq!(l.max_connections("off"), Some(Some(0)));
        assert_eq!(l.max_connections("other"), None);
        let e = parse_configmap(
            [
                ("max-conections.acme", "1"),
                ("max-connections.Bad", "1"),
                ("max-connections.x", "-1"),
                ("max-connections.y", "007"),
                ("max-connections.z", "2000000"),
                ("ok", "pod-1"),
                ("canary.weight", "101"),
                ("set.x", "Not_A_Set"),
            ],
            "backend",
        )
        .unwrap_err();
        let keys: Vec<&str> = e.errors.iter().map(OverrideError::key).collect();
        assert_eq!(
            keys,
            [
                "canary.weight",
                "max-conections.acme",
                "max-connections.Bad",
                "max-connections.x",
                "max-connections.y",
                "max-connections.z",
                "ok",
                "set.x"
            ]
        );
        assert!(matches!(e.errors[0], OverrideError::Split(_)));
        assert!(matches!(e.errors[1], OverrideError::UnknownSetting { .. }));
        assert!(matches!(e.errors[3], OverrideError::BadLimit { .. }));
    }

    #[test]
    fn target_table() {
        let cases: &[(&str, Result<u32, TargetError>)] = &[
            ("0", Ok(0)),
            ("3", Ok(3)),
            ("17", Ok(17)),
            ("backend-0", Ok(0)),
            ("backend-3", Ok(3)),
            ("backend-12", Ok(12)),
            (" 3\n", Ok(3)),
            ("backend-3\n", Ok(3)),
            ("2147483647", Ok(MAX_ORDINAL)),
            ("", Err(TargetError::Empty)),
            ("  \n", Err(TargetError::Empty)),
            (
                "03",
                Err(TargetError::LeadingZero {
                    target: "03".into(),
                }),
            ),
            (
                "backend-03",
                Err(TargetError::LeadingZero {
                    target: "backend-03".into(),
                }),
            ),
            (
                "2147483648",
                Err(TargetError::OutOfRange {
                    target: "2147483648".into(),
                }),
            ),
            (
                "99999999999999999999",
                Err(TargetError::OutOfRange {
                    target: "99999999999999999999".into(),
                }),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(&parse_target(input, "backend"), want, "input {input:?}");
        }
        for bad in [
            "-3",
            "+3",
            "3a",
            "backend",
            "backend-",
            "backend-x",
            "other-3",
            "backend3",
            "backend--3",
            "backend-3-1",
            "3.0",
            "٣",
        ] {
            assert_eq!(
                parse_target(bad, "backend"),
                Err(TargetError::Unrecognized {
                    target: bad.into(),
                    statefulset: "backend".into()
                }),
                "input {bad:?}"
            );
        }
    }

    #[test]
    fn target_respects_statefulset_name() {
        assert_eq!(parse_target("echo-2", "echo"), Ok(2));
        assert!(parse_target("backend-2", "echo").is_err());
        // A StatefulSet whose name ends in digits still parses unambiguously.
        assert_eq!(parse_target("web-1-4", "web-1"), Ok(4));
    }

    #[test]
    fn overrides_parse_ok() {
        let o = Overrides::parse([("ns-01", "3"), ("ns-42", "backend-0")], "backend").unwrap();
        assert_eq!(o.len(), 2);
        assert_eq!(o.get("ns-01"), Some(3));
        assert_eq!(o.get("ns-42"), Some(0));
        assert_eq!(o.get("ns-02"), None);
        assert_eq!(o.sorted(), vec![("ns-01", 3), ("ns-42", 0)]);
        assert_eq!(o.inactive(NonZeroU32::new(3).unwrap()), vec![("ns-01", 3)]);
        assert!(o.inactive(NonZeroU32::new(4).unwrap()).is_empty());
    }

    #[test]
    fn overrides_reject_whole_update_and_name_every_key() {
        let err = Overrides::parse(
            [
                ("ns-01", "3"),
                ("Bad_Key", "1"),
                ("ns-02", "pod-7"),
                ("ns-03", "1"),
                ("ns-03", "2"),
            ],
            "backend",
        )
        .unwrap_err();
        let keys: Vec<_> = err.errors.iter().map(OverrideError::key).collect();
        assert_eq!(keys, ["Bad_Key", "ns-02", "ns-03"]);
        assert!(matches!(err.errors[0], OverrideError::Key { .. }));
        assert!(matches!(err.errors[1], OverrideError::Target { .. }));
        assert!(matches!(err.errors[2], OverrideError::Duplicate { .. }));
        let text = err.to_string();
        assert!(text.starts_with("3 invalid override(s)"), "{text}");
        assert!(text.contains("\"Bad_Key\""), "{text}");
        assert!(!text.contains('\n'));
    }

    #[test]
    fn empty_overrides() {
        let o = Overrides::parse(Vec::<(&str, &str)>::new(), "backend").unwrap();
        assert!(o.is_empty());
        assert_eq!(o.get("x"), None);
    }
}
