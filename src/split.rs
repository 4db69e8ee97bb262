//! The version split (issue "canary, A/B and blue/green"): which backend set a tenant's
//! sockets and requests go to, when several versions of the backend run side by side
//! (a StatefulSet per version: the stable one, and for example `v2`). Pure, like the rest
//! of the contract; the table will hold a [`Split`] beside its overrides.
//!
//! Who goes where, first rule that applies:
//! 1. a tenant pinned to a set (`set.<namespace>: v2` in the ConfigMap);
//! 2. the request's canary header (`X-Canary: always|never` by default,
//!    `canary.header` names another), then its canary cookie (`canary=always|never`,
//!    `canary.cookie`);
//! 3. the weight (`canary.set: v2`, `canary.weight: "5"`, a percent with up to two
//!    decimals): the tenant's **split bucket**, `XXH3-64(namespace, seed` [`SPLIT_SEED`]`)
//!    mod 10,000`, below the weight in hundredths of a percent goes to the canary set.
//!    The bucket is a hash of its own, independent of the pod hash, so raising the weight
//!    5 → 10 moves exactly the tenants in buckets [500, 1000) and no other, and lowering it
//!    moves exactly those back: a tenant never flaps between versions.
//!
//! Blue/green is weight 100 with one edit, and back. Per-tenant pod overrides (today's
//! `<namespace>: backend-2`) stay above all of this: they name a pod of the stable set.

use std::collections::HashMap;

use thiserror::Error;
use twox_hash::XxHash3_64;

use crate::namespace::{validate_namespace, NamespaceError};

/// The seed of the split bucket's hash: any constant but the pod hash's (0), so a
/// tenant's version and its pod are independent draws. Part of the contract: every
/// replica and tool must use the same.
pub const SPLIT_SEED: u64 = 0x7370_6c69_745f_7631; // "split_v1"

/// Buckets a tenant's split hash falls into: hundredths of a percent.
pub const BUCKETS: u32 = 10_000;

/// ConfigMap keys of the split (beside the overrides and `max-connections.<ns>`).
pub const CANARY_SET_KEY: &str = "canary.set";
pub const CANARY_WEIGHT_KEY: &str = "canary.weight";
pub const CANARY_HEADER_KEY: &str = "canary.header";
pub const CANARY_COOKIE_KEY: &str = "canary.cookie";
/// `set.<namespace>: <set>` pins a tenant to a set.
pub const PIN_KEY: &str = "set.";

/// The request header and cookie that opt a request in or out, unless renamed.
pub const DEFAULT_HEADER: &str = "x-canary";
pub const DEFAULT_COOKIE: &str = "canary";

/// A tenant's split bucket, in `0..BUCKETS`.
#[inline]
pub fn split_bucket(namespace: &str) -> u32 {
    (XxHash3_64::oneshot_with_seed(SPLIT_SEED, namespace.as_bytes()) % u64::from(BUCKETS)) as u32
}

/// What a request's header or cookie asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hint {
    /// `always`: the canary set.
    Always,
    /// `never`: the stable set.
    Never,
}

impl Hint {
    /// A header's or cookie's value; anything but `always` or `never` (any case, trimmed)
    /// asks for nothing.
    pub fn parse(value: &str) -> Option<Self> {
        let v = value.trim();
        if v.eq_ignore_ascii_case("always") {
            Some(Self::Always)
        } else if v.eq_ignore_ascii_case("never") {
            Some(Self::Never)
        } else {
            None
        }
    }
}

/// The canary set and its share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Canary {
    pub set: Box<str>,
    /// Hundredths of a percent: 0..=10,000.
    pub weight: u32,
}

/// What one request's header and cookie ask for (read only when a canary is set).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hints {
    pub header: Option<Hint>,
    pub cookie: Option<Hint>,
}

/// What the cookie `name` in a `Cookie` header's value asks for: its first occurrence
/// (RFC 6265 lists the most specific path first), `None` when absent or neither word.
pub fn cookie_hint(cookie_header: &str, name: &str) -> Option<Hint> {
    cookie_header
        .split(';')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| k.trim() == name)
        .and_then(|(_, v)| Hint::parse(v.trim().trim_matches('"')))
}

/// Why a tenant went to the set it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetSource {
    /// No split, or the weight left it on the stable set.
    Stable,
    /// A per-tenant pod override (`<namespace>: backend-2`): a pod of the stable set,
    /// above every split rule.
    Override,
    /// `set.<namespace>` in the ConfigMap.
    Pinned,
    Header,
    Cookie,
    /// Its split bucket is below the canary's weight.
    Weight {
        bucket: u32,
    },
}

impl SetSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stable => "stable",
            Self::Override => "override",
            Self::Pinned => "pinned",
            Self::Header => "header",
            Self::Cookie => "cookie",
            Self::Weight { .. } => "weight",
        }
    }
}

/// A request's set: `None` is the stable set; `Some(name)` another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice<'s> {
    pub set: Option<&'s str>,
    pub why: SetSource,
}

/// How tenants are split over the backend sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    canary: Option<Canary>,
    header: Box<str>,
    cookie: Box<str>,
    pinned: HashMap<Box<str>, Box<str>>,
}

impl Default for Split {
    /// No split: everyone on the stable set.
    fn default() -> Self {
        Self {
            canary: None,
            header: DEFAULT_HEADER.into(),
            cookie: DEFAULT_COOKIE.into(),
            pinned: HashMap::new(),
        }
    }
}

/// One bad split entry, named by its key.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SplitError {
    #[error("{key}: {value:?} is not a percent from 0 to 100 with at most two decimals")]
    BadWeight { key: String, value: String },
    #[error("{key}: {value:?} is not a set name (a DNS-1123 label)")]
    BadSet {
        key: String,
        value: String,
        #[source]
        source: NamespaceError,
    },
    #[error("{key}: {value:?} is not a header or cookie name")]
    BadName { key: String, value: String },
    #[error("{key}: the namespace is not valid")]
    BadTenant {
        key: String,
        #[source]
        source: NamespaceError,
    },
    #[error("canary.weight is set but canary.set is not")]
    WeightWithoutSet,
    #[error("{key}: {set:?} is not a backend set this router has (--stable-set, --backend-set, --backend-set-statefulset)")]
    UnknownSet { key: String, set: String },
    #[error("{key} is not a split setting (canary.set, canary.weight, canary.header, canary.cookie, set.<namespace>)")]
    Unknown { key: String },
}

impl SplitError {
    /// The ConfigMap key this error is about, for logs.
    pub fn key(&self) -> &str {
        match self {
            Self::BadWeight { key, .. }
            | Self::BadSet { key, .. }
            | Self::BadName { key, .. }
            | Self::BadTenant { key, .. }
            | Self::UnknownSet { key, .. }
            | Self::Unknown { key } => key,
            Self::WeightWithoutSet => CANARY_WEIGHT_KEY,
        }
    }
}

/// Whether `key` belongs to the split (the rest of a ConfigMap is overrides and caps).
pub fn is_split_key(key: &str) -> bool {
    key.starts_with("canary.") || key.starts_with(PIN_KEY)
}

/// A percent with at most two decimals, in hundredths: `"5"` → 500, `"0.25"` → 25.
fn parse_weight(value: &str) -> Option<u32> {
    let v = value.trim().trim_end_matches('%');
    let (whole, frac) = match v.split_once('.') {
        Some((_, "")) => return None,
        Some(parts) => parts,
        None => (v, ""),
    };
    if whole.is_empty() || frac.len() > 2 || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole: u32 = whole.parse().ok()?;
    let frac: u32 = format!("{frac:0<2}").parse().ok()?;
    let w = whole.checked_mul(100)?.checked_add(frac)?;
    (w <= BUCKETS).then_some(w)
}

/// A header or cookie name: visible ASCII, no separators; stored lower-cased (header
/// names are case-insensitive; cookie names are matched as written, so they are kept).
fn valid_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl Split {
    /// The split from a ConfigMap's split entries ([`is_split_key`]); every bad entry is
    /// reported, and any one rejects the whole update (the last good table stays).
    pub fn parse<K, V>(entries: impl IntoIterator<Item = (K, V)>) -> Result<Self, Vec<SplitError>>
    where
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut split = Split::default();
        let (mut set, mut weight) = (None, None);
        let mut errors = Vec::new();
        for (key, value) in entries {
            let (key, value) = (key.as_ref(), value.as_ref());
            let owned = || (key.to_owned(), value.to_owned());
            match key {
                CANARY_SET_KEY => match validate_namespace(value.trim()) {
                    Ok(()) => set = Some(Box::<str>::from(value.trim())),
                    Err(source) => {
                        let (key, value) = owned();
                        errors.push(SplitError::BadSet { key, value, source });
                    }
                },
                CANARY_WEIGHT_KEY => match parse_weight(value) {
                    Some(w) => weight = Some(w),
                    None => {
                        let (key, value) = owned();
                        errors.push(SplitError::BadWeight { key, value });
                    }
                },
                CANARY_HEADER_KEY | CANARY_COOKIE_KEY => {
                    let name = value.trim();
                    if !valid_token(name) {
                        let (key, value) = owned();
                        errors.push(SplitError::BadName { key, value });
                    } else if key == CANARY_HEADER_KEY {
                        split.header = name.to_ascii_lowercase().into();
                    } else {
                        split.cookie = name.into();
                    }
                }
                _ => match key.strip_prefix(PIN_KEY) {
                    Some(ns) => {
                        if let Err(source) = validate_namespace(ns) {
                            errors.push(SplitError::BadTenant {
                                key: key.to_owned(),
                                source,
                            });
                        } else if let Err(source) = validate_namespace(value.trim()) {
                            let (key, value) = owned();
                            errors.push(SplitError::BadSet { key, value, source });
                        } else {
                            split.pinned.insert(ns.into(), value.trim().into());
                        }
                    }
                    None => errors.push(SplitError::Unknown {
                        key: key.to_owned(),
                    }),
                },
            }
        }
        match (set, weight) {
            (Some(set), w) => {
                split.canary = Some(Canary {
                    set,
                    weight: w.unwrap_or(0),
                })
            }
            (None, Some(_)) => errors.push(SplitError::WeightWithoutSet),
            (None, None) => {}
        }
        if errors.is_empty() {
            Ok(split)
        } else {
            Err(errors)
        }
    }

    pub fn canary(&self) -> Option<&Canary> {
        self.canary.as_ref()
    }

    /// Whether a request's header and cookie can change its set: only with a canary.
    pub fn reads_hints(&self) -> bool {
        self.canary.is_some()
    }

    /// Whether every tenant goes to the stable set whatever it asks (no canary, no pins).
    pub fn is_none(&self) -> bool {
        self.canary.is_none() && self.pinned.is_empty()
    }

    /// Tenants pinned to a set, by namespace (bytewise).
    pub fn pinned(&self) -> Vec<(&str, &str)> {
        let mut v: Vec<_> = self.pinned.iter().map(|(k, s)| (&**k, &**s)).collect();
        v.sort_unstable();
        v
    }

    /// Every entry naming a set that is not in `known`, by key (the canary's first).
    pub fn unknown_sets(&self, known: &[&str]) -> Vec<SplitError> {
        let named = self
            .canary
            .iter()
            .map(|c| (CANARY_SET_KEY.to_owned(), &*c.set))
            .chain(
                self.pinned()
                    .into_iter()
                    .map(|(ns, set)| (format!("{PIN_KEY}{ns}"), set)),
            );
        named
            .filter(|(_, set)| !known.contains(set))
            .map(|(key, set)| SplitError::UnknownSet {
                key,
                set: set.to_owned(),
            })
            .collect()
    }

    /// The request header that opts in or out (lower-case).
    pub fn header(&self) -> &str {
        &self.header
    }

    /// The cookie that opts in or out.
    pub fn cookie(&self) -> &str {
        &self.cookie
    }

    /// The set a request of `namespace` goes to, given what its header and its cookie ask
    /// (see the module's order).
    pub fn choose(
        &self,
        namespace: &str,
        header: Option<Hint>,
        cookie: Option<Hint>,
    ) -> Choice<'_> {
        if let Some(set) = self.pinned.get(namespace) {
            return Choice {
                set: Some(set),
                why: SetSource::Pinned,
            };
        }
        let Some(canary) = &self.canary else {
            return Choice {
                set: None,
                why: SetSource::Stable,
            };
        };
        let rule = |hint: Hint, why| Choice {
            set: (hint == Hint::Always).then_some(&*canary.set),
            why,
        };
        if let Some(h) = header {
            return rule(h, SetSource::Header);
        }
        if let Some(c) = cookie {
            return rule(c, SetSource::Cookie);
        }
        let bucket = split_bucket(namespace);
        if bucket < canary.weight {
            Choice {
                set: Some(&canary.set),
                why: SetSource::Weight { bucket },
            }
        } else {
            Choice {
                set: None,
                why: SetSource::Stable,
            }
        }
    }
}

#[cfg(test)]
mod tests;
