//! Tenant namespaces: where they sit in a request path, and what a valid one looks like.

use thiserror::Error;

/// A DNS-1123 label is at most this many bytes long.
pub const MAX_NAMESPACE_LEN: usize = 63;

/// Why a string is not a valid tenant namespace. Each variant's text is the one-line
/// reason a client gets in a `400` body, so it names what to fix.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NamespaceError {
    #[error("missing namespace: the path must be {{prefix}}{{namespace}}")]
    Empty,
    #[error("namespace is {len} characters long; at most 63 are allowed")]
    TooLong { len: usize },
    #[error("namespace has {found:?} at position {position}; only a-z, 0-9 and '-' are allowed")]
    InvalidChar { found: char, position: usize },
    #[error("namespace must start with a letter or digit, not '-'")]
    LeadingHyphen,
    #[error("namespace must end with a letter or digit, not '-'")]
    TrailingHyphen,
}

/// Checks that `ns` is a DNS-1123 label: 1-63 bytes of `[a-z0-9-]`, starting and ending
/// alphanumeric. Kubernetes namespaces follow the same rule, so any real namespace passes.
pub fn validate_namespace(ns: &str) -> Result<(), NamespaceError> {
    let bytes = ns.as_bytes();
    if bytes.is_empty() {
        return Err(NamespaceError::Empty);
    }
    if bytes.len() > MAX_NAMESPACE_LEN {
        return Err(NamespaceError::TooLong {
            len: ns.chars().count(),
        });
    }
    if let Some((position, found)) = ns
        .chars()
        .enumerate()
        .find(|&(_, c)| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'))
    {
        return Err(NamespaceError::InvalidChar { found, position });
    }
    if bytes[0] == b'-' {
        return Err(NamespaceError::LeadingHyphen);
    }
    if bytes[bytes.len() - 1] == b'-' {
        return Err(NamespaceError::TrailingHyphen);
    }
    Ok(())
}

/// Why a request path yields no namespace.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PathError {
    /// The path is not under the WebSocket prefix at all (`404`).
    #[error("not found")]
    NotUnderPrefix,
    /// The path is under the prefix but the namespace segment is bad (`400`).
    #[error(transparent)]
    Namespace(#[from] NamespaceError),
    /// After the prefix the path has a segment that a backend normalising paths would
    /// resolve differently from the router (`400`).
    #[error(transparent)]
    Ambiguous(#[from] AmbiguousPath),
    /// The tenant comes from a header or query parameter the request does not carry
    /// (`400`).
    #[error("no tenant: the request has no {0}")]
    Missing(TenantFrom),
    /// The header or query parameter the tenant comes from is there more than once
    /// (`400`): which one would a backend read?
    #[error("{0} is given more than once")]
    Repeated(TenantFrom),
}

/// Where a request names its tenant (`--tenant-from`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TenantFrom {
    /// The path segment after the prefix: `/ws/{tenant}/…` (the default).
    #[default]
    Path,
    /// A request header (name in lower case), for a gateway that sets one.
    Header(String),
    /// A query parameter, for clients at one path (`/ws/hub?tenant=…`).
    Query(String),
}

impl std::fmt::Display for TenantFrom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Path => f.write_str("path segment"),
            Self::Header(h) => write!(f, "header {h}"),
            Self::Query(q) => write!(f, "query parameter {q}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("--tenant-from {0:?}: expected path, header:NAME or query:NAME (NAME of letters, digits, '-' or '_')")]
pub struct TenantFromError(pub String);

impl std::str::FromStr for TenantFrom {
    type Err = TenantFromError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let name_ok = |n: &str| {
            !n.is_empty()
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        match s.split_once(':') {
            None if s == "path" => Ok(Self::Path),
            Some(("header", n)) if name_ok(n) => Ok(Self::Header(n.to_ascii_lowercase())),
            Some(("query", n)) if name_ok(n) => Ok(Self::Query(n.to_owned())),
            _ => Err(TenantFromError(s.to_owned())),
        }
    }
}

/// A query parameter given more than once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RepeatedParam;

/// The value of query parameter `name` in `query` (no `?`): `Ok(None)` when absent,
/// an error when repeated. Values are taken as they are: a tenant has no characters that
/// need percent-encoding, so an encoded one is refused by the namespace rule.
pub fn query_param<'q>(query: &'q str, name: &str) -> Result<Option<&'q str>, RepeatedParam> {
    let mut found = None;
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == name {
            if found.is_some() {
                return Err(RepeatedParam);
            }
            found = Some(v);
        }
    }
    Ok(found)
}

/// Path forms after the prefix that the router refuses, so the router and a backend
/// that normalises paths (RFC 3986 §5.2.4) always agree on the tenant and the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum AmbiguousPath {
    #[error(
        "path has a segment starting with '.' (also when percent-encoded); send the path as resolved"
    )]
    DotSegment,
    #[error("path has a ';' (also when percent-encoded): some servers (Tomcat, Jetty) strip path parameters, so '..;' resolves elsewhere there")]
    PathParameter,
    #[error("path has an encoded '/' or '\\' (%2F, %5C) or a '\\'; these separate segments for some servers and not for others")]
    EncodedSeparator,
}

/// Checks every segment of `rest` (the path after the namespace, query excluded): no
/// segment starting with a dot, plain or percent-encoded (`..`, `.`, and what a server
/// that trims or decodes further might turn into one, such as `..;` or `.%2e`), no `;`
/// (a path parameter, which Tomcat and Jetty strip before resolving: `..;/` is `../`
/// there), and no separator a backend might decode or translate into `/`.
pub fn check_path_rest(rest: &str) -> Result<(), AmbiguousPath> {
    let bytes = rest.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => return Err(AmbiguousPath::EncodedSeparator),
            b'%' if i + 2 < bytes.len() => {
                let hex = [
                    bytes[i + 1].to_ascii_uppercase(),
                    bytes[i + 2].to_ascii_uppercase(),
                ];
                if hex == *b"2F" || hex == *b"5C" {
                    return Err(AmbiguousPath::EncodedSeparator);
                }
                i += 3;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    for segment in rest.split('/') {
        if has_semicolon(segment) {
            return Err(AmbiguousPath::PathParameter);
        }
        if starts_with_dot(segment) {
            return Err(AmbiguousPath::DotSegment);
        }
    }
    Ok(())
}

/// A segment whose first character is a dot, written plainly or as `%2E` / `%2e`.
fn starts_with_dot(segment: &str) -> bool {
    let s = segment.as_bytes();
    s.first() == Some(&b'.')
        || (s.len() >= 3 && s[0] == b'%' && s[1] == b'2' && (s[2] | 0x20) == b'e')
}

/// A `;`, written plainly or as `%3B` / `%3b`.
fn has_semicolon(segment: &str) -> bool {
    let s = segment.as_bytes();
    s.contains(&b';')
        || s.windows(3)
            .any(|w| w[0] == b'%' && w[1] == b'3' && (w[2] | 0x20) == b'b')
}

/// Why a configured path prefix is unusable.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PrefixError {
    #[error("path prefix {0:?} must start with '/'")]
    NoLeadingSlash(String),
    #[error("path prefix {0:?} may not contain '?', '#', '%' or whitespace")]
    BadChar(String),
}

/// The WebSocket path prefix, e.g. `/ws/`. Always starts and ends with `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPrefix {
    with_slash: Box<str>,
}

impl PathPrefix {
    /// Accepts `/ws/` or `/ws` (a trailing slash is added).
    pub fn new(prefix: &str) -> Result<Self, PrefixError> {
        if !prefix.starts_with('/') {
            return Err(PrefixError::NoLeadingSlash(prefix.to_owned()));
        }
        if prefix
            .chars()
            .any(|c| matches!(c, '?' | '#' | '%') || c.is_whitespace())
        {
            return Err(PrefixError::BadChar(prefix.to_owned()));
        }
        let with_slash = if prefix.ends_with('/') {
            prefix.to_owned()
        } else {
            format!("{prefix}/")
        };
        Ok(Self {
            with_slash: with_slash.into_boxed_str(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.with_slash
    }

    /// The namespace segment of `path` (the path only, no query string): the text after the
    /// prefix up to the next `/`. What follows it is passed on unchanged, so it must not
    /// be something a backend would resolve to another place ([`check_path_rest`]).
    ///
    /// The prefix without its trailing slash (`/ws`) counts as "under the prefix" with an
    /// empty namespace, so a client that forgot the namespace learns why rather than
    /// getting a bare 404.
    pub fn namespace<'p>(&self, path: &'p str) -> Result<&'p str, PathError> {
        let rest = match path.strip_prefix(&*self.with_slash) {
            Some(rest) => rest,
            None if path == &self.with_slash[..self.with_slash.len() - 1] => "",
            None => return Err(PathError::NotUnderPrefix),
        };
        let (ns, after) = rest.split_once('/').unwrap_or((rest, ""));
        validate_namespace(ns)?;
        check_path_rest(after)?;
        Ok(ns)
    }
}

impl PathPrefix {
    /// The path after the prefix, checked as the rest of a path is ([`check_path_rest`]),
    /// for requests whose tenant is not in the path.
    pub fn under<'p>(&self, path: &'p str) -> Result<&'p str, PathError> {
        let rest = match path.strip_prefix(&*self.with_slash) {
            Some(rest) => rest,
            None if path == &self.with_slash[..self.with_slash.len() - 1] => "",
            None => return Err(PathError::NotUnderPrefix),
        };
        check_path_rest(rest)?;
        Ok(rest)
    }

    /// The tenant a request names, from where `from` says: the path segment, a header
    /// (`header`: its values) or a query parameter (`query`: the query string). The
    /// path must be under the prefix either way, and the tenant pass the namespace rule.
    pub fn tenant<'r>(
        &self,
        from: &TenantFrom,
        path: &'r str,
        query: Option<&'r str>,
        header: &[&'r [u8]],
    ) -> Result<&'r str, PathError> {
        let value = match from {
            TenantFrom::Path => return self.namespace(path),
            TenantFrom::Header(_) => {
                self.under(path)?;
                match header {
                    [] => return Err(PathError::Missing(from.clone())),
                    [one] => std::str::from_utf8(one).map_err(|_| {
                        PathError::Namespace(NamespaceError::InvalidChar {
                            found: char::REPLACEMENT_CHARACTER,
                            position: 0,
                        })
                    })?,
                    _ => return Err(PathError::Repeated(from.clone())),
                }
            }
            TenantFrom::Query(name) => {
                self.under(path)?;
                match query_param(query.unwrap_or(""), name) {
                    Ok(Some(v)) => v,
                    Ok(None) => return Err(PathError::Missing(from.clone())),
                    Err(RepeatedParam) => return Err(PathError::Repeated(from.clone())),
                }
            }
        };
        if value.is_empty() {
            return Err(PathError::Missing(from.clone()));
        }
        validate_namespace(value)?;
        Ok(value)
    }
}

impl Default for PathPrefix {
    fn default() -> Self {
        Self {
            with_slash: "/ws/".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_from_path_header_or_query() {
        let p = PathPrefix::default();
        let path = TenantFrom::Path;
        let header: TenantFrom = "header:X-Tenant".parse().unwrap();
        let query: TenantFrom = "query:tenant".parse().unwrap();
        assert_eq!(header, TenantFrom::Header("x-tenant".into()));
        assert_eq!(
            p.tenant(&path, "/ws/acme/x", Some("tenant=b"), &[]),
            Ok("acme")
        );
        assert_eq!(p.tenant(&header, "/ws/hub", None, &[b"acme"]), Ok("acme"));
        assert_eq!(p.tenant(&header, "/ws", None, &[b"acme"]), Ok("acme"));
        assert_eq!(
            p.tenant(&query, "/ws/hub", Some("a=1&tenant=acme&b"), &[]),
            Ok("acme")
        );
        // Missing, repeated, empty, invalid, or not under the prefix.
        assert_eq!(
            p.tenant(&header, "/ws/hub", None, &[]),
            Err(PathError::Missing(header.clone()))
        );
        assert_eq!(
            p.tenant(&header, "/ws/hub", None, &[b"a", b"b"]),
            Err(PathError::Repeated(header.clone()))
        );
        assert_eq!(
            p.tenant(&header, "/ws/hub", None, &[b""]),
            Err(PathError::Missing(header.clone()))
        );
        assert_eq!(
            p.tenant(&query, "/ws/hub", Some("tenant=a&tenant=b"), &[]),
            Err(PathError::Repeated(query.clone()))
        );
        assert_eq!(
            p.tenant(&query, "/ws/hub", None, &[]),
            Err(PathError::Missing(query.clone()))
        );
        assert!(matches!(
            p.tenant(&query, "/ws/hub", Some("tenant=Acme"), &[]),
            Err(PathError::Namespace(NamespaceError::InvalidChar { .. }))
        ));
        assert!(matches!(
            p.tenant(&query, "/ws/hub", Some("tenant=a%2Db"), &[]),
            Err(PathError::Namespace(NamespaceError::InvalidChar { .. }))
        ));
        assert!(matches!(
            p.tenant(&header, "/ws/hub", None, &[&[0xff]]),
            Err(PathError::Namespace(_))
        ));
        assert_eq!(
            p.tenant(&header, "/other", None, &[b"acme"]),
            Err(PathError::NotUnderPrefix)
        );
        assert!(matches!(
            p.tenant(&query, "/ws/../admin", Some("tenant=a"), &[]),
            Err(PathError::Ambiguous(_))
        ));
        for bad in ["", "header:", "query", "cookie:x", "header:a b", "Path"] {
            assert!(bad.parse::<TenantFrom>().is_err(), "{bad}");
        }
        assert_eq!(
            PathError::Missing(query).to_string(),
            "no tenant: the request has no query parameter tenant"
        );
    }

    #[test]
    fn namespace_validation_table() {
        let long63 = "a".repeat(63);
        let long64 = "a".repeat(64);
        let cases: &[(&str, Result<(), NamespaceError>)] = &[
            ("a", Ok(())),
            ("0", Ok(())),
            ("ns-01", Ok(())),
            ("acme-prod", Ok(())),
            ("a-b-c-1-2-3", Ok(())),
            ("a--b", Ok(())),
            (&long63, Ok(())),
            ("", Err(NamespaceError::Empty)),
            (&long64, Err(NamespaceError::TooLong { len: 64 })),
            ("-a", Err(NamespaceError::LeadingHyphen)),
            ("a-", Err(NamespaceError::TrailingHyphen)),
            ("-", Err(NamespaceError::LeadingHyphen)),
            (
                "Acme",
                Err(NamespaceError::InvalidChar {
                    found: 'A',
                    position: 0,
                }),
            ),
            (
                "ns_01",
                Err(NamespaceError::InvalidChar {
                    found: '_',
                    position: 2,
                }),
            ),
            (
                "ns.01",
                Err(NamespaceError::InvalidChar {
                    found: '.',
                    position: 2,
                }),
            ),
            (
                "ns%2F",
                Err(NamespaceError::InvalidChar {
                    found: '%',
                    position: 2,
                }),
            ),
            (
                "ns 1",
                Err(NamespaceError::InvalidChar {
                    found: ' ',
                    position: 2,
                }),
            ),
            (
                "nsé",
                Err(NamespaceError::InvalidChar {
                    found: 'é',
                    position: 2,
                }),
            ),
            (
                "-bad_",
                Err(NamespaceError::InvalidChar {
                    found: '_',
                    position: 4,
                }),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(&validate_namespace(input), want, "input {input:?}");
        }
    }

    #[test]
    fn path_extraction_table() {
        let p = PathPrefix::default();
        let cases: &[(&str, Result<&str, PathError>)] = &[
            ("/ws/ns-01", Ok("ns-01")),
            ("/ws/ns-01/", Ok("ns-01")),
            ("/ws/ns-01/chat/room", Ok("ns-01")),
            ("/ws/", Err(NamespaceError::Empty.into())),
            ("/ws", Err(NamespaceError::Empty.into())),
            ("/ws//x", Err(NamespaceError::Empty.into())),
            (
                "/ws/Bad",
                Err(NamespaceError::InvalidChar {
                    found: 'B',
                    position: 0,
                }
                .into()),
            ),
            ("/", Err(PathError::NotUnderPrefix)),
            ("/wss/ns", Err(PathError::NotUnderPrefix)),
            ("/other/ns-01", Err(PathError::NotUnderPrefix)),
            ("/WS/ns-01", Err(PathError::NotUnderPrefix)),
            ("ws/ns-01", Err(PathError::NotUnderPrefix)),
            // What follows the namespace may not resolve elsewhere on a backend.
            ("/ws/a/b.c/d../e./x.", Ok("a")),
            ("/ws/a/%41%25", Ok("a")),
            // A segment starting with a dot, or holding a path parameter (Tomcat and
            // Jetty strip `;…`, so `..;` is `..` there).
            ("/ws/a/..;/admin", Err(AmbiguousPath::PathParameter.into())),
            (
                "/ws/a/..%3b/admin",
                Err(AmbiguousPath::PathParameter.into()),
            ),
            (
                "/ws/a/x;jsessionid=1",
                Err(AmbiguousPath::PathParameter.into()),
            ),
            ("/ws/a/..d", Err(AmbiguousPath::DotSegment.into())),
            ("/ws/a/.well-known", Err(AmbiguousPath::DotSegment.into())),
            ("/ws/a/%2E%2Ex", Err(AmbiguousPath::DotSegment.into())),
            ("/ws/a/..", Err(AmbiguousPath::DotSegment.into())),
            ("/ws/a/.", Err(AmbiguousPath::DotSegment.into())),
            ("/ws/a/./b", Err(AmbiguousPath::DotSegment.into())),
            (
                "/ws/a/../../ws/b/../../admin",
                Err(AmbiguousPath::DotSegment.into()),
            ),
            ("/ws/a/%2e%2E/b", Err(AmbiguousPath::DotSegment.into())),
            ("/ws/a/.%2e", Err(AmbiguousPath::DotSegment.into())),
            ("/ws/a/%2e", Err(AmbiguousPath::DotSegment.into())),
            ("/ws/a/x%2Fy", Err(AmbiguousPath::EncodedSeparator.into())),
            ("/ws/a/x%2fy", Err(AmbiguousPath::EncodedSeparator.into())),
            ("/ws/a/x%5cy", Err(AmbiguousPath::EncodedSeparator.into())),
            ("/ws/a/x\\y", Err(AmbiguousPath::EncodedSeparator.into())),
            ("/ws/a/x%2", Ok("a")),
        ];
        for (path, want) in cases {
            assert_eq!(&p.namespace(path), want, "path {path:?}");
        }
    }

    /// A reference normaliser, as a backend might apply it: percent-decode everything,
    /// treat `\\` as `/`, then remove dot segments (RFC 3986 §5.2.4).
    fn normalise(path: &str) -> Vec<Vec<u8>> {
        let b = path.as_bytes();
        let mut decoded = Vec::new();
        let mut i = 0;
        while i < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if b[i] == b'%' && i + 2 < b.len() {
                if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                    decoded.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
            }
            decoded.push(b[i]);
            i += 1;
        }
        let mut out: Vec<Vec<u8>> = Vec::new();
        for seg in decoded.split(|&c| c == b'/' || c == b'\\') {
            match seg {
                b"." => {}
                b".." => {
                    out.pop();
                }
                s => out.push(s.to_vec()),
            }
        }
        out
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000)
        ))]
        /// Whatever the path, the parser does not panic, and when it accepts one, a
        /// backend that normalises the path sees the same tenant right after the prefix.
        #[test]
        fn accepted_paths_mean_the_same_after_normalising(
            parts in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::strategy::Just("/".to_owned()),
                    proptest::strategy::Just(".".to_owned()),
                    proptest::strategy::Just("..".to_owned()),
                    proptest::strategy::Just("%2e".to_owned()),
                    proptest::strategy::Just("%2F".to_owned()),
                    proptest::strategy::Just("%5c".to_owned()),
                    proptest::strategy::Just("\\".to_owned()),
                    proptest::strategy::Just("ws".to_owned()),
                    "[a-c0-9%-]{0,4}",
                ],
                0..12,
            )
        ) {
            let path = format!("/ws/{}", parts.concat());
            let p = PathPrefix::default();
            if let Ok(ns) = p.namespace(&path) {
                let segs = normalise(&path);
                // ["", "ws", ns, ...]
                proptest::prop_assert!(segs.len() >= 3, "{path}: {segs:?}");
                proptest::prop_assert_eq!(&segs[1], b"ws");
                proptest::prop_assert_eq!(&segs[2], ns.as_bytes(), "{}", path);
            }
        }
    }

    #[test]
    fn custom_prefixes() {
        let p = PathPrefix::new("/tenants").unwrap();
        assert_eq!(p.as_str(), "/tenants/");
        assert_eq!(p.namespace("/tenants/acme"), Ok("acme"));
        assert_eq!(p.namespace("/ws/acme"), Err(PathError::NotUnderPrefix));
        let root = PathPrefix::new("/").unwrap();
        assert_eq!(root.namespace("/acme/x"), Ok("acme"));
        assert_eq!(
            PathPrefix::new("ws/"),
            Err(PrefixError::NoLeadingSlash("ws/".into()))
        );
        assert_eq!(
            PathPrefix::new("/ws?x"),
            Err(PrefixError::BadChar("/ws?x".into()))
        );
    }

    #[test]
    fn reasons_are_one_line() {
        let errs = [
            NamespaceError::Empty,
            NamespaceError::TooLong { len: 70 },
            NamespaceError::InvalidChar {
                found: '\n',
                position: 1,
            },
            NamespaceError::LeadingHyphen,
            NamespaceError::TrailingHyphen,
        ];
        for e in errs {
            assert!(!e.to_string().contains('\n'), "{e}");
        }
    }
}
