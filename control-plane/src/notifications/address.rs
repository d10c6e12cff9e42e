//! Where a notification may connect: a tenant's webhook URL or SMTP host is
//! an SSRF vector, so every address is checked when the notice is sent (not
//! when the channel is created: DNS answers change), and the connection goes
//! to the address that was checked, never to a second lookup of the name.
//!
//! Refused unless an admin lists the network in
//! `notification_allowed_networks`: loopback, unspecified, link-local
//! (169.254.0.0/16 with the cloud metadata services, fe80::/10), private
//! (10/8, 172.16/12, 192.168/16), shared (100.64/10), unique-local
//! (fc00::/7), multicast and broadcast, and IPv6 forms that embed an IPv4
//! address (mapped, NAT64), judged by that address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;

use crate::catalog::Catalog;
use crate::error::DomainResult;
use crate::model::configuration::{parse_networks, NOTIFICATION_ALLOWED_NETWORKS};

/// The networks an admin allows besides the public internet.
#[derive(Clone, Debug, Default)]
pub struct AddressPolicy {
    allowed: Vec<IpNet>,
}

impl AddressPolicy {
    /// The policy the catalog's configuration sets now.
    pub async fn current(catalog: &Catalog) -> DomainResult<Self> {
        let value = catalog
            .configuration_value(NOTIFICATION_ALLOWED_NETWORKS)
            .await?
            .unwrap_or_default();
        // Validated when it was written; an entry that no longer parses
        // allows nothing.
        Ok(AddressPolicy {
            allowed: parse_networks(&value).unwrap_or_default(),
        })
    }

    /// A policy allowing `allowed` besides the public internet.
    pub fn allowing(allowed: Vec<IpNet>) -> Self {
        AddressPolicy { allowed }
    }

    /// Whether a connection to `ip` is allowed; the error says why not.
    pub fn check(&self, ip: IpAddr) -> Result<(), String> {
        let ip = canonical(ip);
        if self.allowed.iter().any(|net| net.contains(&ip)) {
            return Ok(());
        }
        match internal_kind(ip) {
            None => Ok(()),
            Some(kind) => Err(format!(
                "{ip} is a {kind} address; an admin may allow its network in the \
                 {NOTIFICATION_ALLOWED_NETWORKS} configuration"
            )),
        }
    }

    /// Resolves `host` and returns the address to connect to on `port`:
    /// refused when any address the name resolves to is not allowed (a
    /// name answering with one public and one internal address is a
    /// rebinding attempt).
    pub async fn resolve(&self, host: &str, port: u16) -> Result<SocketAddr, String> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let addresses: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::net::lookup_host((bare, port))
                .await
                .map_err(|e| format!("cannot resolve {bare}: {e}"))?
                .collect(),
        };
        let first = *addresses
            .first()
            .ok_or_else(|| format!("{bare} resolves to no address"))?;
        for address in &addresses {
            self.check(address.ip())?;
        }
        Ok(first)
    }
}

/// `ip` with an IPv4 address embedded in IPv6 taken out.
fn canonical(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = ip else { return ip };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return IpAddr::V4(v4);
    }
    // NAT64 (64:ff9b::/96) reaches the IPv4 address in its last 32 bits.
    let segments = v6.segments();
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let octets = v6.octets();
        return IpAddr::V4(Ipv4Addr::new(
            octets[12], octets[13], octets[14], octets[15],
        ));
    }
    ip
}

fn internal_kind(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => internal_v4(v4),
        IpAddr::V6(v6) => internal_v6(v6),
    }
}

fn internal_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() || a == 0 {
        Some("unspecified")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if ip.is_private() {
        Some("private")
    } else if a == 100 && (64..128).contains(&b) {
        Some("shared (carrier-grade NAT)")
    } else if ip.is_multicast() || ip.is_broadcast() || a >= 240 {
        Some("multicast or reserved")
    } else {
        None
    }
}

fn internal_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() {
        Some("unspecified")
    } else if first & 0xffc0 == 0xfe80 {
        Some("link-local")
    } else if first & 0xfe00 == 0xfc00 {
        Some("unique-local")
    } else if ip.is_multicast() {
        Some("multicast or reserved")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(policy: &AddressPolicy, text: &str) -> bool {
        policy.check(text.parse().expect("address")).is_err()
    }

    #[test]
    fn internal_addresses_are_refused_by_default() {
        let policy = AddressPolicy::default();
        for internal in [
            "127.0.0.1",
            "169.254.169.254",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(refused(&policy, internal), "{internal} was allowed");
        }
        for public in ["93.184.216.34", "2606:2800:220:1::1"] {
            assert!(!refused(&policy, public), "{public} was refused");
        }
    }

    #[test]
    fn an_allowed_network_admits_only_itself() {
        let policy = AddressPolicy::allowing(vec!["127.0.0.0/8".parse().expect("net")]);
        assert!(!refused(&policy, "127.0.0.1"));
        assert!(!refused(&policy, "::ffff:127.0.0.1"));
        assert!(refused(&policy, "169.254.169.254"));
        assert!(refused(&policy, "::1"));
    }

    #[tokio::test]
    async fn a_name_is_judged_by_every_address_it_resolves_to() {
        let policy = AddressPolicy::default();
        let error = policy.resolve("localhost", 80).await.expect_err("refused");
        assert!(error.contains("loopback"), "{error}");
        let literal = policy.resolve("[::1]", 80).await.expect_err("refused");
        assert!(literal.contains("loopback"), "{literal}");
    }
}
