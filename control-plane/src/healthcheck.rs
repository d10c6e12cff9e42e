//! `coffer-control-plane healthcheck`: the probe of containers and
//! Kubernetes. It asks the control plane it shares a configuration with for
//! its `grpc.health.v1` status over loopback: readiness by default (the
//! overall status, NOT_SERVING while the catalog is away), liveness with
//! `--liveness` (the process serves calls; the catalog is not consulted, so
//! a database outage does not restart every replica).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::config::Config;
use crate::server::LIVENESS_SERVICE;

/// Flags of the `healthcheck` subcommand.
#[derive(clap::Args, Debug, Clone)]
pub struct HealthcheckArgs {
    /// Check liveness only: whether the process serves calls, whatever
    /// the state of the catalog.
    #[arg(long)]
    pub liveness: bool,

    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 3)]
    pub timeout_seconds: u64,
}

/// Runs the check; `Ok` only when the asked status is SERVING.
pub async fn run(config: &Config, args: &HealthcheckArgs) -> anyhow::Result<()> {
    let address = probe_address(config)?;
    let service = if args.liveness { LIVENESS_SERVICE } else { "" };
    let timeout = Duration::from_secs(args.timeout_seconds.max(1));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))?
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the control plane on {address}: {e}"))?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .map_err(|status| anyhow::anyhow!("health check on {address} failed: {status}"))?;
    let status = response.into_inner().status();
    if status != ServingStatus::Serving {
        anyhow::bail!("{address} reports {}", status.as_str_name());
    }
    Ok(())
}

/// Where the probe connects in plaintext: the loopback listener when one is
/// configured, else the main listener, which must then be plaintext (a
/// wildcard address is reached over loopback).
pub fn probe_address(config: &Config) -> anyhow::Result<SocketAddr> {
    if let Some(local) = config.local_listen {
        return Ok(local);
    }
    if config.tls_settings().is_some() {
        anyhow::bail!(
            "the control plane serves TLS: set --local-listen (COFFER_LOCAL_LISTEN, e.g. 127.0.0.1:50052) for its health check"
        );
    }
    let listen = config.listen;
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    Ok(SocketAddr::new(ip, listen.port()))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn the_probe_reaches_a_wildcard_listener_over_loopback() {
        let config = Config::parse_from(["coffer-control-plane", "--listen", "0.0.0.0:7000"]);
        assert_eq!(
            probe_address(&config).expect("address"),
            "127.0.0.1:7000".parse::<SocketAddr>().expect("literal")
        );
    }

    #[test]
    fn under_tls_the_probe_needs_the_loopback_listener() {
        let tls = ["--tls-cert", "c.pem", "--tls-key", "k.pem"];
        let mut args = vec!["coffer-control-plane", "--listen", "0.0.0.0:7000"];
        args.extend(tls);
        assert!(probe_address(&Config::parse_from(&args)).is_err());
        args.extend([
            "--local-listen",
            "127.0.0.1:7001",
            "healthcheck",
            "--liveness",
        ]);
        let config = Config::parse_from(&args);
        assert_eq!(
            probe_address(&config).expect("address"),
            "127.0.0.1:7001".parse::<SocketAddr>().expect("literal")
        );
        assert!(matches!(
            config.command,
            Some(crate::config::Command::Healthcheck(HealthcheckArgs {
                liveness: true,
                ..
            }))
        ));
    }
}
