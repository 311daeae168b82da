//! [`Ring`]: the latest `cap` items of a stream, oldest first, in no more memory than `cap` items need.
//!
//! The detectors keep one per signal per service (their windows of recent values, the mixture's training
//! windows), so the slack a growing `VecDeque` leaves (its capacity doubles: 512 slots for a window of 401)
//! is paid thousands of times over. A `Ring` grows the same way up to its bound and never past it, and
//! allocates nothing until its first item. [`Values`] is a ring of a series' values that holds them in
//! a quarter of the memory while they are whole counts of 2^-10 up to 64, in half while they fit single
//! precision exactly.

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

    /// The same items as `U`s, with room for one more.
    fn widened<U>(&self, f: impl Fn(T) -> U) -> Ring<U> {
        let mut items = VecDeque::with_capacity(self.items.len() + 1);
        items.extend(self.items.iter().copied().map(f));
        Ring { items }
    }
}

/// The step of [`Values::Fixed`], and the share of its resolution a detector rounds its values to
/// (`Tidewatch::with_resolution`): at the health monitor's resolution of one unit, the two are the same
/// quantum, so its values fit.
pub const FIXED_STEP: f64 = 1.0 / 1024.0;

/// `x` as a whole count of [`FIXED_STEP`]s that reads back as the same bits, if it is one (not -0.0,
/// not past 65,535 steps).
fn fixed(x: f64) -> Option<u16> {
    // Scaling by a power of two is exact, so a whole `k` in range means `x` is exactly `k` steps.
    let k = x / FIXED_STEP;
    (x.is_sign_positive() && k <= f64::from(u16::MAX) && k.fract() == 0.0).then_some(k as u16)
}

/// The latest values of a series, read back exactly as they were pushed: as 16-bit counts of 2^-10
/// while every value pushed is one (0 to 64 in steps of 1/1024), in single precision while every value
/// is exactly an `f32`, in double precision from the first one that is not. The health monitor's
/// detectors round their values to 1/1024 of their resolution (`Tidewatch::with_resolution`) and feed
/// rate, errors and p95 in units of a noticeable change (0 to 64 for any rate or p95 under a million),
/// so theirs take two bytes a value; a series of arbitrary values, such as NAB's, turns double at
/// once. Either way the detector reads the same values.
#[derive(Clone, Debug)]
pub enum Values {
    Fixed(Ring<u16>),
    Single(Ring<f32>),
    Double(Ring<f64>),
}

impl Default for Values {
    fn default() -> Values {
        Values::Fixed(Ring::new())
    }
}

impl Values {
    /// Appends `x` to a ring of at most `cap` values (as [`Ring::push`]), dropping the oldest value when
    /// the ring is full.
    pub fn push(&mut self, x: f64, cap: usize) {
        if let Values::Fixed(r) = self {
            if let Some(k) = fixed(x) {
                r.push(k, cap);
                return;
            }
            // Exact: a count of 2^-10 below 2^16 has at most 16 significant bits.
            *self = Values::Single(r.widened(|k| f32::from(k) * FIXED_STEP as f32));
        }
        if let Values::Single(r) = self {
            let narrow = x as f32;
            if f64::from(narrow).to_bits() == x.to_bits() {
                r.push(narrow, cap);
                return;
            }
            *self = Values::Double(r.widened(f64::from));
        }
        if let Values::Double(r) = self {
            r.push(x, cap);
        }
    }

    /// The values, newest first.
    pub fn newest(&self) -> Newest<'_> {
        match self {
            Values::Fixed(r) => Newest::Fixed(r.items.iter().rev()),
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
            Values::Fixed(r) => r.heap_bytes(),
            Values::Single(r) => r.heap_bytes(),
            Values::Double(r) => r.heap_bytes(),
        }
    }
}

/// [`Values::newest`].
#[derive(Clone, Debug)]
pub enum Newest<'a> {
    Fixed(Rev<vec_deque::Iter<'a, u16>>),
    Single(Rev<vec_deque::Iter<'a, f32>>),
    Double(Rev<vec_deque::Iter<'a, f64>>),
}

impl Iterator for Newest<'_> {
    type Item = f64;

    fn next(&mut self) -> Option<f64> {
        match self {
            Newest::Fixed(i) => i.next().map(|&k| f64::from(k) * FIXED_STEP),
            Newest::Single(i) => i.next().copied().map(f64::from),
            Newest::Double(i) => i.next().copied(),
        }
    }

    fn nth(&mut self, n: usize) -> Option<f64> {
        match self {
            Newest::Fixed(i) => i.nth(n).map(|&k| f64::from(k) * FIXED_STEP),
            Newest::Single(i) => i.nth(n).copied().map(f64::from),
            Newest::Double(i) => i.nth(n).copied(),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match self {
            Newest::Fixed(i) => i.size_hint(),
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

    /// Whether `v` reads back the last values of `pushed`, bit for bit, newest first.
    fn reads_back(v: &Values, pushed: &[f64]) -> bool {
        let want = pushed.iter().rev().take(v.newest().count()).map(|x| x.to_bits());
        v.newest().map(f64::to_bits).eq(want)
    }

    #[test]
    fn values_in_steps_of_a_1024th_take_two_bytes_until_one_is_not() {
        let mut v = Values::default();
        let mut pushed = Vec::new();
        for i in 0..1000u32 {
            // What the health monitor feeds: units of a noticeable change, rounded to 1/1024 of one.
            let x = f64::from(i * 65) / 1024.0;
            v.push(x, 401);
            pushed.push(x);
        }
        assert!(matches!(v, Values::Fixed(_)));
        assert_eq!(v.heap_bytes(), 401 * 2);
        assert!(reads_back(&v, &pushed) && v.newest().count() == 401);
        assert_eq!(v.newest().nth(5), Some(pushed[pushed.len() - 6]));
        // 64 is one step past the largest count; -0.0, a negative or a finer step would not fit either.
        for bad in [64.0, -0.0, -1.0 / 1024.0, 1.0 / 2048.0] {
            let mut w = v.clone();
            w.push(bad, 401);
            assert!(matches!(w, Values::Single(_)), "{bad}");
            let mut p = pushed.clone();
            p.push(bad);
            assert!(reads_back(&w, &p) && w.newest().count() == 401, "{bad}");
        }
        let mut w = v.clone();
        w.push(0.1, 401);
        assert!(matches!(w, Values::Double(_)));
        pushed.push(0.1);
        assert!(reads_back(&w, &pushed));
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
        assert!(reads_back(&v, &pushed) && v.newest().count() == 401);
        assert_eq!(v.newest().nth(3), Some(pushed[pushed.len() - 4]));
        // The first value single precision cannot hold turns the ring double, keeping what it holds.
        for x in [0.1, 1e300, 7.0] {
            v.push(x, 401);
            pushed.push(x);
        }
        assert!(matches!(v, Values::Double(_)));
        assert!(reads_back(&v, &pushed));
        for i in 0..200 {
            v.push(f64::from(i), 500);
            pushed.push(f64::from(i));
        }
        assert!(reads_back(&v, &pushed) && v.newest().count() == 500);
        assert!(v.newest_differences().take(199).all(|d| d == 1.0));
    }
}
