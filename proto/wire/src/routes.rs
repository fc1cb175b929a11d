//! What an HTTP service may ask for on the vhost and HTTPS ports: how many host names and path
//! prefixes, and what each looks like. The server checks every [`HttpSpec`] it receives with
//! [`check_http`] before it claims anything; the client's config uses the same checks, so a
//! config the client accepts is never refused by the server for its shape.

use crate::message::HttpSpec;

/// Most host names (`custom_domains` plus `subdomain`) one service may claim.
pub const MAX_DOMAINS_PER_SERVICE: usize = 16;

/// Most path prefixes (`locations`) one service may claim.
pub const MAX_LOCATIONS_PER_SERVICE: usize = 16;

/// Most routes (host names × locations, over all its services) one client may hold.
pub const MAX_ROUTES_PER_CLIENT: usize = 256;

/// Longest host name, in bytes (DNS's limit).
pub const MAX_HOST_LEN: usize = 253;

/// Longest path prefix, in bytes.
pub const MAX_LOCATION_LEN: usize = 1024;

/// Why a host name or location is refused (the text says which and why).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpecError(String);

impl std::fmt::Display for RouteSpecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RouteSpecError {}

/// Checks a host name as a route names it: lower-case labels of letters, digits, `-` and `_`,
/// joined by dots, at most [`MAX_HOST_LEN`] bytes; `*.` in front makes it a wildcard when
/// `wildcard` is allowed.
pub fn check_host(host: &str, wildcard: bool) -> Result<(), RouteSpecError> {
    let bare = match host.strip_prefix("*.") {
        Some(rest) if wildcard => rest,
        _ => host,
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    };
    if host.len() > MAX_HOST_LEN || !bare.split('.').all(label_ok) {
        let shown: String = host.chars().take(64).collect();
        return Err(RouteSpecError(format!(
            "`{shown}` is not a host name (lower-case letters, digits, `-` and `_` in dot-separated labels{})",
            if wildcard { ", optionally after `*.`" } else { "" }
        )));
    }
    Ok(())
}

/// Checks a path prefix: it starts with `/`, is at most [`MAX_LOCATION_LEN`] bytes, and has no
/// spaces or control characters.
pub fn check_location(location: &str) -> Result<(), RouteSpecError> {
    let shown = || location.chars().take(64).collect::<String>();
    if !location.starts_with('/') {
        return Err(RouteSpecError(format!("location `{}` does not start with `/`", shown())));
    }
    if location.len() > MAX_LOCATION_LEN {
        return Err(RouteSpecError(format!("location `{}…` is longer than {MAX_LOCATION_LEN} bytes", shown())));
    }
    if location.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(RouteSpecError(format!("location `{}` has a space or control character", shown().escape_debug())));
    }
    Ok(())
}

/// Checks the shape of an HTTP service's routes: at most [`MAX_DOMAINS_PER_SERVICE`] host
/// names and [`MAX_LOCATIONS_PER_SERVICE`] locations, each well formed. Whether the client may
/// claim the names is the server's allowance, checked apart.
pub fn check_http(http: &HttpSpec) -> Result<(), RouteSpecError> {
    let domains = http.custom_domains.len() + usize::from(http.subdomain.is_some());
    if domains > MAX_DOMAINS_PER_SERVICE {
        return Err(RouteSpecError(format!("more than {MAX_DOMAINS_PER_SERVICE} host names in one service")));
    }
    if http.locations.len() > MAX_LOCATIONS_PER_SERVICE {
        return Err(RouteSpecError(format!("more than {MAX_LOCATIONS_PER_SERVICE} locations in one service")));
    }
    for host in &http.custom_domains {
        check_host(host, true)?;
    }
    if let Some(sub) = &http.subdomain {
        check_host(sub, false)?;
    }
    http.locations.iter().try_for_each(|l| check_location(l))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(domains: &[&str], locations: &[&str]) -> HttpSpec {
        HttpSpec {
            custom_domains: domains.iter().map(|s| (*s).to_owned()).collect(),
            subdomain: None,
            locations: locations.iter().map(|s| (*s).to_owned()).collect(),
            host_header_rewrite: None,
            basic_auth: None,
        }
    }

    #[test]
    fn host_names_are_lower_case_labels_with_an_optional_wildcard() {
        for good in ["a.com", "*.a.com", "x-1_y.a.b", "localhost"] {
            assert_eq!(check_host(good, true), Ok(()), "{good}");
        }
        for bad in ["", "A.com", "a..com", ".a.com", "a.com.", "a b.com", "*", "*.", "a.*.com", "é.com"] {
            assert!(check_host(bad, true).is_err(), "{bad:?}");
        }
        assert!(check_host("*.a.com", false).is_err(), "a subdomain is never a wildcard");
        assert!(check_host(&"a".repeat(64), true).is_err(), "a label is at most 63 bytes");
        assert!(check_host(&format!("{}.com", vec!["a".repeat(60); 5].join(".")), true).is_err());
    }

    #[test]
    fn locations_start_with_a_slash_and_are_bounded() {
        assert_eq!(check_location("/api/v1"), Ok(()));
        for bad in ["api", "", "/a b", "/a\r\nX: y"] {
            assert!(check_location(bad).is_err(), "{bad:?}");
        }
        assert!(check_location(&format!("/{}", "a".repeat(MAX_LOCATION_LEN))).is_err());
    }

    #[test]
    fn a_service_has_a_bounded_number_of_names_and_locations() {
        let names: Vec<String> = (0..=MAX_DOMAINS_PER_SERVICE).map(|i| format!("h{i}.com")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        assert!(check_http(&spec(&names, &["/"])).is_err());
        assert_eq!(check_http(&spec(&names[1..], &["/"])), Ok(()));
        let paths: Vec<String> = (0..=MAX_LOCATIONS_PER_SERVICE).map(|i| format!("/p{i}")).collect();
        let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
        assert!(check_http(&spec(&["a.com"], &paths)).is_err());
        assert_eq!(check_http(&spec(&["a.com"], &paths[1..])), Ok(()));
    }
}
