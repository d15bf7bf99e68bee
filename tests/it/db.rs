//! Reading a test server's database directly, as an operator's `sqlite3` or `psql` would, on
//! either backend: a test that checks what was stored (a suite's cases, an outbox, the bytes of
//! an output) runs on the SQLite file and, under `scripts/test-postgres`, on PostgreSQL alike.
//!
//! A query must mean the same in both dialects. Ids go into it as quoted literals rather than
//! parameters: PostgreSQL casts a literal to the column's `uuid`, while SQLite compares text.
//! Each value comes back as a [`Cell`] that smooths over how the two store the same column:
//! `bytea` or `TEXT` for a program, `boolean` or `0`/`1`, `json` or its text.

use std::path::Path;

use serde_json::Value;
use tokio_postgres::types::Type;

/// One value of a row.
#[derive(Clone, Debug, PartialEq)]
pub enum Cell {
    Null,
    /// An integer, or a boolean as SQLite keeps it (`0`, `1`).
    Int(i64),
    Real(f64),
    /// Text, or a `uuid` or a JSON value written out.
    Text(String),
    Bytes(Vec<u8>),
}

impl Cell {
    #[track_caller]
    pub fn int(&self) -> i64 {
        match self {
            Cell::Int(n) => *n,
            other => panic!("{other:?} is not an integer"),
        }
    }

    /// Text, or bytes that are UTF-8.
    #[track_caller]
    pub fn text(&self) -> &str {
        match self {
            Cell::Text(text) => text,
            Cell::Bytes(bytes) => std::str::from_utf8(bytes).expect("UTF-8 bytes"),
            other => panic!("{other:?} is not text"),
        }
    }

    /// The JSON a column holds.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(self.text()).unwrap_or_else(|e| panic!("{self:?}: {e}"))
    }
}

/// The rows `sql` answers from the SQLite file at `path`.
pub fn sqlite_rows(path: &Path, sql: &str) -> Vec<Vec<Cell>> {
    use rusqlite::types::ValueRef;
    let conn = rusqlite::Connection::open(path).expect("open the database");
    let mut stmt = conn.prepare(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    let width = stmt.column_count();
    let rows = stmt
        .query_map([], |row| {
            (0..width)
                .map(|i| {
                    Ok(match row.get_ref(i)? {
                        ValueRef::Null => Cell::Null,
                        ValueRef::Integer(n) => Cell::Int(n),
                        ValueRef::Real(x) => Cell::Real(x),
                        ValueRef::Text(text) => {
                            Cell::Text(String::from_utf8(text.to_vec()).expect("UTF-8 text"))
                        }
                        ValueRef::Blob(bytes) => Cell::Bytes(bytes.to_vec()),
                    })
                })
                .collect()
        })
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.map(|row| row.unwrap_or_else(|e| panic!("{sql}: {e}")))
        .collect()
}

/// The rows `sql` answers from the PostgreSQL database at `url`. Asked from a test's runtime,
/// which cannot be blocked on: a thread of its own with a runtime of its own asks.
pub fn pg_rows(url: &str, sql: &str) -> Vec<Vec<Cell>> {
    let (url, sql) = (url.to_owned(), sql.to_owned());
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime to read the test database")
            .block_on(async {
                let rows = crate::pg::connect(&url)
                    .await
                    .query(sql.as_str(), &[])
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
                rows.iter()
                    .map(|row| (0..row.len()).map(|i| pg_cell(row, i)).collect())
                    .collect()
            })
    })
    .join()
    .expect("read the test database")
}

fn pg_cell(row: &tokio_postgres::Row, i: usize) -> Cell {
    fn get<'a, T: tokio_postgres::types::FromSql<'a>>(
        row: &'a tokio_postgres::Row,
        i: usize,
    ) -> Option<T> {
        row.try_get::<_, Option<T>>(i)
            .unwrap_or_else(|e| panic!("column {i}: {e}"))
    }
    let cell = match row.columns()[i].type_() {
        &Type::INT2 => get::<i16>(row, i).map(|n| Cell::Int(n.into())),
        &Type::INT4 => get::<i32>(row, i).map(|n| Cell::Int(n.into())),
        &Type::INT8 => get::<i64>(row, i).map(Cell::Int),
        &Type::BOOL => get::<bool>(row, i).map(|b| Cell::Int(b.into())),
        &Type::FLOAT4 => get::<f32>(row, i).map(|x| Cell::Real(x.into())),
        &Type::FLOAT8 => get::<f64>(row, i).map(Cell::Real),
        &Type::TEXT | &Type::VARCHAR | &Type::NAME => get::<String>(row, i).map(Cell::Text),
        &Type::UUID => get::<uuid::Uuid>(row, i).map(|id| Cell::Text(id.to_string())),
        &Type::JSON | &Type::JSONB => get::<Value>(row, i).map(|v| Cell::Text(v.to_string())),
        &Type::BYTEA => get::<Vec<u8>>(row, i).map(Cell::Bytes),
        other => panic!("column {i} is of type {other}, which the tests do not read"),
    };
    cell.unwrap_or(Cell::Null)
}
