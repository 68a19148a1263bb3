//! Replacing the exclusion lists in the kernel maps as one step: either the new lists are in
//! both maps, or the previous ones are back (and the error says which). The kernel has no
//! transaction over map updates, so the update is planned from what the maps hold now,
//! checked against their capacity before anything changes, applied change by change with a
//! journal, and undone from that journal if one change fails.
//!
//! Loopback ([`ALWAYS_EXCLUDED`]) is never removed: a pod's loopback redirected to the node's
//! proxy would break every pod-local connection, so it stays excluded at every moment, even
//! while undoing a failed update.
use std::collections::BTreeSet;

use ipnet::Ipv4Net;

use super::RedirectError;
use crate::config::ALWAYS_EXCLUDED;

/// Why the exclusion maps do not hold the requested lists, and what they hold instead.
#[derive(Debug, thiserror::Error)]
pub enum ExclusionError {
    #[error(
        "eBPF map {map} would hold {count} entries but holds at most {max}; the exclusions \
         were left unchanged"
    )]
    TooMany {
        map: &'static str,
        count: usize,
        max: usize,
    },
    #[error("cannot read the current exclusions ({0}); the exclusions were left unchanged")]
    Read(Box<RedirectError>),
    #[error("{0}; the previous exclusions were restored")]
    Restored(Box<RedirectError>),
    #[error(
        "{failed}; restoring the previous exclusions failed too ({restore}): the maps hold a \
         mix of the previous and the new lists (127.0.0.0/8 stays excluded)"
    )]
    Partial {
        failed: Box<RedirectError>,
        restore: Box<RedirectError>,
    },
}

impl ExclusionError {
    /// Whether the maps still hold exactly the exclusions they held before the update.
    pub fn kept_previous(&self) -> bool {
        !matches!(self, Self::Partial { .. })
    }
}

/// One change to an exclusion map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Change {
    InsertCidr(Ipv4Net),
    RemoveCidr(Ipv4Net),
    InsertPort(u16),
    RemovePort(u16),
}

impl Change {
    fn undo(self) -> Self {
        match self {
            Self::InsertCidr(net) => Self::RemoveCidr(net),
            Self::RemoveCidr(net) => Self::InsertCidr(net),
            Self::InsertPort(port) => Self::RemovePort(port),
            Self::RemovePort(port) => Self::InsertPort(port),
        }
    }
}

/// The two exclusion maps, as the update sees them (the kernel's, or a test's stand-in).
pub(super) trait ExclusionMaps {
    /// Capacity of each map (max_entries).
    fn capacity(&self) -> usize;
    fn current_cidrs(&self) -> Result<BTreeSet<Ipv4Net>, RedirectError>;
    fn current_ports(&self) -> Result<BTreeSet<u16>, RedirectError>;
    fn apply(&mut self, change: Change) -> Result<(), RedirectError>;
}

/// Makes the maps hold `cidrs` (plus loopback) and `ports`, or leaves them as they were.
pub(super) fn replace(
    maps: &mut impl ExclusionMaps,
    cidrs: &[Ipv4Net],
    ports: &[u16],
) -> Result<(), ExclusionError> {
    let mut desired_cidrs: BTreeSet<Ipv4Net> = cidrs.iter().map(Ipv4Net::trunc).collect();
    desired_cidrs.insert(ALWAYS_EXCLUDED);
    let desired_ports: BTreeSet<u16> = ports.iter().copied().collect();
    let max = maps.capacity();
    for (map, count) in [
        (agent_common::maps::EXCLUDED_CIDRS, desired_cidrs.len()),
        (agent_common::maps::EXCLUDED_PORTS, desired_ports.len()),
    ] {
        if count > max {
            return Err(ExclusionError::TooMany { map, count, max });
        }
    }
    let current_cidrs = maps
        .current_cidrs()
        .map_err(|e| ExclusionError::Read(Box::new(e)))?;
    let current_ports = maps
        .current_ports()
        .map_err(|e| ExclusionError::Read(Box::new(e)))?;
    let mut changes = plan(
        &current_cidrs,
        &desired_cidrs,
        max,
        Change::InsertCidr,
        Change::RemoveCidr,
    );
    changes.extend(plan(
        &current_ports,
        &desired_ports,
        max,
        Change::InsertPort,
        Change::RemovePort,
    ));
    // Loopback first when it is missing (the first update after loading): a failure later
    // in the update then leaves it in, since the undo never takes it out.
    changes.sort_by_key(|change| *change != Change::InsertCidr(ALWAYS_EXCLUDED));

    let mut done: Vec<Change> = Vec::with_capacity(changes.len());
    for change in changes {
        if let Err(failed) = maps.apply(change) {
            return Err(match undo(maps, &done) {
                Ok(()) => ExclusionError::Restored(Box::new(failed)),
                Err(restore) => ExclusionError::Partial {
                    failed: Box::new(failed),
                    restore: Box::new(restore),
                },
            });
        }
        done.push(change);
    }
    Ok(())
}

/// The changes that turn `current` into `desired`. Entries in both are not touched (so
/// loopback, always desired, is never removed). New entries go in before stale ones go out
/// when the map has room for both, so a destination excluded before and after (say by
/// 10.0.0.0/8, then by 10.1.0.0/16) is never redirected in between; otherwise stale entries
/// go first to make that room.
fn plan<T: Ord + Copy>(
    current: &BTreeSet<T>,
    desired: &BTreeSet<T>,
    max: usize,
    insert: impl Fn(T) -> Change,
    remove: impl Fn(T) -> Change,
) -> Vec<Change> {
    let inserts = desired.difference(current).map(|v| insert(*v));
    let removes = current.difference(desired).map(|v| remove(*v));
    if current.union(desired).count() <= max {
        inserts.chain(removes).collect()
    } else {
        removes.chain(inserts).collect()
    }
}

/// Reverts `done`, last change first. Loopback is not removed even here: it is always meant
/// to be excluded, and an agent whose first update failed exits anyway.
fn undo(maps: &mut impl ExclusionMaps, done: &[Change]) -> Result<(), RedirectError> {
    for change in done.iter().rev() {
        let revert = change.undo();
        if revert == Change::RemoveCidr(ALWAYS_EXCLUDED) {
            continue;
        }
        maps.apply(revert)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use aya::maps::MapError;

    use super::*;

    /// Maps in memory that refuse inserts past their capacity (as the kernel does, E2BIG /
    /// ENOSPC) and, optionally, the nth change; every state they pass through is recorded.
    struct FakeMaps {
        max: usize,
        cidrs: BTreeSet<Ipv4Net>,
        ports: BTreeSet<u16>,
        fail_at: Option<usize>,
        fail_after: Option<usize>,
        applied: usize,
        history: Vec<BTreeSet<Ipv4Net>>,
    }

    impl FakeMaps {
        fn new(max: usize, cidrs: &[&str], ports: &[u16]) -> Self {
            Self {
                max,
                cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
                ports: ports.iter().copied().collect(),
                fail_at: None,
                fail_after: None,
                applied: 0,
                history: Vec::new(),
            }
        }
    }

    fn refused() -> RedirectError {
        RedirectError::Map {
            map: agent_common::maps::EXCLUDED_CIDRS,
            source: MapError::KeyNotFound,
        }
    }

    impl ExclusionMaps for FakeMaps {
        fn capacity(&self) -> usize {
            self.max
        }
        fn current_cidrs(&self) -> Result<BTreeSet<Ipv4Net>, RedirectError> {
            Ok(self.cidrs.clone())
        }
        fn current_ports(&self) -> Result<BTreeSet<u16>, RedirectError> {
            Ok(self.ports.clone())
        }
        fn apply(&mut self, change: Change) -> Result<(), RedirectError> {
            let index = self.applied;
            self.applied += 1;
            if self.fail_at == Some(index) || self.fail_after.is_some_and(|n| index >= n) {
                return Err(refused());
            }
            let full = |len: usize| len >= self.max;
            match change {
                Change::InsertCidr(net) => {
                    if !self.cidrs.contains(&net) && full(self.cidrs.len()) {
                        return Err(refused());
                    }
                    self.cidrs.insert(net);
                }
                Change::RemoveCidr(net) => {
                    self.cidrs.remove(&net);
                }
                Change::InsertPort(port) => {
                    if !self.ports.contains(&port) && full(self.ports.len()) {
                        return Err(refused());
                    }
                    self.ports.insert(port);
                }
                Change::RemovePort(port) => {
                    self.ports.remove(&port);
                }
            }
            self.history.push(self.cidrs.clone());
            Ok(())
        }
    }

    fn nets(list: &[&str]) -> Vec<Ipv4Net> {
        list.iter().map(|c| c.parse().unwrap()).collect()
    }

    #[test]
    fn replaces_both_lists_and_keeps_loopback() {
        let mut maps = FakeMaps::new(8, &["127.0.0.0/8", "10.0.0.0/8"], &[22]);
        replace(&mut maps, &nets(&["10.1.0.0/16", "192.168.1.7/24"]), &[53]).unwrap();
        assert_eq!(
            maps.cidrs,
            nets(&["10.1.0.0/16", "127.0.0.0/8", "192.168.1.0/24"])
                .into_iter()
                .collect()
        );
        assert_eq!(maps.ports, [53].into_iter().collect());
        // Make before break: the new prefix was in before the old one went.
        assert!(maps.history.iter().all(|s| s.contains(&ALWAYS_EXCLUDED)));
        assert!(maps.history.iter().all(|s| {
            s.iter()
                .any(|n| n.contains(&"10.1.2.3".parse::<std::net::Ipv4Addr>().unwrap()))
        }));
    }

    #[test]
    fn too_many_entries_change_nothing() {
        let mut maps = FakeMaps::new(4, &["127.0.0.0/8", "10.0.0.0/8"], &[22]);
        let many = nets(&["10.1.0.0/16", "10.2.0.0/16", "10.3.0.0/16", "10.4.0.0/16"]);
        let err = replace(&mut maps, &many, &[]).unwrap_err();
        assert!(
            matches!(
                err,
                ExclusionError::TooMany {
                    count: 5,
                    max: 4,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.kept_previous());
        assert_eq!(maps.applied, 0);
        let err = replace(&mut maps, &[], &[1, 2, 3, 4, 5]).unwrap_err();
        assert!(
            matches!(err, ExclusionError::TooMany { count: 5, .. }),
            "{err}"
        );
        assert_eq!(maps.applied, 0);
    }

    #[test]
    fn a_failure_part_way_restores_the_previous_lists() {
        let before_cidrs = ["127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12"];
        // Every position a change can fail at, including in the port map after the CIDR
        // map is already done.
        for fail_at in 0..7 {
            let mut maps = FakeMaps::new(8, &before_cidrs, &[22, 80]);
            maps.fail_at = Some(fail_at);
            let err =
                replace(&mut maps, &nets(&["10.1.0.0/16", "10.2.0.0/16"]), &[53]).unwrap_err();
            assert!(
                matches!(err, ExclusionError::Restored(_)),
                "{fail_at}: {err}"
            );
            assert!(err.kept_previous());
            assert_eq!(
                maps.cidrs,
                nets(&before_cidrs).into_iter().collect(),
                "{fail_at}"
            );
            assert_eq!(maps.ports, [22, 80].into_iter().collect(), "{fail_at}");
            assert!(maps.history.iter().all(|s| s.contains(&ALWAYS_EXCLUDED)));
        }
    }

    #[test]
    fn a_full_map_takes_stale_entries_out_first() {
        let mut maps = FakeMaps::new(3, &["127.0.0.0/8", "10.0.0.0/8", "10.1.0.0/16"], &[]);
        replace(&mut maps, &nets(&["10.2.0.0/16", "10.3.0.0/16"]), &[]).unwrap();
        assert_eq!(
            maps.cidrs,
            nets(&["10.2.0.0/16", "10.3.0.0/16", "127.0.0.0/8"])
                .into_iter()
                .collect()
        );
        assert!(maps.history.iter().all(|s| s.contains(&ALWAYS_EXCLUDED)));
    }

    #[test]
    fn a_failed_restore_is_reported_and_loopback_stays() {
        let mut maps = FakeMaps::new(8, &["127.0.0.0/8", "10.0.0.0/8"], &[]);
        // The second change fails and so does every change after it, the undo included.
        maps.fail_after = Some(1);
        let err = replace(&mut maps, &nets(&["10.1.0.0/16"]), &[]).unwrap_err();
        assert!(matches!(err, ExclusionError::Partial { .. }), "{err}");
        assert!(!err.kept_previous());
        assert!(maps.cidrs.contains(&ALWAYS_EXCLUDED));
    }

    #[test]
    fn a_failed_first_update_keeps_loopback() {
        let mut maps = FakeMaps::new(8, &[], &[]);
        maps.fail_at = Some(1);
        let err = replace(&mut maps, &nets(&["10.1.0.0/16"]), &[]).unwrap_err();
        assert!(matches!(err, ExclusionError::Restored(_)), "{err}");
        assert_eq!(maps.cidrs, [ALWAYS_EXCLUDED].into_iter().collect());
    }
}
