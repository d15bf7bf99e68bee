//! The single writer: one thread owns the only read-write connection and commits whatever
//! operations are pending as one transaction (group commit), so concurrent submits, claims and
//! finishes share one fsync instead of paying one each.
//!
//! Each operation runs inside its own savepoint: one that fails is rolled back alone and the rest
//! of the batch still commits. A caller is answered only after the commit that holds its write
//! (or with the error that prevented it), and the bus hears about the batch's events only then,
//! so nobody ever observes a write that could still be rolled back.
//!
//! The write-ahead log is checkpointed here too, once the callers of a commit are answered:
//! SQLite's own automatic checkpoint runs inside `COMMIT`, after the log is durable, and so held
//! up the answers for copying pages that are already safe (a fifth of storing a suite of 10,000
//! programs). It is done at the same threshold, by the same passive checkpoint, just after.

use std::cell::Cell;
use std::ffi::c_int;
use std::sync::Arc;
use std::thread::JoinHandle;

use rusqlite::Connection;
use rusqlite::hooks::Wal;
use tokio::sync::{mpsc, oneshot};

use super::StoreError;
use super::planner::Planner;
use super::wal::Checkpointer;
use crate::bus::{Bus, Notice};
use crate::metrics::METRICS;

/// At most this many operations share one transaction, which bounds how long one commit holds
/// the write lock and how late the first caller of a busy batch is answered.
const MAX_BATCH: usize = 1024;

/// Pending operations are bounded so that a stalled disk pushes back on submitters instead of
/// growing memory.
const QUEUE_DEPTH: usize = 8192;

/// Pages in the log past which it is checkpointed: SQLite's own default for its automatic one.
const CHECKPOINT_PAGES: c_int = 1000;

thread_local! {
    /// Pages in the write-ahead log after the writer thread's last commit, as SQLite reports them.
    static WAL_PAGES: Cell<c_int> = const { Cell::new(0) };
}

/// Called by SQLite on the writer thread at each commit, in place of its automatic checkpoint
/// (a hook replaces it).
fn note_wal_pages(_: &Wal, pages: c_int) -> rusqlite::Result<()> {
    WAL_PAGES.set(pages);
    Ok(())
}

trait Operation: Send {
    /// Runs the operation inside the open transaction; false if it failed and must be undone.
    fn apply(&mut self, conn: &Connection, notices: &mut Vec<Notice>) -> bool;
    /// Answers the caller once the fate of the transaction is known.
    fn reply(self: Box<Self>, commit: Result<(), StoreError>);
}

struct Pending<T, F> {
    work: Option<F>,
    result: Option<Result<T, StoreError>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> Operation for Pending<T, F>
where
    T: Send,
    F: FnOnce(&Connection, &mut Vec<Notice>) -> Result<T, StoreError> + Send,
{
    fn apply(&mut self, conn: &Connection, notices: &mut Vec<Notice>) -> bool {
        let Some(work) = self.work.take() else {
            return false;
        };
        let result = work(conn, notices);
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn reply(self: Box<Self>, commit: Result<(), StoreError>) {
        let answer = match (self.result, commit) {
            (Some(Err(own)), _) => Err(own),
            (Some(Ok(value)), Ok(())) => Ok(value),
            (_, Err(commit)) => Err(commit),
            (None, Ok(())) => Err(StoreError::WriterStopped),
        };
        // The caller may have gone away (a dropped request); the write stands regardless.
        let _ = self.reply.send(answer);
    }
}

/// A handle for sending work to the writer thread. Cloning is cheap; the thread stops once every
/// handle is dropped and the queue is drained.
#[derive(Clone)]
pub(crate) struct Writer {
    ops: mpsc::Sender<Box<dyn Operation>>,
}

impl Writer {
    pub(crate) fn start(
        conn: Connection,
        bus: Arc<Bus>,
        checkpointer: Option<Checkpointer>,
        planner: Option<Planner>,
    ) -> std::io::Result<(Writer, JoinHandle<()>)> {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let thread = std::thread::Builder::new()
            .name("kiln-writer".into())
            .spawn(move || {
                conn.wal_hook(Some(note_wal_pages));
                run(conn, rx, &bus, checkpointer, planner);
            })?;
        Ok((Writer { ops: tx }, thread))
    }

    /// Runs `work` in the next transaction and returns its result once that transaction commits.
    pub(crate) async fn write<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &mut Vec<Notice>) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let op = Box::new(Pending {
            work: Some(work),
            result: None,
            reply,
        });
        self.ops
            .send(op)
            .await
            .map_err(|_| StoreError::WriterStopped)?;
        answer.await.map_err(|_| StoreError::WriterStopped)?
    }
}

fn run(
    conn: Connection,
    mut rx: mpsc::Receiver<Box<dyn Operation>>,
    bus: &Bus,
    mut checkpointer: Option<Checkpointer>,
    mut planner: Option<Planner>,
) {
    let mut batch: Vec<Box<dyn Operation>> = Vec::with_capacity(MAX_BATCH);
    let mut notices = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let began = std::time::Instant::now();
        let commit = commit_batch(&conn, &mut batch, &mut notices);
        let committed = commit.is_ok();
        METRICS.writer_commit(began.elapsed(), batch.len(), committed.then_some(&notices));
        for op in batch.drain(..) {
            op.reply(commit.clone());
        }
        if committed {
            bus.publish(&notices);
            checkpoint_if_due(&conn);
            if let Some(checkpointer) = &mut checkpointer {
                checkpointer.after_commit(&conn);
            }
            if let Some(planner) = &mut planner {
                planner.after_commit(&conn);
            }
        }
        notices.clear();
    }
    // Every handle is gone: leave a compact file behind for the next start or for operators.
    if let Err(e) = conn.execute_batch("PRAGMA optimize; PRAGMA wal_checkpoint(TRUNCATE);") {
        tracing::warn!(error = %e, "final checkpoint failed");
    }
}

/// A passive checkpoint (it waits for no reader) once the log holds [`CHECKPOINT_PAGES`], as
/// SQLite's automatic checkpoint would have done in the commit.
fn checkpoint_if_due(conn: &Connection) {
    if WAL_PAGES.get() < CHECKPOINT_PAGES {
        return;
    }
    WAL_PAGES.set(0);
    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
        tracing::warn!(error = %e, "write-ahead log checkpoint failed");
    }
}

fn commit_batch(
    conn: &Connection,
    batch: &mut [Box<dyn Operation>],
    notices: &mut Vec<Notice>,
) -> Result<(), StoreError> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    for op in batch.iter_mut() {
        let mark = notices.len();
        let step = conn.execute_batch("SAVEPOINT op").map_err(StoreError::from);
        let applied = step.is_ok() && op.apply(conn, notices);
        let end = if applied {
            conn.execute_batch("RELEASE op")
        } else {
            notices.truncate(mark);
            conn.execute_batch("ROLLBACK TO op; RELEASE op")
        };
        if let Err(e) = step.and(end.map_err(StoreError::from)) {
            rollback(conn);
            return Err(e);
        }
    }
    if let Err(e) = conn.execute_batch("COMMIT") {
        rollback(conn);
        return Err(e.into());
    }
    Ok(())
}

fn rollback(conn: &Connection) {
    if !conn.is_autocommit()
        && let Err(e) = conn.execute_batch("ROLLBACK")
    {
        tracing::error!(error = %e, "rollback failed");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn writer_on_temp_file() -> (tempfile::TempDir, Writer, JoinHandle<()>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let conn = Connection::open(dir.path().join("w.db")).expect("open");
        conn.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (v INTEGER NOT NULL);")
            .expect("schema");
        let (writer, thread) =
            Writer::start(conn, Arc::new(Bus::default()), None, None).expect("start");
        (dir, writer, thread)
    }

    fn insert(v: i64) -> impl FnOnce(&Connection, &mut Vec<Notice>) -> Result<(), StoreError> {
        move |conn, _| {
            conn.execute("INSERT INTO t (v) VALUES (?1)", [v])?;
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_failing_operation_is_undone_alone_and_the_rest_of_its_batch_commits() {
        let (dir, writer, thread) = writer_on_temp_file();
        // Holds the writer busy so the next three operations queue up and share one batch.
        let blocker = writer.write(|_, _| {
            std::thread::sleep(Duration::from_millis(200));
            Ok(())
        });
        let failing = writer.write(|conn, _| {
            conn.execute("INSERT INTO t (v) VALUES (2)", [])?;
            conn.execute("INSERT INTO t (v) VALUES (NULL)", [])?;
            Ok(())
        });
        let (a, b, c, d) = tokio::join!(
            blocker,
            writer.write(insert(1)),
            failing,
            writer.write(insert(3))
        );
        assert!(a.is_ok() && b.is_ok() && d.is_ok());
        assert!(matches!(c, Err(StoreError::Sqlite(_))), "{c:?}");
        drop(writer);
        thread.join().expect("writer thread");

        let conn = Connection::open(dir.path().join("w.db")).expect("reopen");
        let mut stmt = conn.prepare("SELECT v FROM t ORDER BY v").expect("select");
        let values: Vec<i64> = stmt
            .query_map([], |r| r.get(0))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        assert_eq!(
            values,
            [1, 3],
            "the failed operation's first insert was rolled back too"
        );
    }

    #[tokio::test]
    async fn a_log_past_the_threshold_is_still_checkpointed_into_the_database() {
        let (dir, writer, thread) = writer_on_temp_file();
        writer
            .write(|conn, _| {
                conn.execute_batch(
                    "CREATE TABLE big (b BLOB NOT NULL);
                     WITH RECURSIVE n (i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1100)
                     INSERT INTO big (b) SELECT zeroblob(4096) FROM n;",
                )?;
                Ok(())
            })
            .await
            .expect("a write of more pages than the threshold");
        // Runs after the checkpoint that followed the first write's answer.
        writer.write(insert(1)).await.expect("write");
        let db = std::fs::metadata(dir.path().join("w.db")).expect("the database file");
        assert!(
            db.len() >= 1100 * 4096,
            "the pages are in the database itself: {} bytes",
            db.len()
        );
        drop(writer);
        thread.join().expect("writer thread");
    }

    #[tokio::test]
    async fn callers_are_answered_only_after_their_write_is_committed() {
        let (dir, writer, thread) = writer_on_temp_file();
        writer.write(insert(7)).await.expect("write");
        // A separate connection sees the row the moment the caller has its answer.
        let conn = Connection::open(dir.path().join("w.db")).expect("open");
        let n: i64 = conn
            .query_row("SELECT count(*) FROM t WHERE v = 7", [], |r| r.get(0))
            .expect("count");
        assert_eq!(n, 1);
        drop(writer);
        thread.join().expect("writer thread");
    }
}
