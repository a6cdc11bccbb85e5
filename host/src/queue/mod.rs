//! Queues between stages. Delivery is at least once: a received message
//! stays invisible for its visibility timeout and comes back unless it is
//! acknowledged. Exactly-once effects come from the delivery ledger, not
//! from the queue.
//!
//! Architecture invariant: only a stage worker acknowledges a message, and
//! only after what it produced is durably handed on (next queue, ledger).

pub mod embedded;
pub mod sqs;

use std::time::Duration;

use async_trait::async_trait;

/// An opaque handle that proves a message was received and not yet
/// acknowledged (SQS's receipt handle).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Receipt(pub String);

#[derive(Debug, Clone)]
pub struct Delivery {
    pub receipt: Receipt,
    pub body: Vec<u8>,
    /// How many times this message has been received, this time included.
    pub receive_count: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Depth {
    pub visible: u64,
    pub in_flight: u64,
}

impl Depth {
    pub fn total(&self) -> u64 {
        self.visible + self.in_flight
    }
}

#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub queue: String,
    pub body: Vec<u8>,
    pub reason: String,
    pub receive_count: u32,
    pub failed_at_ms: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue backend unavailable: {0}")]
    Unavailable(String),
    #[error("message of {size} bytes exceeds the queue's limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("queue error: {0}")]
    Other(String),
}

#[async_trait]
pub trait Queue: Send + Sync {
    /// Largest body `send` accepts; producers split batches to fit.
    fn max_message_size(&self) -> usize;

    async fn send(&self, queue: &str, bodies: Vec<Vec<u8>>) -> Result<(), QueueError>;

    /// Up to `max` messages, waiting up to `wait` for the first one.
    async fn receive(
        &self,
        queue: &str,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<Delivery>, QueueError>;

    async fn ack(&self, queue: &str, receipts: &[Receipt]) -> Result<(), QueueError>;

    /// Makes a received message visible again after `delay` (a retry).
    async fn retry_later(
        &self,
        queue: &str,
        receipt: &Receipt,
        delay: Duration,
    ) -> Result<(), QueueError>;

    /// Extends a message's invisibility while its batch is still in work.
    async fn extend(
        &self,
        queue: &str,
        receipt: &Receipt,
        visibility: Duration,
    ) -> Result<(), QueueError>;

    /// Moves a received message to the queue's dead-letter store with why.
    async fn dead_letter(
        &self,
        queue: &str,
        delivery: &Delivery,
        reason: &str,
    ) -> Result<(), QueueError>;

    async fn depth(&self, queue: &str) -> Result<Depth, QueueError>;

    async fn dead_letters(&self, queue: &str) -> Result<Vec<DeadLetter>, QueueError>;

    /// How many dead letters `queue` has (approximate on SQS).
    async fn dead_letter_depth(&self, queue: &str) -> Result<u64, QueueError>;

    /// Moves every dead letter of `queue` back onto it (after the cause was
    /// fixed); returns how many. Each comes back with a fresh receive count.
    async fn replay_dead_letters(&self, queue: &str) -> Result<u64, QueueError>;
}

/// One test per contract case for a backend: `$setup` is an async fn giving
/// `Option<(guard, queue)>` with the queues of `contract::QUEUES` usable;
/// `None` skips (a service the environment does not provide).
#[cfg(test)]
macro_rules! contract_tests {
    ($setup:path) => {
        $crate::queue::contract_tests!(@each $setup;
            delivers_acks_and_redelivers,
            retries_and_dead_letters,
            long_polls_until_a_message_arrives,
            extends_visibility);
    };
    (@each $setup:path; $($case:ident),*) => {$(
        #[tokio::test]
        async fn $case() {
            if let Some((_guard, queue)) = $setup().await {
                $crate::queue::contract::$case(&queue).await;
            }
        }
    )*};
}
#[cfg(test)]
pub(crate) use contract_tests;

/// The contract every backend must keep; each backend's tests run it
/// through `contract_tests!`.
#[cfg(test)]
pub(crate) mod contract {
    use super::*;

    // Whole seconds: SQS counts visibility in seconds.
    const VIS: Duration = Duration::from_secs(1);
    const NOWAIT: Duration = Duration::from_millis(0);

    /// The queues the cases use (backends that need queues made first).
    pub(crate) const QUEUES: [&str; 4] = [
        "contract-basic",
        "contract-retry",
        "contract-poll",
        "contract-extend",
    ];

    pub(crate) async fn delivers_acks_and_redelivers(q: &dyn Queue) {
        let name = "contract-basic";
        q.send(
            name,
            vec![b"one".to_vec(), b"two".to_vec(), b"three".to_vec()],
        )
        .await
        .unwrap();
        assert_eq!(
            q.depth(name).await.unwrap(),
            Depth {
                visible: 3,
                in_flight: 0
            }
        );

        let got = q.receive(name, 2, VIS, NOWAIT).await.unwrap();
        assert_eq!(
            got.iter().map(|d| d.body.clone()).collect::<Vec<_>>(),
            vec![b"one".to_vec(), b"two".to_vec()]
        );
        assert!(got.iter().all(|d| d.receive_count == 1));
        assert_eq!(
            q.depth(name).await.unwrap(),
            Depth {
                visible: 1,
                in_flight: 2
            }
        );

        // Only "one" is acknowledged; "two" must come back after the timeout.
        q.ack(name, &[got[0].receipt.clone()]).await.unwrap();
        let third = q.receive(name, 10, VIS, NOWAIT).await.unwrap();
        assert_eq!(third.len(), 1);
        assert_eq!(third[0].body, b"three");
        q.ack(name, &[third[0].receipt.clone()]).await.unwrap();
        assert!(q.receive(name, 10, VIS, NOWAIT).await.unwrap().is_empty());

        tokio::time::sleep(VIS + Duration::from_millis(100)).await;
        let again = q.receive(name, 10, VIS, NOWAIT).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].body, b"two");
        assert_eq!(again[0].receive_count, 2);
        // The first receipt is stale. Acknowledging with it is no error;
        // whether it deletes the message is the backend's business (SQS
        // may), which is why the ledger, not the queue, prevents resends.
        q.ack(name, &[got[1].receipt.clone()]).await.unwrap();
        q.ack(name, &[again[0].receipt.clone()]).await.unwrap();
        assert_eq!(q.depth(name).await.unwrap().total(), 0);
    }

    pub(crate) async fn retries_and_dead_letters(q: &dyn Queue) {
        let name = "contract-retry";
        q.send(name, vec![b"poison".to_vec()]).await.unwrap();
        let d = q.receive(name, 1, VIS, NOWAIT).await.unwrap().remove(0);
        q.retry_later(name, &d.receipt, Duration::ZERO)
            .await
            .unwrap();
        let d = q.receive(name, 1, VIS, NOWAIT).await.unwrap().remove(0);
        assert_eq!(d.receive_count, 2);
        q.dead_letter(name, &d, "it traps").await.unwrap();
        assert_eq!(q.depth(name).await.unwrap().total(), 0);
        let dead = q.dead_letters(name).await.unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(
            (
                dead[0].body.as_slice(),
                dead[0].reason.as_str(),
                dead[0].receive_count
            ),
            (&b"poison"[..], "it traps", 2)
        );
        // Listing took nothing away; replaying puts it back, counted afresh.
        assert_eq!(q.dead_letters(name).await.unwrap().len(), 1);
        assert_eq!(q.dead_letter_depth(name).await.unwrap(), 1);
        assert_eq!(q.replay_dead_letters(name).await.unwrap(), 1);
        assert!(q.dead_letters(name).await.unwrap().is_empty());
        let d = q.receive(name, 1, VIS, NOWAIT).await.unwrap().remove(0);
        assert_eq!((d.body.as_slice(), d.receive_count), (&b"poison"[..], 1));
        q.ack(name, &[d.receipt]).await.unwrap();
    }

    pub(crate) async fn long_polls_until_a_message_arrives(q: &dyn Queue) {
        let name = "contract-poll";
        let late = async {
            tokio::time::sleep(Duration::from_millis(150)).await;
            q.send(name, vec![b"late".to_vec()]).await.unwrap();
        };
        let (got, ()) = tokio::join!(q.receive(name, 1, VIS, Duration::from_secs(5)), late);
        assert_eq!(got.unwrap().len(), 1);
    }

    pub(crate) async fn extends_visibility(q: &dyn Queue) {
        let name = "contract-extend";
        q.send(name, vec![b"slow".to_vec()]).await.unwrap();
        let d = q.receive(name, 1, VIS, NOWAIT).await.unwrap().remove(0);
        q.extend(name, &d.receipt, Duration::from_secs(30))
            .await
            .unwrap();
        tokio::time::sleep(VIS + Duration::from_millis(100)).await;
        assert!(
            q.receive(name, 1, VIS, NOWAIT).await.unwrap().is_empty(),
            "extended message came back early"
        );
    }
}
