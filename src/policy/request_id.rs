//! The request id every door gives a request (`X-Request-Id` on the answer and to Console,
//! `request_id` in log lines and audit rows).

/// A request id: [`crate::policy::outcome::unique_id`] in 32 hex digits, the one scheme of every door
/// (`X-Request-Id` on the answer and to Console, `request_id` in log lines and audit rows), or,
/// with `--trust-request-id`, the id a trusted router sent ([`RequestId::trusted`]).
/// Unique without a getrandom syscall per request (measured in the load benchmark's profile).
/// Its text is checked once, when it is made: [`RequestId::as_str`] is free, however often the
/// aftermath asks (it was a UTF-8 check per call on a 201-byte copy, 3 a request).
#[derive(Clone)]
pub struct RequestId {
    text: Box<str>,
}

impl RequestId {
    /// The longest id taken from a router (Heroku's rule: 20 to 200 characters).
    pub const MAX: usize = 200;
    /// The shortest id taken from a router.
    pub const MIN: usize = 20;

    pub fn next() -> RequestId {
        // The id's first half is the process's (`unique_id`): its digits are written once.
        static FIRST_HALF: std::sync::OnceLock<[u8; 16]> = std::sync::OnceLock::new();
        let id = crate::policy::outcome::unique_id();
        let mut hex = [0u8; 32];
        hex[..16].copy_from_slice(FIRST_HALF.get_or_init(|| {
            let mut half = [0u8; 16];
            hex_into(&mut half, &id[..8]);
            half
        }));
        hex_into(&mut hex[16..], &id[8..]);
        RequestId {
            text: std::str::from_utf8(&hex).expect("hex digits").into(),
        }
    }

    /// The id a trusted router sent in `X-Request-Id` (`--trust-request-id`), if it is one:
    /// exactly one such header, 20 to 200 characters of `A-Z a-z 0-9 + / = -` (Heroku's router
    /// passes such an id on and replaces anything else with a UUID). None: generate one.
    pub fn trusted(headers: &http::HeaderMap) -> Option<RequestId> {
        let mut values = headers.get_all(crate::policy::headers::X_REQUEST_ID).iter();
        let v = values.next()?.as_bytes();
        if values.next().is_some() {
            return None;
        }
        Self::of_valid(v)
    }

    /// The id of a traced request: `<trace id>-<span id>` of its server span, in lower-case hex
    /// (49 characters), written from the ids' bytes: valid by construction, nothing to check
    /// (it was formatted as text, then checked as a router's id, which cost instructions on
    /// every traced request).
    pub fn of_trace(trace_id: &[u8; 16], span_id: &[u8; 8]) -> RequestId {
        let mut text = [b'-'; 49];
        hex_into(&mut text[..32], trace_id);
        hex_into(&mut text[33..], span_id);
        RequestId {
            text: std::str::from_utf8(&text).expect("hex digits").into(),
        }
    }

    /// `v` as the request's id, if it is a valid one ([`RequestId::valid`]).
    fn of_valid(v: &[u8]) -> Option<RequestId> {
        if !Self::valid(v) {
            return None;
        }
        Some(RequestId {
            text: std::str::from_utf8(v).ok()?.into(),
        })
    }

    /// Whether `v` may be taken as a request id from a trusted router.
    pub fn valid(v: &[u8]) -> bool {
        (Self::MIN..=Self::MAX).contains(&v.len())
            && v.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'=' | b'-'))
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.text.as_bytes()
    }

    pub fn header(&self) -> http::HeaderValue {
        http::HeaderValue::from_str(&self.text).expect("checked characters")
    }
}

/// Lower-case hex of `bytes` into `out` (two digits a byte).
#[inline]
fn hex_into(out: &mut [u8], bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 15)];
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::RequestId;

    #[test]
    fn a_routers_or_a_traces_id_is_taken_only_when_valid() {
        let traced = RequestId::of_trace(
            &[
                0x0a, 0xf7, 0x65, 0x19, 0x16, 0xcd, 0x43, 0xdd, 0x84, 0x48, 0xeb, 0x21, 0x1c, 0x80,
                0x31, 0x9c,
            ],
            &[0xb7, 0xad, 0x6b, 0x71, 0x69, 0x20, 0x33, 0x31],
        );
        let id = "0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331";
        assert_eq!(traced.as_str(), id);
        assert!(
            RequestId::valid(traced.as_bytes()),
            "a router's id would pass"
        );
        assert!(!RequestId::valid(b"short"));
        assert!(!RequestId::valid(b"has a space in it, twenty+"));
        let mut h = http::HeaderMap::new();
        assert!(RequestId::trusted(&h).is_none(), "none sent");
        h.insert("x-request-id", "f2a7c1e0-heroku-router-id".parse().unwrap());
        assert_eq!(
            RequestId::trusted(&h).unwrap().as_str(),
            "f2a7c1e0-heroku-router-id"
        );
        h.append("x-request-id", "f2a7c1e0-heroku-router-id".parse().unwrap());
        assert!(RequestId::trusted(&h).is_none(), "sent twice");
        assert_eq!(RequestId::next().as_str().len(), 32);
    }

    #[test]
    fn generated_ids_are_the_process_half_and_the_counter_in_hex() {
        let (a, b) = (RequestId::next(), RequestId::next());
        let id = crate::policy::outcome::unique_id();
        let mut half = [0u8; 16];
        super::hex_into(&mut half, &id[..8]);
        for x in [&a, &b] {
            assert_eq!(&x.as_bytes()[..16], &half, "the process's half");
            assert!(x.as_bytes().iter().all(|c| c.is_ascii_hexdigit()));
        }
        let counter = |x: &RequestId| u64::from_str_radix(&x.as_str()[16..], 16).unwrap();
        let now = u64::from_be_bytes(id[8..].try_into().unwrap());
        assert!(
            counter(&a) < counter(&b) && counter(&b) < now,
            "the counter's digits"
        );
    }
}
