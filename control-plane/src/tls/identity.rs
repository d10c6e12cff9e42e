//! The names a client certificate vouches for, so a worker's announced
//! name can be bound to the certificate it connected with: its DNS
//! subject-alternative names, or, when it has none, its subject CN (the
//! order RFC 6125 gives for server names).

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

/// The names of a DER certificate (already verified by the TLS handshake).
/// A certificate that does not parse, or names nothing, is an error: the
/// caller refuses rather than treating it as unnamed.
pub fn certificate_names(der: &[u8]) -> Result<Vec<String>, String> {
    let (_, certificate) = X509Certificate::from_der(der)
        .map_err(|error| format!("the client certificate cannot be read: {error}"))?;
    let alternative = certificate
        .subject_alternative_name()
        .map_err(|error| format!("the client certificate's alternative names: {error}"))?;
    let dns: Vec<String> = alternative
        .into_iter()
        .flat_map(|extension| extension.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some((*dns).to_owned()),
            _ => None,
        })
        .collect();
    if !dns.is_empty() {
        return Ok(dns);
    }
    let common: Vec<String> = certificate
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_owned))
        .collect();
    if common.is_empty() {
        return Err("the client certificate names nothing (no DNS name, no CN)".to_owned());
    }
    Ok(common)
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, DnType, KeyPair};

    use super::*;

    fn certificate(alt_names: &[&str], cn: Option<&str>) -> Vec<u8> {
        let names: Vec<String> = alt_names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        let key = KeyPair::generate().expect("key");
        params.self_signed(&key).expect("sign").der().to_vec()
    }

    #[test]
    fn dns_alternative_names_come_before_the_common_name() {
        let der = certificate(&["worker-a", "worker-a.example", "10.0.0.1"], Some("other"));
        assert_eq!(
            certificate_names(&der),
            Ok(vec!["worker-a".to_owned(), "worker-a.example".to_owned()])
        );
    }

    #[test]
    fn without_dns_names_the_common_name_counts() {
        let der = certificate(&[], Some("worker-cn"));
        assert_eq!(certificate_names(&der), Ok(vec!["worker-cn".to_owned()]));
        let ip_only = certificate(&["10.0.0.1"], Some("worker-cn"));
        assert_eq!(
            certificate_names(&ip_only),
            Ok(vec!["worker-cn".to_owned()])
        );
    }

    #[test]
    fn a_certificate_naming_nothing_or_garbage_is_an_error() {
        assert!(certificate_names(&certificate(&[], None)).is_err());
        assert!(certificate_names(b"not a certificate").is_err());
    }
}
