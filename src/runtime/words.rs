//! Bytes eight at a time: the bit tests the gateway's two byte scans share (a request's target,
//! `policy/target.rs`; a log line's strings, [`super::logfmt`]). Each test of a word sets the
//! high bit of every byte that passes it, and may set it in a byte above one that does (a
//! borrow or a carry runs upwards), never below the first: so a word holds such a byte exactly
//! when `found & HIGH != 0`, and `found & HIGH`'s lowest set bit is the first of them (the word
//! read with [`word`], its first byte lowest). These are `haszero`, `hasless` and `hasmore` of
//! "Bit Twiddling Hacks"; `words_tell_each_byte_as_a_test_of_it_does` holds them to a test of
//! each byte.

/// A 1 in each byte.
const ONES: u64 = 0x0101_0101_0101_0101;
/// Each byte's high bit: where the tests below leave their answers.
pub const HIGH: u64 = 0x8080_8080_8080_8080;

/// Eight bytes as one word, the first of them lowest.
#[inline]
pub fn word(eight: &[u8; 8]) -> u64 {
    u64::from_le_bytes(*eight)
}

/// `b` in each byte of a word.
#[inline]
pub fn splat(b: u8) -> u64 {
    ONES * u64::from(b)
}

/// The bytes of `w` below `n` (exact for `n` up to 0x80: a byte at or above 0x80 keeps its high
/// bit out through `!w`).
#[inline]
pub fn below(w: u64, n: u8) -> u64 {
    w.wrapping_sub(splat(n)) & !w
}

/// The bytes of `w` above 0x7e: DEL and every byte outside ASCII (a carry starts only at 0xff,
/// which is one).
#[inline]
pub fn above_ascii_visible(w: u64) -> u64 {
    w.wrapping_add(ONES) | w
}

/// The bytes of `w` equal to `b`.
#[inline]
pub fn equal(w: u64, b: u8) -> u64 {
    let x = w ^ splat(b);
    x.wrapping_sub(ONES) & !x
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every byte value at every place of a word of plain bytes, and a second one above it:
    /// each test finds the word to hold a byte it passes exactly when one does, and names the
    /// first of them.
    #[test]
    fn words_tell_each_byte_as_a_test_of_it_does() {
        type Test = (&'static str, fn(u64) -> u64, fn(u8) -> bool);
        let tests: [Test; 5] = [
            ("below 0x20", |w| below(w, 0x20), |b| b < 0x20),
            ("below 0x21", |w| below(w, 0x21), |b| b < 0x21),
            ("above 0x7e", above_ascii_visible, |b| b > 0x7e),
            ("equal to %", |w| equal(w, b'%'), |b| b == b'%'),
            ("equal to 0", |w| equal(w, 0), |b| b == 0),
        ];
        for (name, test, passes) in tests {
            for plain in [0x21, 0x30, b'a', 0x7e] {
                for at in 0..8 {
                    for b in 0..=255u8 {
                        for second in [plain, 0x00, 0xff, b'%'] {
                            let mut eight = [plain; 8];
                            eight[at] = b;
                            if at < 7 {
                                eight[7] = second;
                            }
                            let first = eight.iter().position(|&x| passes(x));
                            let found = test(word(&eight)) & HIGH;
                            let said = (found != 0).then(|| found.trailing_zeros() as usize / 8);
                            assert_eq!(said, first, "{name}: {eight:x?}");
                        }
                    }
                }
            }
        }
    }
}
