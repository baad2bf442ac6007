//! Give back the code pages that only start-up touched.
//!
//! Most of an idle gateway's resident memory is clean pages of its own executable (and of
//! the C library), and most of those were mapped for start-up alone: parsing the command
//! line, the TOML config, the log filter, the TLS roots, the store's migrations. The
//! kernel also maps the 64 KiB around every page it faults in (fault-around), so a few
//! hundred start-up faults keep several MiB of code that never runs again resident.
//!
//! Once start-up is over, [`release`] drops this process's mappings of those pages with
//! `MADV_DONTNEED`. The pages stay in the page cache, shared and reclaimable as before;
//! the request path faults its own pages back in (minor faults, no disk read) on its
//! first requests. Only mappings that cannot hold private data are touched: the
//! executable's and shared libraries', not writable, and without anonymous
//! (copy-on-write) pages. The relocated `.data.rel.ro`, every writable segment, the heap,
//! stacks, other mapped files and JIT code are left alone.

/// What [`release`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Released {
    /// Mappings given back.
    pub mappings: usize,
    /// Resident KiB those mappings held before.
    pub resident_kib: u64,
}

/// One mapping of `/proc/self/smaps` with the fields [`release`] looks at.
#[derive(Debug, Default, PartialEq, Eq)]
struct Mapping {
    start: usize,
    end: usize,
    writable: bool,
    path: String,
    rss_kib: u64,
    anonymous_kib: u64,
}

/// Parse `/proc/PID/smaps` text into mappings.
fn parse_smaps(text: &str) -> Vec<Mapping> {
    let mut out: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_ascii_whitespace();
        let Some(first) = fields.next() else { continue };
        if let Some((start, end)) = first.split_once('-')
            && let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            )
        {
            // A header line: range, perms, offset, dev, inode, path.
            let perms = fields.next().unwrap_or("");
            let path = fields.nth(3).unwrap_or("").to_owned();
            out.push(Mapping {
                start,
                end,
                writable: perms.as_bytes().get(1) == Some(&b'w'),
                path,
                ..Mapping::default()
            });
            continue;
        }
        let Some(current) = out.last_mut() else {
            continue;
        };
        let kib = || fields.clone().next().and_then(|v| v.parse::<u64>().ok());
        match first {
            "Rss:" => current.rss_kib = kib().unwrap_or(0),
            // Unparsable means unknown: count it as private so the mapping is left alone.
            "Anonymous:" => current.anonymous_kib = kib().unwrap_or(u64::MAX),
            _ => {}
        }
    }
    out
}

/// The mappings that may be dropped: the executable's (`exe`) and shared libraries' (the
/// C library, the loader), not writable, and without anonymous (copy-on-write) pages, so
/// every resident page holds exactly the file's bytes. Other file mappings (a plugin's
/// compiled code, which wasmtime may still be re-protecting) are left alone.
fn releasable<'a>(mappings: &'a [Mapping], exe: &'a str) -> impl Iterator<Item = &'a Mapping> {
    mappings.iter().filter(move |m| {
        (m.path == exe || is_shared_library(&m.path))
            && !m.writable
            && m.anonymous_kib == 0
            && m.end > m.start
    })
}

/// `/usr/lib/x86_64-linux-gnu/libc.so.6`, `/lib64/ld-linux-x86-64.so.2`, `libfoo.so`.
fn is_shared_library(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or("");
    path.starts_with('/') && (name.ends_with(".so") || name.contains(".so."))
}

/// Drop this process's resident pages of read-only file mappings that hold no private data.
/// Blocking (reads procfs): call it once, off the async workers, after start-up.
#[cfg(target_os = "linux")]
pub fn release() -> std::io::Result<Released> {
    let exe = std::fs::read_link("/proc/self/exe")?;
    let exe = exe.to_string_lossy();
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let mappings = parse_smaps(&smaps);
    let mut released = Released::default();
    for m in releasable(&mappings, &exe) {
        // SAFETY: the range is a whole file-backed mapping, not writable, with no
        // anonymous pages: every page's content is the file's, so
        // dropping it only means the next access faults the same bytes back in from the
        // page cache. No Rust object lives in it and no pointer into it is invalidated.
        #[allow(unsafe_code)] // the workspace's one exception; see SAFETY above
        let dropped = unsafe {
            rustix::mm::madvise(
                m.start as *mut std::ffi::c_void,
                m.end - m.start,
                rustix::mm::Advice::LinuxDontNeed,
            )
        };
        if dropped.is_ok() {
            released.mappings += 1;
            released.resident_kib += m.rss_kib;
        }
    }
    Ok(released)
}

/// Not Linux: nothing to do.
#[cfg(not(target_os = "linux"))]
pub fn release() -> std::io::Result<Released> {
    Ok(Released::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
5581a0000000-5581a0200000 r--p 00000000 08:01 123 /usr/bin/relay-gateway
Size:               2048 kB
Rss:                1100 kB
Anonymous:             0 kB
5581a0200000-5581a2000000 r-xp 00200000 08:01 123 /usr/bin/relay-gateway
Size:              30720 kB
Rss:                6700 kB
Anonymous:             0 kB
5581a2000000-5581a2090000 r--p 02000000 08:01 123 /usr/bin/relay-gateway
Size:                576 kB
Rss:                 576 kB
Anonymous:           576 kB
5581a2090000-5581a20a0000 rw-p 02090000 08:01 123 /usr/bin/relay-gateway
Size:                 64 kB
Rss:                  64 kB
Anonymous:            12 kB
5581a3000000-5581a3100000 rw-p 00000000 00:00 0 [heap]
Size:               1024 kB
Rss:                 900 kB
Anonymous:           900 kB
7f0000000000-7f0000100000 r-xp 00000000 08:01 77 /usr/lib/x86_64-linux-gnu/libc.so.6
Size:               1024 kB
Rss:                 800 kB
Anonymous:             0 kB
7f0000100000-7f0000101000 rw-p 00000000 00:00 0
Size:                  4 kB
Rss:                   4 kB
Anonymous:             4 kB
";

    #[test]
    fn parses_ranges_permissions_paths_and_sizes() {
        let maps = parse_smaps(SMAPS);
        assert_eq!(maps.len(), 7);
        assert_eq!(maps[1].start, 0x5581a0200000);
        assert_eq!(maps[1].end, 0x5581a2000000);
        assert!(!maps[1].writable);
        assert_eq!(maps[1].path, "/usr/bin/relay-gateway");
        assert_eq!((maps[1].rss_kib, maps[1].anonymous_kib), (6700, 0));
        assert!(maps[3].writable);
        assert_eq!(maps[4].path, "[heap]");
        assert_eq!(maps[6].path, "");
    }

    #[test]
    fn only_clean_read_only_file_mappings_are_released() {
        let maps = parse_smaps(SMAPS);
        let chosen: Vec<usize> = releasable(&maps, "/usr/bin/relay-gateway")
            .map(|m| m.start)
            .collect();
        // The executable's read-only data and text, and libc's text; not the relocated
        // (anonymous) read-only segment, not the writable one, not the heap, not the
        // anonymous mapping without a path.
        assert_eq!(chosen, vec![0x5581a0000000, 0x5581a0200000, 0x7f0000000000]);
    }

    #[test]
    fn other_files_are_left_alone() {
        let text = "1000-2000 r-xp 00000000 08:01 1 /var/cache/relay/plugins/ab12.cwasm\n\
                    Rss: 4 kB\nAnonymous: 0 kB\n\
                    3000-4000 r--p 00000000 08:01 2 /usr/lib/libssl.so.3\n\
                    Rss: 4 kB\nAnonymous: 0 kB\n";
        let maps = parse_smaps(text);
        let chosen: Vec<&str> = releasable(&maps, "/usr/bin/relay-gateway")
            .map(|m| m.path.as_str())
            .collect();
        assert_eq!(chosen, vec!["/usr/lib/libssl.so.3"]);
        assert!(is_shared_library("/lib64/ld-linux-x86-64.so.2"));
        assert!(!is_shared_library("/srv/data.sock"));
        assert!(!is_shared_library("libc.so.6"));
    }

    #[test]
    fn an_unreadable_anonymous_count_keeps_the_mapping() {
        let text = "1000-2000 r-xp 00000000 08:01 1 /bin/x\nRss: 4 kB\nAnonymous: ? kB\n";
        let maps = parse_smaps(text);
        assert_eq!(releasable(&maps, "/bin/x").count(), 0);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn release_lowers_this_process_resident_text_and_code_still_runs() {
        fn exe_rss_kib() -> u64 {
            let exe = std::fs::read_link("/proc/self/exe").unwrap();
            let exe = exe.to_string_lossy().into_owned();
            let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
            releasable(&parse_smaps(&smaps), &exe)
                .filter(|m| m.path == exe)
                .map(|m| m.rss_kib)
                .sum()
        }
        let before = exe_rss_kib();
        let released = release().unwrap();
        let after = exe_rss_kib();
        assert!(released.mappings >= 1, "{released:?}");
        assert!(before > 0);
        // Running this test's own code faults some pages back in; far fewer than before.
        assert!(after < before, "before {before} KiB, after {after} KiB");
        // Code and read-only data still work (they fault back in from the page cache).
        let text = format!("{:?}", parse_smaps(SMAPS).len());
        assert_eq!(text, "7");
    }
}
