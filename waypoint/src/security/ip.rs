//! Addresses in policies: an IP prefix as Istio writes one, and a field of prefixes
//! (`ipBlocks`/`notIpBlocks` and their kin) matched against an address the request may
//! not have.

use crate::route::{RouteError, err};

/// An IP prefix as Istio writes one: an address, or `address/length`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Cidr {
    net: std::net::IpAddr,
    len: u8,
}

impl Cidr {
    fn parse(s: &str) -> Option<Cidr> {
        let (a, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l.parse::<u8>().ok()?)),
            None => (s, None),
        };
        let net: std::net::IpAddr = a.parse().ok()?;
        let width = if net.is_ipv4() { 32 } else { 128 };
        let len = len.unwrap_or(width);
        (len <= width).then_some(Cidr { net, len })
    }

    fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        // An IPv4 client seen as `::ffff:a.b.c.d` is that IPv4 client.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let bits = |n: u32, width: u32| {
            if n == 0 {
                0u128
            } else {
                (!0u128 << (width - n)) & (!0u128 >> (128 - width))
            }
        };
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(i)) => {
                let m = bits(u32::from(self.len), 32);
                (u128::from(u32::from(n)) & m) == (u128::from(u32::from(i)) & m)
            }
            (IpAddr::V6(n), IpAddr::V6(i)) => {
                let m = bits(u32::from(self.len), 128);
                (u128::from(n) & m) == (u128::from(i) & m)
            }
            _ => false,
        }
    }
}

/// [`Field`] for addresses: prefixes, and an address that may be unknown (then `values`
/// never hold, and `not_values` alone do, as for other absent attributes).
#[derive(Debug, Clone, Default)]
pub(super) struct IpField {
    values: Vec<Cidr>,
    not_values: Vec<Cidr>,
}

impl IpField {
    /// `values` and `not_values` of field `at` (`…ipBlocks`, `…notIpBlocks`).
    pub(super) fn new(
        values: &[String],
        not_values: &[String],
        at: [&str; 2],
    ) -> Result<IpField, RouteError> {
        let parse = |list: &[String], at: &str| {
            list.iter()
                .enumerate()
                .map(|(i, v)| {
                    Cidr::parse(v).ok_or_else(|| {
                        err(
                            format!("{at}[{i}]"),
                            format!("{v:?}: an address (1.2.3.4) or a CIDR (1.2.3.0/24)"),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(IpField {
            values: parse(values, at[0])?,
            not_values: parse(not_values, at[1])?,
        })
    }

    pub(super) fn holds(&self, ip: Option<std::net::IpAddr>) -> bool {
        match ip {
            None => self.values.is_empty(),
            Some(ip) => {
                (self.values.is_empty() || self.values.iter().any(|c| c.contains(ip)))
                    && !self.not_values.iter().any(|c| c.contains(ip))
            }
        }
    }
}
