//! Virtual service addresses (VIPs): one per mesh name, from the configured range, stable for
//! as long as the name is in the mesh. Routing never depends on which VIP a name got (the
//! proxy routes by Host and port), so a VIP only has to be stable, unique and in the range.
//!
//! A name's first choice is a hash of the name, so the same mesh gets mostly the same VIPs
//! on every node and after a restart; a taken slot moves to the next free one.
use std::{
    collections::{BTreeSet, HashMap},
    hash::{Hash, Hasher},
    net::Ipv4Addr,
};

use ipnet::Ipv4Net;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the VIP range {range} is full ({size} addresses); widen dns.vip_cidr")]
pub struct RangeFull {
    pub range: Ipv4Net,
    pub size: u32,
}

/// The VIPs given out, by name.
#[derive(Debug)]
pub struct Vips {
    range: Ipv4Net,
    by_name: HashMap<String, Ipv4Addr>,
    taken: BTreeSet<Ipv4Addr>,
}

impl Vips {
    pub fn new(range: Ipv4Net) -> Self {
        Self {
            range: range.trunc(),
            by_name: HashMap::new(),
            taken: BTreeSet::new(),
        }
    }

    /// Usable addresses: the range less its network and broadcast addresses.
    fn size(&self) -> u32 {
        let host_bits = 32 - u32::from(self.range.prefix_len());
        (1u32 << host_bits.min(31)).saturating_sub(2)
    }

    /// The VIP of `name` (lower case), given out now if it has none.
    pub fn get_or_assign(&mut self, name: &str) -> Result<Ipv4Addr, RangeFull> {
        if let Some(vip) = self.by_name.get(name) {
            return Ok(*vip);
        }
        let size = self.size();
        if self.taken.len() as u64 >= u64::from(size) {
            return Err(RangeFull {
                range: self.range,
                size,
            });
        }
        let base = u32::from(self.range.network()) + 1;
        let start = slot_of(name) % size;
        // The loop ends: fewer than `size` slots are taken.
        let vip = (0..size)
            .map(|step| Ipv4Addr::from(base + (start + step) % size))
            .find(|vip| !self.taken.contains(vip))
            .ok_or(RangeFull {
                range: self.range,
                size,
            })?;
        self.taken.insert(vip);
        self.by_name.insert(name.to_owned(), vip);
        Ok(vip)
    }

    /// Forgets the VIPs of names no longer in the mesh; the others keep theirs.
    pub fn retain(&mut self, live: impl Fn(&str) -> bool) {
        let taken = &mut self.taken;
        self.by_name.retain(|name, vip| {
            let keep = live(name);
            if !keep {
                taken.remove(vip);
            }
            keep
        });
    }
}

/// A hash of the name that does not change between runs or builds (FNV-1a).
fn slot_of(name: &str) -> u32 {
    struct Fnv(u64);
    impl Hasher for Fnv {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            for byte in bytes {
                self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(0x100_0000_01b3);
            }
        }
    }
    let mut hasher = Fnv(0xcbf2_9ce4_8422_2325);
    name.hash(&mut hasher);
    (hasher.finish() ^ (hasher.finish() >> 32)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_keeps_its_vip_and_names_do_not_share() {
        let mut vips = Vips::new("240.240.0.0/16".parse().unwrap());
        let a = vips.get_or_assign("a.m.local").unwrap();
        let b = vips.get_or_assign("b.m.local").unwrap();
        assert_ne!(a, b);
        assert_eq!(vips.get_or_assign("a.m.local").unwrap(), a);
        assert!(vips.range.contains(&a) && vips.range.contains(&b));
        // Another agent (or this one after a restart) gives the same first choice.
        let mut other = Vips::new("240.240.0.0/16".parse().unwrap());
        assert_eq!(other.get_or_assign("a.m.local").unwrap(), a);
    }

    #[test]
    fn a_full_range_is_an_error_until_names_go() {
        let mut vips = Vips::new("240.240.0.0/30".parse().unwrap());
        let first = vips.get_or_assign("one").unwrap();
        let second = vips.get_or_assign("two").unwrap();
        for vip in [first, second] {
            assert_ne!(vip, Ipv4Addr::new(240, 240, 0, 0), "network address");
            assert_ne!(vip, Ipv4Addr::new(240, 240, 0, 3), "broadcast address");
        }
        let error = vips.get_or_assign("three").unwrap_err();
        assert_eq!(
            error.to_string(),
            "the VIP range 240.240.0.0/30 is full (2 addresses); widen dns.vip_cidr"
        );
        vips.retain(|name| name != "one");
        assert_eq!(vips.by_name.len(), 1);
        assert_eq!(vips.get_or_assign("three").unwrap(), first);
        assert_eq!(vips.get_or_assign("two").unwrap(), second);
    }
}
