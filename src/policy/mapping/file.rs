//! A mapping or test file read whole, bounded, and only where it is a regular file: what
//! `serve`, its reload watcher, `check`, `test` and `mapping push` read.

use std::path::Path;

/// The most a mapping or test file may hold: Console's mapping is some hundred kilobytes, and a
/// parse holds many times a file's size (an 18 MB test file took 830 MB), so a larger file is
/// refused before it is parsed, whoever reads it (`serve`, its reload, `check`, `test`,
/// `mapping push`).
pub const MAX_FILE_BYTES: u64 = 4 << 20;

/// `path`'s content, at most [`MAX_FILE_BYTES`] of it: a larger file is an error naming the
/// bound, read no further than one byte past it.
pub fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    // Opened without waiting, then checked as opened: a FIFO put in the file's place between a
    // look at the path and its `open` held a blocking-pool thread there until a writer came
    // (`O_NONBLOCK` opens a FIFO at once and changes nothing for a file's reads).
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    regular(&meta)?;
    // Room for the whole file at once (the reload watcher reads it five times a second): grown
    // by doubling from nothing, its copies were a quarter of an idle gateway's instructions
    // (docs/performance-log.md, 2026-12-01, eighteenth session). A file that grew since is
    // still read to its end, and the bound still holds.
    let mut bytes = Vec::with_capacity(meta.len().min(MAX_FILE_BYTES + 1) as usize + 1);
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes)?;
    within_bound(bytes)
}

/// [`read_bounded`], on the runtime (the reload watcher, five times a second): one hop to
/// the blocking pool, as `tokio::fs::read` made (a `tokio::fs::File` read to its end made one a
/// chunk, and the ratchet's lone connection paid 3% more instructions a request for them).
pub async fn read_bounded_async(path: &Path) -> std::io::Result<Vec<u8>> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || read_bounded(&path))
        .await
        .map_err(std::io::Error::other)?
}

/// A file (a link to one included): a FIFO or a device would hold the reader until a writer
/// came, or never end.
fn regular(meta: &std::fs::Metadata) -> std::io::Result<()> {
    if meta.is_file() {
        return Ok(());
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        "not a regular file (a FIFO, device or directory is not read)",
    ))
}

fn within_bound(bytes: Vec<u8>) -> std::io::Result<Vec<u8>> {
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "larger than {} MiB, the most a mapping or test file may hold",
                MAX_FILE_BYTES >> 20
            ),
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A FIFO renamed into the mapping's place while it is read never holds the reader (the
    /// reload watcher's blocking-pool thread): the path is opened without waiting and checked
    /// as opened. Before, a look at the path and then its `open` let a FIFO swapped in between
    /// hold `open` until a writer came; here a file and a FIFO take the path in turns, a few
    /// thousand times, while it is read, and the reads must end.
    #[test]
    fn a_fifo_swapped_in_while_the_file_is_read_never_holds_the_reader() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        const SWAPS: usize = 3_000;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routes.toml");
        std::fs::write(&path, "version = 1\n").unwrap();
        let fifos: Vec<_> = (0..SWAPS)
            .map(|i| dir.path().join(format!("fifo{i}")))
            .collect();
        let made = std::process::Command::new("mkfifo")
            .args(&fifos)
            .status()
            .unwrap();
        assert!(made.success());
        let swapping = Arc::new(AtomicBool::new(true));
        let (done, ended) = std::sync::mpsc::channel();
        {
            let (path, swapping) = (path.clone(), swapping.clone());
            std::thread::spawn(move || {
                let (mut files, mut refused) = (0, 0);
                while swapping.load(Ordering::Relaxed) {
                    match read_bounded(&path) {
                        Ok(bytes) => {
                            assert_eq!(bytes, b"version = 1\n");
                            files += 1;
                        }
                        Err(e) => {
                            assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{e}");
                            refused += 1;
                        }
                    }
                }
                done.send((files, refused)).unwrap();
            });
        }
        let file = dir.path().join("file");
        for fifo in &fifos {
            std::fs::write(&file, "version = 1\n").unwrap();
            std::fs::rename(&file, &path).unwrap();
            std::fs::rename(fifo, &path).unwrap();
        }
        swapping.store(false, Ordering::Relaxed);
        let (files, refused) = ended
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("a read still waits in `open` on a FIFO 60 s after the swaps ended");
        assert!(files > 0 && refused > 0, "{files} files, {refused} FIFOs");
    }
}
