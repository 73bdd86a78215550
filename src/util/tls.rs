//! Why an https server's certificate was refused, in words an operator
//! can act on. libgit2 says only "the SSL certificate is invalid"; the
//! certificate the server presented is looked at again here: its dates, the
//! names it is issued for, whether it signed itself, and what OpenSSL says
//! when it is checked against this machine's CA store.

use openssl::asn1::Asn1Time;
use openssl::nid::Nid;
use openssl::stack::Stack;
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::{X509StoreContext, X509};

/// What to do when the issuer is not trusted here.
const TRUST_FIX: &str = "add the CA that issued it to this machine's CA store \
     (on Debian: copy it to /usr/local/share/ca-certificates/ and run update-ca-certificates), \
     or set SSL_CERT_FILE to a bundle that holds it";

/// The reason `der` (the server's certificate for `host`) is not
/// acceptable, and the fix; `None` when no reason is found in it.
pub fn diagnose(host: &str, der: &[u8]) -> Option<String> {
    let cert = X509::from_der(der).ok()?;
    let now = Asn1Time::days_from_now(0).ok()?;
    if cert.not_after() < now {
        return Some(format!(
            "it expired on {}; the server must renew it",
            cert.not_after()
        ));
    }
    if cert.not_before() > now {
        return Some(format!(
            "it is not valid before {}; check this machine's clock",
            cert.not_before()
        ));
    }
    let names = names(&cert);
    if !names.iter().any(|n| matches_host(n, host)) {
        return Some(format!(
            "it is issued for {}, not {host} (a name mismatch); use an upstream URL with one of those names",
            if names.is_empty() {
                "no name".to_string()
            } else {
                names.join(", ")
            }
        ));
    }
    if let Some(why) = untrusted(&cert) {
        return Some(format!("{why}; {TRUST_FIX}"));
    }
    None
}

/// The DNS names and addresses the certificate is issued for (its subject
/// alternative names, else its common name).
fn names(cert: &X509) -> Vec<String> {
    let mut out: Vec<String> = cert
        .subject_alt_names()
        .map(|sans| {
            sans.iter()
                .filter_map(|n| {
                    n.dnsname().map(str::to_string).or_else(|| {
                        n.ipaddress().and_then(|ip| match ip.len() {
                            4 => Some(
                                std::net::Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]).to_string(),
                            ),
                            16 => <[u8; 16]>::try_from(ip)
                                .ok()
                                .map(|b| std::net::Ipv6Addr::from(b).to_string()),
                            _ => None,
                        })
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    if out.is_empty() {
        out.extend(
            cert.subject_name()
                .entries_by_nid(Nid::COMMONNAME)
                .filter_map(|e| e.data().to_string().ok()),
        );
    }
    out
}

/// Whether certificate name `name` (possibly `*.example.net`) covers `host`.
fn matches_host(name: &str, host: &str) -> bool {
    let (name, host) = (name.to_ascii_lowercase(), host.to_ascii_lowercase());
    match name.strip_prefix("*.") {
        Some(rest) => host
            .split_once('.')
            .is_some_and(|(first, tail)| !first.is_empty() && tail == rest),
        None => name == host,
    }
}

/// Why OpenSSL does not trust the certificate with this machine's CA
/// store; `None` when it does.
fn untrusted(cert: &X509) -> Option<String> {
    let mut store = X509StoreBuilder::new().ok()?;
    store.set_default_paths().ok()?;
    let store = store.build();
    let chain = Stack::new().ok()?;
    let mut ctx = X509StoreContext::new().ok()?;
    let verdict = ctx
        .init(&store, cert, &chain, |c| {
            Ok(c.verify_cert()?.then_some(()).ok_or(c.error()))
        })
        .ok()?;
    let err = verdict.err()?;
    let self_signed = cert.issuer_name().to_der().ok() == cert.subject_name().to_der().ok();
    Some(if self_signed {
        format!("it is self-signed and not in this machine's CA store ({err})")
    } else {
        format!("its issuer is not trusted here ({err})")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_cover_one_label() {
        assert!(matches_host("git.example.net", "GIT.example.net"));
        assert!(matches_host("*.example.net", "git.example.net"));
        assert!(!matches_host("*.example.net", "a.git.example.net"));
        assert!(!matches_host("*.example.net", "example.net"));
        assert!(!matches_host("localhost", "127.0.0.1"));
    }
}
