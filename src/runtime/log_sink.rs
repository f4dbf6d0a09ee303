//! Where log lines go: standard error, one write per line, except on the data plane's worker
//! threads, which gather their lines and write them together when the worker has nothing else
//! to do (tokio's park hook, [`flush`]), when [`GATHER`] bytes are waiting, and when the thread
//! ends.
//!
//! The gateway logs one line per denial (info), and a denial is answered only after its audit
//! row is durable. Paired against the same binary at `RUST_LOG=warn`, that line cost a
//! noticeable share of the CPU per denial, part of it the `write` system call of each line.
//! Gathered, a worker writes once per burst of denials instead. A line waits at most until its worker next
//! goes idle (at once when requests come one at a time; under load, until 16 KiB of lines are
//! waiting, well under a millisecond of denials). What a process killed outright (SIGKILL, an
//! abort) loses is at most those bytes of log; the audit rows, the durable record of every
//! denial, are written before the 403 whatever happens to the log. A graceful stop writes
//! everything: the worker threads end (writing what they gathered) before the process exits.
//!
//! **Replaces** tracing-subscriber's `std::io::stderr` writer (one `write` per line) on the
//! worker threads only. **Gain**: less CPU and about half the `write` calls per denial, paired
//! (docs/performance-log.md). **Pinned by** the unit tests below (every line written, in order, on flush,
//! on a full buffer and at thread end).

use std::cell::RefCell;
use std::io::{self, Write};

use tracing_subscriber::fmt::MakeWriter;

/// Bytes of gathered lines that are written without waiting for the worker to go idle.
pub const GATHER: usize = 16 * 1024;

/// Lines gathered for `sink`; written by [`Gather::flush`], when [`GATHER`] bytes are waiting,
/// and when dropped.
struct Gather<W: Write> {
    buf: Vec<u8>,
    sink: W,
}

impl<W: Write> Gather<W> {
    fn new(sink: W) -> Gather<W> {
        Gather {
            buf: Vec::with_capacity(GATHER),
            sink,
        }
    }

    /// Takes one whole line (tracing-subscriber writes each event with one `write_all`).
    fn line(&mut self, line: &[u8]) -> io::Result<()> {
        self.buf.extend_from_slice(line);
        if self.buf.len() >= GATHER {
            return self.flush();
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let written = self.sink.write_all(&self.buf);
        // Written or not, the bytes are not kept: a sink that fails would otherwise grow the
        // buffer without end (tracing-subscriber drops a line it cannot write the same way).
        self.buf.clear();
        written
    }
}

impl<W: Write> Drop for Gather<W> {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            // The log itself cannot be written: standard error is all there is to tell.
            eprintln!("rbac-gateway: cannot write gathered log lines: {e}");
        }
    }
}

thread_local! {
    static GATHERED: RefCell<Option<Gather<io::Stderr>>> = const { RefCell::new(None) };
}

/// From now on, this thread's log lines are gathered (the data plane's worker threads).
pub fn gather_on_this_thread() {
    GATHERED.with(|g| {
        g.borrow_mut()
            .get_or_insert_with(|| Gather::new(io::stderr()));
    });
}

/// Writes the lines this thread gathered (tokio's park hook of each worker).
pub fn flush() {
    let flushed = GATHERED.try_with(|g| match g.try_borrow_mut() {
        Ok(mut g) => g.as_mut().map_or(Ok(()), Gather::flush),
        // Called while this thread is writing a line: that write flushes when due.
        Err(_) => Ok(()),
    });
    if let Ok(Err(e)) = flushed {
        eprintln!("rbac-gateway: cannot write gathered log lines: {e}");
    }
}

/// The log's writer: gathered on threads that asked for it, straight to standard error
/// elsewhere.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogOut;

/// One line's writer (see [`LogOut`]).
#[derive(Debug)]
pub struct LineOut;

impl<'a> MakeWriter<'a> for LogOut {
    type Writer = LineOut;

    fn make_writer(&'a self) -> LineOut {
        LineOut
    }
}

impl Write for LineOut {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let gathered = GATHERED.try_with(|g| match g.try_borrow_mut() {
            Ok(mut g) => g.as_mut().map(|g| g.line(data)),
            Err(_) => None,
        });
        match gathered {
            Ok(Some(result)) => result.map(|()| data.len()),
            // Not a gathering thread, or its gathered lines are gone (the thread is ending).
            _ => io::stderr().write(data),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_written_when_flushed_when_enough_wait_and_when_dropped() {
        let mut out = Vec::new();
        {
            let mut g = Gather::new(&mut out);
            g.line(b"one\n").unwrap();
            g.line(b"two\n").unwrap();
            assert!(g.sink.is_empty(), "gathered, not written yet");
            g.flush().unwrap();
            assert_eq!(&g.sink[..], b"one\ntwo\n");
            let long = vec![b'x'; GATHER];
            g.line(&long).unwrap();
            assert_eq!(g.sink.len(), 8 + GATHER, "written once GATHER bytes wait");
            assert!(g.buf.is_empty());
            g.line(b"last\n").unwrap();
        }
        assert!(out.ends_with(b"xlast\n"));
        assert_eq!(out.len(), 8 + GATHER + 5, "the rest written when dropped");
    }

    #[test]
    fn a_failing_sink_does_not_keep_the_lines() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::other("broken"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut g = Gather::new(Broken);
        g.line(b"a\n").unwrap();
        assert!(g.flush().is_err());
        assert!(g.buf.is_empty());
        // Dropping with nothing gathered writes nothing (and reports nothing).
    }

    #[test]
    fn only_threads_that_ask_gather() {
        std::thread::spawn(|| {
            assert!(GATHERED.with(|g| g.borrow().is_none()));
            gather_on_this_thread();
            LineOut.write_all(b"gathered line\n").unwrap();
            assert!(GATHERED.with(|g| g
                .borrow()
                .as_ref()
                .is_some_and(|g| g.buf == b"gathered line\n")));
            flush();
            assert!(GATHERED.with(|g| g.borrow().as_ref().is_some_and(|g| g.buf.is_empty())));
        })
        .join()
        .unwrap();
        assert!(
            GATHERED.with(|g| g.borrow().is_none()),
            "this thread writes straight"
        );
    }
}
