//! The session cookie, read exactly as Console reads it, or refused.
//!
//! Owns one pure function, [`session`]: every raw `Cookie` header value of a request in, the
//! session token Console will act on and the `Cookie` value to forward out (or a refusal, 400).
//! No I/O, no allocation unless repeated headers without the session cookie must be joined.
//!
//! # What Console reads
//! Console runs under gunicorn and reads `request.cookies.get(name)` (Werkzeug 3.x):
//! 1. gunicorn joins repeated `Cookie` headers with `","` into `HTTP_COOKIE`
//!    (gunicorn/http/wsgi.py `create`: the `repeated` dict, then `",".join(values)`), after
//!    stripping spaces and tabs around each value and refusing control bytes.
//! 2. Werkzeug decodes it as latin-1 and runs `parse_cookie` (werkzeug/sansio/http.py):
//!    `_cookie_re` finds `name \s*=\s* ("quoted with \\escapes" | lazy-anything) \s*;\s*`,
//!    strips both sides with `str.strip()` (which also strips `\x1c-\x1f`, `\x85`, `\xa0`),
//!    unescapes `\"`, `\\` and octal `\073` inside a DQUOTE-wrapped value, and keeps every pair
//!    in order; `.get` returns the first.
//!
//! A comma is not a separator there: `a=1, console_session=x` is the one cookie `a` with value
//! `1, console_session=x`, and two `Cookie` headers `a=1` and `console_session=x` give Console
//! no session at all. Quotes hide `;`, spaces around `=` are dropped, escapes are decoded.
//!
//! # The design: a strict subset where equality is provable, refusal elsewhere
//! Re-implementing the regex (lazy match, backtracking into the quoted alternative, Unicode
//! `strip`, octal escapes, the comma join) would be a second parser that must agree with the
//! first on every byte. Instead, when any `Cookie` header **mentions the session cookie's name**
//! (the name's bytes occur anywhere in it), the request must be in a subset on which Werkzeug's
//! reading is the obvious one, or it is refused:
//! - exactly one `Cookie` header (no gunicorn join);
//! - only bytes `0x20..=0x7E`;
//! - `pair *( ";" *SP pair )`, `pair = name "=" value`, nothing before, after or between;
//! - `name` is an RFC 6265 token (no separators, so no `=`, `;`, `"`, space), not starting
//!   with `$` (RFC 2965 attributes, which other parsers skip);
//! - `value` is RFC 6265 `*cookie-octet` (no `"`, `\`, `,`, `;`, space) or that same thing
//!   wrapped in one pair of DQUOTEs;
//! - the session cookie occurs at most once.
//!
//! On that subset `_cookie_re` matches each pair exactly: `([^=;]*)` stops at the name's `=`;
//! the quoted alternative ends at the only other `"`, which a `;` or the end follows; the lazy
//! alternative ends at the first `;` because the value holds no `;` and no whitespace; `\s*`
//! only ever meets the spaces after a `;`; `strip` has nothing to strip; unescaping has no
//! backslash to act on. So Werkzeug's value is the value, minus the DQUOTEs if quoted: the
//! token returned here. The header is forwarded unchanged, so Console reads it the same way.
//!
//! A header that does **not** mention the name cannot give Console a session: Werkzeug's cookie
//! names are contiguous substrings of the latin-1 decoded, comma-joined header (one character
//! per byte, the join only adds commas, `strip` only removes characters), so a name equal to
//! the session cookie's needs its bytes in one raw header. Such headers are passed on however
//! odd they are (a broken third-party cookie must not lock users out of Console), joined with
//! `","` as gunicorn would when repeated; only control bytes, which gunicorn itself refuses
//! with a 400, are refused here. `tests/api/cookie_differential.rs` checks all of this against
//! gunicorn's and Werkzeug's own code over generated headers.

use std::borrow::Cow;

/// What the request carries, as Console will read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieSession<'a> {
    /// The session cookie's value as Werkzeug's `request.cookies.get(name)` returns it (DQUOTEs
    /// removed); `None` when Console will see no session cookie. May be empty (`name=""`).
    pub token: Option<&'a str>,
    /// The one `Cookie` header value to send upstream instead of the request's own, or `None`
    /// to send none. Borrowed when it is the request's single header, unchanged.
    pub forward: Option<Cow<'a, [u8]>>,
}

/// Why a request's `Cookie` headers are refused (400). `as_str` is the log and metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CookieRefusal {
    /// The session cookie is named in one of several `Cookie` headers (gunicorn would join them
    /// with `,`, hiding or moving it).
    #[error("session cookie in a repeated Cookie header")]
    RepeatedHeader,
    /// A byte outside visible ASCII and space in a header naming the session cookie.
    #[error("byte outside visible ASCII in a Cookie header naming the session cookie")]
    Byte,
    /// Not `name=value; name=value` (quotes, escapes, whitespace, a missing `=`, an empty or
    /// non-token name, a trailing `;`...) in a header naming the session cookie.
    #[error("Cookie header naming the session cookie is outside the accepted syntax")]
    Syntax,
    /// A `$`-prefixed name (RFC 2965 attribute) in a header naming the session cookie.
    #[error("$-attribute in a Cookie header naming the session cookie")]
    Attribute,
    /// The session cookie occurs twice (Console takes the first; the gateway takes neither).
    #[error("session cookie given twice")]
    DuplicateSession,
    /// A control byte (gunicorn refuses the request itself).
    #[error("control byte in a Cookie header")]
    ControlByte,
}

impl CookieRefusal {
    /// Every variant, for metrics initialised at start-up.
    pub const ALL: [CookieRefusal; 6] = [
        CookieRefusal::RepeatedHeader,
        CookieRefusal::Byte,
        CookieRefusal::Syntax,
        CookieRefusal::Attribute,
        CookieRefusal::DuplicateSession,
        CookieRefusal::ControlByte,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            CookieRefusal::RepeatedHeader => "cookie_repeated_header",
            CookieRefusal::Byte => "cookie_byte",
            CookieRefusal::Syntax => "cookie_syntax",
            CookieRefusal::Attribute => "cookie_attribute",
            CookieRefusal::DuplicateSession => "cookie_duplicate_session",
            CookieRefusal::ControlByte => "cookie_control_byte",
        }
    }
}

/// Reads the session cookie `name` from every raw `Cookie` header value of one request, in the
/// order received (header values as the HTTP parser gives them, without the field name).
///
/// `name` must be a non-empty RFC 6265 token (the `--session-cookie` flag).
pub fn session<'a>(headers: &[&'a [u8]], name: &str) -> Result<CookieSession<'a>, CookieRefusal> {
    let name = name.as_bytes();
    match headers {
        [] => Ok(CookieSession {
            token: None,
            forward: None,
        }),
        // One header, the usual request: read in the subset first, and searched for the name
        // only when outside it. The same answers as searching first: a header in the subset
        // that does not name the session cookie holds no control byte and is forwarded
        // unchanged, as `pass_through` forwards it; one that names it is read the same way
        // either way (a search cost about 150 instructions a request, docs/performance-log.md,
        // 2026-11-28, late night).
        [header] => match strict(header, name) {
            Ok(token) => Ok(CookieSession {
                token,
                forward: Some(Cow::Borrowed(*header)),
            }),
            Err(refusal) if mentions(header, name) => Err(refusal),
            Err(_) => pass_through(headers),
        },
        many if many.iter().any(|h| mentions(h, name)) => Err(CookieRefusal::RepeatedHeader),
        many => pass_through(many),
    }
}

fn mentions(header: &[u8], name: &[u8]) -> bool {
    memchr::memmem::find(header, name).is_some()
}

/// Headers that cannot name the session cookie: on as they are, joined the way gunicorn joins
/// them (values trimmed of spaces and tabs, then `,`), so Console reads the same `HTTP_COOKIE`.
fn pass_through<'a>(headers: &[&'a [u8]]) -> Result<CookieSession<'a>, CookieRefusal> {
    // gunicorn refuses these itself (RFC9110_5_5_INVALID_AND_DANGEROUS in gunicorn/http/message.py).
    if headers
        .iter()
        .any(|h| h.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7F))
    {
        return Err(CookieRefusal::ControlByte);
    }
    let forward = match headers {
        [one] => Cow::Borrowed(*one),
        many => {
            let mut joined = Vec::with_capacity(many.iter().map(|h| h.len() + 1).sum());
            for (i, h) in many.iter().enumerate() {
                if i > 0 {
                    joined.push(b',');
                }
                joined.extend_from_slice(h.trim_ascii_start().trim_ascii_end());
            }
            Cow::Owned(joined)
        }
    };
    Ok(CookieSession {
        token: None,
        forward: Some(forward),
    })
}

/// RFC 6265 token characters (RFC 2616 `token`: no CTL, no separator).
const fn is_token(b: u8) -> bool {
    b.is_ascii_graphic()
        && !matches!(
            b,
            b'(' | b')'
                | b'<'
                | b'>'
                | b'@'
                | b','
                | b';'
                | b':'
                | b'\\'
                | b'"'
                | b'/'
                | b'['
                | b']'
                | b'?'
                | b'='
                | b'{'
                | b'}'
        )
}

/// RFC 6265 `cookie-octet`.
const fn is_cookie_octet(b: u8) -> bool {
    b.is_ascii_graphic() && !matches!(b, b'"' | b',' | b';' | b'\\')
}

/// [`CLASS`] bits: an RFC 6265 token byte, a `cookie-octet`.
const TOKEN: u8 = 1;
const OCTET: u8 = 2;

/// The class of every byte, one lookup per byte of a cookie.
static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = if is_token(c) { TOKEN } else { 0 } | if is_cookie_octet(c) { OCTET } else { 0 };
        b += 1;
    }
    t
};

/// The bytes of `header` from `i` on that are in `class`; returns the first index past them.
fn skip(header: &[u8], mut i: usize, class: u8) -> usize {
    while i < header.len() && CLASS[header[i] as usize] & class != 0 {
        i += 1;
    }
    i
}

/// The strict subset (see the module doc); the session cookie's value when present once. A
/// byte outside visible ASCII is reported as such whatever else is wrong.
fn strict<'a>(header: &'a [u8], name: &[u8]) -> Result<Option<&'a str>, CookieRefusal> {
    // A header in the subset holds only visible ASCII and spaces: looked at only when refused.
    strict_syntax(header, name).map_err(|refusal| {
        if header.iter().any(|&b| !(0x20..=0x7E).contains(&b)) {
            CookieRefusal::Byte
        } else {
            refusal
        }
    })
}

fn strict_syntax<'a>(header: &'a [u8], name: &[u8]) -> Result<Option<&'a str>, CookieRefusal> {
    let mut token: Option<&'a [u8]> = None;
    let mut i = 0;
    loop {
        let start = i;
        i = skip(header, i, TOKEN);
        let key = &header[start..i];
        if key.is_empty() || header.get(i) != Some(&b'=') {
            return Err(CookieRefusal::Syntax);
        }
        if key[0] == b'$' {
            return Err(CookieRefusal::Attribute);
        }
        i += 1;
        let value = if header.get(i) == Some(&b'"') {
            let inner = i + 1;
            let end = skip(header, inner, OCTET);
            if header.get(end) != Some(&b'"') {
                return Err(CookieRefusal::Syntax);
            }
            i = end + 1;
            &header[inner..end]
        } else {
            let begin = i;
            i = skip(header, i, OCTET);
            &header[begin..i]
        };
        if key == name {
            if token.is_some() {
                return Err(CookieRefusal::DuplicateSession);
            }
            token = Some(value);
        }
        match header.get(i) {
            None => break,
            Some(b';') => {
                i += 1;
                while header.get(i) == Some(&b' ') {
                    i += 1;
                }
            }
            Some(_) => return Err(CookieRefusal::Syntax),
        }
    }
    // Only cookie-octets got here (visible ASCII), so this never fails.
    Ok(token.map(|t| std::str::from_utf8(t).unwrap_or_default()))
}

/// The session cookie in `headers` as Console will read it, for the doors that forward nothing
/// themselves (forward-auth): `Ok(None)` without a `Cookie` header, a refusal (400) for a
/// `Cookie` header Console could read differently. The data plane reads the same way and also
/// decides what it forwards (`doors::proxy`).
pub fn session_token<'a>(
    headers: &'a http::HeaderMap,
    name: &str,
) -> Result<Option<&'a str>, crate::policy::target::Refusal> {
    let values: Vec<&[u8]> = headers
        .get_all(http::header::COOKIE)
        .iter()
        .map(http::HeaderValue::as_bytes)
        .collect();
    if values.is_empty() {
        return Ok(None);
    }
    session(&values, name)
        .map(|s| s.token)
        .map_err(|r| crate::policy::target::Refusal::Cookie(r.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAME: &str = "console_session";

    fn token(headers: &[&str]) -> Result<Option<String>, CookieRefusal> {
        let raw: Vec<&[u8]> = headers.iter().map(|h| h.as_bytes()).collect();
        session(&raw, NAME).map(|s| s.token.map(str::to_string))
    }

    #[test]
    fn accepted_subset_reads_as_werkzeug() {
        let cases: &[(&str, &[&str], Option<&str>)] = &[
            ("no header", &[], None),
            ("plain", &["console_session=abc"], Some("abc")),
            (
                "among others",
                &["a=1; console_session=t0k; b=2"],
                Some("t0k"),
            ),
            ("no space after ;", &["a=1;console_session=t"], Some("t")),
            (
                "several spaces after ;",
                &["a=1;   console_session=t"],
                Some("t"),
            ),
            ("quoted", &["console_session=\"abc\""], Some("abc")),
            ("empty quoted", &["console_session=\"\""], Some("")),
            ("empty", &["console_session="], Some("")),
            ("= inside the value", &["console_session=a=b"], Some("a=b")),
            ("name as a suffix", &["xconsole_session=1"], None),
            ("name inside a value", &["a=console_session"], None),
        ];
        for (what, headers, want) in cases {
            assert_eq!(
                token(headers),
                Ok(want.map(str::to_string)),
                "{what}: {headers:?}"
            );
        }
    }

    #[test]
    fn ambiguous_headers_naming_the_session_are_refused() {
        use CookieRefusal::*;
        let cases: &[(&str, &[&str], CookieRefusal)] = &[
            // Werkzeug: `x;y` (the quotes hide the `;`).
            ("; inside quotes", &["console_session=\"x;y\""], Syntax),
            // Werkzeug: `t` (spaces around `=` are dropped).
            ("space before =", &["console_session =t"], Syntax),
            ("space after =", &["console_session= t"], Syntax),
            ("escaped quote", &["console_session=\"a\\\"b\""], Syntax),
            ("octal escape", &["console_session=\"a\\073b\""], Syntax),
            ("unbalanced quote", &["console_session=\"abc"], Syntax),
            ("quote inside", &["console_session=a\"b"], Syntax),
            // Werkzeug: the cookie `a`, value `1, console_session=x`.
            ("comma", &["a=1, console_session=x"], Syntax),
            ("tab", &["a=1;\tconsole_session=x"], Byte),
            ("non-ASCII", &["console_session=\u{e9}"], Byte),
            ("no =", &["foo; console_session=x"], Syntax),
            ("empty name", &["=1; console_session=x"], Syntax),
            ("trailing ;", &["console_session=x;"], Syntax),
            ("space before ;", &["console_session=x ;a=1"], Syntax),
            ("$Version", &["$Version=1; console_session=x"], Attribute),
            (
                "twice",
                &["console_session=a; console_session=b"],
                DuplicateSession,
            ),
            // gunicorn: `a=1,console_session=x`: Console sees no session at all.
            (
                "repeated header",
                &["a=1", "console_session=x"],
                RepeatedHeader,
            ),
        ];
        for (what, headers, want) in cases {
            assert_eq!(token(headers), Err(*want), "{what}: {headers:?}");
        }
    }

    #[test]
    fn headers_without_the_session_pass_as_gunicorn_joins_them() {
        let one: &[&[u8]] = &[b"odd=\"x;y\"; \xe9=1"];
        let s = session(one, NAME).unwrap();
        assert_eq!(s.token, None);
        assert!(matches!(s.forward, Some(Cow::Borrowed(b)) if b == one[0]));

        let two: &[&[u8]] = &[b"a=1 ", b"\tb=2"];
        let s = session(two, NAME).unwrap();
        assert_eq!(s.forward.as_deref(), Some(&b"a=1,b=2"[..]));

        assert_eq!(session(&[b"a=\x01"], NAME), Err(CookieRefusal::ControlByte));
    }

    #[test]
    fn the_accepted_header_is_forwarded_unchanged() {
        let h: &[u8] = b"a=1; console_session=\"t\"";
        let s = session(&[h], NAME).unwrap();
        assert_eq!(s.token, Some("t"));
        assert!(matches!(s.forward, Some(Cow::Borrowed(b)) if b == h));
    }

    /// The order `session` read headers in until 2026-11-28: every header searched for the
    /// name first, the subset read only in one that names it.
    fn searching_first<'a>(
        headers: &[&'a [u8]],
        name: &str,
    ) -> Result<CookieSession<'a>, CookieRefusal> {
        let name = name.as_bytes();
        if headers.is_empty() {
            return Ok(CookieSession {
                token: None,
                forward: None,
            });
        }
        if !headers.iter().any(|h| mentions(h, name)) {
            return pass_through(headers);
        }
        let [header] = headers else {
            return Err(CookieRefusal::RepeatedHeader);
        };
        let token = strict(header, name)?;
        Ok(CookieSession {
            token,
            forward: Some(Cow::Borrowed(*header)),
        })
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4096, failure_persistence: None, ..ProptestConfig::default() })]

        /// Reading the subset before searching for the name answers as searching first did:
        /// headers made of cookie-like pieces (the name among them, as a name, a value or
        /// inside one), separators, quotes, spaces, tabs, control and high bytes.
        #[test]
        fn reading_first_answers_as_searching_first(
            headers in proptest::collection::vec(
                proptest::collection::vec(
                    prop_oneof![
                        Just(b"console_session".to_vec()),
                        Just(b"console_session=".to_vec()),
                        Just(b"; ".to_vec()),
                        Just(b"=".to_vec()),
                        Just(b"\"".to_vec()),
                        Just(b"a=1".to_vec()),
                        proptest::collection::vec(any::<u8>(), 0..4),
                        "[a-z$;=\" \t,]{0,6}".prop_map(String::into_bytes),
                    ],
                    0..6,
                )
                .prop_map(|pieces| pieces.concat()),
                0..3,
            )
        ) {
            let refs: Vec<&[u8]> = headers.iter().map(Vec::as_slice).collect();
            prop_assert_eq!(session(&refs, NAME), searching_first(&refs, NAME));
        }
    }

    #[test]
    fn labels_are_distinct() {
        let labels: std::collections::HashSet<_> =
            CookieRefusal::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels.len(), CookieRefusal::ALL.len());
    }
}
