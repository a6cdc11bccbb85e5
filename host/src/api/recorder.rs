//! Group commit for tracking events: every request hands its event to one
//! writer task and waits for it to be committed, so an answered request is
//! a stored event (nothing is lost when the process dies), while the store
//! sees one transaction per few hundred events instead of one per hit.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::store::{Engagement, Store, StoreError};

/// Events per transaction at most.
const BATCH: usize = 512;
/// Retries of a batch while the store is unreachable, before the waiting
/// requests are answered with the error (503).
const OUTAGE_RETRIES: u32 = 8;

type Job = (Engagement, oneshot::Sender<Result<bool, StoreError>>);

#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Job>,
}

impl Recorder {
    pub fn start(store: Arc<dyn Store>) -> Recorder {
        let (tx, mut rx) = mpsc::channel::<Job>(16 * BATCH);
        tokio::spawn(async move {
            let mut jobs: Vec<Job> = Vec::with_capacity(BATCH);
            while rx.recv_many(&mut jobs, BATCH).await > 0 {
                let events: Vec<Engagement> = jobs.iter().map(|(e, _)| e.clone()).collect();
                let mut tries = 0;
                let result = loop {
                    match store.record_engagement(&events).await {
                        Err(StoreError::Unavailable(m)) if tries < OUTAGE_RETRIES => {
                            tries += 1;
                            tracing::warn!("tracking events wait for the store: {m}");
                            tokio::time::sleep(Duration::from_millis(100 << tries.min(5))).await;
                        }
                        other => break other,
                    }
                };
                match result {
                    Ok(new) => {
                        for ((_, done), new) in jobs.drain(..).zip(new) {
                            let _ = done.send(Ok(new));
                        }
                    }
                    Err(e) => {
                        tracing::error!("{} tracking event(s) not recorded: {e}", jobs.len());
                        for (_, done) in jobs.drain(..) {
                            let _ = done.send(Err(e.clone()));
                        }
                    }
                }
            }
        });
        Recorder { tx }
    }

    /// Stores the event; whether it was new (not a repeat).
    pub async fn record(&self, event: Engagement) -> Result<bool, StoreError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send((event, done))
            .await
            .map_err(|_| StoreError::Unavailable("the event writer stopped".into()))?;
        wait.await
            .map_err(|_| StoreError::Unavailable("the event writer stopped".into()))?
    }
}
