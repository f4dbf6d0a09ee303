//! Values written into SQL text, for the statements the gateway sends as one simple query (one
//! message, one round trip, nothing left on the server connection: `Db::one_round_trip`).
//!
//! Every text value is written as an escape string constant, `E'...'`, whose meaning does not
//! depend on `standard_conforming_strings`: inside it a backslash is always an escape, so each
//! backslash is doubled and each single quote is doubled. Every byte written is ASCII: a
//! character beyond it is written as its code point (`\u00e9`, `\U0001f600`), so the text
//! means the same in every client encoding PostgreSQL has (on a server whose encoding is UTF-8,
//! [`super::pool::server_utf8`]; another refuses such escapes, and gets the UTF-8 bytes). sqlx sets UTF-8, but code of
//! Console's that runs on a read may set another for the session, which a pooled connection
//! keeps, and the server reads each message in it before any statement of the message runs: in
//! Shift-JIS a UTF-8 character's last byte may lead a character that swallows the backslash
//! after it. A NUL cannot be part of a PostgreSQL text value at all and is refused before any
//! SQL is built ([`Unquotable`]). `tests/api/sql_text.rs` round-trips random strings (quotes,
//! backslashes, every character PostgreSQL's text accepts) through the real server with
//! `standard_conforming_strings` on and off and with the connection left in Shift-JIS, and
//! holds the refusal.
//!
//! [`push_text`] copies the runs between the bytes it doubles (`memchr3`) instead of pushing one
//! char at a time (issue 67: 17% of a denial's instructions went there) where the value is
//! ASCII, as a request's path and headers nearly always are; a property test holds it to the
//! char-by-char form.
//!
//! This is the pgx "simple protocol" and psycopg2 client-side binding answer, used only where
//! a statement must be one round trip behind any pooler (issue 51): statements elsewhere bind
//! their values as parameters.

/// A value that cannot be written into SQL text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unquotable {
    /// PostgreSQL's text cannot hold a NUL character.
    #[error("a text value holds a NUL character, which PostgreSQL's text cannot hold")]
    Nul,
}

impl From<Unquotable> for sqlx::Error {
    fn from(e: Unquotable) -> Self {
        sqlx::Error::Encode(Box::new(e))
    }
}

/// `s` as an escape string constant: `E'...'`.
pub fn text(s: &str) -> Result<String, Unquotable> {
    let mut out = String::with_capacity(s.len() + 3);
    push_text(&mut out, s)?;
    Ok(out)
}

/// Appends `s` as an escape string constant to `out`: the runs between the bytes to double (a
/// quote, a backslash; found with `memchr3`, which finds a NUL in the same pass) copied whole.
/// On a NUL, `out` is left as it was.
pub fn push_text(out: &mut String, s: &str) -> Result<(), Unquotable> {
    if !s.is_ascii() && super::pool::server_utf8() {
        return push_text_escaping(out, s);
    }
    let bytes = s.as_bytes();
    let len = out.len();
    out.reserve(s.len() + 3);
    out.push_str("E'");
    let mut start = 0;
    for i in memchr::memchr3_iter(b'\'', b'\\', 0, bytes) {
        let doubled = match bytes[i] {
            b'\'' => "''",
            b'\\' => "\\\\",
            _ => {
                out.truncate(len);
                return Err(Unquotable::Nul);
            }
        };
        // The three bytes searched for are ASCII, so `start..i` lies on character boundaries.
        out.push_str(&s[start..i]);
        out.push_str(doubled);
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('\'');
    Ok(())
}

/// [`push_text`] of a value that is not ASCII: one char at a time, each beyond ASCII as its code
/// point (`\uXXXX`, `\UXXXXXXXX`). On a NUL, `out` is left as it was.
fn push_text_escaping(out: &mut String, s: &str) -> Result<(), Unquotable> {
    use std::fmt::Write as _;
    if s.contains('\0') {
        return Err(Unquotable::Nul);
    }
    out.reserve(s.len() * 3 + 3);
    out.push_str("E'");
    for c in s.chars() {
        // Ignored: writing to a `String` cannot fail (its `fmt::Write` always returns `Ok`).
        let _ = match c {
            '\'' => out.write_str("''"),
            '\\' => out.write_str("\\\\"),
            c if c.is_ascii() => out.write_char(c),
            c if u32::from(c) <= 0xFFFF => write!(out, "\\u{:04X}", u32::from(c)),
            c => write!(out, "\\U{:08X}", u32::from(c)),
        };
    }
    out.push('\'');
    Ok(())
}

/// A `text[]` constant: `ARRAY[E'a',E'b']::text[]` (`'{}'::text[]` when empty).
pub fn text_array<S: AsRef<str>>(v: &[S]) -> Result<String, Unquotable> {
    let mut out = String::new();
    push_text_array(&mut out, v)?;
    Ok(out)
}

/// Appends [`text_array`]'s constant to `out`. On a NUL, `out` is left as it was.
pub fn push_text_array<S: AsRef<str>>(out: &mut String, v: &[S]) -> Result<(), Unquotable> {
    push_array(out, v, "text", |out, s| push_text(out, s.as_ref()))
}

/// Appends a `text[]` constant whose elements may be `NULL` (`ARRAY[E'a',NULL]::text[]`). On a
/// NUL, `out` is left as it was.
pub fn push_opt_text_array(out: &mut String, v: &[Option<&str>]) -> Result<(), Unquotable> {
    push_array(out, v, "text", |out, s| match s {
        Some(s) => push_text(out, s),
        None => {
            out.push_str("NULL");
            Ok(())
        }
    })
}

/// Appends an array constant of `ty` (`ARRAY[..]::ty[]`, `'{}'::ty[]` when empty), each element
/// written by `push`. On an error, `out` is left as it was.
pub fn push_array<T>(
    out: &mut String,
    v: &[T],
    ty: &str,
    mut push: impl FnMut(&mut String, &T) -> Result<(), Unquotable>,
) -> Result<(), Unquotable> {
    if v.is_empty() {
        out.push_str("'{}'::");
        out.push_str(ty);
        out.push_str("[]");
        return Ok(());
    }
    let len = out.len();
    out.push_str("ARRAY[");
    for (i, e) in v.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        if let Err(e) = push(out, e) {
            out.truncate(len);
            return Err(e);
        }
    }
    out.push_str("]::");
    out.push_str(ty);
    out.push_str("[]");
    Ok(())
}

/// Appends `at` as a constant: RFC 3339 in UTC with nanoseconds (the server rounds to
/// microseconds), its digits written here (chrono's formatter writes a char at a time); a leap
/// second or a year of more than four digits in chrono's own form.
pub fn push_timestamp(out: &mut String, at: &chrono::DateTime<chrono::Utc>) {
    use chrono::{Datelike, Timelike};
    let year = u32::try_from(at.year()).ok().filter(|y| *y <= 9999);
    let (Some(year), nanos @ 0..=999_999_999) = (year, at.nanosecond()) else {
        out.push('\'');
        out.push_str(&at.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true));
        out.push('\'');
        return;
    };
    let mut b = *b"'0000-00-00T00:00:00.000000000Z'";
    let fields = [
        (1..5, year),
        (6..8, at.month()),
        (9..11, at.day()),
        (12..14, at.hour()),
        (15..17, at.minute()),
        (18..20, at.second()),
        (21..30, nanos),
    ];
    for (at, mut n) in fields {
        for d in b[at].iter_mut().rev() {
            *d = b'0' + (n % 10) as u8;
            n /= 10;
        }
    }
    out.push_str(std::str::from_utf8(&b).expect("ASCII"));
}

/// A boolean constant.
pub fn boolean(b: bool) -> &'static str {
    if b {
        "true"
    } else {
        "false"
    }
}

/// An integer constant (in parentheses: a negative number is one token wherever it is put).
pub fn integer(i: i64) -> String {
    format!("({i})")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn a_timestamp_is_written_as_chrono_writes_it(secs in -62_135_596_800i64..253_402_300_799, nanos in 0u32..1_000_000_000) {
            let at = chrono::DateTime::from_timestamp(secs, nanos).unwrap();
            let mut sql = String::new();
            push_timestamp(&mut sql, &at);
            prop_assert_eq!(sql, format!("'{}'", at.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)));
        }
    }

    #[test]
    fn arrays_of_each_kind_are_constants() {
        let mut out = String::new();
        push_opt_text_array(&mut out, &[Some("a'b"), None]).unwrap();
        assert_eq!(out, "ARRAY[E'a''b',NULL]::text[]");
        out.clear();
        push_array(&mut out, &[1i64, -2], "int8", |o, i| {
            o.push_str(&integer(*i));
            Ok(())
        })
        .unwrap();
        assert_eq!(out, "ARRAY[(1),(-2)]::int8[]");
        out.clear();
        push_array(&mut out, &[0u8; 0], "timestamptz", |_, _| Ok(())).unwrap();
        assert_eq!(out, "'{}'::timestamptz[]");
        out.push('x');
        assert_eq!(
            push_opt_text_array(&mut out, &[None, Some("a\0")]),
            Err(Unquotable::Nul)
        );
        assert_eq!(out, "'{}'::timestamptz[]x", "left as it was on a NUL");
    }

    /// [`push_text`] one char at a time (the reference): as it was until 2026-11-28, with each
    /// char beyond ASCII written as its code point since 2026-12-02.
    fn push_text_by_char(out: &mut String, s: &str) -> Result<(), Unquotable> {
        if s.contains('\0') {
            return Err(Unquotable::Nul);
        }
        out.push_str("E'");
        for c in s.chars() {
            match c {
                '\'' => out.push_str("''"),
                '\\' => out.push_str("\\\\"),
                c if c.is_ascii() => out.push(c),
                c if (c as u32) < 0x10000 => out.push_str(&format!("\\u{:04X}", c as u32)),
                c => out.push_str(&format!("\\U{:08X}", c as u32)),
            }
        }
        out.push('\'');
        Ok(())
    }

    proptest! {
        #[test]
        fn the_runs_copied_whole_write_what_the_char_by_char_quoting_wrote(
            prefix in "[a-z']{0,3}",
            s in "([\\\\'\\x00]|[a-zé€ \n]{0,6}|\\PC{0,4}){0,12}",
        ) {
            let mut fast = prefix.clone();
            let mut slow = prefix.clone();
            let a = push_text(&mut fast, &s);
            let b = push_text_by_char(&mut slow, &s);
            prop_assert_eq!(&a, &b);
            if a.is_err() {
                prop_assert_eq!(&fast, &prefix);
            } else {
                prop_assert_eq!(&fast, &slow);
                prop_assert!(fast.is_ascii(), "{}", fast);
            }
        }
    }

    #[test]
    fn quotes_and_backslashes_are_doubled_inside_an_escape_string() {
        assert_eq!(text("abc").unwrap(), "E'abc'");
        assert_eq!(text("o'k").unwrap(), "E'o''k'");
        assert_eq!(text("a\\b").unwrap(), "E'a\\\\b'");
        assert_eq!(text("\\'").unwrap(), "E'\\\\'''");
        assert_eq!(text("").unwrap(), "E''");
        assert_eq!(text("é\n\t").unwrap(), "E'\\u00E9\n\t'");
        assert_eq!(text("'\u{1F600}\\").unwrap(), "E'''\\U0001F600\\\\'");
        assert_eq!(text("a\0b"), Err(Unquotable::Nul));
        assert_eq!(
            text_array(&["a", "b'"]).unwrap(),
            "ARRAY[E'a',E'b''']::text[]"
        );
        assert_eq!(text_array::<&str>(&[]).unwrap(), "'{}'::text[]");
        let mut out = "x".to_string();
        assert_eq!(
            push_text_array(&mut out, &["a", "b\0c"]),
            Err(Unquotable::Nul)
        );
        assert_eq!(out, "x", "left as it was");
        assert_eq!(integer(-5), "(-5)");
        assert_eq!(boolean(true), "true");
    }
}
