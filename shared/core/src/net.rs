//! Addresses and names as they cross a trust boundary (a request, a host's answer, a cloud's
//! record): parsed here, so that what later reaches a root shell, a YAML document or a URL is
//! an IP address, a DNS name or a login name and nothing else.
use std::net::IpAddr;

/// An IP address, or why `s` is not one (the value shown escaped and cut short: it may be
/// anything a hostile host printed).
pub fn ip(s: &str) -> Result<IpAddr, String> {
    s.parse().map_err(|_| format!("{} is not an IP address", shown(s)))
}

/// A DNS name (RFC 1123): labels of letters, digits and inner hyphens, 1–63 characters each,
/// 253 in all.
pub fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// An IP address or a DNS name.
pub fn host_address(s: &str) -> Result<(), String> {
    if ip(s).is_ok() || is_dns_name(s) {
        Ok(())
    } else {
        Err(format!("{} is neither an IP address nor a DNS name", shown(s)))
    }
}

/// A POSIX login name: a letter or `_`, then letters, digits, `_`, `-`; at most 32.
pub fn is_login_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && s.len() <= 32
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
}

/// `s` for an error message: escaped, at most 64 characters.
pub fn shown(s: &str) -> String {
    let cut: String = s.chars().take(64).collect();
    let more = if s.chars().count() > 64 { "…" } else { "" };
    format!("{:?}{more}", cut)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_ips_or_dns_names_and_nothing_else() {
        assert!(ip("10.0.0.1").is_ok() && ip("fd00::1").is_ok());
        for bad in ["1.2.3.4;touch /tmp/pwned", "$(id)", "10.0.0.1 ", "", "1.2.3.4\nrm -rf /"] {
            assert!(ip(bad).is_err(), "{bad}");
            assert!(host_address(bad).is_err(), "{bad}");
        }
        for good in ["host-1.example.com", "10.0.0.1", "a", "::1"] {
            assert!(host_address(good).is_ok(), "{good}");
        }
        for bad in ["-a.example", "a..b", "a_b.example", &"a".repeat(64), "ex ample"] {
            assert!(!is_dns_name(bad), "{bad}");
        }
        assert!(ip(&"x".repeat(1000)).unwrap_err().len() < 100, "errors show a short, escaped value");
    }

    #[test]
    fn login_names() {
        assert!(is_login_name("ubuntu") && is_login_name("_svc-1"));
        for bad in ["", "1abc", "a b", "a;b", "root$(id)", &"a".repeat(33)] {
            assert!(!is_login_name(bad), "{bad}");
        }
    }
}
