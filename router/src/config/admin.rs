//! Admin: where the admin listener binds and the bearer token it asks for.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use clap::Args;

use super::ConfigError;
pub use crate::admin::AdminToken;

/// The port the admin listener binds unless told (the manifests' `admin` port).
const ADMIN_PORT: u16 = 9090;

/// The admin listener's token, for `serve` and `dev`. No default: none asked.
#[derive(Args, Debug, Clone, Default, PartialEq, Eq)]
#[command(next_help_heading = "Admin")]
pub struct AdminArgs {
    /// A bearer token the admin listener asks for on everything but /healthz, /readyz and /metrics (/route, /table list tenants and pod addresses): `Authorization: Bearer TOKEN`. Set it from a Secret (WSROUTER_ADMIN_TOKEN). Default: none asked.
    #[arg(long, env = "WSROUTER_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
}

impl AdminArgs {
    /// The admin token, trimmed (a Secret file's trailing newline is not part of it).
    pub fn admin_token(&self) -> Result<Option<AdminToken>, ConfigError> {
        match self.admin_token.as_deref().map(str::trim) {
            None => Ok(None),
            Some(t) if t.len() < 16 || !t.bytes().all(|b| b.is_ascii_graphic()) => {
                Err(ConfigError::AdminToken)
            }
            Some(t) => Ok(Some(AdminToken(Arc::from(t.as_bytes())))),
        }
    }
}

/// `serve`'s admin listener. Its default depends on the pod (`$POD_IP`), so it is
/// shown in prose, and resolved by [`ServeAdminArgs::admin_listen`].
#[derive(Args, Debug, Clone, Default, PartialEq, Eq)]
#[command(next_help_heading = "Admin")]
pub struct ServeAdminArgs {
    /// Address of the admin listener (plain HTTP: /healthz, /readyz, /metrics, /route/{ns}, /table) [default: $POD_IP:9090 in a pod (the downward API sets it), else 127.0.0.1:9090]
    #[arg(long, env = "WSROUTER_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
}

impl ServeAdminArgs {
    /// The flag, else [`default_admin_listen`] for the pod's `$POD_IP` (read by the caller).
    pub(crate) fn admin_listen(&self, pod_ip: Option<&str>) -> SocketAddr {
        self.admin_listen
            .unwrap_or_else(|| default_admin_listen(pod_ip))
    }
}

/// Where the admin listener binds unless told: the pod's own address (what probes and
/// scrapers reach, and the NetworkPolicy guards), never every interface of a host; off
/// a pod, loopback.
pub fn default_admin_listen(pod_ip: Option<&str>) -> SocketAddr {
    let ip = pod_ip
        .and_then(|ip| ip.trim().parse().ok())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]));
    SocketAddr::new(ip, ADMIN_PORT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_listener_binds_the_pod_address_or_loopback() {
        assert_eq!(
            default_admin_listen(Some("10.1.2.3")),
            "10.1.2.3:9090".parse().unwrap()
        );
        assert_eq!(
            default_admin_listen(Some("fd00::7")),
            "[fd00::7]:9090".parse().unwrap()
        );
        assert_eq!(
            default_admin_listen(None),
            "127.0.0.1:9090".parse().unwrap()
        );
        assert_eq!(
            default_admin_listen(Some("nonsense")),
            "127.0.0.1:9090".parse().unwrap()
        );
        let told = ServeAdminArgs {
            admin_listen: Some("0.0.0.0:7000".parse().unwrap()),
        };
        assert_eq!(told.admin_listen(Some("10.1.2.3")).port(), 7000);
        assert_eq!(
            ServeAdminArgs::default().admin_listen(Some("10.1.2.3")),
            "10.1.2.3:9090".parse().unwrap()
        );
    }

    #[test]
    fn the_token_is_trimmed_long_and_never_printed() {
        let token = |t: &str| {
            AdminArgs {
                admin_token: Some(t.to_owned()),
            }
            .admin_token()
        };
        assert!(matches!(AdminArgs::default().admin_token(), Ok(None)));
        assert!(matches!(token("short"), Err(ConfigError::AdminToken)));
        assert!(matches!(
            token("0123456789abcde\u{7f}"),
            Err(ConfigError::AdminToken)
        ));
        let t = token("0123456789abcdef\n").unwrap().unwrap();
        assert_eq!(&*t.0, b"0123456789abcdef");
        assert_eq!(format!("{t:?}"), "AdminToken(16 bytes)", "never printed");
    }
}
