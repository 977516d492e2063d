//! The HTTP chunk a stream writer is sending: `<size>\r\n`, the frames,
//! `\r\n` (or the terminating `0\r\n\r\n`), and how far it got.
//!
//! Pure: no sockets. The queue keeps one [`Chunk`] per stream (under its
//! lock) and a sink writes from it with one vectored write; a partial write
//! resumes exactly where the socket stopped.

use std::io::IoSlice;

use bytes::{Buf, Bytes};

/// Most frames written in one chunk (the iovec array lives on the stack).
pub(crate) const MAX_FRAMES: usize = 62;

/// Slices one write of a [`Chunk`] can need: lead, size line, frames, trailer.
pub(crate) const MAX_SLICES: usize = MAX_FRAMES + 3;

/// The bytes of the chunk being written: size line, frames, trailer.
#[derive(Debug, Default)]
pub(crate) struct Chunk {
    /// Bytes written before the chunk (a raw stream's response head, sent
    /// with its first chunk in one write).
    lead: &'static [u8],
    head: [u8; 18],
    head_pos: usize,
    head_len: usize,
    pub(crate) frames: Vec<Bytes>,
    next: usize,
    tail: &'static [u8],
    pub(crate) terminated: bool,
    /// Bytes written since the stream began (progress, for stall detection).
    pub(crate) written: u64,
}

impl Chunk {
    pub(crate) fn is_empty(&self) -> bool {
        self.lead.is_empty() && self.head_pos == self.head_len && self.next == self.frames.len() && self.tail.is_empty()
    }

    /// Writes `bytes` first, before whatever chunk comes next.
    pub(crate) fn lead_with(&mut self, bytes: &'static [u8]) {
        self.lead = bytes;
    }

    pub(crate) fn start_chunk(&mut self) {
        let size: usize = self.frames.iter().map(Bytes::len).sum();
        // `<size in hex>\r\n`, without allocating (this runs per delivery).
        let digits = (usize::BITS - size.leading_zeros()).div_ceil(4).max(1) as usize;
        for i in 0..digits {
            let nibble = (size >> (4 * (digits - 1 - i))) & 0xf;
            self.head[i] = b"0123456789abcdef"[nibble];
        }
        self.head[digits] = b'\r';
        self.head[digits + 1] = b'\n';
        self.head_pos = 0;
        self.head_len = digits + 2;
        self.next = 0;
        self.tail = b"\r\n";
    }

    pub(crate) fn start_terminator(&mut self) {
        self.frames.clear();
        self.next = 0;
        self.head_pos = 0;
        self.head_len = 0;
        self.tail = b"0\r\n\r\n";
        self.terminated = true;
    }

    pub(crate) fn slices<'a>(&'a self, slices: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        if !self.lead.is_empty() {
            slices[n] = IoSlice::new(self.lead);
            n += 1;
        }
        if self.head_pos < self.head_len {
            slices[n] = IoSlice::new(&self.head[self.head_pos..self.head_len]);
            n += 1;
        }
        for f in &self.frames[self.next..] {
            slices[n] = IoSlice::new(f);
            n += 1;
        }
        if !self.tail.is_empty() {
            slices[n] = IoSlice::new(self.tail);
            n += 1;
        }
        n
    }

    pub(crate) fn advance(&mut self, mut n: usize) {
        self.written += n as u64;
        let step = n.min(self.lead.len());
        self.lead = &self.lead[step..];
        n -= step;
        let head_left = self.head_len - self.head_pos;
        let step = n.min(head_left);
        self.head_pos += step;
        n -= step;
        while n > 0 && self.next < self.frames.len() {
            let f = &mut self.frames[self.next];
            if n >= f.len() {
                n -= f.len();
                self.next += 1;
            } else {
                f.advance(n);
                n = 0;
            }
        }
        let step = n.min(self.tail.len());
        self.tail = &self.tail[step..];
        if self.is_empty() {
            self.frames.clear();
            self.next = 0;
            // Idle streams should not keep a large batch's capacity.
            if self.frames.capacity() > 8 {
                self.frames = Vec::new();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(out: &Chunk) -> Vec<u8> {
        let mut slices = [IoSlice::new(&[]); MAX_SLICES];
        let n = out.slices(&mut slices);
        slices[..n].iter().flat_map(|s| s.iter().copied()).collect()
    }

    #[test]
    fn a_batch_is_one_chunk_and_partial_writes_resume_exactly() {
        let mut out =
            Chunk { frames: vec![Bytes::from_static(b"abc"), Bytes::from_static(b"defgh")], ..Default::default() };
        out.start_chunk();
        let all = written(&out);
        assert_eq!(all, b"8\r\nabcdefgh\r\n");
        for cut in 1..all.len() {
            let mut o =
                Chunk { frames: vec![Bytes::from_static(b"abc"), Bytes::from_static(b"defgh")], ..Default::default() };
            o.start_chunk();
            o.advance(cut);
            assert_eq!(written(&o), &all[cut..], "after writing {cut} bytes");
            o.advance(all.len() - cut);
            assert!(o.is_empty());
        }
    }

    #[test]
    fn a_lead_goes_out_before_the_first_chunk_and_partial_writes_resume_in_it() {
        let mut out = Chunk { frames: vec![Bytes::from_static(b"ab")], ..Default::default() };
        out.lead_with(b"HEAD\r\n");
        out.start_chunk();
        assert_eq!(written(&out), b"HEAD\r\n2\r\nab\r\n");
        out.advance(3);
        assert_eq!(written(&out), b"D\r\n2\r\nab\r\n");
        out.advance(10);
        assert!(out.is_empty());
        let mut alone = Chunk::default();
        alone.lead_with(b"HEAD");
        assert!(!alone.is_empty());
        assert_eq!(written(&alone), b"HEAD");
    }

    #[test]
    fn chunk_sizes_are_lower_case_hex() {
        for size in [1usize, 9, 10, 15, 16, 255, 4096, 65535, 1 << 20] {
            let mut out = Chunk { frames: vec![Bytes::from(vec![b'x'; size])], ..Default::default() };
            out.start_chunk();
            assert_eq!(&out.head[..out.head_len], format!("{size:x}\r\n").as_bytes());
        }
    }

    #[test]
    fn terminator_is_the_last_chunk() {
        let mut out = Chunk::default();
        out.start_terminator();
        assert_eq!(written(&out), b"0\r\n\r\n");
        out.advance(5);
        assert!(out.is_empty() && out.terminated);
    }
}
