//! [`UidList`]: the UIDs of a selected mailbox by message sequence number, stored as runs
//! of consecutive UIDs. A mailbox's UIDs are mostly consecutive, so a session on a
//! 100,000-message mailbox holds a few runs instead of 400 KB.

use std::collections::BTreeSet;

/// One run: `count` consecutive UIDs from `first`, the first at sequence index `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    first: u32,
    count: u32,
    start: usize,
}

impl Run {
    fn last(&self) -> u32 {
        self.first + (self.count - 1)
    }
}

/// Ascending UIDs, indexed from 0 (sequence number minus one).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UidList {
    runs: Vec<Run>,
    len: usize,
}

impl UidList {
    /// Builds the list from ascending UIDs.
    pub fn from_sorted(uids: impl IntoIterator<Item = u32>) -> Self {
        let mut list = Self::default();
        for uid in uids {
            list.push(uid);
        }
        list
    }

    /// Number of UIDs.
    pub fn len(&self) -> usize {
        self.len
    }

    /// The largest UID.
    pub fn last(&self) -> Option<u32> {
        self.runs.last().map(Run::last)
    }

    /// Appends a UID larger than every UID in the list (smaller ones are ignored).
    pub fn push(&mut self, uid: u32) {
        match self.runs.last_mut() {
            Some(run) if uid <= run.last() => return,
            Some(run) if uid == run.last() + 1 => run.count += 1,
            _ => self.runs.push(Run { first: uid, count: 1, start: self.len }),
        }
        self.len += 1;
    }

    /// The UID at `index` (sequence number minus one).
    pub fn get(&self, index: usize) -> Option<u32> {
        let run = self.runs.partition_point(|run| run.start <= index).checked_sub(1)?;
        let run = self.runs[run];
        (index - run.start < run.count as usize).then(|| run.first + (index - run.start) as u32)
    }

    /// The index of `uid`, if present.
    pub fn position(&self, uid: u32) -> Option<usize> {
        let run = self.runs.partition_point(|run| run.first <= uid).checked_sub(1)?;
        let run = self.runs[run];
        (uid <= run.last()).then(|| run.start + (uid - run.first) as usize)
    }

    /// The number of UIDs smaller than `uid` (the index where `uid` is or would be).
    pub fn count_below(&self, uid: u32) -> usize {
        match self.runs.partition_point(|run| run.first < uid).checked_sub(1) {
            None => 0,
            Some(run) => {
                let run = self.runs[run];
                run.start + ((uid - run.first) as usize).min(run.count as usize)
            }
        }
    }

    /// The UIDs in order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.runs.iter().flat_map(|run| run.first..=run.last())
    }

    /// Removes every UID in `gone`.
    pub fn remove_all(&mut self, gone: &BTreeSet<u32>) {
        if gone.is_empty() {
            return;
        }
        let kept: Vec<u32> = self.iter().filter(|uid| !gone.contains(uid)).collect();
        *self = Self::from_sorted(kept);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_like_a_sorted_vector() {
        let uids = [3u32, 4, 5, 9, 10, 20];
        let list = UidList::from_sorted(uids);
        assert_eq!(list.len(), 6);
        assert_eq!(list.runs.len(), 3);
        assert_eq!(list.last(), Some(20));
        assert_eq!(list.iter().collect::<Vec<_>>(), uids);
        for (index, &uid) in uids.iter().enumerate() {
            assert_eq!(list.get(index), Some(uid));
            assert_eq!(list.position(uid), Some(index));
        }
        assert_eq!(list.get(6), None);
        for missing in [0, 1, 6, 11, 21] {
            assert_eq!(list.position(missing), None);
        }
        for probe in 0..25 {
            assert_eq!(list.count_below(probe), uids.partition_point(|&uid| uid < probe), "{probe}");
        }
        let mut list = list;
        list.push(21);
        list.push(7);
        assert_eq!(list.iter().collect::<Vec<_>>(), [3, 4, 5, 9, 10, 20, 21]);
        list.remove_all(&[4, 20, 99].into_iter().collect());
        assert_eq!(list.iter().collect::<Vec<_>>(), [3, 5, 9, 10, 21]);
        assert_eq!(list.position(9), Some(2));
        let big = UidList::from_sorted(1..=100_000);
        assert_eq!(big.runs.len(), 1);
        assert_eq!(big.get(99_999), Some(100_000));
    }
}
