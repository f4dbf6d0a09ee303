//! The header names and values of Console's answers on one upstream connection, kept from one
//! answer to the next ([`Names`]): [`super::head::parse_response`] reads each name and value
//! through them.
//!
//! **Replaces** nothing: `HeaderName::from_bytes` and `HeaderValue::from_bytes` still make every
//! name and value the first time; a later answer with the same bytes gets a clone of what they
//! made. **Pinned by** `cached_names_and_values_are_what_from_bytes_gives` below and the
//! property test `a_connections_names_and_values_read_as_a_fresh_parse` (`head.rs`).

use http::header::{self, HeaderName, HeaderValue};

/// The header names already read on one connection, by their bytes as received, and for the
/// few that hold the same value in every answer (`KEPT_VALUES`) the last value handed on.
/// Console sends the same few names in every answer; finding one here (a length and a byte
/// comparison) is cheaper than [`HeaderName::from_bytes`], which checks and lower-cases every
/// byte and then looks the name up among the standard ones. For a kept value, the same bytes as
/// the last time give a clone of the same [`HeaderValue`] (a reference count), not a new one
/// checked byte by byte, allocated and copied. A name or value is only ever cached as
/// `from_bytes` gave it for exactly the same bytes, so the result is the same
/// (`cached_names_and_values_are_what_from_bytes_gives`,
/// `a_connections_names_and_values_read_as_a_fresh_parse`).
#[derive(Default)]
pub struct Names(Vec<Seen>);

/// Only the names: a kept value is Console's, not for a log line.
impl std::fmt::Debug for Names {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|seen| seen.name.as_str()))
            .finish()
    }
}

struct Seen {
    raw: Box<[u8]>,
    name: HeaderName,
    /// Its values are kept ([`KEPT_VALUES`]).
    keeps: bool,
    /// The last value handed on under this name, when its values are kept.
    last: Option<HeaderValue>,
}

/// The names whose value is kept for the next answer: those a site sends alike in every answer
/// (what its pages are, who serves them, its caching and security policies). Nothing that can
/// hold a user's data or a secret is kept past its answer (`Set-Cookie`, `Location`,
/// `Content-Disposition`, custom headers), nor a value that changes with each answer (`ETag`,
/// `Last-Modified`), which would only cost a copy more.
const KEPT_VALUES: [HeaderName; 11] = [
    header::CONTENT_TYPE,
    header::SERVER,
    header::VARY,
    header::CACHE_CONTROL,
    header::X_FRAME_OPTIONS,
    header::X_CONTENT_TYPE_OPTIONS,
    header::REFERRER_POLICY,
    header::STRICT_TRANSPORT_SECURITY,
    header::CONTENT_LANGUAGE,
    HeaderName::from_static("cross-origin-opener-policy"),
    HeaderName::from_static("cross-origin-resource-policy"),
];

/// Where a name was found: its slot, if it has one.
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
            keeps: KEPT_VALUES.contains(&name),
            name: name.clone(),
            last: None,
        });
        Ok((name, Slot(Some(self.0.len() - 1))))
    }

    /// The value `raw` of the header found at `slot`: the last one's clone when its values are
    /// kept and the bytes are the same, otherwise a new one (kept for the next answer if its
    /// values are).
    pub(super) fn value(
        &mut self,
        slot: Slot,
        raw: &[u8],
    ) -> Result<HeaderValue, http::header::InvalidHeaderValue> {
        let Some(seen) = slot.0.map(|i| &mut self.0[i]).filter(|seen| seen.keeps) else {
            return HeaderValue::from_bytes(raw);
        };
        if let Some(value) = &seen.last {
            // `from_bytes` keeps the bytes as they are: equal bytes, the same value.
            if value.as_bytes() == raw {
                return Ok(value.clone());
            }
        }
        let value = HeaderValue::from_bytes(raw)?;
        seen.last = (raw.len() <= Self::MAX_VALUE).then(|| value.clone());
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
        // A kept name's last value is kept: `""`, after `text/plain` replaced `text/html`; a
        // custom header's is not.
        assert_eq!(names.0[0].last.as_ref().unwrap().as_bytes(), b"");
        assert!(names.0[2].last.is_none() && names.0[3].last.is_none());
        // Cookies, locations and long values are not kept.
        for (raw, value) in [
            (&b"Set-Cookie"[..], &b"s=1"[..]),
            (b"Location", b"/reset?token=x"),
            (b"Cache-Control", &[b'a'; Names::MAX_VALUE + 1]),
        ] {
            let (_, slot) = names.get(raw).unwrap();
            assert_eq!(names.value(slot, value).unwrap().as_bytes(), value);
        }
        assert!(names.0[4..7].iter().all(|seen| seen.last.is_none()));
        let (_, slot) = names.get(b"Cache-Control").unwrap();
        names.value(slot, b"no-store").unwrap();
        assert_eq!(names.0[6].last.as_ref().unwrap(), "no-store");
        assert_eq!(
            format!("{names:?}"),
            r#"["content-type", "content-type", "x-custom", "x-custom", "set-cookie", "location", "cache-control"]"#
        );
        for i in 0..100 {
            let raw = format!("x-{i}");
            let (name, slot) = names.get(raw.as_bytes()).unwrap();
            assert_eq!(name.as_str(), raw);
            assert_eq!(names.value(slot, raw.as_bytes()).unwrap(), raw.as_str());
        }
        assert_eq!(names.0.len(), Names::MAX);
    }
}
