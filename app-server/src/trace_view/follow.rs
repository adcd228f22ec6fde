//! `skein trace follow`: span records as they are written.
//!
//! A [`Follower`] keeps a byte offset per store file. Each
//! [`poll`](Follower::poll) reads what was appended since, up to the last
//! complete line; a line still being written is read on a later poll. Files
//! that appear later are read from their start; a file that shrank (was
//! replaced) is read again from its start.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::TraceViewError;
use super::store::{Span, Warning, complete_lines, parse_lines, store_files};

/// Where reading resumes in one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Cursor {
    /// Bytes already consumed (always just after a newline, or 0).
    offset: u64,
    /// The 1-based number of the next line.
    next_line: usize,
}

impl Cursor {
    const START: Cursor = Cursor {
        offset: 0,
        next_line: 1,
    };
}

/// What one poll found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Polled {
    /// New span records, file by file (name order), in written order.
    pub spans: Vec<Span>,
    /// Lines (or files) that could not be read.
    pub warnings: Vec<Warning>,
}

/// Tails every file of a store directory.
#[derive(Debug)]
pub struct Follower {
    dir: PathBuf,
    cursors: BTreeMap<PathBuf, Cursor>,
}

impl Follower {
    /// Starts following `dir` from the current end of its files: only
    /// records written from now on (and a last line that was still being
    /// written) will be reported.
    pub fn new(dir: &Path) -> Result<Self, TraceViewError> {
        let mut cursors = BTreeMap::new();
        for file in store_files(dir)? {
            match end_cursor(&file) {
                Ok(cursor) => {
                    cursors.insert(file, cursor);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(TraceViewError::ReadFile { path: file, source }),
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            cursors,
        })
    }

    /// Starts following `dir` from the beginning of its files: the first
    /// poll reports every record already written.
    pub fn from_start(dir: &Path) -> Result<Self, TraceViewError> {
        store_files(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            cursors: BTreeMap::new(),
        })
    }

    /// Reads every complete line appended since the last poll.
    pub fn poll(&mut self) -> Result<Polled, TraceViewError> {
        let files = store_files(&self.dir)?;
        self.cursors.retain(|path, _| files.contains(path));
        let mut polled = Polled::default();
        for file in files {
            let cursor = self.cursors.entry(file.clone()).or_insert(Cursor::START);
            match read_from(&file, *cursor) {
                Ok(None) => {}
                Ok(Some((bytes, start))) => {
                    let (lines, consumed) = complete_lines(&bytes);
                    parse_lines(
                        &file,
                        &lines,
                        start.next_line,
                        &mut polled.spans,
                        &mut polled.warnings,
                    );
                    *cursor = Cursor {
                        offset: start.offset + consumed as u64,
                        next_line: start.next_line + lines.len(),
                    };
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => polled.warnings.push(Warning {
                    file: file.clone(),
                    line: cursor.next_line,
                    reason: format!("cannot read: {e}"),
                }),
            }
        }
        Ok(polled)
    }
}

/// The bytes of `file` past `cursor` and the cursor they start at, or
/// `None` when nothing was appended. A file shorter than the cursor was
/// replaced: it is read from its start.
fn read_from(file: &Path, cursor: Cursor) -> std::io::Result<Option<(Vec<u8>, Cursor)>> {
    let mut f = File::open(file)?;
    let len = f.metadata()?.len();
    let start = if len < cursor.offset {
        Cursor::START
    } else {
        cursor
    };
    if len == start.offset {
        return Ok(None);
    }
    f.seek(SeekFrom::Start(start.offset))?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)?;
    Ok(Some((bytes, start)))
}

/// The cursor just after the last newline of `file`.
fn end_cursor(file: &Path) -> std::io::Result<Cursor> {
    let mut f = File::open(file)?;
    let mut buf = vec![0_u8; 64 * 1024];
    let mut read = 0_u64;
    let mut cursor = Cursor::START;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(cursor);
        }
        let chunk = buf.get(..n).unwrap_or_default();
        for (i, &b) in chunk.iter().enumerate() {
            if b == b'\n' {
                cursor.offset = read + i as u64 + 1;
                cursor.next_line += 1;
            }
        }
        read += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn record(span_id: &str, end: &str) -> String {
        format!(
            r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{{"traceId":"4bf92f3577b34da6a3ce929d0e0e4736","spanId":"{span_id}","parentSpanId":"","name":"n{span_id}","kind":1,"startTimeUnixNano":"1","endTimeUnixNano":"{end}"}}]}}]}}]}}"#
        )
    }

    fn append(path: &Path, text: &str) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("open");
        f.write_all(text.as_bytes()).expect("write");
    }

    fn ids(polled: &Polled) -> Vec<&str> {
        polled.spans.iter().map(|s| &s.span_id[..2]).collect()
    }

    #[test]
    fn follows_appended_complete_lines_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("spans-1-1.jsonl");
        // Existing content is skipped, but not a line still being written.
        let first = record("aa00000000000000", "2");
        let partial = record("bb00000000000000", "0");
        let (head, tail) = partial.split_at(20);
        append(&a, &format!("{first}\n{head}"));
        let mut follower = Follower::new(dir.path()).expect("follower");
        assert_eq!(ids(&follower.poll().expect("poll")), Vec::<&str>::new());

        append(&a, tail);
        assert!(follower.poll().expect("poll").spans.is_empty());
        append(&a, "\n");
        let polled = follower.poll().expect("poll");
        assert_eq!(ids(&polled), ["bb"]);
        assert!(polled.spans[0].is_running());

        // A new file is read from its start; a bad line names FILE:LINE.
        let b = dir.path().join("spans-2-2.jsonl");
        append(
            &b,
            &format!("{}\nnot json\n", record("cc00000000000000", "3")),
        );
        append(&a, &format!("{}\n", record("bb00000000000000", "9")));
        let polled = follower.poll().expect("poll");
        assert_eq!(ids(&polled), ["bb", "cc"]);
        assert_eq!(polled.warnings.len(), 1);
        assert_eq!(polled.warnings[0].file, b);
        assert_eq!(polled.warnings[0].line, 2);
        assert!(
            polled.warnings[0]
                .to_string()
                .starts_with(&format!("skipping {}:2: ", b.display()))
        );
        assert!(follower.poll().expect("poll").spans.is_empty());

        // Line numbers keep counting from where the follower started.
        append(&a, "oops\n");
        let polled = follower.poll().expect("poll");
        assert_eq!(polled.warnings[0].line, 4);
    }

    #[test]
    fn from_start_reads_everything_and_missing_dir_fails() {
        let dir = tempfile::tempdir().expect("tempdir");
        append(
            &dir.path().join("spans-1-1.jsonl"),
            &format!("{}\n", record("aa00000000000000", "2")),
        );
        let mut follower = Follower::from_start(dir.path()).expect("follower");
        assert_eq!(ids(&follower.poll().expect("poll")), ["aa"]);

        let missing = dir.path().join("nope");
        let err = Follower::new(&missing).expect_err("no store");
        assert!(matches!(err, TraceViewError::NoStore { .. }), "{err}");
    }
}
