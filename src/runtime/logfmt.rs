//! The JSON log line, written straight into the line buffer.
//!
//! The gateway logs one line per denial at info (operators' record next to the audit row), so
//! the line's cost is paid on the denied path: with tracing-subscriber's JSON format the line
//! took about 16% of the gateway's CPU per denial (11% with stderr on /dev/null, so mostly the
//! formatting), paired against the same binary at `RUST_LOG=warn`. [`JsonLine`] writes the same
//! line (same keys, order, value types and escaping; the test compares both byte for byte)
//! without going through serde, with a per-thread cached second for the timestamp: 5% less
//! CPU per denial, paired against the previous binary.
//!
//! The line: `{"timestamp":"YYYY-MM-DDTHH:MM:SS.ffffffZ","level":"INFO",<fields in order>,"target":"..."}`,
//! where a field is a JSON number (`u64`, `i64`), `true`/`false`, a number or `null` (`f64`), or
//! a string (`&str`, and everything recorded through `Debug`/`Display`). Records from the `log`
//! crate carry their own level and target (and their `log.*` fields), as before.
//!
//! Issue 67 (2026-11-28): a string's bytes to escape are found eight at a time
//! (`next_escaped`), and the line is made in a per-thread `String` and handed to the writer
//! whole; with the denial's fields as `&str`, the denial's line cost about a third less. Later
//! the same day: a string's last few bytes looked at one by one (no padded copy) and the
//! timestamp's microseconds written as six digits by hand, 0.4-0.5% of a denial. 2026-11-29: a
//! string's last few bytes read as its last eight (about 230 instructions a denial).
//!
//! **Replaces** tracing-subscriber's JSON formatter. **Gain**: 5% CPU per denial (paired run,
//! above). **Pinned by** the unit test comparing both formatters byte for byte.

use std::cell::RefCell;
use std::fmt::{self, Write};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::runtime::words;

/// The gateway's JSON log format (see the module).
#[derive(Debug, Default, Clone, Copy)]
pub struct JsonLine;

impl<S, N> FormatEvent<S, N> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        // The line is made in this thread's own buffer and handed to the writer whole: its
        // pieces (about 60 for a denial's line) are then appended to a `String` in place instead
        // of each going through the writer's `dyn Write` (issue 67).
        LINE.with(|cell| {
            let mut fresh = String::new();
            let mut kept = cell.try_borrow_mut();
            let line = match kept.as_deref_mut() {
                Ok(line) => line,
                Err(_) => &mut fresh, // a line formatted while formatting one
            };
            line.clear();
            line.push_str("{\"timestamp\":\"");
            timestamp(line)?;
            line.push_str("\",\"level\":\"");
            line.push_str(meta.level().as_str());
            line.push('"');
            let mut fields = Fields {
                w: line,
                result: Ok(()),
            };
            event.record(&mut fields);
            fields.result?;
            line.push_str(",\"target\":");
            string(line, meta.target())?;
            line.push_str("}\n");
            let written = w.write_str(line);
            if line.capacity() > LINE_KEPT {
                *line = String::new();
            }
            written
        })
    }
}

/// The most bytes of line buffer a thread keeps between lines.
const LINE_KEPT: usize = 16 * 1024;

thread_local! {
    /// The line being formatted (see `format_event`).
    static LINE: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Writes each field as `,"name":value`.
struct Fields<'a> {
    w: &'a mut String,
    result: fmt::Result,
}

impl Fields<'_> {
    fn entry(&mut self, field: &Field, value: impl FnOnce(&mut String) -> fmt::Result) {
        if self.result.is_ok() {
            // The separators as `write_str` (a `write_char` each was 40% of the fields' own
            // instructions, issue 67).
            self.result = self
                .w
                .write_str(",\"")
                .and_then(|()| Escaped(self.w).write_str(field.name()))
                .and_then(|()| self.w.write_str("\":"))
                .and_then(|()| value(self.w));
        }
    }
}

impl Visit for Fields<'_> {
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.entry(field, |w| w.write_str(if value { "true" } else { "false" }));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.entry(field, |w| write!(w, "{value}"));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.entry(field, |w| write!(w, "{value}"));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        // serde_json's own rendering (shortest round trip; `null` when not finite).
        self.entry(field, |w| match serde_json::to_string(&value) {
            Ok(text) => w.write_str(&text),
            Err(_) => Err(fmt::Error),
        });
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.entry(field, |w| string(w, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.entry(field, |w| {
            w.write_str("\"")?;
            write!(Escaped(w), "{value:?}")?;
            w.write_str("\"")
        });
    }
}

/// A JSON string.
fn string(w: &mut String, s: &str) -> fmt::Result {
    w.write_str("\"")?;
    Escaped(w).write_str(s)?;
    w.write_str("\"")
}

/// Escapes what it is given as the inside of a JSON string, the way serde_json does: `"`, `\`
/// and the control characters below 0x20 (`\b \t \n \f \r` by name, the others as `\u00XX`).
struct Escaped<'a>(&'a mut String);

impl Write for Escaped<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let bytes = s.as_bytes();
        let mut start = 0;
        loop {
            let i = next_escaped(bytes, start);
            let Some(&b) = bytes.get(i) else { break };
            // Escaped bytes are ASCII, so `start..i` lies on character boundaries.
            if i > start {
                self.0.write_str(&s[start..i])?;
            }
            let mut code = [b'\\', b'u', b'0', b'0', 0, 0];
            self.0.write_str(match b {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0x08 => "\\b",
                0x0c => "\\f",
                _ => {
                    code[4] = HEX[usize::from(b >> 4)];
                    code[5] = HEX[usize::from(b & 15)];
                    std::str::from_utf8(&code).map_err(|_| fmt::Error)?
                }
            })?;
            start = i + 1;
        }
        self.0.write_str(&s[start..])
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The index of the first byte at or after `from` that a JSON string escapes (`"`, `\`, below
/// 0x20), or `bytes.len()`: eight bytes at a time with the tests of [`words`] (a byte below
/// 0x20, or equal to `"` or `\`, sets its high bit in the word's test; a borrow can set a false
/// one only above a true one, so the lowest set bit is the first such byte). The last few
/// (under eight) are read as the string's last eight, those among them already looked at
/// (before `i`) replaced by `A`, which is never escaped (so no borrow starts there); a string
/// shorter than eight bytes is read one byte at a time. Until 2026-11-28 every byte was matched
/// on its own (issue 67: about 6.5% of a denial's instructions), until 2026-11-29 every byte of
/// the last seven (docs/performance-log.md); `fast_path_escapes_as_before` holds the forms
/// equal.
fn next_escaped(bytes: &[u8], from: usize) -> usize {
    let mut i = from;
    while i < bytes.len() {
        // `before`: how many of the word's bytes come before `i` (0 but for the last word).
        let (w, before) = match (bytes[i..].first_chunk(), bytes.last_chunk()) {
            (Some(eight), _) => (words::word(eight), 0),
            (None, Some(last)) => {
                let before = i - (bytes.len() - 8);
                let kept = (1u64 << (8 * before)) - 1;
                let w = words::word(last);
                ((w & !kept) | (words::splat(b'A') & kept), before)
            }
            (None, None) => {
                return bytes[i..]
                    .iter()
                    .position(|&b| b < 0x20 || b == b'"' || b == b'\\')
                    .map_or(bytes.len(), |at| i + at);
            }
        };
        let found =
            (words::below(w, 0x20) | words::equal(w, b'"') | words::equal(w, b'\\')) & words::HIGH;
        if found != 0 {
            return i - before + (found.trailing_zeros() / 8) as usize;
        }
        i += 8 - before;
    }
    bytes.len()
}

thread_local! {
    /// The second last written by this thread and its `YYYY-MM-DDTHH:MM:SS`.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// The current time as tracing-subscriber's `SystemTime` timer writes it:
/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` (UTC, microseconds).
fn timestamp(w: &mut String) -> fmt::Result {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs();
    SECOND.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != secs {
            let at = i64::try_from(secs)
                .ok()
                .and_then(|s| chrono::DateTime::<chrono::Utc>::from_timestamp(s, 0))
                .unwrap_or_default();
            cached.1.clear();
            write!(cached.1, "{}", at.format("%Y-%m-%dT%H:%M:%S"))?;
            cached.0 = secs;
        }
        w.push_str(&cached.1);
        w.push('.');
        push_micros(w, since.subsec_micros());
        w.push('Z');
        Ok(())
    })
}

/// `micros` (below a million) as six digits, without the formatting machinery that `{:06}` goes
/// through.
fn push_micros(w: &mut String, micros: u32) {
    let mut digits = [b'0'; 6];
    let mut n = micros.min(999_999);
    for d in digits.iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    w.push_str(std::str::from_utf8(&digits).unwrap_or("000000"));
}

#[cfg(test)]
mod tests {
    use std::io;

    use proptest::prelude::*;

    /// [`Escaped`] as it was until 2026-11-28: each byte matched on its own (the reference).
    fn escaped_by_byte(s: &str) -> String {
        let mut out = String::new();
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
                c => out.push(c),
            }
        }
        out
    }

    /// What [`Escaped`] writes for `s`.
    fn escaped_fast(s: &str) -> String {
        let mut out = String::new();
        Escaped(&mut out).write_str(s).unwrap();
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

        /// From any byte, escaped or not (the byte just escaped before it, the string's last
        /// eight overlapping bytes already read), the first escaped byte at or after it: never
        /// one before it, which would leave `Escaped` writing the same byte again without end.
        #[test]
        fn next_escaped_is_the_first_escaped_byte_from_where_it_starts(
            s in "([\\x00-\\x1f\"\\\\]|[a-zé€ ]{0,9}|\\PC{0,5}){0,16}",
            from in 0usize..160,
        ) {
            let bytes = s.as_bytes();
            let from = from.min(bytes.len());
            let expected = bytes[from..]
                .iter()
                .position(|&b| b < 0x20 || b == b'"' || b == b'\\')
                .map_or(bytes.len(), |at| from + at);
            prop_assert_eq!(next_escaped(bytes, from), expected);
        }

        #[test]
        fn fast_path_escapes_as_before(s in "([\\x00-\\x1f\"\\\\]|[a-zé€ ]{0,9}|\\PC{0,5}){0,16}") {
            prop_assert_eq!(escaped_fast(&s), escaped_by_byte(&s));
            let json = serde_json::to_string(&s).unwrap();
            prop_assert_eq!(escaped_fast(&s), &json[1..json.len() - 1]);
        }
    }
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    /// Lines written by one subscriber.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Lines {
        type Writer = Lines;
        fn make_writer(&'a self) -> Lines {
            self.clone()
        }
    }

    impl Lines {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    #[derive(Debug)]
    struct Oops;
    impl fmt::Display for Oops {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("it \"broke\"\n\\here")
        }
    }
    impl std::error::Error for Oops {}

    /// Every kind of field the gateway's code records, with strings that need escaping.
    fn emit() {
        let nasty = "quote \" backslash \\ nl \n cr \r tab \t bs \u{8} ff \u{c} nul \u{0} us \u{1f} del \u{7f} é ü 日本 🙂";
        tracing::info!("plain message");
        tracing::info!(
            request_id = "0123abcd",
            admin_id = "a1",
            method = %"GET",
            path = %"/console/x?y=1",
            rule = "GET /console/x",
            reason = %"missing_role",
            "denied"
        );
        tracing::warn!(n = 42u64, neg = -7i64, yes = true, no = false, "numbers");
        tracing::warn!(
            a = 1.5f64,
            b = 0.1f64,
            c = 1e21f64,
            d = f64::NAN,
            e = f64::INFINITY,
            f = -0.0f64,
            g = 100.0f64,
            "floats"
        );
        tracing::error!(value = nasty, display = %nasty, debug = ?nasty, "{nasty}");
        tracing::error!(
            error = &Oops as &(dyn std::error::Error + 'static),
            big = 1u128 << 100,
            small = -3i128,
            "errors and wide ints"
        );
        tracing::info!(target: "some::other::target", list = ?vec![1, 2], opt = ?Some("x"), unit = ?(), "other target");
        tracing::info!(empty = "", "");
        tracing::info!(same = 1u64, same = 2u64, "a repeated name");
        tracing::debug!(shown = false, "debug too");
        log::warn!(target: "sqlx::query", "slow statement: {}", nasty);
    }

    /// The value of `"timestamp"` replaced, after checking its shape.
    fn without_timestamps(text: &str) -> Vec<String> {
        text.lines()
            .map(|line| {
                let rest = line
                    .strip_prefix("{\"timestamp\":\"")
                    .unwrap_or_else(|| panic!("no timestamp first: {line}"));
                let (ts, rest) = rest.split_at(27);
                let b = ts.as_bytes();
                assert!(
                    ts.len() == 27
                        && b[4] == b'-'
                        && b[7] == b'-'
                        && b[10] == b'T'
                        && b[13] == b':'
                        && b[16] == b':'
                        && b[19] == b'.'
                        && b[26] == b'Z'
                        && ts.chars().filter(char::is_ascii_digit).count() == 20,
                    "timestamp {ts:?}"
                );
                format!("{{\"timestamp\":\"T{rest}")
            })
            .collect()
    }

    #[test]
    fn lines_are_those_of_tracing_subscribers_json_format() {
        // `log` records reach tracing through the LogTracer (installed by `init_logging`).
        if let Err(e) = tracing_log::LogTracer::init() {
            // Already installed by another test in this process: the same logger.
            eprintln!("LogTracer: {e}");
        }
        let (theirs, ours) = (Lines::default(), Lines::default());
        let reference = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(theirs.clone())
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .finish();
        tracing::subscriber::with_default(reference, emit);
        let fast = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(ours.clone())
            .event_format(JsonLine)
            .finish();
        tracing::subscriber::with_default(fast, emit);
        let (theirs, ours) = (
            without_timestamps(&theirs.text()),
            without_timestamps(&ours.text()),
        );
        assert_eq!(theirs.len(), 11, "{theirs:#?}");
        for (a, b) in theirs.iter().zip(&ours) {
            assert_eq!(a, b);
        }
        assert_eq!(theirs.len(), ours.len());
    }

    #[test]
    fn micros_are_six_digits_as_format_writes_them() {
        for micros in [0, 7, 42, 999, 1_000, 123_456, 999_999] {
            let mut out = String::new();
            push_micros(&mut out, micros);
            assert_eq!(out, format!("{micros:06}"));
        }
    }

    #[test]
    fn the_timestamp_is_now_in_utc() {
        let mut out = String::new();
        let before = chrono::Utc::now();
        timestamp(&mut out).unwrap();
        timestamp(&mut out).unwrap();
        let after = chrono::Utc::now();
        let (first, second) = out.split_at(27);
        for ts in [first, second] {
            let t = chrono::DateTime::parse_from_rfc3339(ts).unwrap();
            assert!(
                t >= before - chrono::Duration::microseconds(1) && t <= after,
                "{ts}"
            );
        }
    }
}
