//! A chunked body (RFC 9112 §7.1), decoded from bytes: sans-IO. [`Chunk`] is where the decoder
//! is in the body; [`Chunk::step`] takes the bytes buffered so far and returns the next piece of
//! data, or that more bytes are needed, or one [`ChunkError`] per reason the body is refused (the
//! response is cut off and its connection dropped). The grammar is hyper's, except that trailers
//! are refused: nothing would forward them to Console's clients. The body type
//! (`upstream/body.rs`) reads the socket and hands the data on.

use bytes::{Buf, Bytes, BytesMut};

/// Largest chunk-size line (size and extensions), in bytes (hyper allows 16 KiB of extensions).
const MAX_CHUNK_LINE: usize = 16 * 1024;

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
    /// A size line over `MAX_CHUNK_LINE` bytes without its CR.
    #[error("chunk extensions too long")]
    ExtensionsTooLong,
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
    /// At a chunk-size line.
    Size,
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
                Chunk::Size => match chunk_size_line(buf)? {
                    None => return Ok(None),
                    Some((0, used)) => {
                        buf.advance(used);
                        *self = Chunk::End;
                    }
                    Some((n, used)) => {
                        buf.advance(used);
                        *self = Chunk::Data(n);
                    }
                },
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
                    *self = Chunk::Size;
                }
            }
        }
    }
}

/// A chunk-size line at the start of `buf`: the size, and the line's length with its CRLF.
/// `Ok(None)`: the line is not complete yet. The grammar is hyper's: hex digits, optional
/// spaces or tabs, optional `;` extensions (no bare LF), CRLF.
fn chunk_size_line(buf: &[u8]) -> Result<Option<(u64, usize)>, ChunkError> {
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
        return if buf.len() > MAX_CHUNK_LINE {
            Err(ChunkError::ExtensionsTooLong)
        } else {
            Ok(None)
        };
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
            (&long, ChunkError::ExtensionsTooLong),
        ];
        for (line, want) in cases {
            assert_eq!(
                chunk_size_line(line),
                Err(*want),
                "line {:?}",
                String::from_utf8_lossy(line)
            );
        }
        assert_eq!(chunk_size_line(&long[..MAX_CHUNK_LINE]), Ok(None));
    }

    /// Decodes `body` handed over `piece` bytes at a time, as reads would: the data and what is
    /// left over after the end, or the refusal.
    fn decode(body: &[u8], piece: usize) -> Result<(Vec<u8>, Vec<u8>), ChunkError> {
        let (mut state, mut buf, mut data, mut done) =
            (Chunk::Size, BytesMut::new(), Vec::new(), false);
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
