//! A bounded queue in front of each exporter. Overflow is never silent: every
//! item that does not fit is counted as dropped.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::stats::ExporterStats;

/// What to do when the queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Refuse the new item (events: keep the first of a storm).
    DropNewest,
    /// Evict the oldest item (cumulative metrics: newer values supersede).
    DropOldest,
}

pub struct BoundedQueue<T> {
    items: Mutex<VecDeque<T>>,
    capacity: usize,
    overflow: Overflow,
    notify: Notify,
    stats: Arc<ExporterStats>,
    /// How many items (records or points) one queue entry stands for.
    weight: fn(&T) -> u64,
}

impl<T> BoundedQueue<T> {
    pub fn new(
        capacity: usize,
        overflow: Overflow,
        stats: Arc<ExporterStats>,
        weight: fn(&T) -> u64,
    ) -> Self {
        Self {
            items: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            overflow,
            notify: Notify::new(),
            stats,
            weight,
        }
    }

    pub fn push(&self, item: T) {
        let mut items = self.items.lock().unwrap_or_else(|e| e.into_inner());
        if items.len() >= self.capacity {
            match self.overflow {
                Overflow::DropNewest => {
                    ExporterStats::add(&self.stats.dropped, (self.weight)(&item));
                    return;
                }
                Overflow::DropOldest => {
                    if let Some(old) = items.pop_front() {
                        let w = (self.weight)(&old);
                        ExporterStats::add(&self.stats.dropped, w);
                        self.stats.queued.fetch_sub(w, Ordering::Relaxed);
                    }
                }
            }
        }
        ExporterStats::add(&self.stats.queued, (self.weight)(&item));
        items.push_back(item);
        drop(items);
        self.notify.notify_one();
    }

    /// Take up to `max` items.
    pub fn take(&self, max: usize) -> Vec<T> {
        let mut items = self.items.lock().unwrap_or_else(|e| e.into_inner());
        let n = items.len().min(max);
        let batch: Vec<T> = items.drain(..n).collect();
        let w: u64 = batch.iter().map(self.weight).sum();
        self.stats.queued.fetch_sub(w, Ordering::Relaxed);
        batch
    }

    pub fn len(&self) -> usize {
        self.items.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Wait until something is pushed (returns at once if already non-empty).
    pub async fn wait(&self) {
        let notified = self.notify.notified();
        if !self.is_empty() {
            return;
        }
        notified.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats() -> Arc<ExporterStats> {
        Arc::new(ExporterStats::default())
    }

    #[test]
    fn drop_newest_counts_refused_items() {
        let s = stats();
        let q = BoundedQueue::new(2, Overflow::DropNewest, s.clone(), |_: &u32| 1);
        for i in 0..5 {
            q.push(i);
        }
        assert_eq!(q.take(10), vec![0, 1]);
        assert_eq!(ExporterStats::get(&s.dropped), 3);
        assert_eq!(ExporterStats::get(&s.queued), 0);
    }

    #[test]
    fn drop_oldest_keeps_the_newest_and_counts_weight() {
        let s = stats();
        let q = BoundedQueue::new(2, Overflow::DropOldest, s.clone(), |v: &u32| u64::from(*v));
        for i in 1..=4 {
            q.push(i);
        }
        assert_eq!(ExporterStats::get(&s.dropped), 1 + 2);
        assert_eq!(ExporterStats::get(&s.queued), 3 + 4);
        assert_eq!(q.take(10), vec![3, 4]);
    }
}
