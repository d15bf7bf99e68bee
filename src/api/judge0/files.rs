//! `additional_files`: a base64 zip whose files Judge0 unzips into the program's directory,
//! here unpacked into the job's `files` before anything is stored, so that kiln's own checks
//! (names, count, bytes) hold them as any job's files. What an archive could do to the host or
//! to the server is refused here: more entries than a job may have files, more bytes than
//! Judge0's `MAX_EXTRACT_SIZE` (or kiln's own cap), and any entry that is not a plain file
//! inside the work directory (an absolute path, a `..`, a symlink).
//!
//! Language 89, Judge0's "multi-file program", has no source of its own: the archive brings a
//! `run` script and perhaps a `compile` script, which [`PROJECT_DRIVER`] runs with bash.

use std::collections::BTreeMap;
use std::io::{Cursor, Read};

use crate::job::content::Content;

/// Judge0's `MAX_EXTRACT_SIZE`: the most an archive unpacks to, in KB.
pub const MAX_EXTRACT_KB: u64 = 10240;

/// Judge0's id of the multi-file program.
pub const MULTI_FILE: u64 = 89;

/// What a multi-file program runs as, with bash: the archive's `compile` script if it has one,
/// its output on stderr so that stdout is the program's alone, and then its `run` script, as
/// Judge0's `isolate_job.rb` runs a project. A failed compile ends the run with its status.
pub const PROJECT_DRIVER: &str = "\
# kiln runs a Judge0 multi-file program (language 89): its compile script, then its run script.
if [ -f compile ]; then bash compile </dev/null >&2 || exit; fi
exec bash run
";

/// How much an archive may hold.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    pub max_files: usize,
    pub max_bytes: u64,
}

/// The files of a zip archive, by their paths inside it; the error says why it is refused.
pub fn unpack(archive: &[u8], bounds: Bounds) -> Result<BTreeMap<String, Content>, String> {
    let mut zip = zip::ZipArchive::new(Cursor::new(archive))
        .map_err(|e| format!("is not a zip archive: {e}"))?;
    // Directories are entries too, and may be as many as the files.
    if zip.len() > bounds.max_files.saturating_mul(2) {
        return Err(format!(
            "has {} entries, at most {} files allowed",
            zip.len(),
            bounds.max_files
        ));
    }
    let mut files = BTreeMap::new();
    let mut left = bounds.max_bytes;
    for index in 0..zip.len() {
        let mut entry = zip
            .by_index(index)
            .map_err(|e| format!("entry {}: {e}", index + 1))?;
        let raw = entry
            .name()
            .map_err(|e| format!("entry {} has no readable name: {e}", index + 1))?
            .into_owned();
        if entry.is_symlink() {
            return Err(format!("{raw:?} is a symlink, which is not allowed"));
        }
        let path = inside(&raw)?;
        if entry.is_dir() {
            continue;
        }
        if !entry.is_file() {
            return Err(format!("{raw:?} is not a regular file"));
        }
        if files.len() == bounds.max_files {
            return Err(format!("has more than {} files", bounds.max_files));
        }
        // The size an entry declares may be a lie: no more than what is left is ever read.
        let mut contents = Vec::new();
        (&mut entry)
            .take(left + 1)
            .read_to_end(&mut contents)
            .map_err(|e| format!("{raw:?} cannot be unpacked: {e}"))?;
        let size = contents.len() as u64;
        if size > left {
            return Err(format!(
                "unpacks to more than {} KB",
                bounds.max_bytes / 1024
            ));
        }
        left -= size;
        if files.insert(path, Content(contents)).is_some() {
            return Err(format!("holds {raw:?} twice"));
        }
    }
    Ok(files)
}

/// An entry's path as a relative path inside the work directory, `./` steps dropped; refused if
/// it is absolute or steps out with `..`.
fn inside(raw: &str) -> Result<String, String> {
    if raw.starts_with('/') || raw.starts_with('\\') || raw.contains('\0') {
        return Err(format!("{raw:?} is an absolute path, which is not allowed"));
    }
    let mut parts = Vec::new();
    for part in raw.split(['/', '\\']) {
        match part {
            "" | "." => {}
            ".." => return Err(format!("{raw:?} leads out of the work directory")),
            part => parts.push(part),
        }
    }
    if parts.is_empty() {
        return Err(format!("{raw:?} names no file"));
    }
    Ok(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use zip::write::SimpleFileOptions;

    fn bounds() -> Bounds {
        Bounds {
            max_files: 4,
            max_bytes: 1024,
        }
    }

    fn archive(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for (name, contents) in entries {
            zip.start_file(*name, SimpleFileOptions::default())
                .expect("start");
            zip.write_all(contents).expect("write");
        }
        zip.finish().expect("finish").into_inner()
    }

    #[test]
    fn an_archive_unpacks_to_its_files_by_relative_path() {
        let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
        zip.add_directory("src/", SimpleFileOptions::default())
            .expect("dir");
        zip.start_file("./src/main.c", SimpleFileOptions::default())
            .expect("start");
        zip.write_all(b"int main;").expect("write");
        let bytes = zip.finish().expect("finish").into_inner();
        let files = unpack(&bytes, bounds()).expect("unpacked");
        assert_eq!(
            files,
            BTreeMap::from([("src/main.c".to_owned(), Content(b"int main;".to_vec()))])
        );
    }

    #[test]
    fn paths_out_of_the_work_directory_are_refused() {
        for name in ["../evil", "a/../../evil", "/etc/passwd", "\\evil"] {
            let refused = unpack(&archive(&[(name, b"x")]), bounds());
            assert!(refused.is_err(), "{name}: {refused:?}");
        }
    }

    #[test]
    fn too_many_files_or_bytes_and_what_is_not_a_zip_are_refused() {
        let five: Vec<(String, &[u8])> = (0..5).map(|i| (format!("f{i}"), &b"x"[..])).collect();
        let five: Vec<(&str, &[u8])> = five.iter().map(|(n, c)| (n.as_str(), *c)).collect();
        assert!(
            unpack(&archive(&five), bounds())
                .unwrap_err()
                .contains("more than 4 files")
        );
        let big = vec![b'a'; 1025];
        assert!(
            unpack(&archive(&[("big", &big)]), bounds())
                .unwrap_err()
                .contains("more than 1 KB")
        );
        assert!(
            unpack(b"not a zip", bounds())
                .unwrap_err()
                .contains("not a zip")
        );
    }

    #[test]
    fn a_symlink_is_refused() {
        let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
        zip.add_symlink("link", "/etc/passwd", SimpleFileOptions::default())
            .expect("symlink");
        let bytes = zip.finish().expect("finish").into_inner();
        assert!(unpack(&bytes, bounds()).unwrap_err().contains("symlink"));
    }
}
