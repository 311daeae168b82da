//! [`Ring`]: the latest `cap` items of a stream, oldest first, in no more memory than `cap` items need.
//!
//! The detectors keep one per signal per service (their windows of recent values, the mixture's training
//! windows), so the slack a growing `VecDeque` leaves (its capacity doubles: 512 slots for a window of 401)
//! is paid thousands of times over. A `Ring` grows the same way up to its bound and never past it, and
//! allocates nothing until its first item.

use std::collections::VecDeque;

/// A bounded FIFO: pushing past `cap` items drops the oldest.
#[derive(Clone, Debug)]
pub struct Ring<T> {
    items: VecDeque<T>,
    cap: usize,
}

impl<T: Copy> Ring<T> {
    /// An empty ring of at most `cap` items (at least one).
    pub fn new(cap: usize) -> Ring<T> {
        Ring {
            items: VecDeque::new(),
            cap: cap.max(1),
        }
    }

    /// Keeps at least the latest `cap` items from now on.
    pub fn reach(&mut self, cap: usize) {
        self.cap = self.cap.max(cap);
    }

    /// Appends `x`; returns the oldest item when the ring was full.
    pub fn push(&mut self, x: T) -> Option<T> {
        let dropped = if self.items.len() == self.cap {
            self.items.pop_front()
        } else {
            if self.items.len() == self.items.capacity() {
                let len = self.items.len();
                self.items.reserve_exact(len.max(4).min(self.cap - len));
            }
            None
        };
        self.items.push_back(x);
        dropped
    }

    /// Takes the oldest item out.
    pub fn pop_oldest(&mut self) -> Option<T> {
        self.items.pop_front()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn clear(&mut self) {
        self.items.clear();
    }

    /// The items, oldest first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = T> + ExactSizeIterator + '_ {
        self.items.iter().copied()
    }

    /// The items, newest first.
    pub fn newest(&self) -> impl Iterator<Item = T> + '_ {
        self.items.iter().rev().copied()
    }

    /// Heap bytes held (the capacity, used or not).
    pub fn heap_bytes(&self) -> usize {
        self.items.capacity() * std::mem::size_of::<T>()
    }
}

impl Ring<f64> {
    /// The differences between consecutive items (newer minus older), newest first: one fewer than
    /// the items.
    pub fn newest_differences(&self) -> impl Iterator<Item = f64> + '_ {
        let newest = self.items.iter().rev();
        newest.clone().zip(newest.skip(1)).map(|(a, b)| a - b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_latest_and_never_grows_past_its_bound() {
        let mut r = Ring::new(401);
        for i in 0..1000 {
            let dropped = r.push(f64::from(i));
            assert_eq!(dropped, (i >= 401).then(|| f64::from(i - 401)));
        }
        assert_eq!(r.len(), 401);
        assert_eq!(r.iter().next(), Some(599.0));
        assert_eq!(r.newest().next(), Some(999.0));
        assert_eq!(r.heap_bytes(), 401 * 8);
        assert!(r.newest_differences().all(|d| d == 1.0));
        assert_eq!(r.newest_differences().count(), 400);
        assert_eq!(Ring::<f64>::new(8).heap_bytes(), 0);
        // A longer reach keeps more from then on, and never drops what the ring holds.
        r.reach(500);
        r.reach(10);
        for i in 1000..1200 {
            r.push(f64::from(i));
        }
        assert_eq!((r.len(), r.iter().next()), (500, Some(700.0)));
    }
}
