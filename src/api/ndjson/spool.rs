//! The spool of a suite sent as a stream: its checked cases in an unlinked file beside the
//! database, waiting for the suite's last line, and read back one at a time by the transaction
//! that stores them. Written and read only by this server, within one request, so the format is
//! its own and need not last: each field in a fixed order, bytes as a length and the bytes
//! themselves. As JSON the code was escaped once more on the way in and parsed again on the way
//! out, which was a fifth of checking a suite of 4 KB programs and a tenth of storing it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, ErrorKind, Read, Seek, Write};
use std::path::Path;

use crate::job::Limits;
use crate::job::batch::CaseSpec;
use crate::job::content::Content;
use crate::store::StoreError;

/// The spool is written and read through buffers of this size.
const BUFFER_BYTES: usize = 256 << 10;

/// Checked cases, in an unlinked file that is gone once dropped (or the process ends).
pub(super) struct Spool {
    file: BufWriter<File>,
}

impl Spool {
    pub(super) fn create(dir: &Path) -> std::io::Result<Spool> {
        let file = tempfile::tempfile_in(dir)?;
        Ok(Spool {
            file: BufWriter::with_capacity(BUFFER_BYTES, file),
        })
    }

    pub(super) fn push(&mut self, case: &CaseSpec) -> std::io::Result<()> {
        let out = &mut self.file;
        put_bytes(out, case.name.as_bytes())?;
        put_option(out, case.group.as_ref().map(String::as_bytes))?;
        put_bytes(out, case.runtime.as_bytes())?;
        put_option(out, case.code.as_ref().map(Content::as_bytes))?;
        put_len(out, case.files.len())?;
        for (name, content) in &case.files {
            put_bytes(out, name.as_bytes())?;
            put_bytes(out, content.as_bytes())?;
        }
        put_bytes(out, case.stdin.as_bytes())?;
        put_len(out, case.args.len())?;
        for arg in &case.args {
            put_bytes(out, arg.as_bytes())?;
        }
        put_option(out, case.expected_output.as_ref().map(Content::as_bytes))?;
        let limits = &case.limits;
        for n in [
            limits.wall_ms,
            limits.cpu_ms,
            limits.memory_mb,
            limits.processes,
            limits.output_bytes,
            limits.file_bytes,
        ] {
            put_u64(out, n)?;
        }
        match limits.cpu_percent {
            Some(percent) => {
                out.write_all(&[1])?;
                put_u64(out, percent)
            }
            None => out.write_all(&[0]),
        }
    }

    /// The cases from the first, read one at a time.
    pub(super) fn into_cases(self) -> std::io::Result<Spooled> {
        let mut file = self.file.into_inner().map_err(|e| e.into_error())?;
        file.rewind()?;
        Ok(Spooled {
            reader: BufReader::with_capacity(BUFFER_BYTES, file),
        })
    }
}

/// The spooled cases, in the order they were checked.
pub(super) struct Spooled {
    reader: BufReader<File>,
}

impl Spooled {
    /// The next case; `None` at the end of the file, which only falls between two cases.
    fn case(&mut self) -> std::io::Result<Option<CaseSpec>> {
        let Some(name) = self.first_text()? else {
            return Ok(None);
        };
        let r = &mut self.reader;
        let group = take_option(r)?.map(text).transpose()?;
        let runtime = text(take_bytes(r)?)?;
        let code = take_option(r)?.map(Content);
        let mut files = BTreeMap::new();
        for _ in 0..take_u64(r)? {
            let name = text(take_bytes(r)?)?;
            files.insert(name, Content(take_bytes(r)?));
        }
        let stdin = Content(take_bytes(r)?);
        let args = (0..take_u64(r)?)
            .map(|_| take_bytes(r).and_then(text))
            .collect::<std::io::Result<_>>()?;
        let expected_output = take_option(r)?.map(Content);
        let limits = Limits {
            wall_ms: take_u64(r)?,
            cpu_ms: take_u64(r)?,
            memory_mb: take_u64(r)?,
            processes: take_u64(r)?,
            output_bytes: take_u64(r)?,
            file_bytes: take_u64(r)?,
            cpu_percent: if take_tag(r)? {
                Some(take_u64(r)?)
            } else {
                None
            },
        };
        Ok(Some(CaseSpec {
            name,
            group,
            runtime,
            code,
            files,
            stdin,
            args,
            expected_output,
            limits,
        }))
    }

    /// A case's first field, its name; `None` if the file ends before it.
    fn first_text(&mut self) -> std::io::Result<Option<String>> {
        let mut length = [0; 8];
        match self.reader.read(&mut length[..1])? {
            0 => return Ok(None),
            _ => self.reader.read_exact(&mut length[1..])?,
        }
        let bytes = take_exact(&mut self.reader, u64::from_le_bytes(length))?;
        text(bytes).map(Some)
    }
}

impl Iterator for Spooled {
    type Item = Result<CaseSpec, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.case()
            .map_err(|e| StoreError::Task(format!("a suite's spool file cannot be read back: {e}")))
            .transpose()
    }
}

fn put_u64(out: &mut impl Write, n: u64) -> std::io::Result<()> {
    out.write_all(&n.to_le_bytes())
}

fn put_len(out: &mut impl Write, n: usize) -> std::io::Result<()> {
    put_u64(out, n as u64)
}

fn put_bytes(out: &mut impl Write, bytes: &[u8]) -> std::io::Result<()> {
    put_len(out, bytes.len())?;
    out.write_all(bytes)
}

fn put_option(out: &mut impl Write, bytes: Option<&[u8]>) -> std::io::Result<()> {
    match bytes {
        Some(bytes) => {
            out.write_all(&[1])?;
            put_bytes(out, bytes)
        }
        None => out.write_all(&[0]),
    }
}

fn take_u64(r: &mut impl Read) -> std::io::Result<u64> {
    let mut n = [0; 8];
    r.read_exact(&mut n)?;
    Ok(u64::from_le_bytes(n))
}

fn take_tag(r: &mut impl Read) -> std::io::Result<bool> {
    let mut tag = [0; 1];
    r.read_exact(&mut tag)?;
    match tag[0] {
        0 => Ok(false),
        1 => Ok(true),
        other => Err(std::io::Error::new(
            ErrorKind::InvalidData,
            format!("{other} is not a field's tag"),
        )),
    }
}

fn take_bytes(r: &mut impl Read) -> std::io::Result<Vec<u8>> {
    let length = take_u64(r)?;
    take_exact(r, length)
}

fn take_option(r: &mut impl Read) -> std::io::Result<Option<Vec<u8>>> {
    take_tag(r)?.then(|| take_bytes(r)).transpose()
}

/// `length` bytes, read into a buffer grown as they come rather than sized by the length, so
/// that a damaged length cannot ask for more memory than the file holds.
fn take_exact(r: &mut impl Read, length: u64) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    r.take(length).read_to_end(&mut bytes)?;
    if bytes.len() as u64 != length {
        return Err(ErrorKind::UnexpectedEof.into());
    }
    Ok(bytes)
}

fn text(bytes: Vec<u8>) -> std::io::Result<String> {
    String::from_utf8(bytes).map_err(|e| std::io::Error::new(ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(i: u64) -> CaseSpec {
        CaseSpec {
            name: format!("case {i}"),
            group: i.is_multiple_of(2).then(|| format!("group {}", i / 2)),
            runtime: "python".into(),
            code: (i != 1).then(|| Content(format!("print({i})\n").into_bytes())),
            files: BTreeMap::from([("data.bin".into(), Content(vec![0, 0xff, 7]))]),
            stdin: Content(vec![0xc3; usize::try_from(i).unwrap_or_default()]),
            args: vec!["-x".into(), String::new()],
            expected_output: (i == 2).then(|| Content(b"2\n".to_vec())),
            limits: Limits {
                wall_ms: 1000 + i,
                cpu_ms: 900,
                memory_mb: 256,
                processes: 16,
                output_bytes: 1 << 20,
                file_bytes: u64::MAX,
                cpu_percent: (i == 0).then_some(50),
            },
        }
    }

    #[test]
    fn cases_come_back_as_they_went_in_and_in_order() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut spool = Spool::create(dir.path()).expect("spool");
        let cases: Vec<CaseSpec> = (0..4).map(case).collect();
        for case in &cases {
            spool.push(case).expect("push");
        }
        let back: Vec<CaseSpec> = spool
            .into_cases()
            .expect("read back")
            .collect::<Result<_, _>>()
            .expect("every case");
        assert_eq!(back, cases);
    }

    #[test]
    fn a_file_cut_inside_a_case_is_an_error_not_a_shorter_suite() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut spool = Spool::create(dir.path()).expect("spool");
        spool.push(&case(3)).expect("push");
        let mut file = spool.file.into_inner().expect("flush");
        let length = file.stream_position().expect("position");
        file.set_len(length - 1).expect("cut");
        let cut = Spool {
            file: BufWriter::new(file),
        };
        let back: Vec<_> = cut.into_cases().expect("read back").collect();
        assert!(
            matches!(back.as_slice(), [Err(StoreError::Task(_))]),
            "{back:?}"
        );
    }
}
