//! Which hosts callbacks may reach. A callback URL is chosen by whoever submits a job, so without
//! a policy kiln would make requests on a stranger's behalf from inside the operator's network
//! (server-side request forgery): to a cloud metadata service handing out credentials, or to an
//! internal admin port.
//!
//! Rules are host names (`hooks.example.com`, or `*.example.com` for any subdomain) or address
//! ranges (`10.0.0.0/8`, `::1`). A destination is refused if any deny rule matches its name or
//! its address; if allow rules exist, it must also match one of them. Names are checked at
//! submit; addresses both at submit (literal addresses) and at delivery, after DNS resolution,
//! where the connection is then made only to the addresses that passed (no second lookup an
//! attacker's DNS server could answer differently).
//!
//! Part of the domain because validation applies it to every submitted `callback_url`; the
//! webhook deliverer applies the same policy to the addresses a name resolves to.

use std::net::IpAddr;

use ipnet::IpNet;
use url::{Host, Url};

/// Longest callback URL accepted.
pub const MAX_URL_BYTES: usize = 2048;

/// Denied whatever the configuration says: the addresses and names where clouds serve instance
/// metadata and credentials. All of IPv4 and IPv6 link-local is in it, since that is where
/// every major cloud (and ECS task credentials, 169.254.170.2) puts them.
const ALWAYS_DENIED: &[&str] = &[
    "169.254.0.0/16",
    "fe80::/10",
    "fd00:ec2::254/128",
    "100.100.100.200/32",
    "168.63.129.16/32",
    "metadata.google.internal",
    "metadata.goog",
];

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostRule {
    /// This name exactly (lower case, without a trailing dot).
    Name(String),
    /// Any name ending in `.` followed by this (from `*.example.com`).
    Subdomains(String),
    /// Any address in this range.
    Net(IpNet),
}

impl HostRule {
    /// Parses `NAME`, `*.NAME`, an address or a CIDR range.
    pub fn parse(s: &str) -> Result<HostRule, String> {
        let s = s.trim();
        if let Ok(net) = s.parse::<IpNet>() {
            return Ok(HostRule::Net(net.trunc()));
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(HostRule::Net(IpNet::from(ip.to_canonical())));
        }
        let (wildcard, name) = match s.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let name = normalize_name(name);
        let valid = !name.is_empty()
            && name
                .split('.')
                .all(|label| !label.is_empty() && label.chars().all(is_name_char));
        if !valid {
            return Err(format!(
                "{s:?} is not a host name, *.name, address or CIDR range"
            ));
        }
        Ok(if wildcard {
            HostRule::Subdomains(name)
        } else {
            HostRule::Name(name)
        })
    }

    fn matches_name(&self, name: &str) -> bool {
        match self {
            HostRule::Name(n) => name == n,
            HostRule::Subdomains(n) => name
                .strip_suffix(n.as_str())
                .is_some_and(|head| head.ends_with('.')),
            HostRule::Net(_) => false,
        }
    }

    fn matches_addr(&self, ip: IpAddr) -> bool {
        match self {
            HostRule::Net(net) => net.contains(&ip.to_canonical()),
            HostRule::Name(_) | HostRule::Subdomains(_) => false,
        }
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

fn normalize_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The allow and deny lists. The default allows every host but the cloud metadata services,
/// loopback included, which suits a single-user server; a server that takes jobs from
/// strangers should deny its private networks or allow only the receivers it knows.
#[derive(Clone, Debug)]
pub struct HostPolicy {
    allow: Vec<HostRule>,
    deny: Vec<HostRule>,
}

impl Default for HostPolicy {
    fn default() -> Self {
        HostPolicy::new(Vec::new(), Vec::new())
    }
}

impl HostPolicy {
    /// The given rules; the cloud metadata services are denied on top of `deny`.
    pub fn new(allow: Vec<HostRule>, mut deny: Vec<HostRule>) -> HostPolicy {
        deny.extend(
            ALWAYS_DENIED
                .iter()
                .filter_map(|rule| HostRule::parse(rule).ok()),
        );
        HostPolicy { allow, deny }
    }

    /// Checks a callback URL as submitted: its form, and whatever can be told about its host
    /// without resolving it. The error says why.
    pub fn check_url(&self, url: &str) -> Result<(), String> {
        if url.len() > MAX_URL_BYTES {
            return Err(format!(
                "callback_url is {} bytes, at most {MAX_URL_BYTES} allowed",
                url.len()
            ));
        }
        let parsed =
            Url::parse(url).map_err(|e| format!("callback_url {url:?} is not a URL: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!("callback_url {url:?} must be http or https"));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(format!(
                "callback_url {url:?} must not carry credentials; verify kiln's signature instead"
            ));
        }
        let refused = |why: &str| Err(format!("callback_url {url:?}: {why}"));
        match parsed.host() {
            None => refused("has no host"),
            Some(Host::Domain(name)) => {
                let name = normalize_name(name);
                if self.deny.iter().any(|r| r.matches_name(&name)) {
                    return refused("the host is denied by this server's webhook policy");
                }
                // A name outside the allowed names may still resolve into an allowed range;
                // that is decided at delivery.
                let may_resolve_into_allowed = self
                    .allow
                    .iter()
                    .any(|rule| matches!(rule, HostRule::Net(_)));
                if !self.allow.is_empty()
                    && !may_resolve_into_allowed
                    && !self.allow.iter().any(|r| r.matches_name(&name))
                {
                    return refused("the host is not in this server's webhook allow list");
                }
                Ok(())
            }
            Some(Host::Ipv4(ip)) => self
                .check_addr(None, IpAddr::V4(ip))
                .or_else(|e| refused(&e)),
            Some(Host::Ipv6(ip)) => self
                .check_addr(None, IpAddr::V6(ip))
                .or_else(|e| refused(&e)),
        }
    }

    /// May a connection for host `name` (None for a literal address) go to `ip`?
    pub fn check_addr(&self, name: Option<&str>, ip: IpAddr) -> Result<(), String> {
        let name = name.map(normalize_name);
        let matches = |rule: &HostRule| {
            rule.matches_addr(ip) || name.as_deref().is_some_and(|n| rule.matches_name(n))
        };
        if self.deny.iter().any(matches) {
            return Err(format!(
                "the address {ip} is denied by this server's webhook policy"
            ));
        }
        if !self.allow.is_empty() && !self.allow.iter().any(matches) {
            return Err(format!(
                "the address {ip} is not in this server's webhook allow list"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &[&str], deny: &[&str]) -> HostPolicy {
        let rules = |list: &[&str]| list.iter().map(|r| HostRule::parse(r).unwrap()).collect();
        HostPolicy::new(rules(allow), rules(deny))
    }

    #[test]
    fn metadata_services_are_refused_however_the_address_is_written() {
        let p = policy(&[], &[]);
        for url in [
            "http://169.254.169.254/latest/meta-data/",
            "http://2852039166/",
            "http://0xa9.0xfe.0xa9.0xfe/",
            "http://[::ffff:169.254.169.254]/",
            "http://[fd00:ec2::254]/",
            "http://100.100.100.200/",
            "http://METADATA.google.internal./computeMetadata/v1/",
        ] {
            assert!(p.check_url(url).is_err(), "{url} was accepted");
        }
        assert!(p.check_url("http://127.0.0.1:9000/hook").is_ok());
        assert!(p.check_url("https://hooks.example.com/kiln").is_ok());
    }

    #[test]
    fn only_http_urls_without_credentials_are_accepted() {
        let p = policy(&[], &[]);
        for url in [
            "ftp://example.com/",
            "file:///etc/passwd",
            "not a url",
            "http://user:pw@example.com/",
            &format!("http://example.com/{}", "a".repeat(MAX_URL_BYTES)),
        ] {
            assert!(p.check_url(url).is_err(), "{url} was accepted");
        }
    }

    #[test]
    fn a_deny_rule_wins_over_an_allow_rule() {
        let p = policy(
            &["10.0.0.0/8", "*.example.com"],
            &["10.1.0.0/16", "bad.example.com"],
        );
        assert!(p.check_url("http://10.2.3.4/").is_ok());
        assert!(p.check_url("http://10.1.3.4/").is_err());
        assert!(p.check_url("http://a.example.com/").is_ok());
        assert!(p.check_url("http://bad.example.com/").is_err());
        assert!(
            p.check_url("http://11.0.0.1/").is_err(),
            "outside the allow list"
        );
        assert!(
            p.check_addr(Some("a.example.com"), "8.8.8.8".parse().unwrap())
                .is_ok()
        );
        assert!(
            p.check_addr(Some("other.org"), "8.8.8.8".parse().unwrap())
                .is_err()
        );
        assert!(
            p.check_addr(Some("a.example.com"), "10.1.0.1".parse().unwrap())
                .is_err()
        );
    }

    #[test]
    fn a_wildcard_matches_subdomains_only() {
        let rule = HostRule::parse("*.example.com").unwrap();
        assert!(rule.matches_name("a.example.com"));
        assert!(rule.matches_name("a.b.example.com"));
        assert!(!rule.matches_name("example.com"));
        assert!(!rule.matches_name("badexample.com"));
        assert!(HostRule::parse("exa mple.com").is_err());
        assert!(HostRule::parse("10.0.0.0/33").is_err());
    }
}
