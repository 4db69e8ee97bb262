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
    /// prefix up to the next `/`. What follows it is the backend's business.
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
        let ns = rest.split_once('/').map_or(rest, |(ns, _)| ns);
        validate_namespace(ns)?;
        Ok(ns)
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
        ];
        for (path, want) in cases {
            assert_eq!(&p.namespace(path), want, "path {path:?}");
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
