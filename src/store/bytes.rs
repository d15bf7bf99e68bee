//! How bytes are stored: code, stdin, expected output and a run's stdout and stderr are TEXT
//! when they are UTF-8, which is what an operator's `sqlite3` shows as it is, and a BLOB of the
//! exact bytes otherwise (`typeof(stdout) = 'blob'`, see `schema/0008_bytes.sql`). Nothing is
//! decoded lossily on the way in or out.

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};

use crate::job::content::Content;

/// Borrowed bytes, stored as [`Content`] is: for what is not held as one (a run's output).
pub(super) struct Stored<'a>(pub &'a [u8]);

impl ToSql for Stored<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(as_stored(self.0))
    }
}

impl ToSql for Content {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(as_stored(self.as_bytes()))
    }
}

fn as_stored(bytes: &[u8]) -> ToSqlOutput<'_> {
    match std::str::from_utf8(bytes) {
        Ok(text) => ToSqlOutput::from(text),
        Err(_) => ToSqlOutput::from(bytes),
    }
}

impl FromSql for Content {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        match value {
            ValueRef::Text(bytes) | ValueRef::Blob(bytes) => Ok(Content(bytes.to_vec())),
            _ => Err(FromSqlError::InvalidType),
        }
    }
}
