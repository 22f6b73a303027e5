//! Choosing our lease among those in etcd, as flanneld does, with its
//! gaps closed: the lease whose PublicIP is ours (if it fits the
//! configuration; one that does not is deleted), else the subnet our last
//! run had (subnet.env) if it is free and fits, else one picked at random
//! among the first 100 free subnets of the range (each family on its own).
//! Unlike flanneld, a lease of the other shape (IPv4-only among dual-stack
//! ones) never crashes the choice, and a subnet counts as taken when any
//! lease overlaps it in either family.

use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::{IpNetwork, Ipv6Network};

use super::codec::{Attrs, SubnetKey};
use crate::config::SubnetRange;
use crate::family::PerFamily;
use crate::lease::peers::overlaps;

/// How many free subnets flanneld gathers before it picks one.
const CANDIDATES: usize = 100;

/// A lease as read from etcd.
#[derive(Debug, Clone, PartialEq)]
pub struct Existing {
    pub key: SubnetKey,
    /// None when the value could not be read.
    pub attrs: Option<Attrs>,
    /// The etcd lease it is attached to; 0 for a reservation (no TTL).
    pub lease: i64,
}

/// What to take.
#[derive(Debug, Clone, PartialEq)]
pub enum Choice {
    /// The lease that is ours already (its etcd lease: 0 keeps it a
    /// reservation).
    Reuse {
        key: SubnetKey,
        lease: i64,
        attrs: Attrs,
    },
    /// A free subnet, to create only if its key does not exist yet.
    Create(SubnetKey),
}

/// The plan: a lease of ours to delete first (it no longer fits the
/// configuration), then the choice.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub delete: Option<SubnetKey>,
    pub choice: Choice,
}

fn u(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn fits(net: IpNetwork, r: &SubnetRange) -> bool {
    net.prefix() == r.len && u(net.network()) >= u(r.min) && u(net.network()) <= u(r.max)
}

fn key_fits(key: &SubnetKey, ranges: &PerFamily<Option<SubnetRange>>) -> bool {
    let v4 = ranges
        .v4
        .as_ref()
        .is_some_and(|r| fits(IpNetwork::V4(key.v4), r));
    let v6 = match (&ranges.v6, key.v6) {
        (None, None) => true,
        (Some(r), Some(n)) => fits(IpNetwork::V6(n), r),
        _ => false,
    };
    v4 && v6
}

fn taken(existing: &[Existing], net: IpNetwork) -> bool {
    existing.iter().any(|e| {
        let theirs = match net {
            IpNetwork::V4(_) => Some(IpNetwork::V4(e.key.v4)),
            IpNetwork::V6(_) => e.key.v6.map(IpNetwork::V6),
        };
        theirs.is_some_and(|t| overlaps(&t, &net))
    })
}

/// The first free subnets of a range, up to [`CANDIDATES`].
fn free(existing: &[Existing], r: &SubnetRange) -> Vec<IpNetwork> {
    let v6 = r.min.is_ipv6();
    let bits = if v6 { 128 } else { 32 };
    let size = 1u128 << (bits - u32::from(r.len));
    let mut out = Vec::new();
    let mut at = u(r.min);
    while at <= u(r.max) && out.len() < CANDIDATES {
        let ip = if v6 {
            IpAddr::V6(at.into())
        } else {
            IpAddr::V4(Ipv4Addr::from(u32::try_from(at).unwrap_or(u32::MAX)))
        };
        if let Ok(net) = IpNetwork::new(ip, r.len)
            && !taken(existing, net)
        {
            out.push(net);
        }
        match at.checked_add(size) {
            Some(n) => at = n,
            None => break,
        }
    }
    out
}

/// Chooses our lease for `public_ip` (IPv4, as flanneld matches it);
/// `pick(n)` picks one of `n` candidates (at random, outside tests). Err:
/// the range is full.
pub fn choose(
    existing: &[Existing],
    ranges: &PerFamily<Option<SubnetRange>>,
    public_ip: Ipv4Addr,
    previous: &PerFamily<Option<IpNetwork>>,
    mut pick: impl FnMut(usize) -> usize,
) -> Result<Plan, String> {
    let mut delete = None;
    if let Some(e) = existing
        .iter()
        .find(|e| e.attrs.as_ref().and_then(|a| a.public_ip) == Some(public_ip))
    {
        if key_fits(&e.key, ranges) {
            return Ok(Plan {
                delete: None,
                choice: Choice::Reuse {
                    key: e.key,
                    lease: e.lease,
                    attrs: e.attrs.clone().unwrap_or_default(),
                },
            });
        }
        delete = Some(e.key);
    }
    let others: Vec<Existing> = existing
        .iter()
        .filter(|e| Some(e.key) != delete)
        .cloned()
        .collect();
    if let Some(IpNetwork::V4(v4)) = previous.v4 {
        let v6 = match previous.v6 {
            Some(IpNetwork::V6(n)) if ranges.v6.is_some() => Some(n),
            _ => None,
        };
        let key = SubnetKey { v4, v6 };
        let free = !taken(&others, IpNetwork::V4(v4))
            && v6.is_none_or(|n| !taken(&others, IpNetwork::V6(n)));
        if key_fits(&key, ranges) && free {
            return Ok(Plan {
                delete,
                choice: Choice::Create(key),
            });
        }
    }
    let r4 = ranges.v4.as_ref().ok_or("no IPv4 range")?;
    let c4 = free(&others, r4);
    if c4.is_empty() {
        return Err(format!(
            "out of subnets: every /{} from {} to {} is leased",
            r4.len, r4.min, r4.max
        ));
    }
    let IpNetwork::V4(v4) = c4[pick(c4.len()).min(c4.len() - 1)] else {
        return Err("an IPv4 range gave an IPv6 subnet".into());
    };
    let v6: Option<Ipv6Network> = match &ranges.v6 {
        None => None,
        Some(r6) => {
            let c6 = free(&others, r6);
            if c6.is_empty() {
                return Err(format!(
                    "out of IPv6 subnets: every /{} from {} to {} is leased",
                    r6.len, r6.min, r6.max
                ));
            }
            match c6[pick(c6.len()).min(c6.len() - 1)] {
                IpNetwork::V6(n) => Some(n),
                IpNetwork::V4(_) => None,
            }
        }
    };
    Ok(Plan {
        delete,
        choice: Choice::Create(SubnetKey { v4, v6 }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range4() -> PerFamily<Option<SubnetRange>> {
        PerFamily {
            v4: Some(SubnetRange {
                len: 24,
                min: "10.5.1.0".parse().unwrap(),
                max: "10.5.3.0".parse().unwrap(),
            }),
            v6: None,
        }
    }

    fn lease(subnet: &str, ip: &str) -> Existing {
        Existing {
            key: SubnetKey {
                v4: subnet.parse().unwrap(),
                v6: None,
            },
            attrs: Some(Attrs {
                public_ip: Some(ip.parse().unwrap()),
                backend_type: "vxlan".into(),
                ..Attrs::default()
            }),
            lease: 7,
        }
    }

    fn created(p: Plan) -> String {
        match p.choice {
            Choice::Create(k) => k.text(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ours_is_reused_else_the_previous_else_a_free_one() {
        let none = PerFamily::default();
        let ip: Ipv4Addr = "198.51.100.11".parse().unwrap();
        let existing = [
            lease("10.5.2.0/24", "198.51.100.11"),
            lease("10.5.1.0/24", "198.51.100.12"),
        ];
        let p = choose(&existing, &range4(), ip, &none, |_| 0).unwrap();
        assert!(matches!(p.choice, Choice::Reuse { lease: 7, .. }), "{p:?}");

        let prev = PerFamily {
            v4: Some("10.5.3.0/24".parse().unwrap()),
            v6: None,
        };
        let p = choose(&existing[1..], &range4(), ip, &prev, |_| 0).unwrap();
        assert_eq!(created(p), "10.5.3.0-24");
        // The previous subnet taken: a free one, picked among the free.
        let taken_prev = PerFamily {
            v4: Some("10.5.1.0/24".parse().unwrap()),
            v6: None,
        };
        let mut offered = 0;
        let p = choose(&existing[1..], &range4(), ip, &taken_prev, |n| {
            offered = n;
            n - 1
        })
        .unwrap();
        assert_eq!(offered, 2);
        assert_eq!(created(p), "10.5.3.0-24");
    }

    #[test]
    fn a_lease_that_no_longer_fits_is_deleted_and_a_full_range_said() {
        let ip: Ipv4Addr = "198.51.100.11".parse().unwrap();
        let existing = [lease("10.5.9.0/24", "198.51.100.11")];
        let p = choose(&existing, &range4(), ip, &PerFamily::default(), |_| 0).unwrap();
        assert_eq!(p.delete.map(|k| k.text()).as_deref(), Some("10.5.9.0-24"));
        assert_eq!(created(p), "10.5.1.0-24");
        let full = [
            lease("10.5.1.0/24", "198.51.100.1"),
            lease("10.5.2.0/24", "198.51.100.2"),
            lease("10.5.3.0/24", "198.51.100.3"),
        ];
        assert_eq!(
            choose(&full, &range4(), ip, &PerFamily::default(), |_| 0).unwrap_err(),
            "out of subnets: every /24 from 10.5.1.0 to 10.5.3.0 is leased"
        );
    }

    /// flanneld crashes here (an IPv4-only lease among dual-stack ones).
    #[test]
    fn dual_stack_beside_an_ipv4_only_lease() {
        let mut ranges = range4();
        ranges.v6 = Some(SubnetRange {
            len: 64,
            min: "fd00:0:0:1::".parse().unwrap(),
            max: "fd00:0:0:3::".parse().unwrap(),
        });
        let mut dual = lease("10.5.2.0/24", "198.51.100.2");
        dual.key.v6 = Some("fd00:0:0:1::/64".parse().unwrap());
        let existing = [lease("10.5.1.0/24", "198.51.100.1"), dual];
        let p = choose(
            &existing,
            &ranges,
            "198.51.100.9".parse().unwrap(),
            &PerFamily::default(),
            |_| 0,
        )
        .unwrap();
        assert_eq!(created(p), "10.5.3.0-24&fd00:0:0:2::-64");
        // An IPv4-only lease of ours does not fit a dual-stack range.
        let mine = [lease("10.5.1.0/24", "198.51.100.9")];
        let p = choose(
            &mine,
            &ranges,
            "198.51.100.9".parse().unwrap(),
            &PerFamily::default(),
            |_| 0,
        )
        .unwrap();
        assert!(p.delete.is_some());
    }
}
