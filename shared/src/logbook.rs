//! The most recent log lines of a process, kept in memory as Lambda's JSON
//! lines, so that a running emulator can answer "what did function F say about
//! trace T" ([`LogBook::read`]) without a log store. [`install_with_book`]
//! writes every line into one as well as to the process's output.
//!
//! [`install_with_book`]: crate::telemetry::install_with_book

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

/// A ring of the last `capacity` lines, each numbered from 1 in the order written.
#[derive(Debug)]
pub struct LogBook {
    capacity: usize,
    inner: Mutex<Ring>,
}

#[derive(Debug, Default)]
struct Ring {
    lines: VecDeque<Arc<str>>,
    /// The number of the first line in `lines`.
    first: u64,
}

/// Lines read from a [`LogBook`], and where the next read starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub lines: Vec<Arc<str>>,
    /// The number of the next line to be written: the next read's `from`.
    pub next: u64,
    /// Lines between `from` and the oldest line kept that the ring dropped.
    pub dropped: u64,
}

impl LogBook {
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            capacity: capacity.max(1),
            inner: Mutex::new(Ring {
                lines: VecDeque::new(),
                first: 1,
            }),
        })
    }

    /// Adds `line` (without its newline), dropping the oldest when full.
    pub fn push(&self, line: &str) {
        let mut ring = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if ring.lines.len() == self.capacity {
            ring.lines.pop_front();
            ring.first += 1;
        }
        ring.lines.push_back(Arc::from(line));
    }

    /// The lines it holds, with the number of the first: what a process hands
    /// to the one that takes over from it ([`LogBook::restore`]).
    pub fn snapshot(&self) -> (u64, Vec<Arc<str>>) {
        let ring = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        (ring.first, ring.lines.iter().cloned().collect())
    }

    /// Takes over a predecessor's lines ([`LogBook::snapshot`]), before any of
    /// its own: readers' positions stay valid across the handover.
    pub fn restore(&self, first: u64, lines: impl IntoIterator<Item = String>) {
        let mut ring = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let own = std::mem::take(&mut ring.lines);
        ring.first = first.max(1);
        for line in lines.into_iter().chain(own.iter().map(|l| l.to_string())) {
            if ring.lines.len() == self.capacity {
                ring.lines.pop_front();
                ring.first += 1;
            }
            ring.lines.push_back(Arc::from(line));
        }
    }

    /// The number the next line written will have.
    pub fn next(&self) -> u64 {
        let ring = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        ring.first + ring.lines.len() as u64
    }

    /// The lines numbered `from` and later that `keep` accepts, oldest first,
    /// at most the last `limit` of them. The lock is held only to copy the
    /// (shared) lines out; `keep` runs after.
    pub fn read(&self, from: u64, limit: usize, keep: impl Fn(&str) -> bool) -> Page {
        let (lines, first) = {
            let ring = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
            let skip = usize::try_from(from.saturating_sub(ring.first)).unwrap_or(usize::MAX);
            let lines: Vec<Arc<str>> = ring.lines.iter().skip(skip).cloned().collect();
            (lines, ring.first)
        };
        let next = first.max(from) + lines.len() as u64;
        let mut kept: Vec<Arc<str>> = lines.into_iter().filter(|l| keep(l)).collect();
        if kept.len() > limit {
            kept.drain(..kept.len() - limit);
        }
        Page {
            lines: kept,
            next,
            dropped: first.saturating_sub(from.max(1)),
        }
    }
}

/// Writes each formatted line into a [`LogBook`]: the `tracing_subscriber`
/// writer of [`crate::telemetry::install_with_book`].
#[derive(Debug, Clone)]
pub struct BookWriter(pub Arc<LogBook>);

/// One line on its way into the book: pushed when the formatter drops it.
#[derive(Debug)]
pub struct Entry<'a> {
    book: &'a LogBook,
    buffer: Vec<u8>,
}

impl std::io::Write for Entry<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Entry<'_> {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.buffer);
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            self.book.push(line);
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BookWriter {
    type Writer = Entry<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        Entry {
            book: &self.0,
            buffer: Vec::with_capacity(256),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(page: &Page) -> Vec<&str> {
        page.lines.iter().map(|l| &**l).collect()
    }

    #[test]
    fn a_reader_follows_the_book_from_where_it_stopped() {
        let book = LogBook::new(10);
        book.push("a");
        book.push("b");
        let first = book.read(0, 100, |_| true);
        assert_eq!(texts(&first), ["a", "b"]);
        assert_eq!((first.next, first.dropped), (3, 0));
        book.push("c");
        let second = book.read(first.next, 100, |_| true);
        assert_eq!(texts(&second), ["c"]);
        assert_eq!(second.next, 4);
        assert!(book.read(second.next, 100, |_| true).lines.is_empty());
        assert_eq!(book.read(second.next, 100, |_| true).next, 4);
    }

    #[test]
    fn a_restored_book_keeps_its_predecessors_numbers() {
        let old = LogBook::new(3);
        for line in ["1", "2", "3", "4"] {
            old.push(line);
        }
        let (first, lines) = old.snapshot();
        assert_eq!(first, 2);
        let new = LogBook::new(3);
        new.push("own");
        new.restore(first, lines.iter().map(|l| l.to_string()));
        let page = new.read(4, 100, |_| true);
        assert_eq!(texts(&page), ["4", "own"]);
        assert_eq!((page.next, page.dropped), (6, 0));
    }

    #[test]
    fn a_full_book_drops_its_oldest_and_says_how_many_a_reader_missed() {
        let book = LogBook::new(3);
        for line in ["1", "2", "3", "4", "5"] {
            book.push(line);
        }
        let page = book.read(1, 100, |_| true);
        assert_eq!(texts(&page), ["3", "4", "5"]);
        assert_eq!((page.next, page.dropped), (6, 2));
    }

    #[test]
    fn the_filter_chooses_and_the_limit_keeps_the_latest() {
        let book = LogBook::new(10);
        for line in ["x1", "y1", "x2", "x3"] {
            book.push(line);
        }
        let page = book.read(0, 2, |l| l.starts_with('x'));
        assert_eq!(texts(&page), ["x2", "x3"]);
        assert_eq!(page.next, 5);
    }

    #[test]
    fn the_writer_puts_one_line_per_formatted_line() {
        use std::io::Write as _;
        use tracing_subscriber::fmt::MakeWriter as _;
        let writer = BookWriter(LogBook::new(10));
        {
            let mut entry = writer.make_writer();
            entry.write_all(b"{\"a\":1}\n").expect("in memory");
        }
        assert_eq!(texts(&writer.0.read(0, 10, |_| true)), [r#"{"a":1}"#]);
    }
}
