//! Amazon SQS (or any SQS-compatible server) behind the `Queue` trait.
//!
//! A logical queue `segment` is the SQS queue `<prefix>segment` (or an
//! explicit URL from the config) with a dead-letter queue found through its
//! redrive policy (`<prefix>segment-dlq` when Squall created it). Workers
//! dead-letter a batch themselves after `max_attempts`, with the reason as a
//! message attribute; the redrive policy (`max_receives`) is the safety net
//! for a batch whose workers die on it before they can say why.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, MessageAttributeValue, MessageSystemAttributeName,
    QueueAttributeName, SendMessageBatchRequestEntry,
};

use super::{DeadLetter, Delivery, Depth, Queue, QueueError, Receipt};
use crate::config::QueueConfig;

/// SQS's own default, used until a queue's attributes say otherwise.
const DEFAULT_MAX_SIZE: usize = 256 * 1024;
/// Entries per `SendMessageBatch` / `DeleteMessageBatch` (an SQS limit).
const BATCH_ENTRIES: usize = 10;
/// Dead letters are kept as long as SQS allows: they wait for a human.
const RETENTION_S: &str = "1209600";

pub struct SqsQueue {
    client: Client,
    prefix: String,
    max_receives: u32,
    visibility_s: u64,
    explicit: HashMap<String, String>,
    urls: Mutex<HashMap<String, String>>,
    dlq_urls: Mutex<HashMap<String, String>>,
    max_size: AtomicUsize,
}

fn unavailable_or_other<E, R>(what: &str, e: SdkError<E, R>) -> QueueError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match &e {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
            QueueError::Unavailable(format!("{what}: {}", aws_smithy_error(&e)))
        }
        SdkError::ServiceError(s) => {
            let code = s.err().code().unwrap_or("unknown");
            let message = s.err().message().unwrap_or("");
            // Throttling and server-side trouble pass; the caller backs off.
            if code.contains("Throttl")
                || code.contains("ServiceUnavailable")
                || code.contains("InternalError")
                || code.contains("InternalFailure")
            {
                QueueError::Unavailable(format!("{what}: {code}: {message}"))
            } else {
                QueueError::Other(format!("{what}: {code}: {message}"))
            }
        }
        _ => QueueError::Other(format!("{what}: {}", aws_smithy_error(&e))),
    }
}

fn aws_smithy_error<E: std::error::Error + 'static, R: std::fmt::Debug>(
    e: &SdkError<E, R>,
) -> String {
    // The SDK's Display is terse ("dispatch failure"); the source chain
    // says what actually happened (connection refused, DNS, timeout).
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

fn is_missing_queue<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> bool {
    e.as_service_error()
        .and_then(|s| s.code())
        .is_some_and(|c| c.contains("NonExistentQueue") || c.contains("QueueDoesNotExist"))
}

impl SqsQueue {
    /// Connects with the standard AWS configuration chain (environment,
    /// profile, instance role) plus the config's endpoint and region.
    pub async fn connect(config: &QueueConfig) -> SqsQueue {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(region) = &config.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        let shared = loader.load().await;
        let mut builder = aws_sdk_sqs::config::Builder::from(&shared);
        if shared.region().is_none() {
            // SQS-compatible servers ignore the region, but the SDK needs one.
            builder = builder.region(aws_config::Region::new("us-east-1"));
        }
        if let Some(endpoint) = &config.endpoint {
            builder = builder.endpoint_url(endpoint);
        }
        // A frozen server (or a half-open connection) must not hang a
        // worker: every attempt has a deadline beyond the long poll, and
        // the SDK's own retries back off between attempts.
        builder = builder.timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(3))
                .operation_attempt_timeout(Duration::from_secs(config.wait_s + 10))
                .build(),
        );
        let mut explicit = HashMap::new();
        for (stage, url) in [
            ("segment", &config.urls.segment),
            ("personalise", &config.urls.personalise),
            ("send", &config.urls.send),
        ] {
            if let Some(url) = url {
                explicit.insert(stage.to_string(), url.clone());
            }
        }
        SqsQueue {
            client: Client::from_conf(builder.build()),
            prefix: config.prefix.clone(),
            max_receives: config.max_receives,
            visibility_s: config.visibility_timeout_s,
            explicit,
            urls: Mutex::new(HashMap::new()),
            dlq_urls: Mutex::new(HashMap::new()),
            max_size: AtomicUsize::new(DEFAULT_MAX_SIZE),
        }
    }

    /// Creates `queue` and its dead-letter queue if they do not exist
    /// (idempotent), with the redrive policy; existing queues are used as
    /// they are. Returns the queue's URL.
    pub async fn create(&self, queue: &str) -> Result<String, QueueError> {
        let name = format!("{}{queue}", self.prefix);
        let url = match self.explicit.get(queue) {
            Some(url) => url.clone(),
            None => match self.lookup(&name).await? {
                Some(url) => url,
                None => self.create_with_dead_letters(&name).await?,
            },
        };
        // Its dead-letter queue is whatever its redrive policy names.
        self.urls
            .lock()
            .unwrap()
            .insert(queue.to_string(), url.clone());
        self.learn_max_size(&url).await?;
        Ok(url)
    }

    async fn create_queue(
        &self,
        name: &str,
        attributes: Vec<(QueueAttributeName, String)>,
    ) -> Result<String, QueueError> {
        let mut request = self
            .client
            .create_queue()
            .queue_name(name)
            .attributes(QueueAttributeName::MessageRetentionPeriod, RETENTION_S);
        for (k, v) in attributes {
            request = request.attributes(k, v);
        }
        Ok(request
            .send()
            .await
            .map_err(|e| unavailable_or_other("CreateQueue", e))?
            .queue_url()
            .unwrap_or_default()
            .to_string())
    }

    /// `name` with `<name>-dlq` (made too, or reused) as its dead-letter queue.
    async fn create_with_dead_letters(&self, name: &str) -> Result<String, QueueError> {
        let dlq_name = format!("{name}-dlq");
        let dlq_url = match self.lookup(&dlq_name).await? {
            Some(url) => url,
            None => self.create_queue(&dlq_name, vec![]).await?,
        };
        let dlq_arn = self
            .attribute(&dlq_url, QueueAttributeName::QueueArn)
            .await?;
        let redrive = serde_json::json!({
            "deadLetterTargetArn": dlq_arn,
            "maxReceiveCount": self.max_receives.to_string(),
        })
        .to_string();
        self.create_queue(
            name,
            vec![
                (
                    QueueAttributeName::VisibilityTimeout,
                    self.visibility_s.to_string(),
                ),
                (QueueAttributeName::RedrivePolicy, redrive),
            ],
        )
        .await
    }

    /// Reads each queue's `MaximumMessageSize`; producers split to the
    /// smallest.
    pub async fn learn_limits(&self, queues: &[&str]) -> Result<(), QueueError> {
        for q in queues {
            let url = self.url(q).await?;
            self.learn_max_size(&url).await?;
        }
        Ok(())
    }

    async fn learn_max_size(&self, url: &str) -> Result<(), QueueError> {
        let size = self
            .attribute(url, QueueAttributeName::MaximumMessageSize)
            .await?
            .parse::<usize>()
            .unwrap_or(DEFAULT_MAX_SIZE);
        self.max_size.fetch_min(size, Ordering::Relaxed);
        Ok(())
    }

    async fn lookup(&self, name: &str) -> Result<Option<String>, QueueError> {
        match self.client.get_queue_url().queue_name(name).send().await {
            Ok(out) => Ok(out.queue_url().map(str::to_string)),
            Err(e) if is_missing_queue(&e) => Ok(None),
            Err(e) => Err(unavailable_or_other("GetQueueUrl", e)),
        }
    }

    async fn attribute(&self, url: &str, name: QueueAttributeName) -> Result<String, QueueError> {
        let [value] = self.attributes(url, [name]).await?;
        Ok(value)
    }

    /// Several queue attributes in one call, in the order asked (empty
    /// when the queue does not report one).
    async fn attributes<const N: usize>(
        &self,
        url: &str,
        names: [QueueAttributeName; N],
    ) -> Result<[String; N], QueueError> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(url)
            .set_attribute_names(Some(names.to_vec()))
            .send()
            .await
            .map_err(|e| unavailable_or_other("GetQueueAttributes", e))?;
        Ok(names.map(|n| {
            out.attributes()
                .and_then(|a| a.get(&n))
                .cloned()
                .unwrap_or_default()
        }))
    }

    /// Messages waiting (visible or delayed) and in flight on `url`.
    async fn counts(&self, url: &str) -> Result<Depth, QueueError> {
        let [visible, delayed, in_flight] = self
            .attributes(
                url,
                [
                    QueueAttributeName::ApproximateNumberOfMessages,
                    QueueAttributeName::ApproximateNumberOfMessagesDelayed,
                    QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
                ],
            )
            .await?
            .map(|v| v.parse::<u64>().unwrap_or(0));
        Ok(Depth {
            visible: visible + delayed,
            in_flight,
        })
    }

    async fn url(&self, queue: &str) -> Result<String, QueueError> {
        if let Some(url) = self.explicit.get(queue) {
            return Ok(url.clone());
        }
        if let Some(url) = self.urls.lock().unwrap().get(queue) {
            return Ok(url.clone());
        }
        let name = format!("{}{queue}", self.prefix);
        let url = self.lookup(&name).await?.ok_or_else(|| {
            QueueError::Other(format!(
                "SQS queue `{name}` does not exist; create it with `squall queues create --config FILE`"
            ))
        })?;
        self.urls
            .lock()
            .unwrap()
            .insert(queue.to_string(), url.clone());
        Ok(url)
    }

    /// The dead-letter queue named by `queue`'s redrive policy.
    async fn dlq_url(&self, queue: &str) -> Result<String, QueueError> {
        if let Some(url) = self.dlq_urls.lock().unwrap().get(queue) {
            return Ok(url.clone());
        }
        let url = self.url(queue).await?;
        let policy = self
            .attribute(&url, QueueAttributeName::RedrivePolicy)
            .await?;
        let arn = serde_json::from_str::<serde_json::Value>(&policy)
            .ok()
            .and_then(|p| p["deadLetterTargetArn"].as_str().map(str::to_string))
            .ok_or_else(|| {
                QueueError::Other(format!(
                    "SQS queue {url} has no dead-letter queue (no redrive policy); add one or let `squall queues create` make the queues"
                ))
            })?;
        let name = arn.rsplit(':').next().unwrap_or_default();
        let dlq = self.lookup(name).await?.ok_or_else(|| {
            QueueError::Other(format!("dead-letter queue {arn} of {url} does not exist"))
        })?;
        self.dlq_urls
            .lock()
            .unwrap()
            .insert(queue.to_string(), dlq.clone());
        Ok(dlq)
    }

    async fn send_to(&self, url: &str, bodies: Vec<Vec<u8>>) -> Result<(), QueueError> {
        let max = self.max_message_size();
        let mut texts = Vec::with_capacity(bodies.len());
        for body in bodies {
            if body.len() > max {
                return Err(QueueError::TooLarge {
                    size: body.len(),
                    limit: max,
                });
            }
            texts.push(String::from_utf8(body).map_err(|_| {
                QueueError::Other("SQS carries text; this message body is not UTF-8".into())
            })?);
        }
        // A batch call carries at most 10 entries and, in all, no more than
        // one maximal message.
        let mut start = 0;
        while start < texts.len() {
            let mut end = start;
            let mut total = 0;
            while end < texts.len()
                && end - start < BATCH_ENTRIES
                && (end == start || total + texts[end].len() <= max)
            {
                total += texts[end].len();
                end += 1;
            }
            self.send_batch(url, &texts[start..end]).await?;
            start = end;
        }
        Ok(())
    }

    async fn send_batch(&self, url: &str, texts: &[String]) -> Result<(), QueueError> {
        let mut pending: Vec<usize> = (0..texts.len()).collect();
        for attempt in 0..5 {
            let entries = pending
                .iter()
                .map(|&i| {
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(&texts[i])
                        .build()
                        .expect("id and body are set")
                })
                .collect();
            let out = self
                .client
                .send_message_batch()
                .queue_url(url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| unavailable_or_other("SendMessageBatch", e))?;
            let failed = out.failed();
            if failed.is_empty() {
                return Ok(());
            }
            if let Some(f) = failed.iter().find(|f| f.sender_fault()) {
                return Err(QueueError::Other(format!(
                    "SendMessageBatch rejected a message: {}: {}",
                    f.code(),
                    f.message().unwrap_or("")
                )));
            }
            // Server-side failures of single entries: send just those again.
            pending = failed.iter().filter_map(|f| f.id().parse().ok()).collect();
            tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
        }
        Err(QueueError::Unavailable(format!(
            "SendMessageBatch kept failing for {} message(s)",
            pending.len()
        )))
    }

    async fn delete(&self, url: &str, receipts: &[Receipt]) -> Result<(), QueueError> {
        for chunk in receipts.chunks(BATCH_ENTRIES) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(&r.0)
                        .build()
                        .expect("id and handle are set")
                })
                .collect();
            let out = self
                .client
                .delete_message_batch()
                .queue_url(url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| unavailable_or_other("DeleteMessageBatch", e))?;
            // A stale receipt (the message was redelivered meanwhile) fails
            // its entry: like the embedded queue, that changes nothing; the
            // ledger keeps the redelivered copy from sending twice.
            for f in out.failed() {
                tracing::debug!(
                    code = f.code(),
                    "delete of a received message failed (stale receipt?)"
                );
            }
        }
        Ok(())
    }

    /// Changes a received message's visibility on the queue at `url`.
    async fn change_visibility(
        &self,
        url: &str,
        receipt: &Receipt,
        visibility: Duration,
    ) -> Result<(), QueueError> {
        match self
            .client
            .change_message_visibility()
            .queue_url(url)
            .receipt_handle(&receipt.0)
            .visibility_timeout(visibility.as_secs().min(43_200) as i32)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            // The message is gone or was received again: nothing to change.
            Err(e)
                if e.as_service_error()
                    .and_then(|s| s.code())
                    .is_some_and(|c| {
                        c.contains("ReceiptHandle") || c.contains("MessageNotInflight")
                    }) =>
            {
                Ok(())
            }
            Err(e) => Err(unavailable_or_other("ChangeMessageVisibility", e)),
        }
    }

    async fn receive_from(
        &self,
        url: &str,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<(Delivery, HashMap<String, String>)>, QueueError> {
        let out = self
            .client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(max.clamp(1, 10) as i32)
            .visibility_timeout(visibility.as_secs().max(1) as i32)
            .wait_time_seconds(wait.as_secs().min(20) as i32)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(|e| unavailable_or_other("ReceiveMessage", e))?;
        Ok(out
            .messages()
            .iter()
            .map(|m| {
                let receive_count = m
                    .attributes()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(1);
                let attributes = m
                    .message_attributes()
                    .map(|a| {
                        a.iter()
                            .filter_map(|(k, v)| Some((k.clone(), v.string_value()?.to_string())))
                            .collect()
                    })
                    .unwrap_or_default();
                (
                    Delivery {
                        receipt: Receipt(m.receipt_handle().unwrap_or_default().to_string()),
                        body: m.body().unwrap_or_default().as_bytes().to_vec(),
                        receive_count,
                    },
                    attributes,
                )
            })
            .collect())
    }
}

fn attr(value: impl Into<String>) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .expect("type and value are set")
}

#[async_trait]
impl Queue for SqsQueue {
    fn max_message_size(&self) -> usize {
        self.max_size.load(Ordering::Relaxed)
    }

    async fn send(&self, queue: &str, bodies: Vec<Vec<u8>>) -> Result<(), QueueError> {
        let url = self.url(queue).await?;
        self.send_to(&url, bodies).await
    }

    async fn receive(
        &self,
        queue: &str,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        let url = self.url(queue).await?;
        Ok(self
            .receive_from(&url, max, visibility, wait)
            .await?
            .into_iter()
            .map(|(d, _)| d)
            .collect())
    }

    async fn ack(&self, queue: &str, receipts: &[Receipt]) -> Result<(), QueueError> {
        let url = self.url(queue).await?;
        self.delete(&url, receipts).await
    }

    async fn retry_later(
        &self,
        queue: &str,
        receipt: &Receipt,
        delay: Duration,
    ) -> Result<(), QueueError> {
        self.change_visibility(&self.url(queue).await?, receipt, delay)
            .await
    }

    async fn extend(
        &self,
        queue: &str,
        receipt: &Receipt,
        visibility: Duration,
    ) -> Result<(), QueueError> {
        self.change_visibility(&self.url(queue).await?, receipt, visibility)
            .await
    }

    async fn dead_letter(
        &self,
        queue: &str,
        delivery: &Delivery,
        reason: &str,
    ) -> Result<(), QueueError> {
        let (url, dlq) = (self.url(queue).await?, self.dlq_url(queue).await?);
        let body = String::from_utf8_lossy(&delivery.body).into_owned();
        // Attributes count towards the size limit; a reason is short, but
        // cut it so a huge error message never blocks dead-lettering.
        let reason: String = reason.chars().take(2000).collect();
        self.client
            .send_message()
            .queue_url(&dlq)
            .message_body(body)
            .message_attributes("squall-reason", attr(reason))
            .message_attributes("squall-queue", attr(queue))
            .message_attributes(
                "squall-receive-count",
                attr(delivery.receive_count.to_string()),
            )
            .message_attributes(
                "squall-failed-at",
                attr(crate::sqlite::now_ms().to_string()),
            )
            .send()
            .await
            .map_err(|e| unavailable_or_other("SendMessage (dead letter)", e))?;
        self.delete(&url, std::slice::from_ref(&delivery.receipt))
            .await
    }

    async fn depth(&self, queue: &str) -> Result<Depth, QueueError> {
        self.counts(&self.url(queue).await?).await
    }

    async fn dead_letter_depth(&self, queue: &str) -> Result<u64, QueueError> {
        Ok(self.counts(&self.dlq_url(queue).await?).await?.total())
    }

    async fn replay_dead_letters(&self, queue: &str) -> Result<u64, QueueError> {
        let (url, dlq) = (self.url(queue).await?, self.dlq_url(queue).await?);
        let mut moved = 0;
        loop {
            let got = self
                .receive_from(&dlq, 10, Duration::from_secs(60), Duration::ZERO)
                .await?;
            if got.is_empty() {
                return Ok(moved);
            }
            let (bodies, receipts): (Vec<_>, Vec<_>) =
                got.into_iter().map(|(d, _)| (d.body, d.receipt)).unzip();
            moved += bodies.len() as u64;
            // Sent before deleted: a crash in between duplicates a batch,
            // which the ledger absorbs; the other order could lose one.
            self.send_to(&url, bodies).await?;
            self.delete(&dlq, &receipts).await?;
        }
    }

    /// Peeks at the dead-letter queue: each message is received once with
    /// a short visibility (so the listing sees each only once) and made
    /// visible again at the end. Nothing is removed.
    async fn dead_letters(&self, queue: &str) -> Result<Vec<DeadLetter>, QueueError> {
        let dlq = self.dlq_url(queue).await?;
        let mut seen = Vec::new();
        let mut receipts = Vec::new();
        loop {
            let got = self
                .receive_from(&dlq, 10, Duration::from_secs(30), Duration::ZERO)
                .await?;
            if got.is_empty() {
                break;
            }
            for (d, attrs) in got {
                receipts.push(d.receipt.clone());
                seen.push(DeadLetter {
                    queue: attrs
                        .get("squall-queue")
                        .cloned()
                        .unwrap_or_else(|| queue.to_string()),
                    reason: attrs.get("squall-reason").cloned().unwrap_or_else(|| {
                        format!(
                            "received more than {} times without being processed (SQS redrive policy): a worker kept dying on it",
                            self.max_receives
                        )
                    }),
                    receive_count: attrs
                        .get("squall-receive-count")
                        .and_then(|c| c.parse().ok())
                        .unwrap_or(d.receive_count),
                    failed_at_ms: attrs
                        .get("squall-failed-at")
                        .and_then(|c| c.parse().ok())
                        .unwrap_or(0),
                    body: d.body,
                });
            }
        }
        for r in &receipts {
            self.change_visibility(&dlq, r, Duration::ZERO).await?;
        }
        Ok(seen)
    }
}

#[cfg(test)]
mod tests {
    //! The queue contract against a real SQS endpoint (moto in CI):
    //! `SQUALL_TEST_SQS_ENDPOINT=http://127.0.0.1:5000`.
    use super::*;

    async fn queue(names: &[&str]) -> Option<SqsQueue> {
        let endpoint = crate::test_service("SQUALL_TEST_SQS_ENDPOINT")?;
        // A prefix per test: tests share one moto and must not meet.
        let config = QueueConfig {
            backend: crate::config::QueueBackend::Sqs,
            prefix: format!("t{:08x}-", rand::random::<u32>()),
            endpoint: Some(endpoint),
            region: Some("us-east-1".into()),
            max_receives: 5,
            visibility_timeout_s: 30,
            ..QueueConfig::default()
        };
        let q = SqsQueue::connect(&config).await;
        for n in names {
            q.create(n).await.unwrap();
        }
        Some(q)
    }

    async fn setup() -> Option<((), SqsQueue)> {
        Some(((), queue(&crate::queue::contract::QUEUES).await?))
    }

    mod contract {
        crate::queue::contract_tests!(super::setup);
    }

    #[tokio::test]
    async fn creating_twice_is_harmless_and_the_size_limit_is_read() {
        if let Some(q) = queue(&["twice"]).await {
            let url = q.create("twice").await.unwrap();
            assert_eq!(q.create("twice").await.unwrap(), url);
            assert_eq!(q.max_message_size(), 256 * 1024);
            let e = q
                .send("twice", vec![vec![b'x'; 256 * 1024 + 1]])
                .await
                .unwrap_err();
            assert!(matches!(e, QueueError::TooLarge { .. }), "{e}");
            // More than one SendMessageBatch's worth arrives whole.
            let bodies: Vec<Vec<u8>> = (0..25).map(|i| format!("m{i}").into_bytes()).collect();
            q.send("twice", bodies).await.unwrap();
            assert_eq!(q.depth("twice").await.unwrap().visible, 25);
        }
    }

    #[tokio::test]
    async fn a_missing_queue_says_how_to_create_it() {
        if let Some(q) = queue(&[]).await {
            let e = q.send("nope", vec![b"x".to_vec()]).await.unwrap_err();
            assert!(e.to_string().contains("squall queues create"), "{e}");
        }
    }
}
