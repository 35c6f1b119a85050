//! A segment log: checksummed commits appended to numbered files.
//!
//! Mailbox data is short-lived: most messages are deleted seconds after they
//! are stored. A B-tree pays for that with random page writes on every
//! commit; a log appends what a commit stores and nothing else, and frees
//! space by dropping whole segments once what is still live in them has
//! been copied forward. This module is the file part only: what an entry
//! means, how entries are indexed and which are live belong to its user.
//!
//! On disk, a directory of segment files named by their number
//! (`00000000000000000001.seg`), each a 16-byte header (magic, format
//! version, segment number) followed by commits:
//!
//! ```text
//! commit = [body length: u32 LE][crc32: u32 LE][body]
//! body   = entry*      entry = [length: u32 LE][bytes]
//! ```
//!
//! The checksum covers the segment number, the length and the body. A
//! commit with an empty body is the segment's *seal*, written when the log
//! moves on to the next segment.
//!
//! A commit is written with one `write` and made durable with one
//! `fdatasync`, whatever the number of entries in it. A crash can leave
//! only the last commit torn, so opening reads every segment in order and,
//! in the last one, stops at the first commit that is not whole (short,
//! over the size limit, or failing its checksum): that commit was never
//! acknowledged, and the next commit overwrites it. Every earlier segment
//! must end in its seal; a bad commit before it is damage to acknowledged
//! data, and opening fails with [`LogError::Corrupt`] naming the file and
//! offset instead of silently dropping what follows.
//!
//! Emptied segments are recycled: up to [`LogOptions::spare_segments`] of
//! them are kept as `*.spare` files and become the next segments, their
//! header rewritten. Writing into blocks a file already has, below its
//! length, lets `fdatasync` skip the filesystem's journal (no new blocks,
//! no new size), which is most of a small commit's cost
//! (docs/benchmarks.md). What a spare held before is left in place: its
//! commits were checksummed with another segment number, so none of them
//! can pass for a commit of the new segment (but for a 2^-32 chance per
//! stale commit that a replay reaches, as in RocksDB's recycled logs).
//!
//! A failed write or sync breaks the log for the rest of the process
//! (after a failed `fdatasync` Linux may have dropped the dirty pages, so
//! retrying could report success for data that is not on disk): every
//! later commit is refused, and the process restarts and recovers.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

const MAGIC: &[u8; 6] = b"SBLOG\0";
const FORMAT_VERSION: u16 = 1;
const SEGMENT_HEADER: u64 = 16;
const COMMIT_HEADER: usize = 8;
const ENTRY_HEADER: usize = 4;
const SEGMENT_SUFFIX: &str = ".seg";
const SPARE_SUFFIX: &str = ".spare";

/// What went wrong in a segment log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// The disk failed (or failed before, see the module docs).
    #[error("segment log I/O at {path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// What the OS reported.
        source: std::io::Error,
    },
    /// Acknowledged data is damaged.
    #[error("segment log corrupt at {path} offset {offset}: {reason}")]
    Corrupt {
        /// The segment.
        path: String,
        /// Where the bad commit or header starts.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A commit failed earlier in this process; nothing more is written.
    #[error("segment log refuses writes after an earlier I/O failure")]
    Broken,
    /// One commit would exceed [`LogOptions::max_commit_bytes`].
    #[error("a commit of {bytes} bytes exceeds the limit of {limit}")]
    CommitTooLarge {
        /// The body size.
        bytes: usize,
        /// The limit.
        limit: u32,
    },
    /// A read asked for bytes of a segment that is gone or too short.
    #[error("no entry of {len} bytes at segment {segment} offset {offset}")]
    NoEntry {
        /// The segment number.
        segment: u64,
        /// The offset.
        offset: u64,
        /// The length asked for.
        len: u32,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Tuning of a [`SegmentLog`].
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// A commit that starts once the active segment is this long starts a
    /// new segment.
    pub segment_bytes: u64,
    /// The largest commit body; recovery treats a longer length as damage.
    pub max_commit_bytes: u32,
    /// Emptied segments kept for reuse as new segments (see the module docs).
    pub spare_segments: usize,
}

impl Default for LogOptions {
    fn default() -> Self {
        Self {
            segment_bytes: 64 * 1024 * 1024,
            max_commit_bytes: 64 * 1024 * 1024,
            spare_segments: 2,
        }
    }
}

/// Where an entry's bytes are: the segment number and the offset of the
/// first byte after the entry's length prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    /// The segment number.
    pub segment: u64,
    /// The byte offset in the segment file.
    pub offset: u64,
}

/// What opening a log found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Whole commits replayed.
    pub commits: u64,
    /// Entries replayed.
    pub entries: u64,
    /// Bytes after the last whole commit of the last segment: a torn
    /// commit, or what a recycled segment held before (overwritten by the
    /// next commits).
    pub tail_bytes: u64,
}

/// What one commit did, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitInfo {
    /// Entries in the commit.
    pub entries: usize,
    /// Bytes written, headers included.
    pub bytes: u64,
}

/// Reads committed entries by position; cheap to clone, usable from any
/// thread while the log appends.
#[derive(Clone)]
pub struct LogReader {
    dir: Arc<PathBuf>,
    files: Arc<RwLock<BTreeMap<u64, Arc<File>>>>,
}

impl LogReader {
    /// The `len` bytes of the entry at `position`.
    pub fn read(&self, position: Position, len: u32) -> Result<Vec<u8>, LogError> {
        let file = self
            .files
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&position.segment)
            .cloned();
        let missing = || LogError::NoEntry {
            segment: position.segment,
            offset: position.offset,
            len,
        };
        let file = file.ok_or_else(missing)?;
        let mut bytes = vec![0; len as usize];
        file.read_exact_at(&mut bytes, position.offset)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => missing(),
                _ => LogError::Io {
                    path: segment_path(&self.dir, position.segment)
                        .display()
                        .to_string(),
                    source: e,
                },
            })?;
        Ok(bytes)
    }
}

/// The appending side of a segment log (one per directory; see the module
/// docs for the format and what opening recovers).
pub struct SegmentLog {
    dir: PathBuf,
    options: LogOptions,
    active: File,
    active_number: u64,
    active_len: u64,
    /// The next commit: its header's room, then its entries.
    pending: Vec<u8>,
    pending_entries: usize,
    /// Every segment's length (the active one's too).
    lengths: BTreeMap<u64, u64>,
    /// Emptied segment files waiting to be reused.
    spares: Vec<PathBuf>,
    reader: LogReader,
    broken: bool,
}

impl SegmentLog {
    /// Opens the log in `dir` (creating it if needed) and hands every entry
    /// of every whole commit to `replay`, oldest first, with its position.
    pub fn open(
        dir: &Path,
        options: LogOptions,
        mut replay: impl FnMut(Position, &[u8]),
    ) -> Result<(Self, Recovery), LogError> {
        // What the log holds is its user's data: only the process's own
        // user may read it.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_error(dir))?;
        let (numbers, spares) = list_dir(dir)?;
        let mut recovery = Recovery::default();
        let mut files = BTreeMap::new();
        let mut lengths = BTreeMap::new();
        let mut last_file = None;
        let mut last_sealed = false;
        let last = numbers.last().copied();
        for &number in &numbers {
            let path = segment_path(dir, number);
            let is_last = Some(number) == last;
            let mut file = OpenOptions::new()
                .read(true)
                .write(is_last)
                .open(&path)
                .map_err(io_error(&path))?;
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes).map_err(io_error(&path))?;
            let end =
                match replay_segment(&path, number, &bytes, &options, &mut recovery, &mut replay) {
                    Ok(SegmentEnd { end, sealed: true }) => {
                        last_sealed = is_last;
                        end
                    }
                    Ok(SegmentEnd { end, sealed: false }) if is_last => end,
                    Ok(SegmentEnd { end, .. }) => {
                        return Err(LogError::Corrupt {
                            path: path.display().to_string(),
                            offset: end,
                            reason: "the segment ends without its seal".into(),
                        });
                    }
                    Err(damage) if is_last && !damage.fatal => damage.offset,
                    Err(damage) => return Err(damage.into_error(&path)),
                };
            let end = if end < SEGMENT_HEADER {
                // A header torn while the segment was being created.
                write_header(&mut file, &path, number)?;
                SEGMENT_HEADER
            } else {
                end
            };
            if is_last {
                recovery.tail_bytes = (bytes.len() as u64).saturating_sub(end);
                last_file = Some(file.try_clone().map_err(io_error(&path))?);
            }
            lengths.insert(number, end);
            files.insert(number, Arc::new(file));
        }
        let reader = LogReader {
            dir: Arc::new(dir.to_path_buf()),
            files: Arc::new(RwLock::new(files)),
        };
        let (active_number, active, active_len) = match (last, last_file) {
            (Some(number), Some(file)) => {
                let len = lengths.get(&number).copied().unwrap_or(SEGMENT_HEADER);
                (number, file, len)
            }
            _ => {
                let file = create_segment(dir, 1)?;
                reader
                    .files
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(1, Arc::new(file.try_clone().map_err(io_error(dir))?));
                lengths.insert(1, SEGMENT_HEADER);
                (1, file, SEGMENT_HEADER)
            }
        };
        let log = Self {
            dir: dir.to_path_buf(),
            options,
            active,
            active_number,
            active_len,
            pending: Vec::new(),
            pending_entries: 0,
            lengths,
            spares,
            reader,
            broken: false,
        };
        let mut log = log;
        if last_sealed {
            // The log had moved on from its last segment when it stopped.
            log.start_segment(active_number + 1)?;
        }
        Ok((log, recovery))
    }

    /// A reader of committed entries.
    pub fn reader(&self) -> LogReader {
        self.reader.clone()
    }

    /// Adds `entry` to the next commit and returns where it will be once
    /// committed (readers must not ask for it before [`Self::commit`]).
    pub fn append(&mut self, entry: &[u8]) -> Result<Position, LogError> {
        if self.broken {
            return Err(LogError::Broken);
        }
        if self.pending.is_empty() {
            if self.active_len >= self.options.segment_bytes {
                self.rotate()?;
            }
            self.pending.extend_from_slice(&[0; COMMIT_HEADER]);
        }
        let len = u32::try_from(entry.len()).map_err(|_| LogError::CommitTooLarge {
            bytes: entry.len(),
            limit: self.options.max_commit_bytes,
        })?;
        self.pending.extend_from_slice(&len.to_le_bytes());
        let offset = self.active_len + self.pending.len() as u64;
        self.pending.extend_from_slice(entry);
        self.pending_entries += 1;
        Ok(Position {
            segment: self.active_number,
            offset,
        })
    }

    /// Entries appended since the last commit.
    pub fn pending_entries(&self) -> usize {
        self.pending_entries
    }

    /// Writes the appended entries as one commit and waits until they are
    /// on disk. Nothing to commit is a no-op.
    pub fn commit(&mut self) -> Result<CommitInfo, LogError> {
        if self.broken {
            return Err(LogError::Broken);
        }
        if self.pending.is_empty() {
            return Ok(CommitInfo {
                entries: 0,
                bytes: 0,
            });
        }
        let body = self.pending.len() - COMMIT_HEADER;
        let limit = self.options.max_commit_bytes;
        let body_len = u32::try_from(body)
            .ok()
            .filter(|len| *len <= limit)
            .ok_or(LogError::CommitTooLarge { bytes: body, limit });
        let body_len = match body_len {
            Ok(len) => len,
            Err(e) => {
                self.pending.clear();
                self.pending_entries = 0;
                return Err(e);
            }
        };
        let crc = commit_crc(self.active_number, body_len, &self.pending[COMMIT_HEADER..]);
        self.pending[..4].copy_from_slice(&body_len.to_le_bytes());
        self.pending[4..COMMIT_HEADER].copy_from_slice(&crc.to_le_bytes());
        let path = segment_path(&self.dir, self.active_number);
        let written = self
            .active
            .write_all_at(&self.pending, self.active_len)
            .and_then(|()| self.active.sync_data());
        if let Err(source) = written {
            self.broken = true;
            return Err(LogError::Io {
                path: path.display().to_string(),
                source,
            });
        }
        let info = CommitInfo {
            entries: self.pending_entries,
            bytes: self.pending.len() as u64,
        };
        self.active_len += info.bytes;
        self.lengths.insert(self.active_number, self.active_len);
        self.pending.clear();
        self.pending_entries = 0;
        Ok(info)
    }

    /// Every segment's number and length, oldest first.
    pub fn segments(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.lengths.iter().map(|(&number, &len)| (number, len))
    }

    /// The segment new commits go to.
    pub fn active_segment(&self) -> u64 {
        self.active_number
    }

    /// Commits what is pending, seals the active segment and starts the
    /// next one (its user does so before copying the live entries of old
    /// segments forward, so that they can all go).
    pub fn rotate(&mut self) -> Result<(), LogError> {
        self.commit()?;
        let seal = commit_frame(self.active_number, &[]);
        let written = self
            .active
            .write_all_at(&seal, self.active_len)
            .and_then(|()| self.active.sync_data());
        if let Err(source) = written {
            self.broken = true;
            return Err(LogError::Io {
                path: segment_path(&self.dir, self.active_number)
                    .display()
                    .to_string(),
                source,
            });
        }
        self.active_len += seal.len() as u64;
        self.lengths.insert(self.active_number, self.active_len);
        self.start_segment(self.active_number + 1)
    }

    /// Makes segment `number` (a spare if there is one) the active one.
    fn start_segment(&mut self, number: u64) -> Result<(), LogError> {
        let file = match self.spares.pop() {
            Some(spare) => reuse_segment(&self.dir, &spare, number),
            None => create_segment(&self.dir, number),
        }
        .inspect_err(|_| self.broken = true)?;
        let shared = file.try_clone().map_err(io_error(&self.dir))?;
        self.reader
            .files
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(number, Arc::new(shared));
        self.active = file;
        self.active_number = number;
        self.active_len = SEGMENT_HEADER;
        self.lengths.insert(number, SEGMENT_HEADER);
        Ok(())
    }

    /// Drops every segment numbered below `number` (never the active one):
    /// kept as a spare while there are fewer than
    /// [`LogOptions::spare_segments`], deleted otherwise. Its user calls
    /// this once nothing live is left in them.
    pub fn remove_segments_before(&mut self, number: u64) -> Result<usize, LogError> {
        let number = number.min(self.active_number);
        let doomed: Vec<u64> = self.lengths.range(..number).map(|(&n, _)| n).collect();
        for &segment in &doomed {
            let path = segment_path(&self.dir, segment);
            self.reader
                .files
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&segment);
            self.lengths.remove(&segment);
            if self.spares.len() < self.options.spare_segments {
                let spare = spare_path(&self.dir, segment);
                std::fs::rename(&path, &spare).map_err(io_error(&path))?;
                self.spares.push(spare);
            } else {
                std::fs::remove_file(&path).map_err(io_error(&path))?;
            }
        }
        if !doomed.is_empty() {
            sync_dir(&self.dir)?;
        }
        Ok(doomed.len())
    }

    /// Spare segment files waiting for reuse.
    pub fn spare_segments(&self) -> usize {
        self.spares.len()
    }
}

/// Where a segment stops being whole.
struct Damage {
    offset: u64,
    reason: String,
    /// Damage that no crash leaves (a foreign file, another format
    /// version): refused even in the last segment.
    fatal: bool,
}

impl Damage {
    fn into_error(self, path: &Path) -> LogError {
        LogError::Corrupt {
            path: path.display().to_string(),
            offset: self.offset,
            reason: self.reason,
        }
    }
}

/// Where a segment's whole commits end, and whether its seal is there.
struct SegmentEnd {
    end: u64,
    sealed: bool,
}

/// Replays the whole commits of one segment up to its seal or the first
/// commit that is not whole (`Ok`, with where they end), or says what is
/// wrong with its header (`Err`).
fn replay_segment(
    path: &Path,
    number: u64,
    bytes: &[u8],
    options: &LogOptions,
    recovery: &mut Recovery,
    replay: &mut impl FnMut(Position, &[u8]),
) -> Result<SegmentEnd, Damage> {
    let damage = |offset: usize, reason: String| Damage {
        offset: offset as u64,
        reason,
        fatal: false,
    };
    let fatal = |reason: String| Damage {
        offset: 0,
        reason,
        fatal: true,
    };
    if bytes.len() < SEGMENT_HEADER as usize {
        return Err(damage(0, "short segment header".into()));
    }
    if &bytes[..6] != MAGIC {
        return Err(fatal(format!("{} is not a segment", path.display())));
    }
    let version = u16::from_le_bytes([bytes[6], bytes[7]]);
    if version != FORMAT_VERSION {
        return Err(fatal(format!(
            "format version {version}, this build reads {FORMAT_VERSION}"
        )));
    }
    let mut stored = [0; 8];
    stored.copy_from_slice(&bytes[8..16]);
    if u64::from_le_bytes(stored) != number {
        return Err(fatal("segment number does not match its name".into()));
    }
    let mut at = SEGMENT_HEADER as usize;
    let sealed = loop {
        let Some(header) = bytes.get(at..at + COMMIT_HEADER) else {
            break false;
        };
        let body_len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if body_len > options.max_commit_bytes {
            break false;
        }
        let start = at + COMMIT_HEADER;
        let Some(body) = bytes.get(start..start + body_len as usize) else {
            break false;
        };
        if commit_crc(number, body_len, body) != crc {
            break false;
        }
        if body.is_empty() {
            at = start;
            break true;
        }
        let Some(entries) = split_entries(body) else {
            // Checksummed, so written by something else: refuse, even last.
            return Err(Damage {
                offset: at as u64,
                reason: "bad entry framing".into(),
                fatal: true,
            });
        };
        for (offset, entry) in entries {
            replay(
                Position {
                    segment: number,
                    offset: (start + offset) as u64,
                },
                entry,
            );
            recovery.entries += 1;
        }
        recovery.commits += 1;
        at = start + body_len as usize;
    };
    Ok(SegmentEnd {
        end: at as u64,
        sealed,
    })
}

/// A commit body's entries with their offsets in the body, or `None` if
/// the framing does not add up (a checksummed body never fails this unless
/// written by something else).
fn split_entries(body: &[u8]) -> Option<Vec<(usize, &[u8])>> {
    let mut entries = Vec::new();
    let mut at = 0;
    while at < body.len() {
        let len = body.get(at..at + ENTRY_HEADER)?;
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let start = at + ENTRY_HEADER;
        entries.push((start, body.get(start..start + len)?));
        at = start + len;
    }
    Some(entries)
}

/// A whole commit of `body` in segment `number` (an empty body: its seal).
fn commit_frame(number: u64, body: &[u8]) -> Vec<u8> {
    let len = body.len() as u32;
    let mut frame = Vec::with_capacity(COMMIT_HEADER + body.len());
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(&commit_crc(number, len, body).to_le_bytes());
    frame.extend_from_slice(body);
    frame
}

fn commit_crc(number: u64, body_len: u32, body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&number.to_le_bytes());
    hasher.update(&body_len.to_le_bytes());
    hasher.update(body);
    hasher.finalize()
}

fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:020}{SEGMENT_SUFFIX}"))
}

fn spare_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:020}{SPARE_SUFFIX}"))
}

/// The segment numbers in `dir`, in order, and its spare files.
fn list_dir(dir: &Path) -> Result<(Vec<u64>, Vec<PathBuf>), LogError> {
    let mut numbers = Vec::new();
    let mut spares = Vec::new();
    for item in std::fs::read_dir(dir).map_err(io_error(dir))? {
        let item = item.map_err(io_error(dir))?;
        let name = item.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        if let Some(stem) = name.strip_suffix(SEGMENT_SUFFIX) {
            numbers.extend(stem.parse::<u64>().ok());
        } else if name.ends_with(SPARE_SUFFIX) {
            spares.push(item.path());
        }
    }
    numbers.sort_unstable();
    spares.sort_unstable();
    Ok((numbers, spares))
}

fn segment_header(number: u64) -> Vec<u8> {
    let mut header = Vec::with_capacity(SEGMENT_HEADER as usize);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    header.extend_from_slice(&number.to_le_bytes());
    header
}

fn write_header(file: &mut File, path: &Path, number: u64) -> Result<(), LogError> {
    file.set_len(0).map_err(io_error(path))?;
    file.write_all_at(&segment_header(number), 0)
        .map_err(io_error(path))?;
    file.sync_all().map_err(io_error(path))
}

/// Turns the spare file `spare` into segment `number`: its header is
/// rewritten (durably, while it is still a spare, so that a crash leaves
/// either a spare or a whole segment) and it is renamed.
fn reuse_segment(dir: &Path, spare: &Path, number: u64) -> Result<File, LogError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(spare)
        .map_err(io_error(spare))?;
    file.write_all_at(&segment_header(number), 0)
        .and_then(|()| file.sync_data())
        .map_err(io_error(spare))?;
    let path = segment_path(dir, number);
    std::fs::rename(spare, &path).map_err(io_error(&path))?;
    sync_dir(dir)?;
    Ok(file)
}

/// Creates segment `number` with its header, durable with its directory
/// entry before any commit goes into it.
fn create_segment(dir: &Path, number: u64) -> Result<File, LogError> {
    let path = segment_path(dir, number);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(io_error(&path))?;
    write_header(&mut file, &path, number)?;
    sync_dir(dir)?;
    Ok(file)
}

fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
}

#[cfg(test)]
mod tests;
