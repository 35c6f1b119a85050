use super::*;

fn small() -> LogOptions {
    LogOptions {
        segment_bytes: 256,
        max_commit_bytes: 4096,
        spare_segments: 0,
    }
}

fn recycling() -> LogOptions {
    LogOptions {
        spare_segments: 2,
        ..small()
    }
}

/// Opens the log in `dir` and returns it with every replayed entry.
fn open(dir: &Path, options: LogOptions) -> (SegmentLog, Recovery, Vec<(Position, Vec<u8>)>) {
    let mut seen = Vec::new();
    let (log, recovery) = SegmentLog::open(dir, options, |position, entry| {
        seen.push((position, entry.to_vec()))
    })
    .expect("open");
    (log, recovery, seen)
}

fn commit(log: &mut SegmentLog, entries: &[&[u8]]) -> Vec<Position> {
    let positions = entries
        .iter()
        .map(|entry| log.append(entry).expect("append"))
        .collect();
    log.commit().expect("commit");
    positions
}

fn entries(seen: &[(Position, Vec<u8>)]) -> Vec<Vec<u8>> {
    seen.iter().map(|(_, entry)| entry.clone()).collect()
}

#[test]
fn commits_come_back_in_order_at_the_positions_append_gave() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, _, seen) = open(dir.path(), small());
    assert!(seen.is_empty());
    let mut given = commit(&mut log, &[b"one", b"", b"three"]);
    given.extend(commit(&mut log, &[b"four"]));
    let reader = log.reader();
    assert_eq!(reader.read(given[2], 5).expect("read"), b"three");
    drop(log);

    let (_, recovery, seen) = open(dir.path(), small());
    assert_eq!(recovery.commits, 2);
    assert_eq!(recovery.entries, 4);
    assert_eq!(recovery.tail_bytes, 0);
    let positions: Vec<Position> = seen.iter().map(|(p, _)| *p).collect();
    assert_eq!(positions, given);
    assert_eq!(
        entries(&seen),
        vec![
            b"one".to_vec(),
            Vec::new(),
            b"three".to_vec(),
            b"four".to_vec()
        ]
    );
}

#[test]
fn one_commit_is_one_write_of_its_entries_and_headers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, _, _) = open(dir.path(), LogOptions::default());
    log.append(&[7; 100]).expect("append");
    log.append(&[8; 50]).expect("append");
    let info = log.commit().expect("commit");
    assert_eq!(info.entries, 2);
    assert_eq!(info.bytes, 8 + 4 + 100 + 4 + 50);
    let (_, len) = log.segments().last().expect("a segment");
    assert_eq!(len, SEGMENT_HEADER + info.bytes);
    assert_eq!(log.commit().expect("empty commit").bytes, 0);
}

#[test]
fn a_full_segment_rolls_over_and_old_segments_can_be_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, _, _) = open(dir.path(), small());
    let mut first = Vec::new();
    for i in 0..20u8 {
        first.extend(commit(&mut log, &[&[i; 40]]));
    }
    let segments: Vec<u64> = log.segments().map(|(n, _)| n).collect();
    assert!(segments.len() > 3, "{segments:?}");
    let reader = log.reader();
    assert_eq!(reader.read(first[0], 40).expect("read"), vec![0; 40]);

    let active = log.active_segment();
    assert_eq!(
        log.remove_segments_before(active).expect("remove"),
        segments.len() - 1
    );
    assert!(matches!(
        reader.read(first[0], 40),
        Err(LogError::NoEntry { .. })
    ));
    drop(log);
    let (_, _, seen) = open(dir.path(), small());
    assert!(seen.iter().all(|(p, _)| p.segment == active));
    assert_eq!(seen.last().map(|(_, e)| e.clone()), Some(vec![19; 40]));
}

/// The log's files after three commits, and the offset where the last
/// commit starts.
fn three_commits(dir: &Path) -> u64 {
    let (mut log, _, _) = open(dir, LogOptions::default());
    commit(&mut log, &[b"first", b"commit"]);
    commit(&mut log, &[b"second"]);
    let (_, before_last) = log.segments().last().expect("a segment");
    commit(&mut log, &[b"the last", b"commit", b"of three"]);
    before_last
}

fn only_segment(dir: &Path) -> PathBuf {
    let (numbers, _) = list_dir(dir).expect("list");
    assert_eq!(numbers.len(), 1);
    segment_path(dir, numbers[0])
}

fn copy_log(from: &Path, to: &Path) {
    for item in std::fs::read_dir(from).expect("read dir") {
        let path = item.expect("entry").path();
        std::fs::copy(&path, to.join(path.file_name().expect("name"))).expect("copy");
    }
}

/// Whatever the log holds after a crash, it opens, keeps the first two
/// commits whole, and takes new commits after them.
fn recovers_the_whole_commits(dir: &Path, expect_torn: bool) {
    let (mut log, recovery, seen) = open(dir, LogOptions::default());
    assert_eq!(recovery.commits, 2, "{recovery:?}");
    assert_eq!(
        entries(&seen),
        vec![b"first".to_vec(), b"commit".to_vec(), b"second".to_vec()]
    );
    assert_eq!(recovery.tail_bytes > 0, expect_torn, "{recovery:?}");
    commit(&mut log, &[b"after the crash"]);
    drop(log);
    // What is left of the torn commit past the new one stays ignored.
    let (_, recovery, seen) = open(dir, LogOptions::default());
    assert_eq!(recovery.commits, 3);
    assert_eq!(
        seen.last().map(|(_, e)| e.clone()),
        Some(b"after the crash".to_vec())
    );
}

#[test]
fn a_torn_last_commit_is_cut_at_every_length() {
    let original = tempfile::tempdir().expect("tempdir");
    let last_start = three_commits(original.path());
    let full = std::fs::metadata(only_segment(original.path()))
        .expect("stat")
        .len();
    for cut in last_start..full {
        let dir = tempfile::tempdir().expect("tempdir");
        copy_log(original.path(), dir.path());
        let file = OpenOptions::new()
            .write(true)
            .open(only_segment(dir.path()))
            .expect("open");
        file.set_len(cut).expect("truncate");
        recovers_the_whole_commits(dir.path(), cut > last_start);
    }
}

#[test]
fn a_corrupted_last_commit_is_cut_whatever_byte_is_hit() {
    let original = tempfile::tempdir().expect("tempdir");
    let last_start = three_commits(original.path());
    let bytes = std::fs::read(only_segment(original.path())).expect("read");
    for at in last_start as usize..bytes.len() {
        let dir = tempfile::tempdir().expect("tempdir");
        copy_log(original.path(), dir.path());
        let mut damaged = bytes.clone();
        damaged[at] ^= 0x5a;
        std::fs::write(only_segment(dir.path()), &damaged).expect("write");
        recovers_the_whole_commits(dir.path(), true);
    }
}

#[test]
fn damage_before_the_last_segment_refuses_to_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, _, _) = open(dir.path(), small());
    for i in 0..10u8 {
        commit(&mut log, &[&[i; 60]]);
    }
    let first = log.segments().next().map(|(n, _)| n).expect("a segment");
    assert_ne!(first, log.active_segment());
    drop(log);
    let path = segment_path(dir.path(), first);
    let mut bytes = std::fs::read(&path).expect("read");
    let at = SEGMENT_HEADER as usize + COMMIT_HEADER + 10;
    bytes[at] ^= 1;
    std::fs::write(&path, &bytes).expect("write");
    match SegmentLog::open(dir.path(), small(), |_, _| {}) {
        Err(LogError::Corrupt { offset, reason, .. }) => {
            assert_eq!(offset, SEGMENT_HEADER);
            assert!(reason.contains("seal"), "{reason}");
        }
        Err(other) => panic!("expected Corrupt, got {other}"),
        Ok(_) => panic!("expected Corrupt, got a log"),
    }
}

#[test]
fn a_segment_whose_header_was_torn_at_creation_starts_over() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, _, _) = open(dir.path(), small());
    commit(&mut log, &[b"kept"]);
    log.rotate().expect("rotate");
    let next = log.active_segment();
    drop(log);
    // As if the process died while writing the new segment's header.
    std::fs::write(segment_path(dir.path(), next), b"SBL").expect("write");
    let (mut log, recovery, seen) = open(dir.path(), small());
    assert_eq!(entries(&seen), vec![b"kept".to_vec()]);
    assert_eq!(log.active_segment(), next);
    assert_eq!(recovery.tail_bytes, 0);
    commit(&mut log, &[b"new"]);
    drop(log);
    let (_, _, seen) = open(dir.path(), small());
    assert_eq!(entries(&seen), vec![b"kept".to_vec(), b"new".to_vec()]);
}

#[test]
fn a_commit_over_the_limit_is_refused_and_forgotten() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, _, _) = open(dir.path(), small());
    log.append(&[1; 5000]).expect("append");
    assert!(matches!(log.commit(), Err(LogError::CommitTooLarge { .. })));
    commit(&mut log, &[b"fine"]);
    drop(log);
    let (_, _, seen) = open(dir.path(), small());
    assert_eq!(entries(&seen), vec![b"fine".to_vec()]);
}

#[test]
fn a_last_segment_of_another_format_version_is_refused_not_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, _, _) = open(dir.path(), small());
    commit(&mut log, &[b"written by a newer release"]);
    let path = segment_path(dir.path(), log.active_segment());
    drop(log);
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[6] = 9;
    std::fs::write(&path, &bytes).expect("write");
    match SegmentLog::open(dir.path(), small(), |_, _| {}) {
        Err(LogError::Corrupt { reason, .. }) => assert!(reason.contains("version 9"), "{reason}"),
        Err(other) => panic!("expected Corrupt, got {other}"),
        Ok(_) => panic!("expected Corrupt, got a log"),
    }
    assert_eq!(
        std::fs::read(&path).expect("read"),
        bytes,
        "the file was changed"
    );
}

#[test]
fn emptied_segments_become_new_ones_and_their_old_commits_never_replay() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, _, _) = open(dir.path(), recycling());
    for i in 0..12u8 {
        commit(&mut log, &[&[i; 60]]);
    }
    log.rotate().expect("rotate");
    let active = log.active_segment();
    log.remove_segments_before(active).expect("remove");
    assert_eq!(log.spare_segments(), 2);
    let spare_len = |dir: &Path| {
        let (_, spares) = list_dir(dir).expect("list");
        spares
            .iter()
            .map(|s| std::fs::metadata(s).expect("stat").len())
            .collect::<Vec<_>>()
    };
    assert!(spare_len(dir.path()).iter().all(|len| *len > 200));

    // The next segments are the spares: short commits into them leave most
    // of their old commits in place behind the new ones.
    commit(&mut log, &[b"x"]);
    log.rotate().expect("rotate");
    commit(&mut log, &[b"y"]);
    log.rotate().expect("rotate");
    commit(&mut log, &[b"z"]);
    assert_eq!(log.spare_segments(), 0);
    drop(log);

    let (mut log, recovery, seen) = open(dir.path(), recycling());
    assert_eq!(
        entries(&seen),
        vec![b"x".to_vec(), b"y".to_vec(), b"z".to_vec()]
    );
    assert!(
        recovery.tail_bytes > 0,
        "the active segment was a spare: {recovery:?}"
    );
    commit(&mut log, &[b"after reopen"]);
    drop(log);
    let (_, _, seen) = open(dir.path(), recycling());
    assert_eq!(seen.len(), 4);
}

#[test]
fn a_log_that_stopped_after_sealing_its_segment_goes_on_in_a_new_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, _, _) = open(dir.path(), small());
    commit(&mut log, &[b"sealed in"]);
    let sealed = log.active_segment();
    log.rotate().expect("rotate");
    // As if the process died between the seal and the next segment.
    std::fs::remove_file(segment_path(dir.path(), sealed + 1)).expect("remove");
    drop(log);
    let (mut log, _, seen) = open(dir.path(), small());
    assert_eq!(entries(&seen), vec![b"sealed in".to_vec()]);
    assert_eq!(log.active_segment(), sealed + 1);
    commit(&mut log, &[b"next"]);
    drop(log);
    let (_, _, seen) = open(dir.path(), small());
    assert_eq!(
        entries(&seen),
        vec![b"sealed in".to_vec(), b"next".to_vec()]
    );
}

#[test]
fn a_segment_cut_short_before_its_seal_refuses_to_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, _, _) = open(dir.path(), small());
    commit(&mut log, &[b"one"]);
    commit(&mut log, &[b"two"]);
    let first = log.active_segment();
    log.rotate().expect("rotate");
    commit(&mut log, &[b"three"]);
    drop(log);
    let path = segment_path(dir.path(), first);
    let len = std::fs::metadata(&path).expect("stat").len();
    let file = OpenOptions::new().write(true).open(&path).expect("open");
    file.set_len(len - 8).expect("cut the seal off");
    assert!(matches!(
        SegmentLog::open(dir.path(), small(), |_, _| {}),
        Err(LogError::Corrupt { .. })
    ));
}
