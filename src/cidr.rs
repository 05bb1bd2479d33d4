//! IP networks in CIDR notation (`10.42.0.0/16`, `fc00::/7`): parsed once, compared exactly.
//!
//! The tenant boundary is written in them: the ranges an instance pod may never reach (private,
//! link-local, loopback, CGNAT, the cluster's pod and service ranges), the cluster ranges an
//! operator configures, and the extra egress a catalog app declares.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// A network: its first address (host bits zero) and prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// Why a text is not a CIDR, for a message a person can act on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("{0:?} is not in CIDR notation (address/prefix, e.g. 10.42.0.0/16 or fd00::/8)")]
    Syntax(String),
    #[error("{0:?}: the prefix length must be 0-32 for IPv4 and 0-128 for IPv6")]
    Prefix(String),
    #[error("{0:?} has host bits set: the network is {1}")]
    HostBits(String, Cidr),
}

impl Cidr {
    /// `addr/prefix`; `None` when the prefix is too long or `addr` has host bits set.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Cidr> {
        let cidr = Cidr::truncated(addr, prefix)?;
        (cidr.addr == addr).then_some(cidr)
    }

    fn truncated(addr: IpAddr, prefix: u8) -> Option<Cidr> {
        let addr = match addr {
            IpAddr::V4(a) if prefix <= 32 => {
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask32(prefix)))
            }
            IpAddr::V6(a) if prefix <= 128 => {
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask128(prefix)))
            }
            _ => return None,
        };
        Some(Cidr { addr, prefix })
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// Whether `ip` lies in this network (an IPv4 address is never in an IPv6 network).
    pub fn contains(&self, ip: IpAddr) -> bool {
        Cidr::truncated(ip, self.prefix).is_some_and(|c| c.addr == self.addr)
    }

    /// Whether every address of `other` lies in this network.
    pub fn covers(&self, other: &Cidr) -> bool {
        other.prefix >= self.prefix && self.contains(other.addr)
    }
}

fn mask32(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask128(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let syntax = || CidrError::Syntax(s.to_string());
        let (addr, prefix) = s.trim().split_once('/').ok_or_else(syntax)?;
        let addr: IpAddr = addr.parse().map_err(|_| syntax())?;
        if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(syntax());
        }
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| CidrError::Prefix(s.to_string()))?;
        let network =
            Cidr::truncated(addr, prefix).ok_or_else(|| CidrError::Prefix(s.to_string()))?;
        if network.addr != addr {
            return Err(CidrError::HostBits(s.to_string(), network));
        }
        Ok(network)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// IPv4 ranges that are not the public internet: "this network", private (RFC 1918), CGNAT
/// (RFC 6598), loopback, link-local (the cloud metadata address 169.254.169.254 among them),
/// IETF protocol assignments, benchmarking, multicast and reserved.
pub const NON_PUBLIC_V4: [&str; 11] = [
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/4",
    "240.0.0.0/4",
];

/// IPv6 ranges that are not the public internet, or that lead back into IPv4 ranges: the
/// unspecified and loopback addresses, NAT64 (it can carry a private IPv4 address),
/// unique-local (private), link-local and multicast. IPv4-mapped addresses (`::ffff:a.b.c.d`)
/// are not listed: the kernel sends those as IPv4 packets, which the IPv4 list covers, and the
/// API server refuses them in a NetworkPolicy.
pub const NON_PUBLIC_V6: [&str; 6] = [
    "::/128",
    "::1/128",
    "64:ff9b::/96",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
];

/// [`NON_PUBLIC_V4`] and [`NON_PUBLIC_V6`], parsed.
pub fn non_public() -> Vec<Cidr> {
    NON_PUBLIC_V4
        .iter()
        .chain(NON_PUBLIC_V6.iter())
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// The smallest list of networks covering the same addresses as `nets` where each network is
/// either kept whole or dropped because another one covers it; sorted.
pub fn without_covered(mut nets: Vec<Cidr>) -> Vec<Cidr> {
    nets.sort_by_key(|c| (c.prefix, c.addr));
    let mut kept: Vec<Cidr> = Vec::new();
    for net in nets {
        if !kept.iter().any(|k| k.covers(&net)) {
            kept.push(net);
        }
    }
    kept.sort();
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        match s.parse() {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        }
    }

    fn ip(s: &str) -> IpAddr {
        match s.parse() {
            Ok(ip) => ip,
            Err(e) => panic!("{s}: {e}"),
        }
    }

    #[test]
    fn parses_and_prints_networks() {
        assert_eq!(cidr("10.42.0.0/16").to_string(), "10.42.0.0/16");
        assert_eq!(cidr("0.0.0.0/0").to_string(), "0.0.0.0/0");
        assert_eq!(cidr("fd00::/8").to_string(), "fd00::/8");
        assert_eq!(cidr("::/0").to_string(), "::/0");
        assert_eq!(cidr("1.2.3.4/32").to_string(), "1.2.3.4/32");
    }

    #[test]
    fn refuses_what_is_not_a_network_with_the_reason() {
        for bad in [
            "",
            "10.0.0.0",
            "10.0.0.0/",
            "10.0.0/8",
            "x/8",
            "10.0.0.0/-1",
            "10.0.0.0/ 8",
        ] {
            assert!(
                matches!(bad.parse::<Cidr>(), Err(CidrError::Syntax(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            "10.0.0.0/33".parse::<Cidr>(),
            Err(CidrError::Prefix(_))
        ));
        assert!(matches!(
            "::/129".parse::<Cidr>(),
            Err(CidrError::Prefix(_))
        ));
        assert!(matches!(
            "10.0.0.0/999".parse::<Cidr>(),
            Err(CidrError::Prefix(_))
        ));
        let e = "10.42.1.0/16".parse::<Cidr>().err().map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("\"10.42.1.0/16\" has host bits set: the network is 10.42.0.0/16")
        );
    }

    #[test]
    fn containment_is_exact_at_the_edges() {
        let net = cidr("172.16.0.0/12");
        assert!(net.contains(ip("172.16.0.0")));
        assert!(net.contains(ip("172.31.255.255")));
        assert!(!net.contains(ip("172.32.0.0")));
        assert!(!net.contains(ip("172.15.255.255")));
        assert!(!net.contains(ip("::ffff:172.16.0.1")), "families never mix");
        assert!(cidr("0.0.0.0/0").contains(ip("8.8.8.8")));
        assert!(cidr("::/0").contains(ip("2001:db8::1")));
        assert!(cidr("10.0.0.0/8").covers(&cidr("10.42.0.0/16")));
        assert!(!cidr("10.42.0.0/16").covers(&cidr("10.0.0.0/8")));
    }

    #[test]
    fn the_non_public_ranges_cover_metadata_private_and_loopback_but_not_the_internet() {
        let blocked = non_public();
        assert!(
            blocked.iter().all(|c| match c.addr() {
                IpAddr::V6(a) => a.to_ipv4_mapped().is_none() || c.prefix() < 96,
                IpAddr::V4(_) => true,
            }),
            "no IPv4-mapped range: the API server refuses them in ipBlocks"
        );
        let is_blocked = |s: &str| blocked.iter().any(|c| c.contains(ip(s)));
        for s in [
            "169.254.169.254",
            "10.1.2.3",
            "172.20.0.1",
            "192.168.1.1",
            "127.0.0.1",
            "100.100.100.200",
            "::1",
            "fe80::1",
            "fd00:ec2::254",
            "64:ff9b::a00:1",
        ] {
            assert!(is_blocked(s), "{s} must be blocked");
        }
        for s in ["1.1.1.1", "8.8.8.8", "140.82.112.3", "2606:4700:4700::1111"] {
            assert!(!is_blocked(s), "{s} is public");
        }
    }

    #[test]
    fn covered_networks_are_dropped() {
        let nets = vec![
            cidr("10.42.0.0/16"),
            cidr("10.0.0.0/8"),
            cidr("192.168.0.0/16"),
        ];
        assert_eq!(
            without_covered(nets),
            vec![cidr("10.0.0.0/8"), cidr("192.168.0.0/16")]
        );
    }
}
