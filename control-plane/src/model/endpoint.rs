//! The S3 endpoint policy: which hosts buckets may point workers at.
//!
//! Admins set `s3_endpoint_allow` and `s3_endpoint_deny` (configuration keys,
//! comma-separated host patterns). Buckets of non-admin owners must match the
//! allow list (an empty one allows any host), must not match the deny list,
//! and may not name loopback, link-local, private or otherwise special
//! addresses unless an allow pattern other than `*` names them explicitly:
//! a tenant must not make workers call a cloud metadata endpoint
//! (169.254.169.254) or services on the workers' own network. Admins' buckets
//! are trusted and only have to be well-formed. The policy is checked when a
//! bucket is written and again when a lease is built, since it may change.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use url::Host;

/// Host an empty endpoint means (AWS).
const AWS_HOST: &str = "s3.amazonaws.com";

/// One host pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Pattern {
    /// `*`: every host.
    Any,
    /// `*.example.com`: every name below `example.com`.
    Suffix(String),
    /// `minio.internal`: this name.
    Name(String),
    /// `10.0.0.0/8` or `192.0.2.7`: addresses in this network.
    Network(IpNet),
}

impl Pattern {
    fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim().trim_end_matches('.').to_ascii_lowercase();
        if text == "*" {
            return Ok(Pattern::Any);
        }
        if let Ok(net) = text.parse::<IpNet>() {
            return Ok(Pattern::Network(net.trunc()));
        }
        let unbracketed = text.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = unbracketed.parse::<IpAddr>() {
            return Ok(Pattern::Network(IpNet::from(ip)));
        }
        let (suffix, name) = match text.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, text.as_str()),
        };
        let label_ok = |label: &str| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
        if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
            return Err(format!(
                "{text:?} is not a host pattern (a name, *.suffix, an IP address, a CIDR network or *)"
            ));
        }
        Ok(if suffix {
            Pattern::Suffix(name.to_string())
        } else {
            Pattern::Name(name.to_string())
        })
    }

    fn matches(&self, host: &EndpointHost) -> bool {
        match (self, host) {
            (Pattern::Any, _) => true,
            (Pattern::Name(name), EndpointHost::Name(host)) => name == host,
            (Pattern::Suffix(suffix), EndpointHost::Name(host)) => host
                .strip_suffix(suffix.as_str())
                .is_some_and(|rest| rest.ends_with('.')),
            (Pattern::Network(net), EndpointHost::Ip(ip)) => net.contains(ip),
            _ => false,
        }
    }
}

/// Parses a comma-separated list of host patterns (the value of the
/// configuration keys); the error says which entry is wrong.
fn parse_patterns(value: &str) -> Result<Vec<Pattern>, String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(Pattern::parse)
        .collect()
}

/// Checks the value of `s3_endpoint_allow` or `s3_endpoint_deny`.
pub fn check_patterns(value: &str) -> Result<(), String> {
    parse_patterns(value).map(|_| ())
}

/// The host of an endpoint, as a worker will reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum EndpointHost {
    Name(String),
    Ip(IpAddr),
}

/// Parses an endpoint URL the way a worker's HTTP client will: only http
/// and https, no user info, a host. IPv4 addresses written in other forms
/// (`2852039166`, `0xa9.0xfe.0xa9.0xfe`) come out as the address they are.
fn endpoint_host(endpoint: &str) -> Result<EndpointHost, String> {
    if endpoint.is_empty() {
        return Ok(EndpointHost::Name(AWS_HOST.into()));
    }
    let url = url::Url::parse(endpoint).map_err(|_| "is not a URL".to_string())?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("must use http:// or https://".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not contain user info (user:password@)".into());
    }
    match url.host() {
        Some(Host::Domain(name)) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            Ok(match name.parse::<IpAddr>() {
                Ok(ip) => EndpointHost::Ip(ip),
                Err(_) => EndpointHost::Name(name),
            })
        }
        Some(Host::Ipv4(ip)) => Ok(EndpointHost::Ip(IpAddr::V4(ip))),
        Some(Host::Ipv6(ip)) => Ok(EndpointHost::Ip(match ip.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(ip),
        })),
        None => Err("has no host".into()),
    }
}

/// Checks the form of an endpoint (scheme, no user info, a host); empty is
/// AWS. The error describes the problem, for a field violation.
pub fn check_endpoint_form(endpoint: &str) -> Result<(), String> {
    endpoint_host(endpoint).map(|_| ())
}

/// Whether an address is one tenants may not reach without an explicit
/// allow entry: loopback, link-local (cloud metadata), private, unique
/// local, shared (CGNAT), unspecified, broadcast or multicast.
fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_internal_v4(v4),
        IpAddr::V6(v6) => is_internal_v6(v6),
    }
}

fn is_internal_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_link_local()
        || ip.is_private()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
}

fn is_internal_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
        || ip.to_ipv4().is_some_and(is_internal_v4)
}

/// The policy in force: the parsed allow and deny lists.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointPolicy {
    allow: Vec<Pattern>,
    deny: Vec<Pattern>,
}

impl EndpointPolicy {
    /// The policy from the two configuration values (unset: empty). Values
    /// were checked when stored; an entry that no longer parses is skipped
    /// in the allow list and denies everything in the deny list, so a bad
    /// value never opens the policy up.
    pub fn from_config(allow: Option<&str>, deny: Option<&str>) -> Self {
        let entries = |value: Option<&str>, fallback: Pattern| {
            value
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|entry| !entry.is_empty())
                .map(|entry| Pattern::parse(entry).unwrap_or_else(|_| fallback.clone()))
                .collect::<Vec<_>>()
        };
        EndpointPolicy {
            // An empty name matches no host but keeps the list non-empty.
            allow: entries(allow, Pattern::Name(String::new())),
            deny: entries(deny, Pattern::Any),
        }
    }

    /// Checks an endpoint of a bucket whose owner is (`owner_is_admin`) or
    /// is not an admin. The error says why, without echoing the endpoint.
    pub fn check(&self, endpoint: &str, owner_is_admin: bool) -> Result<(), String> {
        let host = endpoint_host(endpoint)?;
        if owner_is_admin {
            return Ok(());
        }
        if self.deny.iter().any(|pattern| pattern.matches(&host)) {
            return Err("its host is denied by the s3_endpoint_deny configuration".into());
        }
        let explicit = self
            .allow
            .iter()
            .any(|pattern| *pattern != Pattern::Any && pattern.matches(&host));
        if !self.allow.is_empty() && !explicit && !self.allow.contains(&Pattern::Any) {
            return Err("its host is not in the s3_endpoint_allow configuration".into());
        }
        let internal = match &host {
            EndpointHost::Ip(ip) => is_internal(*ip),
            EndpointHost::Name(name) => name == "localhost" || name.ends_with(".localhost"),
        };
        if internal && !explicit {
            return Err(
                "it names a loopback, link-local or private address, which only an explicit \
                 s3_endpoint_allow entry permits"
                    .into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &str, deny: &str) -> EndpointPolicy {
        EndpointPolicy::from_config(Some(allow), Some(deny))
    }

    #[test]
    fn metadata_and_private_addresses_are_refused_for_tenants_in_every_spelling() {
        let open = policy("", "");
        for endpoint in [
            "http://169.254.169.254",
            "http://169.254.169.254:80/latest/meta-data",
            "http://2852039166",
            "http://0xa9.0xfe.0xa9.0xfe",
            "http://0251.0376.0251.0376",
            "http://[::ffff:169.254.169.254]",
            "http://[fe80::1]",
            "http://127.0.0.1:9000",
            "http://127.1",
            "http://localhost:9000",
            "http://LOCALHOST.",
            "http://10.1.2.3",
            "http://192.168.0.10",
            "http://172.16.0.1",
            "http://[::1]",
            "http://[fd00::1]",
            "http://0.0.0.0",
            "http://100.64.0.1",
        ] {
            assert!(open.check(endpoint, false).is_err(), "{endpoint}");
            assert!(open.check(endpoint, true).is_ok(), "{endpoint} (admin)");
        }
        assert!(open.check("https://s3.example.com", false).is_ok());
        assert!(open.check("", false).is_ok());
    }

    #[test]
    fn only_an_explicit_allow_entry_opens_an_internal_address() {
        assert!(policy("*", "")
            .check("http://127.0.0.1:9000", false)
            .is_err());
        assert!(policy("127.0.0.1", "")
            .check("http://127.0.0.1:9000", false)
            .is_ok());
        assert!(policy("10.0.0.0/8", "")
            .check("http://10.2.3.4", false)
            .is_ok());
        assert!(policy("10.0.0.0/8", "")
            .check("http://127.0.0.1", false)
            .is_err());
    }

    #[test]
    fn allow_and_deny_lists_match_names_and_suffixes() {
        let p = policy("*.example.com, minio.internal", "evil.example.com");
        assert!(p.check("https://s3.example.com", false).is_ok());
        assert!(p.check("http://minio.internal:9000", false).is_ok());
        assert!(p.check("https://example.com", false).is_err());
        assert!(p.check("https://evil.example.com", false).is_err());
        assert!(p.check("https://attacker.net", false).is_err());
        assert!(p.check("", false).is_err(), "AWS is not in the list");
    }

    #[test]
    fn malformed_endpoints_are_refused_for_everyone() {
        for endpoint in [
            "ftp://minio",
            "http://user:pass@minio:9000",
            "http://user@minio",
            "file:///etc/passwd",
            "minio:9000",
        ] {
            assert!(check_endpoint_form(endpoint).is_err(), "{endpoint}");
            assert!(policy("", "").check(endpoint, true).is_err(), "{endpoint}");
        }
    }

    #[test]
    fn patterns_are_validated() {
        assert!(check_patterns("*.example.com, 10.0.0.0/8, [::1], minio, *").is_ok());
        assert!(check_patterns("http://minio").is_err());
        assert!(check_patterns("a b").is_err());
    }

    #[test]
    fn an_unparsable_stored_deny_entry_denies_everything() {
        let p = EndpointPolicy::from_config(None, Some("not a pattern"));
        assert!(p.check("https://s3.example.com", false).is_err());
    }
}
