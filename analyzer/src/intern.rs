//! String interning for the hot path: a name seen before costs one hash of its bytes and no allocation.

use std::hash::BuildHasher;
use std::sync::Arc;

use hashbrown::HashTable;

/// Maps byte strings to dense `u32` ids and back. One per shard, never shared, so no lock.
#[derive(Default)]
pub struct Interner {
    table: HashTable<u32>,
    strings: Vec<Arc<str>>,
    hasher: foldhash::fast::FixedState,
}

impl Interner {
    /// The id of `bytes` if it was interned before.
    #[inline]
    pub fn get(&self, bytes: &[u8]) -> Option<u32> {
        let h = self.hasher.hash_one(bytes);
        self.table
            .find(h, |&i| self.strings[i as usize].as_bytes() == bytes)
            .copied()
    }

    /// The id of `bytes`, interning it when new (invalid UTF-8 is replaced, never rejected here).
    #[inline]
    pub fn id(&mut self, bytes: &[u8]) -> u32 {
        let Interner {
            table,
            strings,
            hasher,
        } = self;
        let h = hasher.hash_one(bytes);
        if let Some(&i) = table.find(h, |&i| strings[i as usize].as_bytes() == bytes) {
            return i;
        }
        let i = strings.len() as u32;
        strings.push(String::from_utf8_lossy(bytes).into());
        table.insert_unique(h, i, |&j| hasher.hash_one(strings[j as usize].as_bytes()));
        i
    }

    /// The string behind an id.
    pub fn resolve(&self, id: u32) -> &Arc<str> {
        &self.strings[id as usize]
    }

    pub fn len(&self) -> usize {
        self.strings.len()
    }

    pub fn is_empty(&self) -> bool {
        self.strings.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_dense() {
        let mut i = Interner::default();
        assert_eq!(i.id(b"a"), 0);
        assert_eq!(i.id(b"b"), 1);
        assert_eq!(i.id(b"a"), 0);
        assert_eq!(i.get(b"b"), Some(1));
        assert_eq!(i.get(b"c"), None);
        assert_eq!(&**i.resolve(1), "b");
        assert_eq!(i.len(), 2);
    }
}
