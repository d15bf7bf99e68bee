//! The query planner's statistics, kept in step with the tables as they grow.
//!
//! SQLite picks an index by the row counts `ANALYZE` last stored (`sqlite_stat1`). Statistics
//! taken while a table was tiny (a new server's first shutdown runs `PRAGMA optimize`) say that
//! any index is as good as a scan, and SQLite then believes them at any size: with six events on
//! record and a million since, a job's events were read by walking every event's id (a p95 of
//! 280 ms in the scale bench) instead of through `events_job`. So the writer asks SQLite, when the store opens and then at
//! most once a minute between commits, to analyse again every table whose size has changed by an
//! order of magnitude since (`PRAGMA optimize`; it does nothing, in microseconds, when none has).
//! Each analysis samples a bounded number of rows (`analysis_limit`), so it costs milliseconds at
//! any size; readers pick the new statistics up on their next statement.

use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::StoreError;

/// How often the writer checks whether a table needs analysing again.
pub(super) const EVERY: Duration = Duration::from_secs(60);

/// Rows sampled per index by each analysis: SQLite's suggestion (100 to 1000) for statistics
/// good enough to choose indexes by, at a bounded cost.
const ANALYSIS_LIMIT: i64 = 400;

/// `PRAGMA optimize`'s mask: analyse where needed (0x02), looking at every table rather than
/// only those this connection has queried (0x10000): the listings run on the readers.
const OPTIMIZE: &str = "PRAGMA optimize = 0x10002";

/// Bounds every analysis on `conn` and brings the statistics up to date now.
pub(super) fn configure(conn: &Connection) -> Result<(), StoreError> {
    conn.pragma_update(None, "analysis_limit", ANALYSIS_LIMIT)?;
    conn.execute_batch(OPTIMIZE)?;
    Ok(())
}

/// Run by the writer between transactions: analyses again, at most once per `every`.
pub(super) struct Planner {
    every: Duration,
    last: Instant,
}

impl Planner {
    pub(super) fn new(every: Duration) -> Planner {
        Planner {
            every,
            last: Instant::now(),
        }
    }

    pub(super) fn after_commit(&mut self, conn: &Connection) {
        if self.last.elapsed() < self.every {
            return;
        }
        self.last = Instant::now();
        if let Err(e) = conn.execute_batch(OPTIMIZE) {
            tracing::warn!(error = %e, "could not bring the query planner's statistics up to date");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::bus::Bus;
    use crate::store::writer::Writer;

    /// Events as kiln keeps them, analysed while there are six (a new server's first shutdown).
    const TINY: &str = "CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT,
                                             job_id TEXT NOT NULL, data TEXT NOT NULL);
                        CREATE INDEX events_job ON events (job_id, id);
                        INSERT INTO events (job_id, data)
                            VALUES ('a', '{}'), ('a', '{}'), ('a', '{}'),
                                   ('b', '{}'), ('b', '{}'), ('b', '{}');
                        ANALYZE;";

    /// Then 50,000 events more, four a job.
    const GROWTH: &str = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n
                                                  WHERE i < 50000)
                          INSERT INTO events (job_id, data) SELECT 'j' || (i / 4), '{}' FROM n";

    /// How many rows the planner believes `events_job` has: the first figure of its statistics.
    fn believed_rows(conn: &Connection) -> i64 {
        let stat: String = conn
            .query_row(
                "SELECT stat FROM sqlite_stat1 WHERE idx = 'events_job'",
                [],
                |r| r.get(0),
            )
            .expect("statistics of events_job");
        stat.split(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .expect("a row count")
    }

    #[tokio::test]
    async fn the_writer_renews_statistics_taken_while_a_table_was_tiny_once_it_has_grown() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("p.db");
        let conn = Connection::open(&path).expect("open");
        conn.execute_batch("PRAGMA journal_mode = WAL;")
            .expect("WAL");
        conn.execute_batch(TINY).expect("a tiny table, analysed");
        configure(&conn).expect("configure");
        assert_eq!(believed_rows(&conn), 6);
        let planner = Some(Planner::new(Duration::ZERO));
        let (writer, thread) =
            Writer::start(conn, Arc::new(Bus::default()), None, planner).expect("writer");
        writer
            .write(|conn, _| Ok(conn.execute_batch(GROWTH)?))
            .await
            .expect("grown");
        // Callers are answered before the writer looks at the statistics; the next write is
        // taken only after it has.
        writer.write(|_, _| Ok(())).await.expect("the next write");

        let believed = believed_rows(&Connection::open(&path).expect("a reader"));
        assert!(
            believed > 10_000,
            "the planner still believes {believed} rows"
        );
        drop(writer);
        thread.join().expect("writer thread");
    }

    #[test]
    fn opening_renews_statistics_that_a_grown_table_has_outlived() {
        let conn = Connection::open_in_memory().expect("open");
        conn.execute_batch(TINY).expect("a tiny table, analysed");
        conn.execute_batch(GROWTH).expect("grown");
        assert_eq!(believed_rows(&conn), 6, "growing alone renews nothing");
        configure(&conn).expect("configure");
        let believed = believed_rows(&conn);
        assert!(
            believed > 10_000,
            "the planner still believes {believed} rows"
        );
    }

    #[test]
    fn a_table_that_has_not_changed_much_is_not_analysed_again() {
        let conn = Connection::open_in_memory().expect("open");
        conn.execute_batch(TINY).expect("a tiny table, analysed");
        conn.execute_batch("INSERT INTO events (job_id, data) VALUES ('c', '{}')")
            .expect("one more");
        configure(&conn).expect("configure");
        assert_eq!(believed_rows(&conn), 6, "analysed again for one row");
    }
}
