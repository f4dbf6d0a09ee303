//! The header names and values of Console's answers on one upstream connection, kept from one
//! answer to the next ([`Names`]): [`super::head::parse_response`] reads each name and value
//! through them.
//!
//! **Replaces** nothing: `HeaderName::from_bytes` and `HeaderValue::from_bytes` still make every
//! name and value the first time; a later answer with the same bytes gets a clone of what they
//! made. **Pinned by** `cached_names_and_values_are_what_from_bytes_gives` below and the
//! property test `a_connections_names_and_values_read_as_a_fresh_parse` (`head.rs`).

use http::header::{self, HeaderName, HeaderValue};

/// The header names already read on one connection, by their bytes as received, each with the
/// last value handed on under it. Console sends the same few names in every answer; finding one
/// here (a length and a byte comparison) is cheaper than [`HeaderName::from_bytes`], which
/// checks and lower-cases every byte and then looks the name up among the standard ones. Most
/// of their values repeat too (`Content-Type`, `Server`, the security headers): the same bytes
/// as the last time give a clone of the same [`HeaderValue`] (a reference count), not a new one
/// checked byte by byte, allocated and copied. A name or value is only ever cached as
/// `from_bytes` gave it for exactly the same bytes, so the result is the same
/// (`cached_names_and_values_are_what_from_bytes_gives`,
/// `a_connections_names_and_values_read_as_a_fresh_parse`).
#[derive(Debug, Default)]
pub struct Names(Vec<Seen>);

#[derive(Debug)]
struct Seen {
    raw: Box<[u8]>,
    name: HeaderName,
    /// The last value handed on under this name, when it is kept ([`Names::keeps_values`]).
    last: Option<(Box<[u8]>, HeaderValue)>,
}

/// Where a name was found: the slot of its last value, if it has one.
#[derive(Debug, Clone, Copy)]
pub(super) struct Slot(Option<usize>);

impl Names {
    /// Names kept per connection; others are checked each time.
    const MAX: usize = 32;
    /// Longest value kept for the next answer.
    const MAX_VALUE: usize = 256;

    pub(super) fn get(
        &mut self,
        raw: &[u8],
    ) -> Result<(HeaderName, Slot), http::header::InvalidHeaderName> {
        if let Some(i) = self.0.iter().position(|seen| *seen.raw == *raw) {
            return Ok((self.0[i].name.clone(), Slot(Some(i))));
        }
        let name = HeaderName::from_bytes(raw)?;
        if self.0.len() >= Self::MAX {
            return Ok((name, Slot(None)));
        }
        self.0.push(Seen {
            raw: raw.into(),
            name: name.clone(),
            last: None,
        });
        Ok((name, Slot(Some(self.0.len() - 1))))
    }

    /// Values that differ from one answer to the next by design are not kept: a cookie is not
    /// held past its answer, and keeping it would only replace one value with the next.
    fn keeps_values(name: &HeaderName) -> bool {
        *name != header::SET_COOKIE
    }

    /// The value `raw` of the header found at `slot`: the last one's clone when the bytes are
    /// the same, otherwise a new one (kept for the next answer).
    pub(super) fn value(
        &mut self,
        slot: Slot,
        raw: &[u8],
    ) -> Result<HeaderValue, http::header::InvalidHeaderValue> {
        let Some(seen) = slot.0.map(|i| &mut self.0[i]) else {
            return HeaderValue::from_bytes(raw);
        };
        if let Some((bytes, value)) = &seen.last {
            if **bytes == *raw {
                return Ok(value.clone());
            }
        }
        let value = HeaderValue::from_bytes(raw)?;
        if raw.len() <= Self::MAX_VALUE && Self::keeps_values(&seen.name) {
            seen.last = Some((raw.into(), value.clone()));
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_names_and_values_are_what_from_bytes_gives() {
        let mut names = Names::default();
        for _ in 0..2 {
            for raw in [
                &b"Content-Type"[..],
                b"content-type",
                b"X-Custom",
                b"x-custom",
            ] {
                let (name, slot) = names.get(raw).unwrap();
                assert_eq!(name, HeaderName::from_bytes(raw).unwrap());
                for value in [&b"text/html"[..], b"text/html", b"text/plain", b""] {
                    assert_eq!(
                        names.value(slot, value).unwrap(),
                        HeaderValue::from_bytes(value).unwrap()
                    );
                }
                assert!(names.value(slot, b"a\x7fb").is_err(), "refused as before");
                assert!(names.value(slot, b"a\r\nb").is_err());
            }
            assert!(names.get(b"bad name").is_err());
            assert!(names.get(b"").is_err());
        }
        assert_eq!(
            names.0.len(),
            4,
            "one entry per spelling, none for a refused name"
        );
        // The last value is kept: `""`, after `text/plain` replaced `text/html`.
        assert_eq!(names.0[0].last.as_ref().unwrap().0.len(), 0);
        // Cookies and long values are not kept.
        let (_, slot) = names.get(b"Set-Cookie").unwrap();
        names.value(slot, b"s=1").unwrap();
        let long = vec![b'a'; Names::MAX_VALUE + 1];
        let (_, long_slot) = names.get(b"X-Long").unwrap();
        assert_eq!(names.value(long_slot, &long).unwrap().len(), long.len());
        assert!(names.0[4].last.is_none() && names.0[5].last.is_none());
        for i in 0..100 {
            let raw = format!("x-{i}");
            let (name, slot) = names.get(raw.as_bytes()).unwrap();
            assert_eq!(name.as_str(), raw);
            assert_eq!(names.value(slot, raw.as_bytes()).unwrap(), raw.as_str());
        }
        assert_eq!(names.0.len(), Names::MAX);
    }
}
