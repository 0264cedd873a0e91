//! Reading a message file chunk by chunk, from the page cache on the executor thread when it can.
//!
//! A page-cache hit takes microseconds, while a trip to the blocking pool and back costs two
//! cross-CPU wake-ups, more than the read itself. So reads try `preadv2(RWF_NOWAIT)` on the
//! executor thread, which fails with EAGAIN rather than wait for the disk, and only then use
//! the pool: a slow disk must not stall the executor and with it every other session. (The
//! store opens messages the same way: `Mailbox::open_message_cached`.)

use std::fs::File;
use std::io::{self, Read};

/// A message file and the last chunk read from it, moved to the blocking pool and back.
pub struct FileChunk {
    file: File,
    /// Reused from message to message while RETRs keep coming.
    buf: Vec<u8>,
    /// Bytes of `buf` the last fill read.
    len: usize,
    tail: Tail,
}

/// What comes after the chunk read last.
pub enum Tail {
    More,
    End,
    Failed(io::Error),
}

impl FileChunk {
    /// `buf` is the connection's read buffer, or empty to have one of `size` bytes made.
    pub fn new(file: File, mut buf: Vec<u8>, size: usize) -> Self {
        if buf.is_empty() {
            buf = vec![0; size];
        }
        FileChunk {
            file,
            buf,
            len: 0,
            tail: Tail::More,
        }
    }

    /// The bytes the last fill read.
    pub fn data(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    pub fn tail(&self) -> &Tail {
        &self.tail
    }

    /// Gives the buffer back for the next message.
    pub fn into_buf(self) -> Vec<u8> {
        self.buf
    }

    /// Reads the next chunk, waiting for the disk if need be (on the blocking pool). Reads
    /// on until the buffer is full or the file ends, so a message that fits is read, end
    /// included, in one trip.
    pub fn fill(&mut self) {
        self.fill_with(|file, buf| file.read(buf));
    }

    /// Reads the next chunk on the executor thread as far as the page cache holds it. False
    /// when nothing could be read without waiting: then `fill` on the pool.
    pub fn fill_cached(&mut self) -> bool {
        self.fill_with(read_cached);
        self.len > 0 || !matches!(self.tail, Tail::More)
    }

    fn fill_with(&mut self, mut read: impl FnMut(&mut File, &mut [u8]) -> io::Result<usize>) {
        self.len = 0;
        self.tail = Tail::More;
        while self.len < self.buf.len() {
            match read(&mut self.file, &mut self.buf[self.len..]) {
                Ok(0) => {
                    self.tail = Tail::End;
                    return;
                }
                Ok(n) => self.len += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    self.tail = Tail::Failed(e);
                    return;
                }
            }
        }
    }
}

/// Set once the kernel or a file system has said it cannot do RWF_NOWAIT reads (Linux before
/// 4.14, or file systems such as NFS): from then on every read goes to the blocking pool.
#[cfg(target_os = "linux")]
static NOWAIT_UNSUPPORTED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// A read that fails with `WouldBlock` instead of waiting for the disk.
#[cfg(target_os = "linux")]
fn read_cached(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    use rustix::io::{Errno, ReadWriteFlags, preadv2};
    use std::sync::atomic::Ordering::Relaxed;

    if NOWAIT_UNSUPPORTED.load(Relaxed) {
        return Err(io::ErrorKind::WouldBlock.into());
    }
    // u64::MAX: at the file's own offset, which it advances, like `read`.
    match preadv2(
        &*file,
        &mut [io::IoSliceMut::new(buf)],
        u64::MAX,
        ReadWriteFlags::NOWAIT,
    ) {
        Err(Errno::OPNOTSUPP | Errno::INVAL | Errno::NOSYS) => {
            NOWAIT_UNSUPPORTED.store(true, Relaxed);
            Err(io::ErrorKind::WouldBlock.into())
        }
        result => result.map_err(io::Error::from),
    }
}

/// Elsewhere there is no read that won't wait: every read goes to the blocking pool.
#[cfg(not(target_os = "linux"))]
fn read_cached(_: &mut File, _: &mut [u8]) -> io::Result<usize> {
    Err(io::ErrorKind::WouldBlock.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Everything `fill_cached` (or, when that would wait, `fill`) reads, up to the end.
    fn read_rest(chunk: &mut FileChunk, into: &mut Vec<u8>) {
        loop {
            if !chunk.fill_cached() {
                chunk.fill();
            }
            into.extend_from_slice(chunk.data());
            match chunk.tail() {
                Tail::More => {}
                Tail::End => return,
                Tail::Failed(e) => panic!("read failed: {e}"),
            }
        }
    }

    #[test]
    fn a_file_that_fits_is_read_with_its_end_and_a_big_one_in_chunks() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        let content: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        file.write_all(&content).unwrap();

        let mut chunk = FileChunk::new(file.reopen().unwrap(), Vec::new(), 16 * 1024);
        chunk.fill();
        assert_eq!(chunk.data(), &content[..]);
        assert!(matches!(chunk.tail(), Tail::End));

        let mut chunk = FileChunk::new(file.reopen().unwrap(), Vec::new(), 4096);
        chunk.fill();
        assert_eq!(chunk.data(), &content[..4096]);
        assert!(matches!(chunk.tail(), Tail::More));
        let mut all = chunk.data().to_vec();
        read_rest(&mut chunk, &mut all);
        assert_eq!(all, content);
        // The buffer comes back whole for the next message.
        assert_eq!(chunk.into_buf().len(), 4096);
    }

    /// A file that grows while it is sent is read until a read finds nothing more.
    #[test]
    fn a_growing_file_is_read_to_its_new_end() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(b"0123456789").unwrap();
        let mut chunk = FileChunk::new(file.reopen().unwrap(), vec![0; 4], 4);
        chunk.fill();
        let mut all = chunk.data().to_vec();
        file.write_all(b"abcde").unwrap();
        read_rest(&mut chunk, &mut all);
        assert_eq!(all, b"0123456789abcde");
    }

    #[test]
    fn a_read_error_is_reported_not_taken_for_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let mut chunk = FileChunk::new(File::open(dir.path()).unwrap(), Vec::new(), 64);
        chunk.fill();
        assert!(chunk.data().is_empty());
        assert!(matches!(chunk.tail(), Tail::Failed(_)));
    }
}
