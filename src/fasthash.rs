//! A fast, unkeyed hasher for the two maps looked up on every request whose keys an attacker
//! cannot insert: the matcher's static path segments (built from `routes.toml`) and a worker's
//! remembered session answers (a cookie is only inserted once it named a live session).
//!
//! std's default SipHash is keyed against hash flooding, which needs an attacker who chooses
//! the keys that go *in*; a lookup with a chosen key can at worst probe the few groups of a
//! table that never grows from it. This multiply hash (rustc's FxHasher, eight bytes per step,
//! with a folded multiply at the end) in both maps took about 400 instructions off each proxied
//! request (`scripts/instructions.sh`: 28,538 -> 28,131).

use std::hash::{BuildHasherDefault, Hasher};

/// The multiplier of rustc's FxHasher (an odd constant with well-spread bits).
const K: u64 = 0xf135_7aea_2e62_a9c5;
/// The final folded multiply's constant (wyhash's first prime).
const FOLD: u64 = 0xa076_1d64_78bd_642f;

#[derive(Debug, Default, Clone, Copy)]
pub struct FxHasher(u64);

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0 ^ word).wrapping_mul(K);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().expect("eight bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut last = [0u8; 8];
            last[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(last));
        }
        // The length tells "ab" from "ab\0".
        self.add(bytes.len() as u64);
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        // A multiply carries only upward, so the state's low bits (where hashbrown takes its
        // bucket index) depend on few input bits: fold the 128-bit product once more so every
        // output bit depends on every state bit.
        let m = u128::from(self.0) * u128::from(FOLD);
        (m as u64) ^ ((m >> 64) as u64)
    }
}

/// `HashMap<K, V, FxBuild>`: see the module's note on when it may be used.
pub type FxBuild = BuildHasherDefault<FxHasher>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};
    use std::hash::BuildHasher;

    #[test]
    fn distinct_short_keys_hash_apart_and_maps_find_them() {
        let build = FxBuild::default();
        let keys: Vec<String> = (0..20_000)
            .map(|i| format!("seg{i}"))
            .chain(["", "a", "a\0", "ab", "ba", "ops", "ops/", "console"].map(String::from))
            .collect();
        let hashes: HashSet<u64> = keys.iter().map(|k| build.hash_one(k)).collect();
        assert_eq!(hashes.len(), keys.len(), "a collision among short keys");
        // Bucket indexes come from the low bits: they must spread too.
        let low: HashSet<u64> = keys.iter().map(|k| build.hash_one(k) & 0xffff).collect();
        assert!(low.len() > 15_000, "low bits spread poorly: {}", low.len());
        let map: HashMap<&str, usize, FxBuild> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k.as_str(), i))
            .collect();
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(map.get(k.as_str()), Some(&i));
        }
        assert_eq!(map.get("seg20000"), None);
    }
}
