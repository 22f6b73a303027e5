//! Address families: one type for "IPv4 or IPv6" and one for "a value per
//! family", so that no code indexes `[_; 2]` arrays with `i == 1` or repeats
//! itself for v4 and v6.

use std::net::IpAddr;

use ipnetwork::IpNetwork;

/// IPv4 or IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// Both, IPv4 first (the order flannel writes and logs them in).
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    /// The family of an address.
    pub fn of(ip: &IpAddr) -> Family {
        if ip.is_ipv6() { Family::V6 } else { Family::V4 }
    }

    /// The family of a network.
    pub fn of_net(net: &IpNetwork) -> Family {
        Family::of(&net.ip())
    }

    pub fn is_v6(self) -> bool {
        self == Family::V6
    }

    /// 4 or 6, for messages ("IPv4").
    pub fn number(self) -> u8 {
        match self {
            Family::V4 => 4,
            Family::V6 => 6,
        }
    }

    /// The metric and log label ("ipv4", "ipv6").
    pub fn label(self) -> &'static str {
        match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        }
    }

    /// Whether `ip` is of this family.
    pub fn holds(self, ip: &IpAddr) -> bool {
        Family::of(ip) == self
    }
}

/// One value per address family.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PerFamily<T> {
    pub v4: T,
    pub v6: T,
}

impl<T> PerFamily<T> {
    /// The same value computed for each family.
    pub fn from_fn(mut f: impl FnMut(Family) -> T) -> PerFamily<T> {
        PerFamily {
            v4: f(Family::V4),
            v6: f(Family::V6),
        }
    }

    pub fn get(&self, family: Family) -> &T {
        match family {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        }
    }

    pub fn get_mut(&mut self, family: Family) -> &mut T {
        match family {
            Family::V4 => &mut self.v4,
            Family::V6 => &mut self.v6,
        }
    }

    /// Each family with its value, IPv4 first.
    pub fn iter(&self) -> impl Iterator<Item = (Family, &T)> {
        [(Family::V4, &self.v4), (Family::V6, &self.v6)].into_iter()
    }

    pub fn map<'a, U>(&'a self, mut f: impl FnMut(Family, &'a T) -> U) -> PerFamily<U> {
        PerFamily {
            v4: f(Family::V4, &self.v4),
            v6: f(Family::V6, &self.v6),
        }
    }
}

impl<T> PerFamily<Option<T>> {
    /// The families that have a value, with it, IPv4 first.
    pub fn present(&self) -> impl Iterator<Item = (Family, &T)> {
        self.iter().filter_map(|(f, v)| v.as_ref().map(|v| (f, v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_told_by_their_addresses() {
        assert_eq!(Family::of(&"10.0.0.1".parse().unwrap()), Family::V4);
        assert_eq!(Family::of(&"fd00::1".parse().unwrap()), Family::V6);
        assert_eq!(
            Family::of_net(&"fd00::/64".parse().unwrap()).label(),
            "ipv6"
        );
        assert!(Family::V4.holds(&"198.51.100.1".parse().unwrap()));
        assert!(!Family::V6.holds(&"198.51.100.1".parse().unwrap()));
    }

    #[test]
    fn per_family_values_come_back_in_order() {
        let mut p = PerFamily::from_fn(|f| (f == Family::V6).then_some(f.number()));
        assert_eq!(p.present().collect::<Vec<_>>(), vec![(Family::V6, &6)]);
        *p.get_mut(Family::V4) = Some(4);
        assert_eq!(
            p.present().map(|(f, _)| f).collect::<Vec<_>>(),
            Family::ALL.to_vec()
        );
        assert_eq!(p.map(|_, v| v.is_some()), PerFamily { v4: true, v6: true });
    }
}
