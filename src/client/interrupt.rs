//! Ctrl-C while the client waits on work the server does without it (`submit --wait`, `batch
//! --wait`, `watch`): the work goes on, so the client stops waiting and says how to find it
//! again, instead of dying silently with the id unprinted.

use std::future::Future;

use tokio::signal::unix::{Signal, SignalKind, signal};

use super::{ClientError, note};

/// SIGINT, listened for from its creation: a Ctrl-C after the id was printed never kills the
/// process before it could say what to do.
pub(super) struct Interrupt(Signal);

impl Interrupt {
    pub(super) fn listen() -> Result<Interrupt, ClientError> {
        signal(SignalKind::interrupt())
            .map(Interrupt)
            .map_err(|err| ClientError::Usage(format!("cannot listen for Ctrl-C: {err}")))
    }

    /// Runs `work` unless Ctrl-C comes first; then says how to follow or cancel `id` (a job's or
    /// a batch's: `what`) and gives `None`.
    pub(super) async fn guard<T>(
        &mut self,
        what: &str,
        id: &str,
        work: impl Future<Output = Result<T, ClientError>>,
    ) -> Result<Option<T>, ClientError> {
        tokio::select! {
            done = work => done.map(Some),
            _ = self.0.recv() => {
                note(&format!(
                    "interrupted; {what} {id} goes on: `kiln watch {id}` to follow it, \
                     `kiln cancel {id}` to cancel it"
                ));
                Ok(None)
            }
        }
    }
}
