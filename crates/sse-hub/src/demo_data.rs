//! The demo data directory: a sample `dnsmasq.conf` (two pools, one static
//! host, `dhcp-leasefile=dnsmasq.leases`) and a lease file with a few
//! leases, created only when absent so a user's edits are never overwritten.

use std::path::Path;

/// The sample configuration.
pub const DEMO_CONFIG: &str = "\
# sse-hub demo dnsmasq configuration (only the lines sse-hub reads).
# Relative paths are resolved against this file's directory.
dhcp-leasefile=dnsmasq.leases
dhcp-range=set:lan,192.168.1.100,192.168.1.199,255.255.255.0,12h
dhcp-range=set:iot,10.0.10.10,10.0.10.250,255.255.255.0,1h
dhcp-host=aa:bb:cc:00:00:01,192.168.1.10,printer
";

/// Demo leases relative to `now` (epoch seconds).
pub fn demo_leases(now: i64) -> String {
    format!(
        "# <expiry epoch seconds> <mac> <ipv4> <hostname or *> [<client-id or *>]; expiry 0 = infinite\n\
         0 aa:bb:cc:00:00:01 192.168.1.10 printer *\n\
         {} 02:00:00:00:01:01 192.168.1.101 laptop 01:02:00:00:00:01:01\n\
         {} 02:00:00:00:01:02 192.168.1.102 phone *\n\
         {} 02:00:00:00:02:01 10.0.10.11 sensor-kitchen *\n",
        now + 8 * 3600,
        now + 3 * 3600,
        now + 1800
    )
}

/// Creates `dir` and the two files when absent; returns which were created.
pub fn ensure(dir: &Path, now: i64) -> std::io::Result<Vec<&'static str>> {
    std::fs::create_dir_all(dir)?;
    let mut created = Vec::new();
    let conf = dir.join("dnsmasq.conf");
    if !conf.exists() {
        std::fs::write(&conf, DEMO_CONFIG)?;
        created.push("dnsmasq.conf");
    }
    let leases = dir.join("dnsmasq.leases");
    if !leases.exists() {
        std::fs::write(&leases, demo_leases(now))?;
        created.push("dnsmasq.leases");
    }
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dnsmasq::{apply_config_text, parse_leases};

    #[test]
    fn demo_files_parse_and_every_lease_is_active_and_in_a_pool() {
        let mut cfg = crate::dnsmasq::DnsmasqConfig::default();
        apply_config_text(DEMO_CONFIG, Path::new("/d"), &mut cfg);
        assert_eq!(cfg.lease_file.as_deref(), Some(Path::new("/d/dnsmasq.leases")));
        let p = parse_leases(demo_leases(1000).as_bytes(), &cfg).unwrap();
        assert_eq!((p.leases.len(), p.invalid_lines), (4, 0));
        use sse_backend::change::Record;
        assert!(p.leases.iter().all(|l| l.is_active(1000)));
        assert!(p.leases[0].is_static);
        assert!(p.leases[1..].iter().all(|l| l.pool_name.is_some()));
    }
}
