//! The queue and store a deployment's `squall.toml` names, opened.

use std::sync::Arc;

use anyhow::Context as _;

use crate::config::{Config, QueueBackend, Stage, StoreLocation};
use crate::queue::Queue;
use crate::queue::embedded::EmbeddedQueue;
use crate::queue::sqs::SqsQueue;
use crate::store::Store;
use crate::store::postgres::PostgresStore;
use crate::store::sqlite::SqliteStore;

pub struct Backends {
    pub config: Config,
    pub queue: Arc<dyn Queue>,
    /// The same queue when it is SQS (for `queues create`).
    pub sqs: Option<Arc<SqsQueue>>,
    pub store: Arc<dyn Store>,
}

impl Backends {
    /// Opens both. With `must_exist`, SQS queues are looked up (and their
    /// size limits read) now, so a missing queue is reported at start.
    pub async fn open(config: Config, must_exist: bool) -> anyhow::Result<Backends> {
        std::fs::create_dir_all(&config.data_dir).with_context(|| {
            format!(
                "cannot create the data directory {}",
                config.data_dir.display()
            )
        })?;
        let (queue, sqs): (Arc<dyn Queue>, _) = match config.queue.backend {
            QueueBackend::Embedded => {
                let path = config.data_dir.join("queue.sqlite");
                (Arc::new(EmbeddedQueue::open(&path)?), None)
            }
            QueueBackend::Sqs => {
                let sqs = Arc::new(SqsQueue::connect(&config.queue).await);
                if must_exist {
                    let names: Vec<&str> = Stage::ALL.iter().map(|s| s.name()).collect();
                    sqs.learn_limits(&names).await?;
                }
                (sqs.clone() as Arc<dyn Queue>, Some(sqs))
            }
        };
        let store: Arc<dyn Store> = match config.store_location() {
            StoreLocation::Sqlite(dir) => Arc::new(SqliteStore::open(&dir)?),
            StoreLocation::Postgres(url) => Arc::new(
                PostgresStore::connect(&url, config.store.max_connections)
                    .await
                    .with_context(
                        || "cannot open the PostgreSQL store; is the server up and the URL right?",
                    )?,
            ),
        };
        Ok(Backends {
            config,
            queue,
            sqs,
            store,
        })
    }
}
