//! A chunked body (RFC 9112 §7.1), decoded from bytes: sans-IO. [`Chunk`] is where the decoder
//! is in the body; [`Chunk::step`] takes the bytes buffered so far and returns the next piece of
//! data, or that more bytes are needed, or one [`ChunkError`] per reason the body is refused (the
//! response is cut off and its connection dropped). The grammar is hyper's, except that trailers
//! are refused: nothing would forward them to Console's clients. The body type
//! (`upstream/body.rs`) reads the socket and hands the data on.
//!
//! **Bounded whatever the bytes.** The decoder asks for more bytes only while it holds fewer
//! than [`MAX_CHUNK_LINE`] (16 KiB): a chunk-size line (its digits, leading zeros included,
//! spaces and tabs, extensions and CRLF) longer than that is refused
//! ([`ChunkError::LineTooLong`]) whether it is complete or not, so the outcome does not depend
//! on how the bytes were cut into reads; a chunk's data is handed on as soon as any is
//! buffered; after a chunk's data, and after the last chunk, two bytes are enough to accept
//! CRLF or refuse anything else (trailers are refused, so they are never buffered). hyper's
//! decoder reads byte by byte and buffers nothing; it bounds only the extensions (16 KiB), so it
//! reads an endless run of leading `0`s or of spaces forever: there the gateway is the stricter.
//! A line is parsed once its LF is buffered (or the bound is reached): until then each read
//! costs a search of the new bytes only ([`Chunk::Size`] remembers how far it looked), so a
//! line cut into many reads costs one pass, not one per read.

use bytes::{Buf, Bytes, BytesMut};

/// Largest chunk-size line, in bytes, CRLF included: the size (with any leading zeros), spaces
/// and tabs, extensions (hyper allows 16 KiB of extensions and does not bound the rest). Also
/// the most bytes the decoder holds when it asks for more.
pub const MAX_CHUNK_LINE: usize = 16 * 1024;

/// Why a chunked body is refused. The message is what the error says, after "the upstream's
/// response is refused: ".
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// A chunk size that does not fit in 64 bits.
    #[error("chunk size overflows")]
    SizeOverflows,
    /// A size line that does not start with a hex digit.
    #[error("invalid chunk size")]
    InvalidSize,
    /// A bare LF among the extensions.
    #[error("chunk extension contains a newline")]
    NewlineInExtension,
    /// A size line over [`MAX_CHUNK_LINE`] bytes, CRLF included, whatever its bytes: leading
    /// zeros, spaces or tabs, extensions.
    #[error("chunk size line too long")]
    LineTooLong,
    /// Something other than spaces, tabs or `;` extensions after the size, or no CRLF to end it.
    #[error("invalid chunk size line")]
    InvalidSizeLine,
    /// A chunk's data not followed by CRLF.
    #[error("invalid chunk end")]
    InvalidChunkEnd,
    /// Anything but CRLF after the last chunk.
    #[error("chunked trailers are refused")]
    Trailers,
}

/// Where a chunked body's decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// At a chunk-size line, of which this many bytes are buffered already and hold no LF (so
    /// the line is not complete): only the bytes read since are searched for one.
    Size(usize),
    /// Inside a chunk's data: this many bytes left, then CRLF.
    Data(u64),
    /// After a chunk's data: CRLF expected.
    DataEnd,
    /// After the last chunk's size line: CRLF expected (no trailers).
    End,
}

impl Chunk {
    /// The next piece of the body from `buf`: `Ok(Some(bytes))`, a chunk's data (or what of it
    /// is buffered) split off `buf` without a copy, or empty at the end of the body, with `done`
    /// set; `Ok(None)` when more bytes are needed. The framing read is taken out of `buf`.
    pub fn step(
        &mut self,
        buf: &mut BytesMut,
        done: &mut bool,
    ) -> Result<Option<Bytes>, ChunkError> {
        loop {
            match *self {
                Chunk::Size(scanned) => {
                    let window = buf.len().min(MAX_CHUNK_LINE);
                    if window < MAX_CHUNK_LINE && !buf[scanned.min(window)..window].contains(&b'\n')
                    {
                        // No LF: the line is not complete (and not refused yet; the bytes before
                        // the LF decide which refusal, once it or the bound is reached).
                        *self = Chunk::Size(window);
                        return Ok(None);
                    }
                    match chunk_size_line(buf)? {
                        // Unreachable with an LF buffered or MAX_CHUNK_LINE bytes: kept as the
                        // parser's answer all the same.
                        None => {
                            *self = Chunk::Size(window);
                            return Ok(None);
                        }
                        Some((0, used)) => {
                            buf.advance(used);
                            *self = Chunk::End;
                        }
                        Some((n, used)) => {
                            buf.advance(used);
                            *self = Chunk::Data(n);
                        }
                    }
                }
                Chunk::Data(left) => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let n = left.min(buf.len() as u64) as usize;
                    *self = if left == n as u64 {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left - n as u64)
                    };
                    return Ok(Some(buf.split_to(n).freeze()));
                }
                Chunk::DataEnd | Chunk::End => {
                    let seen = &buf[..buf.len().min(2)];
                    if !b"\r\n".starts_with(seen) {
                        return Err(if *self == Chunk::End {
                            ChunkError::Trailers
                        } else {
                            ChunkError::InvalidChunkEnd
                        });
                    }
                    if seen.len() < 2 {
                        return Ok(None);
                    }
                    buf.advance(2);
                    if *self == Chunk::End {
                        *done = true;
                        return Ok(Some(Bytes::new()));
                    }
                    *self = Chunk::Size(0);
                }
            }
        }
    }
}

/// A chunk-size line at the start of `buf`: the size, and the line's length with its CRLF.
/// `Ok(None)`: the line is not complete yet, and fewer than [`MAX_CHUNK_LINE`] bytes are
/// buffered. The grammar is hyper's: hex digits, optional spaces or tabs, optional `;`
/// extensions (no bare LF), CRLF; the whole line at most [`MAX_CHUNK_LINE`] bytes. Only the
/// first `MAX_CHUNK_LINE` bytes are read, so the answer is the same however much follows.
fn chunk_size_line(buf: &[u8]) -> Result<Option<(u64, usize)>, ChunkError> {
    let line = &buf[..buf.len().min(MAX_CHUNK_LINE)];
    match size_line_within(line)? {
        None if buf.len() >= MAX_CHUNK_LINE => Err(ChunkError::LineTooLong),
        parsed => Ok(parsed),
    }
}

/// [`chunk_size_line`] on the bytes at hand, without the bound: `Ok(None)` when `buf` ends
/// before the line does.
fn size_line_within(buf: &[u8]) -> Result<Option<(u64, usize)>, ChunkError> {
    let mut size: u64 = 0;
    let mut i = 0;
    let mut digits = 0;
    while i < buf.len() {
        let d = match buf[i] {
            b @ b'0'..=b'9' => b - b'0',
            b @ b'a'..=b'f' => b - b'a' + 10,
            b @ b'A'..=b'F' => b - b'A' + 10,
            _ => break,
        };
        size = size
            .checked_mul(16)
            .and_then(|s| s.checked_add(u64::from(d)))
            .ok_or(ChunkError::SizeOverflows)?;
        digits += 1;
        i += 1;
    }
    if i == buf.len() {
        return Ok(None);
    }
    if digits == 0 {
        return Err(ChunkError::InvalidSize);
    }
    while i < buf.len() && matches!(buf[i], b' ' | b'\t') {
        i += 1;
    }
    if i < buf.len() && buf[i] == b';' {
        while i < buf.len() && buf[i] != b'\r' {
            if buf[i] == b'\n' {
                return Err(ChunkError::NewlineInExtension);
            }
            i += 1;
        }
    }
    if i >= buf.len() {
        return Ok(None);
    }
    if buf[i] != b'\r' {
        return Err(ChunkError::InvalidSizeLine);
    }
    if i + 1 >= buf.len() {
        return Ok(None);
    }
    if buf[i + 1] != b'\n' {
        return Err(ChunkError::InvalidSizeLine);
    }
    Ok(Some((size, i + 2)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_size_lines() {
        assert_eq!(chunk_size_line(b"1a\r\n").unwrap(), Some((26, 4)));
        assert_eq!(chunk_size_line(b"A ;x=y\r\n").unwrap(), Some((10, 8)));
        assert_eq!(chunk_size_line(b"0\r\n").unwrap(), Some((0, 3)));
        assert_eq!(chunk_size_line(b"10").unwrap(), None);
        assert_eq!(chunk_size_line(b"10\r").unwrap(), None);
        let long = [&b"1;"[..], &[b'a'; MAX_CHUNK_LINE]].concat();
        let cases: &[(&[u8], ChunkError)] = &[
            (b"\r\n", ChunkError::InvalidSize),
            (b"x\r\n", ChunkError::InvalidSize),
            (b"1;a\nb\r\n", ChunkError::NewlineInExtension),
            (b"1 2\r\n", ChunkError::InvalidSizeLine),
            (b"1\rx", ChunkError::InvalidSizeLine),
            (b"1\n", ChunkError::InvalidSizeLine),
            (b"11111111111111111\r\n", ChunkError::SizeOverflows),
            (&long, ChunkError::LineTooLong),
        ];
        for (line, want) in cases {
            assert_eq!(
                chunk_size_line(line),
                Err(*want),
                "line {:?}",
                String::from_utf8_lossy(line)
            );
        }
        assert_eq!(chunk_size_line(&long[..MAX_CHUNK_LINE - 1]), Ok(None));
        assert_eq!(
            chunk_size_line(&long[..MAX_CHUNK_LINE]),
            Err(ChunkError::LineTooLong),
            "MAX_CHUNK_LINE bytes without the line's end"
        );
    }

    /// The bound is the whole line's, CRLF included, whatever its bytes, complete or not.
    #[test]
    fn the_whole_chunk_size_line_is_bounded_whatever_its_bytes() {
        let line = |head: &[u8], fill: u8, len: usize| {
            let mut l = head.to_vec();
            l.resize(len - 2, fill);
            l.extend_from_slice(b"\r\n");
            l
        };
        for (head, fill) in [(&b""[..], b'0'), (b"1", b' '), (b"1", b'\t'), (b"1;", b'x')] {
            let at_most = line(head, fill, MAX_CHUNK_LINE);
            let size = if head.is_empty() { 0 } else { 1 };
            assert_eq!(
                chunk_size_line(&at_most),
                Ok(Some((size, MAX_CHUNK_LINE))),
                "{head:?} {fill}"
            );
            let over = line(head, fill, MAX_CHUNK_LINE + 1);
            assert_eq!(
                chunk_size_line(&over),
                Err(ChunkError::LineTooLong),
                "{head:?} {fill}: complete, one byte over"
            );
            assert_eq!(
                chunk_size_line(&over[..MAX_CHUNK_LINE - 1]),
                Ok(None),
                "{head:?} {fill}: not complete, under the bound"
            );
        }
        assert_eq!(
            ChunkError::LineTooLong.to_string(),
            "chunk size line too long"
        );
    }

    /// Issue 50, item 4: `HTTP/1.1 200 OK`, chunked, then an endless run of `0` with no CR.
    /// Fed as the body reads it (16 KiB a read, more only when asked): refused once 16 KiB are
    /// buffered, never holding more than that when it asks for more.
    #[test]
    fn a_run_of_100_kib_of_zeros_without_cr_is_refused_past_16_kib() {
        let zeros = vec![b'0'; 100 * 1024];
        let (mut state, mut buf, mut done) = (Chunk::Size(0), BytesMut::new(), false);
        let mut fed = 0;
        let refusal = loop {
            match state.step(&mut buf, &mut done) {
                Ok(None) => {
                    assert!(
                        buf.len() < MAX_CHUNK_LINE,
                        "asked for more holding {}",
                        buf.len()
                    );
                    let n = (zeros.len() - fed).min(16 * 1024);
                    assert!(n > 0, "the whole run was read without a refusal");
                    buf.extend_from_slice(&zeros[fed..fed + n]);
                    fed += n;
                }
                Ok(Some(data)) => panic!("data from a size line: {data:?}"),
                Err(e) => break e,
            }
        };
        assert_eq!(refusal, ChunkError::LineTooLong);
        assert_eq!(
            fed,
            16 * 1024,
            "refused at the first read that reaches the bound"
        );
        // Byte by byte, the same: refused at the 16 KiB-th byte.
        let (mut state, mut buf) = (Chunk::Size(0), BytesMut::new());
        for (i, b) in zeros.iter().enumerate() {
            buf.extend_from_slice(&[*b]);
            match state.step(&mut buf, &mut done) {
                Ok(None) => assert!(i + 1 < MAX_CHUNK_LINE),
                Err(e) => {
                    assert_eq!((e, i + 1), (ChunkError::LineTooLong, MAX_CHUNK_LINE));
                    break;
                }
                Ok(Some(_)) => panic!("data from a size line"),
            }
        }
        // Leading zeros within the bound are still a size, as hyper reads them.
        let mut body = vec![b'0'; MAX_CHUNK_LINE - 3];
        body.extend_from_slice(b"5\r\nhello\r\n0\r\n\r\n");
        assert_eq!(decode(&body, 4096), Ok((b"hello".to_vec(), Vec::new())));
        let mut body = vec![b'0'; 20 * 1024];
        body.extend_from_slice(b"5\r\nhello\r\n0\r\n\r\n");
        assert_eq!(decode(&body, 4096), Err(ChunkError::LineTooLong));
    }

    /// Decodes `body` handed over `piece` bytes at a time, as reads would: the data and what is
    /// left over after the end, or the refusal.
    fn decode(body: &[u8], piece: usize) -> Result<(Vec<u8>, Vec<u8>), ChunkError> {
        let (mut state, mut buf, mut data, mut done) =
            (Chunk::Size(0), BytesMut::new(), Vec::new(), false);
        for part in body.chunks(piece) {
            buf.extend_from_slice(part);
            while !done {
                match state.step(&mut buf, &mut done)? {
                    Some(bytes) => data.extend_from_slice(&bytes),
                    None => break,
                }
            }
        }
        assert!(done, "the body ended: {:?}", String::from_utf8_lossy(body));
        Ok((data, buf.to_vec()))
    }

    #[test]
    fn chunked_bodies_in_any_pieces() {
        type Case = (
            &'static [u8],
            Result<(&'static [u8], &'static [u8]), ChunkError>,
        );
        let cases: &[Case] = &[
            (b"0\r\n\r\n", Ok((b"", b""))),
            (b"3\r\nabc\r\n0\r\n\r\n", Ok((b"abc", b""))),
            (
                b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
                Ok((b"abcde", b"")),
            ),
            (
                b"A\r\n0123456789\r\n0\r\n\r\nHTTP/1.1",
                Ok((b"0123456789", b"HTTP/1.1")),
            ),
            (b"3\r\nabcX\r\n0\r\n\r\n", Err(ChunkError::InvalidChunkEnd)),
            (b"3\r\nabc\n0\r\n\r\n", Err(ChunkError::InvalidChunkEnd)),
            (b"0\r\nTrailer: x\r\n\r\n", Err(ChunkError::Trailers)),
            (b"0\r\n\n", Err(ChunkError::Trailers)),
            (b"z\r\n", Err(ChunkError::InvalidSize)),
        ];
        for (body, want) in cases {
            let want = want.map(|(data, rest)| (data.to_vec(), rest.to_vec()));
            for piece in [1, 2, 3, body.len()] {
                assert_eq!(
                    decode(body, piece),
                    want,
                    "body {:?} in pieces of {piece}",
                    String::from_utf8_lossy(body)
                );
            }
        }
    }
}

/// Any bytes, in any pieces: the decoder makes progress, finishes or refuses; it asks for more
/// only while it holds fewer than `MAX_CHUNK_LINE` bytes; and what it makes of the bytes does not
/// depend on how they were cut.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// What a decoder made of a body: the data, and how it ended (`Ok(Some(rest))`: finished,
    /// with these bytes after the body; `Ok(None)`: still asking for more).
    type Outcome = (Vec<u8>, Result<Option<Vec<u8>>, ChunkError>);

    /// Feeds `body` as the body type reads it: a piece only when the decoder asks for more.
    fn feed(body: &[u8], pieces: &[usize]) -> Outcome {
        let (mut state, mut buf, mut data, mut done) =
            (Chunk::Size(0), BytesMut::new(), Vec::new(), false);
        let (mut fed, mut cut) = (0, pieces.iter().cycle());
        loop {
            match state.step(&mut buf, &mut done) {
                Err(e) => return (data, Err(e)),
                Ok(Some(bytes)) => {
                    data.extend_from_slice(&bytes);
                    if done {
                        let mut rest = buf.to_vec();
                        rest.extend_from_slice(&body[fed..]);
                        return (data, Ok(Some(rest)));
                    }
                }
                Ok(None) => {
                    assert!(
                        buf.len() < MAX_CHUNK_LINE,
                        "asks for more holding {} bytes ({state:?})",
                        buf.len()
                    );
                    if fed == body.len() {
                        return (data, Ok(None));
                    }
                    let n = (*cut.next().unwrap()).min(body.len() - fed);
                    buf.extend_from_slice(&body[fed..fed + n]);
                    fed += n;
                }
            }
        }
    }

    /// A run of `len` bytes drawn from `alphabet`.
    fn run(alphabet: &'static [u8], len: std::ops::Range<usize>) -> impl Strategy<Value = Vec<u8>> {
        (prop::sample::select(alphabet), len).prop_map(|(b, n)| vec![b; n])
    }

    /// Bodies biased to the hostile shapes: runs of `0`, of spaces and tabs, `;` and extension
    /// bytes, trailers after the last chunk, near the bound and past it; valid chunks around
    /// them; and plain arbitrary bytes.
    fn body() -> impl Strategy<Value = Vec<u8>> {
        let tail = prop::sample::select(vec![
            &b""[..],
            b"\r\n",
            b"5\r\nhello\r\n0\r\n\r\n",
            b"\r\nabcde\r\n0\r\n\r\n",
            b"\r",
            b"\n",
        ]);
        let near = MAX_CHUNK_LINE - 8..MAX_CHUNK_LINE + 8;
        let size_line = prop_oneof![
            run(b"0", 0..40_000),
            run(b"0", near.clone()),
            (run(b"0", 0..64), run(b" \t", 0..40_000))
                .prop_map(|(z, s)| [&b"1"[..], &z, &s].concat()),
            (run(b" \t", near.clone())).prop_map(|s| [&b"1"[..], &s].concat()),
            (run(b"x=;\" ", 0..40_000)).prop_map(|e| [&b"1;"[..], &e].concat()),
            (run(b"a", near)).prop_map(|e| [&b"1;"[..], &e].concat()),
        ];
        let trailers = (
            prop::collection::vec(any::<u8>(), 0..64),
            run(b"a ", 0..40_000),
        )
            .prop_map(|(t, r)| [&b"2\r\nok\r\n0\r\n"[..], &t, &r].concat());
        prop_oneof![
            (size_line, tail).prop_map(|(l, t)| [&l[..], t].concat()),
            trailers,
            prop::collection::vec(any::<u8>(), 0..2048),
            prop::collection::vec(
                prop::sample::select(b"0123456789abcdefABCDEF;= \t\r\nxz".to_vec()),
                0..2048
            ),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn chunked_decoder_is_bounded_and_cut_independent(
            body in body(),
            pieces in prop::collection::vec(1usize..=16 * 1024, 1..8),
        ) {
            let whole = feed(&body, &[body.len().max(1)]);
            let cut = feed(&body, &pieces);
            // `feed` checks the bound each time the decoder asks for more.
            prop_assert_eq!(&cut, &whole);
        }
    }
}
