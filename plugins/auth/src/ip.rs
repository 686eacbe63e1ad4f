//! `type: ip`: allow and deny CIDR lists over the client's address (the connection's peer,
//! `source.address`).
//!
//! Deny wins over allow; with an allow list, an address outside it is denied; an address the
//! host does not give is denied. IPv4-mapped IPv6 addresses (`::ffff:192.0.2.1`) match IPv4
//! ranges, and the other way round.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use portico_plugin_sdk::{Error, Http, LocalResponse, Result, warn};
use serde::Deserialize;

use crate::Verdict;

/// `type: ip`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Only these ranges may pass (empty: every range not denied).
    #[serde(default)]
    allow: Vec<String>,
    /// These ranges never pass.
    #[serde(default)]
    deny: Vec<String>,
}

/// A CIDR range: an address and a prefix length; IPv4 as IPv4, never mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

/// The method, configured.
#[derive(Debug)]
pub struct Ip {
    allow: Vec<Cidr>,
    deny: Vec<Cidr>,
}

impl Ip {
    pub fn new(config: Config) -> Result<Ip> {
        if config.allow.is_empty() && config.deny.is_empty() {
            return Err(Error::config(
                "ip: give an allow list, a deny list, or both",
            ));
        }
        let parse = |list: &[String], key: &str| -> Result<Vec<Cidr>> {
            list.iter()
                .enumerate()
                .map(|(i, text)| {
                    let (addr, prefix) = Cidr::parts(text)
                        .map_err(|e| Error::config(format!("ip: {key}[{i}] ({text:?}): {e}")))?;
                    let cidr = Cidr {
                        network: mask(addr, prefix),
                        prefix,
                    };
                    if cidr.network != addr {
                        warn!("ip: {key}[{i}] ({text:?}) has bits past its prefix: read as {cidr}");
                    }
                    Ok(cidr)
                })
                .collect()
        };
        Ok(Ip {
            allow: parse(&config.allow, "allow")?,
            deny: parse(&config.deny, "deny")?,
        })
    }

    pub fn describe(&self) -> String {
        format!(
            "ip, {} allowed and {} denied ranges",
            self.allow.len(),
            self.deny.len()
        )
    }

    pub fn check<S>(&self, http: &mut Http<'_, S>) -> Result<Verdict> {
        let Some(client) = http.client_ip()? else {
            return Ok(forbidden("the client's address is unknown"));
        };
        Ok(match self.admits(client) {
            Ok(()) => Verdict::Allow,
            Err(why) => forbidden(&format!("{client} {why}")),
        })
    }

    /// Whether `client` may pass; `Err` says why not.
    pub fn admits(&self, client: IpAddr) -> Result<(), &'static str> {
        let client = canonical(client);
        if self.deny.iter().any(|c| c.contains(client)) {
            return Err("is in a denied range");
        }
        if !self.allow.is_empty() && !self.allow.iter().any(|c| c.contains(client)) {
            return Err("is in no allowed range");
        }
        Ok(())
    }
}

fn forbidden(why: &str) -> Verdict {
    Verdict::Deny(
        LocalResponse::new(403)
            .text("forbidden\n")
            .details(format!("ip: {why}")),
    )
}

/// An IPv4-mapped IPv6 address as the IPv4 address it carries.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

impl Cidr {
    /// `192.0.2.0/24`, `2001:db8::/32`, or a bare address (a range of one). Bits past the
    /// prefix are cleared; a range inside `::ffff:0:0/96` becomes the IPv4 range it maps.
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (addr, prefix) = Cidr::parts(text)?;
        Ok(Cidr {
            network: mask(addr, prefix),
            prefix,
        })
    }

    /// The address and prefix length as written (IPv4-mapped ranges already mapped).
    fn parts(text: &str) -> Result<(IpAddr, u8), String> {
        let text = text.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("the prefix length must be 0 to {max}"))?,
        };
        Ok(match addr {
            IpAddr::V6(v6) if prefix >= 96 => match v6.to_ipv4_mapped() {
                Some(v4) => (IpAddr::V4(v4), prefix - 96),
                None => (addr, prefix),
            },
            _ => (addr, prefix),
        })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                mask(ip, self.prefix) == self.network
            }
            _ => false,
        }
    }
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(v4) & bits))
        }
        IpAddr::V6(v6) => {
            let bits = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & bits))
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

#[cfg(test)]
mod tests;
