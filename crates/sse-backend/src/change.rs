//! Snapshot diffing keyed by a field (docs/BACKEND.md, Leases, with the
//! expiry rule of decision D6). Pure: no I/O, no clock of its own; the caller passes `now`.
//!
//! Each snapshot records, per key, the item and whether it was *active when
//! the snapshot was taken*. A diff yields, in this order: every `Added`, every
//! `Removed` (carrying the old item), then per key in both snapshots `Updated`
//! (the item changed) followed by `Expired` (active at the previous snapshot,
//! inactive now). [`ChangeDetector::reevaluate`] re-checks expiry without a
//! new read (for a timer), and a failed read simply does not call
//! [`ChangeDetector::update`], so the previous snapshot stays.

use std::collections::BTreeMap;

/// An item the detector can track.
pub trait Record: Clone + PartialEq {
    /// The key (e.g. the IP address of a lease).
    type Key: Ord + Clone;
    /// The item's key.
    fn key(&self) -> Self::Key;
    /// Whether the item is active at `now` (seconds since the epoch).
    fn is_active(&self, now: i64) -> bool;
}

/// One detected change.
#[derive(Debug, Clone, PartialEq)]
pub enum Change<R> {
    /// Key new in this snapshot.
    Added(R),
    /// Key gone; the old item.
    Removed(R),
    /// Same key, different item; the new item.
    Updated(R),
    /// Active at the previous snapshot, inactive now; the current item.
    Expired(R),
}

impl<R> Change<R> {
    /// `lease_added`-style event suffix: `added`, `removed`, `updated`, `expired`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Added(_) => "added",
            Self::Removed(_) => "removed",
            Self::Updated(_) => "updated",
            Self::Expired(_) => "expired",
        }
    }
}

/// The previous snapshot and the diff logic.
#[derive(Debug, Clone)]
pub struct ChangeDetector<R: Record> {
    snapshot: BTreeMap<R::Key, (R, bool)>,
}

impl<R: Record> Default for ChangeDetector<R> {
    fn default() -> Self {
        Self { snapshot: BTreeMap::new() }
    }
}

impl<R: Record> ChangeDetector<R> {
    /// An empty detector (the first update reports everything as added).
    pub fn new() -> Self {
        Self::default()
    }

    /// Items of the current snapshot.
    pub fn items(&self) -> impl Iterator<Item = &R> {
        self.snapshot.values().map(|(r, _)| r)
    }

    /// Diffs `items` (read at `now`) against the previous snapshot and makes
    /// them the new snapshot.
    pub fn update(&mut self, items: Vec<R>, now: i64) -> Vec<Change<R>> {
        let new: BTreeMap<R::Key, (R, bool)> = items
            .into_iter()
            .map(|r| {
                let active = r.is_active(now);
                (r.key(), (r, active))
            })
            .collect();
        let mut changes = Vec::new();
        for (k, (r, _)) in &new {
            if !self.snapshot.contains_key(k) {
                changes.push(Change::Added(r.clone()));
            }
        }
        for (k, (r, _)) in &self.snapshot {
            if !new.contains_key(k) {
                changes.push(Change::Removed(r.clone()));
            }
        }
        for (k, (r, active)) in &new {
            if let Some((old, was_active)) = self.snapshot.get(k) {
                if old != r {
                    changes.push(Change::Updated(r.clone()));
                }
                if *was_active && !active {
                    changes.push(Change::Expired(r.clone()));
                }
            }
        }
        self.snapshot = new;
        changes
    }

    /// Re-checks expiry at `now` without a new read: `Expired` for each item
    /// active at the last evaluation and inactive now (each fires once).
    pub fn reevaluate(&mut self, now: i64) -> Vec<Change<R>> {
        let mut changes = Vec::new();
        for (r, active) in self.snapshot.values_mut() {
            let now_active = r.is_active(now);
            if *active && !now_active {
                changes.push(Change::Expired(r.clone()));
            }
            *active = now_active;
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq)]
    struct Lease {
        ip: &'static str,
        host: &'static str,
        expiry: i64, // 0 = infinite
    }

    impl Record for Lease {
        type Key = &'static str;
        fn key(&self) -> Self::Key {
            self.ip
        }
        fn is_active(&self, now: i64) -> bool {
            self.expiry == 0 || now < self.expiry
        }
    }

    fn l(ip: &'static str, host: &'static str, expiry: i64) -> Lease {
        Lease { ip, host, expiry }
    }

    fn kinds(c: &[Change<Lease>]) -> Vec<(&'static str, &'static str)> {
        c.iter()
            .map(|c| match c {
                Change::Added(r) | Change::Removed(r) | Change::Updated(r) | Change::Expired(r) => (c.kind(), r.ip),
            })
            .collect()
    }

    #[test]
    fn change_detector_first_update_reports_every_item_as_added() {
        let mut d = ChangeDetector::new();
        let c = d.update(vec![l("10.0.0.2", "b", 0), l("10.0.0.1", "a", 0)], 100);
        assert_eq!(kinds(&c), vec![("added", "10.0.0.1"), ("added", "10.0.0.2")]);
    }

    #[test]
    fn change_detector_orders_added_removed_then_updated_before_expired_per_key() {
        let mut d = ChangeDetector::new();
        d.update(vec![l("1", "a", 200), l("2", "b", 0), l("3", "c", 0)], 100);
        let c = d.update(vec![l("1", "a2", 150), l("2", "b", 0), l("4", "d", 0)], 160);
        assert_eq!(kinds(&c), vec![("added", "4"), ("removed", "3"), ("updated", "1"), ("expired", "1")]);
        match &c[1] {
            Change::Removed(old) => assert_eq!(old.host, "c", "removed carries the old item"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn change_detector_expired_fires_once_when_a_lease_active_at_the_previous_snapshot_is_inactive_now() {
        let mut d = ChangeDetector::new();
        d.update(vec![l("1", "a", 200)], 100);
        // Same file, clock passes the expiry: expired without an update.
        let c = d.update(vec![l("1", "a", 200)], 250);
        assert_eq!(kinds(&c), vec![("expired", "1")]);
        assert!(d.update(vec![l("1", "a", 200)], 300).is_empty(), "fires once");
        // Already inactive at the previous snapshot: never expired.
        let mut d = ChangeDetector::new();
        d.update(vec![l("1", "a", 50)], 100);
        assert!(d.update(vec![l("1", "a", 50)], 200).is_empty());
    }

    #[test]
    fn change_detector_timer_reevaluates_expiry_without_a_file_change() {
        let mut d = ChangeDetector::new();
        d.update(vec![l("1", "a", 200), l("2", "b", 0)], 100);
        assert!(d.reevaluate(150).is_empty());
        assert_eq!(kinds(&d.reevaluate(201)), vec![("expired", "1")]);
        assert!(d.reevaluate(300).is_empty(), "fires once");
        assert!(d.update(vec![l("1", "a", 200), l("2", "b", 0)], 301).is_empty(), "and not again on the next read");
        // A renewed lease becomes active again and can expire again.
        let c = d.update(vec![l("1", "a", 400), l("2", "b", 0)], 302);
        assert_eq!(kinds(&c), vec![("updated", "1")]);
        assert_eq!(kinds(&d.reevaluate(401)), vec![("expired", "1")]);
    }

    #[test]
    fn change_detector_a_failed_read_keeps_the_previous_snapshot() {
        let mut d = ChangeDetector::new();
        d.update(vec![l("1", "a", 0)], 100);
        // The caller's read failed: it does not call update; the snapshot stays.
        assert_eq!(d.items().count(), 1);
        assert!(d.update(vec![l("1", "a", 0)], 200).is_empty());
    }
}
