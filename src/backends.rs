//! How a pod ordinal becomes a backend: a static list (ordinal = position) for local use,
//! a template rendered per ordinal (DNS names, resolved when connecting) for use without
//! the Kubernetes API, or the pods the Service's EndpointSlices name (addresses, no DNS).

use std::num::NonZeroU32;

use thiserror::Error;

use crate::members::{Member, Members};

/// The default template: the stable DNS name a headless Service gives each StatefulSet pod.
pub const DEFAULT_TEMPLATE: &str = "{statefulset}-{i}.{service}.{namespace}.svc.cluster.local:9000";

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TemplateError {
    #[error("backend template {template:?} has an unknown placeholder {{{name}}}; known: {{statefulset}} {{i}} {{service}} {{namespace}}")]
    UnknownPlaceholder { template: String, name: String },
    #[error("backend template {template:?} has an unmatched brace")]
    UnmatchedBrace { template: String },
    #[error(
        "backend template {template:?} has no {{i}}, so every ordinal would get the same address"
    )]
    NoOrdinal { template: String },
    #[error("backend template {template:?} renders {rendered:?}, which does not end in :PORT")]
    NoPort { template: String, rendered: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BackendsError {
    #[error("no backends: give at least one address, or a template with at least one replica")]
    Empty,
    #[error("backend address {addr:?} is not HOST:PORT")]
    BadAddress { addr: String },
    #[error(transparent)]
    Template(#[from] TemplateError),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Ordinal,
}

/// A parsed backend address template. Everything but `{i}` is filled in once, at parse
/// time, so rendering an ordinal is a concatenation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendTemplate {
    source: String,
    pieces: Vec<Piece>,
}

impl BackendTemplate {
    pub fn parse(
        template: &str,
        statefulset: &str,
        service: &str,
        namespace: &str,
    ) -> Result<Self, TemplateError> {
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut rest = template;
        let mut has_ordinal = false;
        while let Some(open) = rest.find(['{', '}']) {
            if rest.as_bytes()[open] == b'}' {
                return Err(TemplateError::UnmatchedBrace {
                    template: template.to_owned(),
                });
            }
            text.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            let close = after
                .find('}')
                .ok_or_else(|| TemplateError::UnmatchedBrace {
                    template: template.to_owned(),
                })?;
            let name = &after[..close];
            match name {
                "statefulset" => text.push_str(statefulset),
                "service" => text.push_str(service),
                "namespace" => text.push_str(namespace),
                "i" => {
                    has_ordinal = true;
                    pieces.push(Piece::Text(std::mem::take(&mut text)));
                    pieces.push(Piece::Ordinal);
                }
                _ => {
                    return Err(TemplateError::UnknownPlaceholder {
                        template: template.to_owned(),
                        name: name.to_owned(),
                    })
                }
            }
            rest = &after[close + 1..];
        }
        text.push_str(rest);
        pieces.push(Piece::Text(text));
        if !has_ordinal {
            return Err(TemplateError::NoOrdinal {
                template: template.to_owned(),
            });
        }
        let parsed = Self {
            source: template.to_owned(),
            pieces,
        };
        let rendered = parsed.render(0);
        if !has_port(&rendered) {
            return Err(TemplateError::NoPort {
                template: template.to_owned(),
                rendered,
            });
        }
        Ok(parsed)
    }

    pub fn render(&self, ordinal: u32) -> String {
        let mut out = String::with_capacity(self.source.len() + 8);
        for p in &self.pieces {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Ordinal => out.push_str(&ordinal.to_string()),
            }
        }
        out
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The port every rendered address ends in (checked at parse time).
    pub fn port(&self) -> u16 {
        self.render(0)
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or(0)
    }
}

fn has_port(addr: &str) -> bool {
    match addr.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0),
        None => false,
    }
}

/// Where backends come from. Turned into one address per ordinal when a table is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backends {
    /// Ordinal = position in the list. The replica count is the list's length.
    Static(Vec<String>),
    /// Addresses rendered from a template for however many replicas the table has.
    Template(BackendTemplate),
    /// The pods the EndpointSlices name, each at its address; an ordinal they do not
    /// name has no backend yet.
    Pods(Members),
}

/// Where one ordinal's connections go.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Backend {
    /// `HOST:PORT` from a list or a template; a host name is resolved when connecting.
    Addr(Box<str>),
    /// A pod the EndpointSlices name: its address, and whether it takes new connections.
    Pod(Member),
    /// No pod known for this ordinal yet: its tenants wait, they are never guessed.
    Unknown,
}

impl Backend {
    /// The address to show (`None` while unknown).
    pub fn address(&self) -> Option<String> {
        match self {
            Self::Addr(a) => Some(a.to_string()),
            Self::Pod(m) => Some(m.addr.to_string()),
            Self::Unknown => None,
        }
    }
}

impl Backends {
    pub fn static_list(addrs: Vec<String>) -> Result<Self, BackendsError> {
        if addrs.is_empty() {
            return Err(BackendsError::Empty);
        }
        if let Some(bad) = addrs.iter().find(|a| !has_port(a)) {
            return Err(BackendsError::BadAddress { addr: bad.clone() });
        }
        Ok(Self::Static(addrs))
    }

    /// The replica count a static list fixes; a template takes it from elsewhere.
    pub fn fixed_replicas(&self) -> Option<NonZeroU32> {
        match self {
            Self::Static(v) => u32::try_from(v.len()).ok().and_then(NonZeroU32::new),
            Self::Template(_) | Self::Pods(_) => None,
        }
    }

    /// One backend per ordinal for `replicas` pods. A static list ignores `replicas`
    /// beyond its own length (it cannot invent addresses).
    pub fn backends(&self, replicas: NonZeroU32) -> Vec<Backend> {
        match self {
            Self::Static(v) => v
                .iter()
                .take(replicas.get() as usize)
                .map(|a| Backend::Addr(a.as_str().into()))
                .collect(),
            Self::Template(t) => (0..replicas.get())
                .map(|i| Backend::Addr(t.render(i).into()))
                .collect(),
            Self::Pods(m) => (0..replicas.get())
                .map(|i| m.get(i).cloned().map_or(Backend::Unknown, Backend::Pod))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<BackendTemplate, TemplateError> {
        BackendTemplate::parse(t, "backend", "backend", "prod")
    }

    #[test]
    fn default_template_renders_pod_dns_names() {
        let t = parse(DEFAULT_TEMPLATE).unwrap();
        assert_eq!(t.render(0), "backend-0.backend.prod.svc.cluster.local:9000");
        assert_eq!(
            t.render(12),
            "backend-12.backend.prod.svc.cluster.local:9000"
        );
    }

    #[test]
    fn template_table() {
        let cases = [
            ("{statefulset}-{i}:9000", "backend-7:9000"),
            ("10.0.0.{i}:80", "10.0.0.7:80"),
            ("[::1]:90{i}", "[::1]:907"),
        ];
        for (t, want) in cases {
            assert_eq!(parse(t).unwrap().render(7), want);
        }
        assert!(
            matches!(parse("{pod}-{i}:1"), Err(TemplateError::UnknownPlaceholder { name, .. }) if name == "pod")
        );
        assert!(matches!(
            parse("{i:1"),
            Err(TemplateError::UnmatchedBrace { .. })
        ));
        assert!(matches!(
            parse("x}{i}:1"),
            Err(TemplateError::UnmatchedBrace { .. })
        ));
        assert!(matches!(
            parse("backend:9000"),
            Err(TemplateError::NoOrdinal { .. })
        ));
        assert!(matches!(
            parse("backend-{i}"),
            Err(TemplateError::NoPort { .. })
        ));
        assert!(matches!(
            parse("backend-{i}:0"),
            Err(TemplateError::NoPort { .. })
        ));
    }

    #[test]
    fn static_lists() {
        assert_eq!(Backends::static_list(vec![]), Err(BackendsError::Empty));
        assert_eq!(
            Backends::static_list(vec!["127.0.0.1".into()]),
            Err(BackendsError::BadAddress {
                addr: "127.0.0.1".into()
            })
        );
        let b = Backends::static_list(vec!["127.0.0.1:1".into(), "[::1]:2".into()]).unwrap();
        assert_eq!(b.fixed_replicas(), NonZeroU32::new(2));
        assert_eq!(b.backends(NonZeroU32::new(2).unwrap()).len(), 2);
    }
}
