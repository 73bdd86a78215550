//! Which `machine` entries of the config mean this host.
//!
//! A fleet's config names machines the way its operators think of them:
//! short host name, FQDN or an IP address. By default all three select this
//! host; `--machine NAME` selects exactly NAME (for testing a config for
//! another host, or for hosts whose name is not stable).

use std::cell::OnceCell;
use std::ffi::{CStr, CString};

use anyhow::{Context, Result};

use crate::config::{Config, Service};

/// The names under which this host appears in the config.
#[derive(Debug)]
pub struct Identity {
    /// Exact names, lowercased: host name, its short form, IP addresses.
    names: Vec<String>,
    /// Looked up only when needed: resolving the FQDN may consult DNS.
    fqdn: OnceCell<Option<String>>,
    /// Whether the FQDN may be consulted (not for an explicit `--machine`).
    resolve_fqdn: bool,
}

impl Identity {
    /// Exactly `name`, as given by `--machine`.
    pub fn named(name: &str) -> Identity {
        Identity {
            names: vec![name.to_ascii_lowercase()],
            fqdn: OnceCell::new(),
            resolve_fqdn: false,
        }
    }

    /// This host: its host name, short name, FQDN and interface addresses.
    pub fn this_host() -> Result<Identity> {
        let host = nix::unistd::gethostname().context("reading the host name")?;
        let host = host.to_string_lossy().to_ascii_lowercase();
        let mut names = vec![host.clone()];
        if let Some((short, _)) = host.split_once('.') {
            names.push(short.to_string());
        }
        names.extend(interface_addresses());
        Ok(Identity {
            names,
            fqdn: OnceCell::new(),
            resolve_fqdn: true,
        })
    }

    /// The primary name, for messages.
    pub fn name(&self) -> &str {
        self.names.first().map_or("", String::as_str)
    }

    /// The services of `config` that run on this host, in file order.
    pub fn services<'a>(&self, config: &'a Config) -> Vec<&'a Service> {
        config.services_where(|m| self.matches(m))
    }

    /// Whether a config `machine` value means this host.
    pub fn matches(&self, machine: &str) -> bool {
        let machine = machine.to_ascii_lowercase();
        if self.names.contains(&machine) {
            return true;
        }
        // Only a dotted name can be an FQDN; skip the lookup otherwise.
        self.resolve_fqdn
            && machine.contains('.')
            && self.fqdn().as_deref() == Some(machine.as_str())
    }

    fn fqdn(&self) -> &Option<String> {
        self.fqdn.get_or_init(|| canonical_name(self.name()))
    }
}

/// Addresses of all interfaces, IPv4 and IPv6, as text.
fn interface_addresses() -> Vec<String> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut out: Vec<String> = addrs
        .filter_map(|a| a.address)
        .filter_map(|sa| {
            if let Some(v4) = sa.as_sockaddr_in() {
                Some(v4.ip().to_string())
            } else {
                sa.as_sockaddr_in6().map(|v6| v6.ip().to_string())
            }
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The canonical name of `host` as the resolver sees it (what `hostname -f`
/// prints), or `None` when it cannot be resolved.
#[allow(unsafe_code)] // getaddrinfo: the C resolver is the only way to the canonical name
fn canonical_name(host: &str) -> Option<String> {
    let c_host = CString::new(host).ok()?;
    // SAFETY: an all-zero addrinfo is a valid "no hints" value.
    let mut hints: libc::addrinfo = unsafe { std::mem::zeroed() };
    hints.ai_flags = libc::AI_CANONNAME;
    hints.ai_family = libc::AF_UNSPEC;
    let mut res: *mut libc::addrinfo = std::ptr::null_mut();
    // SAFETY: valid C string and hints; res is freed below on success.
    let rc = unsafe { libc::getaddrinfo(c_host.as_ptr(), std::ptr::null(), &hints, &mut res) };
    if rc != 0 || res.is_null() {
        return None;
    }
    // SAFETY: res is a valid list returned by getaddrinfo.
    let name = unsafe {
        let canon = (*res).ai_canonname;
        let name = (!canon.is_null())
            .then(|| CStr::from_ptr(canon).to_string_lossy().to_ascii_lowercase());
        libc::freeaddrinfo(res);
        name
    };
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_name_matches_case_insensitively_and_nothing_else() {
        let id = Identity::named("Web1.Example.NET");
        assert!(id.matches("web1.example.net"));
        assert!(!id.matches("web1"));
        assert!(!id.matches("127.0.0.1"));
    }

    #[test]
    fn this_host_matches_its_hostname_and_loopback() {
        let id = Identity::this_host().expect("reading host identity");
        let host = nix::unistd::gethostname().expect("hostname");
        assert!(id.matches(&host.to_string_lossy()));
        assert!(id.matches("127.0.0.1"), "interfaces: {:?}", id.names);
        assert!(!id.matches("no-such-machine.invalid"));
    }
}
