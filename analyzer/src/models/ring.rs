//! [`Ring`]: the latest `cap` items of a stream, oldest first, in no more memory than `cap` items need.
//!
//! The detectors keep one per signal per service (their windows of recent values, the mixture's training
//! windows), so the slack a growing `VecDeque` leaves (its capacity doubles: 512 slots for a window of 401)
//! is paid thousands of times over. A `Ring` grows the same way up to its bound and never past it, and
//! allocates nothing until its first item. [`Values`] is a ring of a series' values that holds them in
//! half the memory while they fit single precision exactly.

use std::collections::VecDeque;
use std::collections::vec_deque;
use std::iter::Rev;

/// A bounded FIFO: pushing past `cap` items drops the oldest. The bound is its owner's to pass at each
/// push (a window length among the owner's parameters), so thousands of rings keep no copy of it; an
/// owner may raise it as it goes (the ring then keeps more from then on), never lower it.
#[derive(Clone, Debug)]
pub struct Ring<T> {
    items: VecDeque<T>,
}

impl<T: Copy> Default for Ring<T> {
    fn default() -> Ring<T> {
        Ring::new()
    }
}

impl<T: Copy> Ring<T> {
    /// An empty ring.
    pub fn new() -> Ring<T> {
        Ring {
            items: VecDeque::new(),
        }
    }

    /// Appends `x` to a ring of at most `cap` items (at least one); returns the oldest item when the ring
    /// was full.
    pub fn push(&mut self, x: T, cap: usize) -> Option<T> {
        let cap = cap.max(1);
        let dropped = if self.items.len() >= cap {
            self.items.pop_front()
        } else {
            if self.items.len() == self.items.capacity() {
                let len = self.items.len();
                self.items.reserve_exact(len.max(4).min(cap - len));
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

    /// Heap bytes held (the capacity, used or not).
    pub fn heap_bytes(&self) -> usize {
        self.items.capacity() * std::mem::size_of::<T>()
    }
}

/// The latest values of a series, read back exactly as they were pushed: in single precision while
/// every value pushed is exactly an `f32`, in double precision from the first one that is not. The health
/// monitor's detectors round their values to a fraction of their resolution
/// (`Tidewatch::with_resolution`), so theirs stay single (half the bytes); a series of arbitrary values,
/// such as NAB's, turns double at once. Either way the detector reads the same values.
#[derive(Clone, Debug)]
pub enum Values {
    Single(Ring<f32>),
    Double(Ring<f64>),
}

impl Default for Values {
    fn default() -> Values {
        Values::Single(Ring::new())
    }
}

impl Values {
    /// Appends `x` to a ring of at most `cap` values (as [`Ring::push`]), dropping the oldest value when
    /// the ring is full.
    pub fn push(&mut self, x: f64, cap: usize) {
        if let Values::Single(r) = self {
            let narrow = x as f32;
            if f64::from(narrow).to_bits() == x.to_bits() {
                r.push(narrow, cap);
                return;
            }
            let mut wide = VecDeque::with_capacity(r.items.len() + 1);
            wide.extend(r.items.iter().copied().map(f64::from));
            *self = Values::Double(Ring { items: wide });
        }
        if let Values::Double(r) = self {
            r.push(x, cap);
        }
    }

    /// The values, newest first.
    pub fn newest(&self) -> Newest<'_> {
        match self {
            Values::Single(r) => Newest::Single(r.items.iter().rev()),
            Values::Double(r) => Newest::Double(r.items.iter().rev()),
        }
    }

    /// The differences between consecutive values (newer minus older), newest first: one fewer than
    /// the values.
    pub fn newest_differences(&self) -> impl Iterator<Item = f64> + '_ {
        let newest = self.newest();
        newest.clone().zip(newest.skip(1)).map(|(a, b)| a - b)
    }

    /// Heap bytes held (the capacity, used or not).
    pub fn heap_bytes(&self) -> usize {
        match self {
            Values::Single(r) => r.heap_bytes(),
            Values::Double(r) => r.heap_bytes(),
        }
    }
}

/// [`Values::newest`].
#[derive(Clone, Debug)]
pub enum Newest<'a> {
    Single(Rev<vec_deque::Iter<'a, f32>>),
    Double(Rev<vec_deque::Iter<'a, f64>>),
}

impl Iterator for Newest<'_> {
    type Item = f64;

    fn next(&mut self) -> Option<f64> {
        match self {
            Newest::Single(i) => i.next().copied().map(f64::from),
            Newest::Double(i) => i.next().copied(),
        }
    }

    fn nth(&mut self, n: usize) -> Option<f64> {
        match self {
            Newest::Single(i) => i.nth(n).copied().map(f64::from),
            Newest::Double(i) => i.nth(n).copied(),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match self {
            Newest::Single(i) => i.size_hint(),
            Newest::Double(i) => i.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_latest_and_never_grows_past_its_bound() {
        let mut r = Ring::new();
        for i in 0..1000 {
            let dropped = r.push(f64::from(i), 401);
            assert_eq!(dropped, (i >= 401).then(|| f64::from(i - 401)));
        }
        assert_eq!(r.len(), 401);
        assert_eq!(r.iter().next(), Some(599.0));
        assert_eq!(r.iter().next_back(), Some(999.0));
        assert_eq!(r.heap_bytes(), 401 * 8);
        assert_eq!(Ring::<f64>::new().heap_bytes(), 0);
        // A higher bound keeps more from then on, and never drops what the ring holds.
        for i in 1000..1200 {
            r.push(f64::from(i), 500);
        }
        assert_eq!((r.len(), r.iter().next()), (500, Some(700.0)));
    }

    #[test]
    fn values_read_back_exactly_and_stay_single_while_they_can() {
        let mut v = Values::default();
        let mut pushed = Vec::new();
        for i in 0..1000 {
            // Multiples of 2^-10 and both signs of zero: all exact in single precision.
            let x = match i % 5 {
                0 => -0.0,
                _ => f64::from(i) * 3.0 / 1024.0 - 1.0,
            };
            v.push(x, 401);
            pushed.push(x);
        }
        assert!(matches!(v, Values::Single(_)));
        assert_eq!(v.heap_bytes(), 401 * 4);
        assert_eq!(v.newest_differences().count(), 400);
        let same = |v: &Values, pushed: &[f64]| {
            let want = pushed.iter().rev().take(v.newest().count()).map(|x| x.to_bits());
            v.newest().map(f64::to_bits).eq(want)
        };
        assert!(same(&v, &pushed) && v.newest().count() == 401);
        assert_eq!(v.newest().nth(3), Some(pushed[pushed.len() - 4]));
        // The first value single precision cannot hold turns the ring double, keeping what it holds.
        for x in [0.1, 1e300, 7.0] {
            v.push(x, 401);
            pushed.push(x);
        }
        assert!(matches!(v, Values::Double(_)));
        assert!(same(&v, &pushed));
        for i in 0..200 {
            v.push(f64::from(i), 500);
            pushed.push(f64::from(i));
        }
        assert!(same(&v, &pushed) && v.newest().count() == 500);
        assert!(v.newest_differences().take(199).all(|d| d == 1.0));
    }
}
