//! dnsmasq's files, parsed (docs/BACKEND.md, Leases): the configuration (lease
//! file path, `dhcp-range` pools, `dhcp-host` static pairs, `conf-dir`) and
//! the lease file. Pure functions over text plus [`read_config`], which reads
//! the main file and its `conf-dir` files once at start-up.
//!
//! Owns the lease model ([`Lease`]) and its JSON shape; not the snapshot,
//! the diffing or the events (see [`crate::leases`]).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{Value, json};
use sse_backend::change::Record;

/// A DHCP pool from a `dhcp-range=` line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pool {
    /// The `set:<tag>`, else `default`.
    pub pool_name: String,
    /// First address.
    pub start_ip: Ipv4Addr,
    /// Last address.
    pub end_ip: Ipv4Addr,
    /// Netmask (default `255.255.255.0`).
    pub netmask: Ipv4Addr,
    /// Lease duration in seconds (`None`: infinite or not given).
    pub lease_duration: Option<u64>,
    /// `end - start + 1`.
    pub total_addresses: u64,
}

impl Pool {
    /// Whether `ip` is inside the range.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.start_ip <= ip && ip <= self.end_ip
    }
}

/// What the configuration says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsmasqConfig {
    /// `dhcp-leasefile=`, resolved against the config file's directory.
    pub lease_file: Option<PathBuf>,
    /// Pools in file order.
    pub pools: Vec<Pool>,
    /// `(mac, ip)` pairs of `dhcp-host=` lines (MAC normalised).
    pub static_hosts: Vec<(String, Ipv4Addr)>,
}

/// A configuration that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigReadError {
    /// The main file (or a conf-dir) could not be read.
    #[error("cannot read dnsmasq configuration {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The configuration names no lease file.
    #[error("dnsmasq configuration {0} has no dhcp-leasefile= line")]
    NoLeaseFile(PathBuf),
}

/// A lease (docs/BACKEND.md, Leases). Equality ignores nothing: any field change is an update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Expiry in epoch seconds; 0 = infinite.
    pub expiry: i64,
    /// Lower-case colon form.
    pub mac_address: String,
    /// The key.
    pub ip_address: Ipv4Addr,
    /// `None` for `*`.
    pub hostname: Option<String>,
    /// `None` for `*` or absent.
    pub client_id: Option<String>,
    /// Matches a `dhcp-host` pair.
    pub is_static: bool,
    /// First pool containing the IP.
    pub pool_name: Option<String>,
}

impl Record for Lease {
    type Key = Ipv4Addr;

    fn key(&self) -> Ipv4Addr {
        self.ip_address
    }

    fn is_active(&self, now: i64) -> bool {
        self.expiry == 0 || now < self.expiry
    }
}

impl Lease {
    /// The JSON lease of `GET /api/dhcp/leases` and of the change events.
    /// `lease_time` is the expiry as ISO-8601 UTC, `null` for an infinite lease.
    pub fn to_json(&self, now: i64) -> Value {
        let lease_time = (self.expiry != 0)
            .then(|| time::OffsetDateTime::from_unix_timestamp(self.expiry).ok().map(sse_backend::clock::iso))
            .flatten();
        json!({
            "ip_address": self.ip_address.to_string(),
            "mac_address": self.mac_address,
            "hostname": self.hostname,
            "lease_time": lease_time,
            "client_id": self.client_id,
            "is_active": self.is_active(now),
            "is_static": self.is_static,
            "pool_name": self.pool_name,
            "vendor": Value::Null,
        })
    }
}

/// `aa:BB-cc...` or `aabbcc...` (12 hex digits) to `aa:bb:cc:dd:ee:ff`.
pub fn normalise_mac(s: &str) -> Option<String> {
    let hex: String = s.chars().filter(|c| !matches!(c, ':' | '-' | '.')).collect();
    if hex.len() != 12 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let lower = hex.to_ascii_lowercase();
    let parts: Vec<&str> = (0..6).filter_map(|i| lower.get(i * 2..i * 2 + 2)).collect();
    Some(parts.join(":"))
}

/// Seconds of a dnsmasq lease time (`3600`, `45m`, `12h`, `1d`); `None` for
/// `infinite` or anything else.
fn duration_secs(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.chars().last()? {
        's' => (&s[..s.len() - 1], 1),
        'm' => (&s[..s.len() - 1], 60),
        'h' => (&s[..s.len() - 1], 3600),
        'd' => (&s[..s.len() - 1], 86_400),
        _ => (s, 1),
    };
    num.parse::<u64>().ok().map(|n| n * mult)
}

fn parse_range(value: &str) -> Option<Pool> {
    let mut parts: Vec<&str> = value.split(',').map(str::trim).collect();
    let mut name = "default".to_owned();
    if let Some(tag) = parts.first().and_then(|p| p.strip_prefix("set:")) {
        name = tag.to_owned();
        parts.remove(0);
    }
    let start: Ipv4Addr = parts.first()?.parse().ok()?;
    let end: Ipv4Addr = parts.get(1)?.parse().ok()?;
    let mut netmask = Ipv4Addr::new(255, 255, 255, 0);
    let mut lease = None;
    for extra in parts.iter().skip(2) {
        match extra.parse::<Ipv4Addr>() {
            Ok(m) => netmask = m,
            Err(_) => lease = duration_secs(extra),
        }
    }
    let total = u64::from(u32::from(end)).checked_sub(u64::from(u32::from(start)))? + 1;
    Some(Pool { pool_name: name, start_ip: start, end_ip: end, netmask, lease_duration: lease, total_addresses: total })
}

fn parse_host(value: &str) -> Option<(String, Ipv4Addr)> {
    let mut mac = None;
    let mut ip = None;
    for part in value.split(',').map(str::trim) {
        if mac.is_none() && (part.contains(':') || part.contains('-')) {
            mac = normalise_mac(part);
        }
        if ip.is_none() {
            ip = part.parse::<Ipv4Addr>().ok();
        }
    }
    Some((mac?, ip?))
}

/// Applies the lines of one configuration file; returns its `conf-dir` values.
pub fn apply_config_text(text: &str, base: &Path, cfg: &mut DnsmasqConfig) -> Vec<String> {
    let mut dirs = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else { continue };
        let value = value.trim();
        match key.trim() {
            "dhcp-leasefile" | "dhcp-lease-file" => cfg.lease_file = Some(base.join(value)),
            "dhcp-range" => {
                if let Some(p) = parse_range(value) {
                    cfg.pools.push(p);
                } else {
                    tracing::warn!(line, "skipping dhcp-range that is not an IPv4 range");
                }
            }
            "dhcp-host" => {
                if let Some(pair) = parse_host(value) {
                    cfg.static_hosts.push(pair);
                }
            }
            "conf-dir" => dirs.push(value.to_owned()),
            _ => {}
        }
    }
    dirs
}

fn conf_dir_files(base: &Path, spec: &str) -> Result<Vec<PathBuf>, ConfigReadError> {
    let mut parts = spec.split(',');
    let dir = base.join(parts.next().unwrap_or_default().trim());
    let filters: Vec<String> = parts.map(|p| p.trim().to_owned()).filter(|p| !p.is_empty()).collect();
    let entries = std::fs::read_dir(&dir).map_err(|source| ConfigReadError::Io { path: dir.clone(), source })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if name.ends_with('~') || name.starts_with('.') || (name.starts_with('#') && name.ends_with('#')) {
                return false;
            }
            filters.is_empty()
                || filters.iter().any(|f| match f.strip_prefix('*') {
                    Some(ext) => name.ends_with(ext),
                    None => name == f,
                })
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Reads the main configuration and its `conf-dir` files. Relative paths are
/// resolved against the main file's directory.
pub fn read_config(path: &Path) -> Result<DnsmasqConfig, ConfigReadError> {
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigReadError::Io { path: path.into(), source })?;
    let mut cfg = DnsmasqConfig::default();
    for dir in apply_config_text(&text, &base, &mut cfg) {
        for file in conf_dir_files(&base, &dir)? {
            match std::fs::read_to_string(&file) {
                Ok(t) => {
                    apply_config_text(&t, &base, &mut cfg);
                }
                Err(e) => tracing::warn!(file = %file.display(), error = %e, "skipping unreadable conf-dir file"),
            }
        }
    }
    if cfg.lease_file.is_none() {
        return Err(ConfigReadError::NoLeaseFile(path.into()));
    }
    Ok(cfg)
}

/// The result of parsing a lease file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedLeases {
    /// IPv4 leases in file order.
    pub leases: Vec<Lease>,
    /// Lines that are not leases (too few fields, bad expiry, MAC or address).
    pub invalid_lines: usize,
}

/// A lease file whose content cannot be used; the caller keeps its snapshot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseParseError {
    /// Not UTF-8.
    #[error("lease file is not UTF-8 text")]
    NotText,
    /// Lines, but not one lease among them.
    #[error("lease file has {0} invalid line(s) and no valid lease")]
    Garbled(usize),
}

/// Parses lease file content. Blank, `#` and `duid` lines are skipped; IPv6
/// leases are skipped; other unusable lines are counted as invalid. Content
/// with invalid lines and no lease at all is refused as garbled (a
/// half-written or foreign file must not empty the snapshot).
pub fn parse_leases(bytes: &[u8], config: &DnsmasqConfig) -> Result<ParsedLeases, LeaseParseError> {
    let text = std::str::from_utf8(bytes).map_err(|_| LeaseParseError::NotText)?;
    let mut leases = Vec::new();
    let mut invalid = 0;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with("duid ") {
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 4 {
            tracing::warn!(line, "skipping lease line with fewer than 4 fields");
            invalid += 1;
            continue;
        }
        let (Ok(expiry), Some(mac)) = (f[0].parse::<i64>(), normalise_mac(f[1])) else {
            tracing::warn!(line, "skipping lease line with a bad expiry or MAC");
            invalid += 1;
            continue;
        };
        let ip = match f[2].parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(ip)) => ip,
            Ok(std::net::IpAddr::V6(_)) => continue,
            Err(_) => {
                tracing::warn!(line, "skipping lease line with a bad address");
                invalid += 1;
                continue;
            }
        };
        let star = |s: Option<&&str>| s.filter(|v| **v != "*").map(|v| (*v).to_owned());
        let is_static = config.static_hosts.iter().any(|(m, i)| *m == mac && *i == ip);
        leases.push(Lease {
            expiry,
            mac_address: mac,
            ip_address: ip,
            hostname: star(f.get(3)),
            client_id: star(f.get(4)),
            is_static,
            pool_name: config.pools.iter().find(|p| p.contains(ip)).map(|p| p.pool_name.clone()),
        });
    }
    if leases.is_empty() && invalid > 0 {
        return Err(LeaseParseError::Garbled(invalid));
    }
    Ok(ParsedLeases { leases, invalid_lines: invalid })
}

/// `GET /api/dhcp/pools/usage` entry: the pool plus active leases in range.
pub fn pool_usage(pool: &Pool, leases: &[Lease], now: i64) -> Value {
    let used = leases.iter().filter(|l| pool.contains(l.ip_address) && l.is_active(now)).count() as u64;
    let pct = if pool.total_addresses == 0 { 0.0 } else { used as f64 * 100.0 / pool.total_addresses as f64 };
    let mut v = json!(pool);
    v["used_addresses"] = json!(used);
    v["available_addresses"] = json!(pool.total_addresses.saturating_sub(used));
    v["usage_percentage"] = json!((pct * 100.0).round() / 100.0);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> DnsmasqConfig {
        let mut c = DnsmasqConfig::default();
        let text = "# demo\ndhcp-leasefile=leases\ndhcp-range=set:lan,192.168.1.100,192.168.1.199,255.255.255.0,12h\n\
                    dhcp-range=10.0.0.10,10.0.0.20,infinite\ndhcp-host=AA-BB-CC-DD-EE-01,192.168.1.10,printer\n\
                    conf-dir=/etc/dnsmasq.d,*.conf\n";
        let dirs = apply_config_text(text, Path::new("/data"), &mut c);
        assert_eq!(dirs, vec!["/etc/dnsmasq.d,*.conf"]);
        c
    }

    #[test]
    fn config_pools_static_hosts_and_relative_lease_file() {
        let c = cfg();
        assert_eq!(c.lease_file.as_deref(), Some(Path::new("/data/leases")));
        assert_eq!(c.pools.len(), 2);
        assert_eq!(c.pools[0].pool_name, "lan");
        assert_eq!(c.pools[0].lease_duration, Some(43_200));
        assert_eq!(c.pools[0].total_addresses, 100);
        assert_eq!(c.pools[1].pool_name, "default");
        assert_eq!(c.pools[1].lease_duration, None);
        assert_eq!(c.static_hosts, vec![("aa:bb:cc:dd:ee:01".to_owned(), Ipv4Addr::new(192, 168, 1, 10))]);
    }

    #[test]
    fn lease_lines_star_is_null_ipv6_and_duid_skipped_mac_normalised() {
        let text = b"duid 00:01:00:01\n1755770757 28:00:AF:C8:47:2B 192.168.1.127 IDH10018 01:28:00:af:c8:47:2b\n\
                     0 aa:bb:cc:dd:ee:01 192.168.1.10 * *\n1755770757 28:00:af:c8:47:2c fe80::1 host6\nbad line\n";
        let p = parse_leases(text, &cfg()).unwrap();
        assert_eq!(p.invalid_lines, 1);
        assert_eq!(p.leases.len(), 2);
        let a = &p.leases[0];
        assert_eq!(
            (a.mac_address.as_str(), a.pool_name.as_deref(), a.is_static),
            ("28:00:af:c8:47:2b", Some("lan"), false)
        );
        let b = &p.leases[1];
        assert_eq!((b.hostname.as_deref(), b.client_id.as_deref(), b.is_static), (None, None, true));
        assert!(b.is_active(i64::MAX), "expiry 0 is infinite");
        assert!(!a.is_active(1_755_770_757) && a.is_active(1_755_770_756));
        let j = a.to_json(0);
        assert_eq!(j["lease_time"], "2025-08-21T10:05:57.000000Z");
        assert_eq!(b.to_json(0)["lease_time"], Value::Null);
    }

    #[test]
    fn garbled_or_binary_content_is_refused_but_empty_content_is_no_leases() {
        assert_eq!(parse_leases(b"\xff\xfe\x00", &cfg()), Err(LeaseParseError::NotText));
        assert_eq!(parse_leases(b"garbage\nmore garbage here\n", &cfg()), Err(LeaseParseError::Garbled(2)));
        assert_eq!(parse_leases(b"", &cfg()).unwrap().leases.len(), 0);
    }

    #[test]
    fn pool_usage_counts_active_leases_in_range() {
        let c = cfg();
        let p =
            parse_leases(b"0 aa:bb:cc:dd:ee:02 192.168.1.100 a\n5 aa:bb:cc:dd:ee:03 192.168.1.101 b\n", &c).unwrap();
        let u = pool_usage(&c.pools[0], &p.leases, 10);
        assert_eq!((u["used_addresses"].as_u64(), u["available_addresses"].as_u64()), (Some(1), Some(99)));
        assert_eq!(u["usage_percentage"], 1.0);
    }

    #[test]
    fn mac_normalisation_needs_twelve_hex_digits() {
        assert_eq!(normalise_mac("AABBCCDDEEFF").as_deref(), Some("aa:bb:cc:dd:ee:ff"));
        assert_eq!(normalise_mac("aa:bb:cc"), None);
        assert_eq!(normalise_mac("zz:bb:cc:dd:ee:ff"), None);
    }
}
