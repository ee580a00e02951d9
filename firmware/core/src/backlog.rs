//! A bounded backlog of unsent batches.
//!
//! Every batch goes into the backlog first and leaves it only once the transport has
//! accepted it, so a Wi-Fi or broker outage just lets the backlog grow; when the link is
//! back the batches are sent oldest first. When it is full, the oldest batch is dropped
//! (the newest data is the most useful after a long outage) and the drop is counted so it
//! can be reported. Resending is idempotent on the appliance because the storage key is
//! (device_id, ts_device, sensor_hw_id).
//!
//! The backlog lives in RAM: it survives network outages, not a reset or power loss.

use heapless::Deque;

/// Up to `N` items, oldest first.
#[derive(Debug)]
pub struct Backlog<T, const N: usize> {
    queue: Deque<T, N>,
    dropped: u32,
}

impl<T, const N: usize> Default for Backlog<T, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T, const N: usize> Backlog<T, N> {
    /// An empty backlog.
    pub const fn new() -> Self {
        Backlog {
            queue: Deque::new(),
            dropped: 0,
        }
    }

    /// Appends the newest item. When full, the oldest item is removed to make room and
    /// returned (and counted in [`Backlog::dropped`]).
    pub fn push(&mut self, item: T) -> Option<T> {
        let evicted = if self.queue.is_full() {
            self.dropped = self.dropped.saturating_add(1);
            self.queue.pop_front()
        } else {
            None
        };
        // cannot fail: there is room now (N == 0 is the only exception, and drops the item)
        match self.queue.push_back(item) {
            Ok(()) => evicted,
            Err(item) => Some(item),
        }
    }

    /// The oldest item, the next one to send.
    pub fn front(&self) -> Option<&T> {
        self.queue.front()
    }

    /// Removes the oldest item once it has been sent.
    pub fn pop_front(&mut self) -> Option<T> {
        self.queue.pop_front()
    }

    /// Sends items oldest first with `send`, removing each one it accepts; stops at the
    /// first error, which leaves that item at the front for the next attempt.
    /// Returns how many were sent.
    pub fn send_oldest_first<E>(
        &mut self,
        mut send: impl FnMut(&T) -> Result<(), E>,
    ) -> Result<usize, (usize, E)> {
        let mut sent = 0;
        while let Some(item) = self.queue.front() {
            match send(item) {
                Ok(()) => {
                    self.queue.pop_front();
                    sent += 1;
                }
                Err(e) => return Err((sent, e)),
            }
        }
        Ok(sent)
    }

    /// Items waiting.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Whether the next push drops the oldest item.
    pub fn is_full(&self) -> bool {
        self.queue.is_full()
    }

    /// The capacity `N`.
    pub fn capacity(&self) -> usize {
        N
    }

    /// How many items were dropped because the backlog was full (since creation).
    pub fn dropped(&self) -> u32 {
        self.dropped
    }

    /// The items, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.queue.iter()
    }

    /// The items, oldest first, mutably (e.g. to fix timestamps once the clock syncs).
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.queue.iter_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::{Reading, Telemetry};

    #[test]
    fn keeps_order_and_bounds() {
        let mut b: Backlog<u32, 3> = Backlog::new();
        assert!(b.is_empty());
        assert_eq!(b.capacity(), 3);
        assert_eq!(b.push(1), None);
        assert_eq!(b.push(2), None);
        assert_eq!(b.push(3), None);
        assert!(b.is_full());
        // full: the oldest goes, and is counted
        assert_eq!(b.push(4), Some(1));
        assert_eq!(b.push(5), Some(2));
        assert_eq!(b.dropped(), 2);
        assert_eq!(b.len(), 3);
        assert_eq!(b.iter().copied().collect::<Vec<_>>(), vec![3, 4, 5]);
        assert_eq!(b.front(), Some(&3));
        assert_eq!(b.pop_front(), Some(3));
        assert_eq!(b.pop_front(), Some(4));
        assert_eq!(b.pop_front(), Some(5));
        assert_eq!(b.pop_front(), None);
        assert_eq!(b.dropped(), 2);
    }

    #[test]
    fn outage_then_resend_oldest_first() {
        let mut b: Backlog<u32, 8> = Backlog::new();
        let mut delivered = Vec::new();
        for reading in 1..=12u32 {
            b.push(reading);
            // the link is down while readings 4..=9 are taken
            let link_up = !(4..=9).contains(&reading);
            let result = b.send_oldest_first(|&x| {
                if link_up {
                    delivered.push(x);
                    Ok(())
                } else {
                    Err("down")
                }
            });
            if link_up {
                assert!(result.is_ok());
                assert!(b.is_empty());
            } else {
                assert_eq!(result, Err((0, "down")));
                assert_eq!(b.len(), reading as usize - 3);
            }
        }
        // nothing lost (outage shorter than the capacity), nothing duplicated, in order
        assert_eq!(delivered, (1..=12).collect::<Vec<_>>());
        assert!(b.is_empty());
        assert_eq!(b.dropped(), 0);
    }

    #[test]
    fn failure_mid_flush_keeps_the_failed_item_first() {
        let mut b: Backlog<u32, 4> = Backlog::new();
        for i in 1..=4 {
            b.push(i);
        }
        let mut calls = 0;
        let r = b.send_oldest_first(|_| {
            calls += 1;
            if calls <= 2 {
                Ok(())
            } else {
                Err(())
            }
        });
        assert_eq!(r, Err((2, ())));
        assert_eq!(b.iter().copied().collect::<Vec<_>>(), vec![3, 4]);
        assert_eq!(b.send_oldest_first(|_| Ok::<(), ()>(())), Ok(2));
        assert!(b.is_empty());
    }

    #[test]
    fn long_outage_keeps_the_newest_and_counts_drops() {
        let mut b: Backlog<u32, 5> = Backlog::new();
        for i in 0..100 {
            b.push(i);
        }
        assert_eq!(b.dropped(), 95);
        assert_eq!(
            b.iter().copied().collect::<Vec<_>>(),
            vec![95, 96, 97, 98, 99]
        );
    }

    #[test]
    fn unsynced_batches_get_real_time_after_sync() {
        let mut b: Backlog<Telemetry, 4> = Backlog::new();
        for (i, recorded_at, ts) in [
            (0, "", 1_000u64),
            (1, "", 61_000),
            (2, "2026-02-15T12:05:00.000Z", 1_771_157_100_000),
        ] {
            let mut t = Telemetry::new("d", recorded_at, ts, -50).unwrap();
            t.push(Reading::new("s", i as f32, 0.0).unwrap()).unwrap();
            b.push(t);
        }
        let boot = 1_771_156_800_000;
        let changed = b
            .iter_mut()
            .filter_map(|t| t.resolve_time(boot).then_some(()))
            .count();
        assert_eq!(changed, 2);
        let times: Vec<_> = b
            .iter()
            .map(|t| (t.ts_device, t.recorded_at.as_str().to_owned()))
            .collect();
        assert_eq!(
            times,
            vec![
                (1_771_156_801_000, "2026-02-15T12:00:01.000Z".to_owned()),
                (1_771_156_861_000, "2026-02-15T12:01:01.000Z".to_owned()),
                (1_771_157_100_000, "2026-02-15T12:05:00.000Z".to_owned()),
            ]
        );
    }
}
