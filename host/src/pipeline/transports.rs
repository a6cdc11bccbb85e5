//! The ways out one process has opened: a transport per destination,
//! shared by every campaign that names it, so that campaigns share each
//! provider's connection pool, rate limit and circuit breaker.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use squall_pipeline_core::message::Channel;

use crate::campaign::{Campaign, FileDiagnostic, TransportSpec};
use crate::delivery::Transport;
use crate::delivery::chain::ProviderChain;
use crate::delivery::metrics::ProviderStats;
use crate::delivery::null::NullTransport;
use crate::delivery::outbox::OutboxTransport;
use crate::delivery::pacing::{SharedRate, SharedSlots, SlotHold};
use crate::delivery::provider::{Provider, ProviderConfig, ProviderKind};
use crate::runtime::ComponentSource;
use crate::store::Store;

/// Where this process's outbox lines go.
#[derive(Debug, Clone)]
pub enum OutboxPlace {
    /// `squall run`: one file in the data directory.
    File(PathBuf),
    /// A deployment's worker: its own file in a shared folder.
    Shared { dir: PathBuf, worker: String },
}

pub struct Transports {
    configs: Vec<ProviderConfig>,
    outbox_place: OutboxPlace,
    outbox: Mutex<Option<Arc<dyn Transport>>>,
    providers: Mutex<HashMap<String, Arc<Provider>>>,
    made: Mutex<HashMap<TransportSpec, Arc<dyn Transport>>>,
    /// Provider rates shared with every process of the store.
    shared_rate: Option<Arc<dyn SharedRate>>,
    shared_slots: Option<Arc<dyn SharedSlots>>,
}

/// Provider rate limits held in the store, so that N workers together keep
/// a provider's `rate_per_second` instead of N times it. Batches take turns
/// in the order they ask; the send stage makes that order fair between
/// campaigns (each comes through a lane of its own, see
/// `Shared::with_provider_turns`), and a campaign waiting on a limit of its
/// own holds no turn.
pub struct StoreRate(pub Arc<dyn Store>);

tokio::task_local! {
    /// A provider turn the send stage took before it parked the batch to
    /// wait for it: (rate key, real Unix ms). The provider's pacing asks
    /// `StoreRate` for a turn deep inside the transport; this hands it the
    /// one already taken (once) rather than pass it through every
    /// transport's interface.
    static TAKEN_TURN: std::cell::RefCell<Option<(String, i64)>>;
}

/// Runs `deliver` with `taken` as the turn the provider's first ask gets.
pub async fn with_taken_turn<F: Future>(taken: Option<(String, i64)>, deliver: F) -> F::Output {
    TAKEN_TURN
        .scope(std::cell::RefCell::new(taken), deliver)
        .await
}

fn take_turn(key: &str) -> Option<i64> {
    TAKEN_TURN
        .try_with(|t| {
            let mut t = t.borrow_mut();
            match &*t {
                Some((k, _)) if k == key => t.take().map(|(_, at)| at),
                _ => None,
            }
        })
        .ok()
        .flatten()
}

#[async_trait::async_trait]
impl SharedRate for StoreRate {
    async fn wait_turn(&self, key: &str, n: usize, rate_per_second: f64) {
        let turn = match take_turn(key) {
            Some(at) => Ok(at),
            None => self.0.reserve(key, n as u32, rate_per_second, 0).await,
        };
        match turn {
            Ok(start) => {
                let wait = start - crate::sqlite::now_ms();
                if wait > 0 {
                    tokio::time::sleep(std::time::Duration::from_millis(wait as u64)).await;
                }
            }
            // The process's own pacing still holds the rate per process.
            Err(e) => tracing::warn!("shared rate `{key}` unavailable, pacing locally: {e}"),
        }
    }
}

/// Provider concurrency caps held in the store: slots leased to this
/// process for `SLOT_LEASE`, kept alive while a batch sends through them
/// and given back after, so N workers together keep a provider's
/// `concurrency` instead of N times it. A dead worker's slots free
/// themselves when their lease runs out.
pub struct StoreSlots {
    store: Arc<dyn Store>,
    holder: String,
}

const SLOT_LEASE: std::time::Duration = std::time::Duration::from_secs(30);

/// How often a waiting batch looks for a free slot.
const SLOT_POLL: std::time::Duration = std::time::Duration::from_millis(25);

impl StoreSlots {
    pub fn new(store: Arc<dyn Store>) -> StoreSlots {
        let holder = format!(
            "{}-{:x}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        );
        StoreSlots { store, holder }
    }
}

struct StoreHold {
    store: Arc<dyn Store>,
    key: String,
    holder: String,
    slots: Vec<u32>,
    keeper: Option<tokio::task::JoinHandle<()>>,
}

#[async_trait::async_trait]
impl SlotHold for StoreHold {
    fn width(&self) -> usize {
        self.slots.len()
    }

    async fn give_back(mut self: Box<Self>) {
        if let Some(k) = self.keeper.take() {
            k.abort();
        }
        if self.slots.is_empty() {
            return;
        }
        if let Err(e) = self
            .store
            .keep_slots(&self.key, &self.slots, &self.holder, Duration::ZERO)
            .await
        {
            tracing::warn!(
                "could not give back concurrency slots of `{}` (free again when their lease runs out): {e}",
                self.key
            );
        }
    }
}

#[async_trait::async_trait]
impl SharedSlots for StoreSlots {
    async fn hold(&self, key: &str, limit: usize, want: usize) -> Box<dyn SlotHold> {
        let mut said = false;
        let slots = loop {
            match self
                .store
                .take_slots(key, limit as u32, want as u32, &self.holder, SLOT_LEASE)
                .await
            {
                Ok(slots) if !slots.is_empty() => break slots,
                Ok(_) => {}
                // The process's own cap still holds per process.
                Err(e) => {
                    tracing::warn!("shared concurrency `{key}` unavailable, capping locally: {e}");
                    break Vec::new();
                }
            }
            if !said {
                tracing::debug!("every concurrency slot of `{key}` is taken: waiting for one");
                said = true;
            }
            tokio::time::sleep(SLOT_POLL).await;
        };
        let keeper = (!slots.is_empty()).then(|| {
            let (store, key, holder, slots) = (
                self.store.clone(),
                key.to_string(),
                self.holder.clone(),
                slots.clone(),
            );
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(SLOT_LEASE / 3).await;
                    let _ = store.keep_slots(&key, &slots, &holder, SLOT_LEASE).await;
                }
            })
        });
        Box::new(StoreHold {
            store: self.store.clone(),
            key: key.to_string(),
            holder: self.holder.clone(),
            slots,
            keeper,
        })
    }
}

impl Transports {
    pub fn new(configs: Vec<ProviderConfig>, outbox_place: OutboxPlace) -> Transports {
        Transports {
            configs,
            outbox_place,
            outbox: Mutex::new(None),
            providers: Mutex::new(HashMap::new()),
            made: Mutex::new(HashMap::new()),
            shared_rate: None,
            shared_slots: None,
        }
    }

    /// Shares every provider's rate and concurrency cap through the store.
    pub fn sharing_rates(mut self, store: Arc<dyn Store>) -> Transports {
        self.shared_slots = Some(Arc::new(StoreSlots::new(store.clone())));
        self.shared_rate = Some(Arc::new(StoreRate(store)));
        self
    }

    /// The rate key and rate of the campaign's first provider, when its
    /// rate is shared with the deployment.
    pub fn shared_turn(&self, c: &Campaign) -> Option<(String, f64)> {
        self.shared_rate.as_ref()?;
        let TransportSpec::Providers(names) = &c.transport else {
            return None;
        };
        let first = self
            .configs
            .iter()
            .find(|p| Some(&p.name) == names.first())?;
        let rate = first.rate_per_second.filter(|r| *r > 0.0)?;
        Some((provider_rate_key(&first.name), rate))
    }

    /// The campaign's transport, opened once per process.
    pub fn get(&self, c: &Campaign) -> anyhow::Result<Arc<dyn Transport>> {
        if let Some(t) = self.made.lock().unwrap().get(&c.transport) {
            return Ok(t.clone());
        }
        let t: Arc<dyn Transport> = match &c.transport {
            TransportSpec::Outbox => self.outbox()?,
            TransportSpec::Null => Arc::new(NullTransport),
            TransportSpec::Smtp { host, port } => {
                let config = ProviderConfig::smtp_relay(host, *port, c.file.delivery.connections);
                Arc::new(ProviderChain::new(vec![self.provider(&config)?]))
            }
            TransportSpec::Providers(names) => {
                let mut chain = Vec::new();
                for name in names {
                    let config = self
                        .configs
                        .iter()
                        .find(|p| &p.name == name)
                        .with_context(|| {
                            format!(
                                "campaign `{}` names provider `{name}`, which this worker's squall.toml does not define",
                                c.id()
                            )
                        })?
                        .clone();
                    chain.push(self.provider(&config)?);
                }
                Arc::new(ProviderChain::new(chain))
            }
        };
        self.made
            .lock()
            .unwrap()
            .insert(c.transport.clone(), t.clone());
        Ok(t)
    }

    fn provider(&self, config: &ProviderConfig) -> anyhow::Result<Arc<Provider>> {
        if let Some(p) = self.providers.lock().unwrap().get(&config.name) {
            return Ok(p.clone());
        }
        let p = Arc::new(config.open(|| self.outbox())?);
        if let Some(shared) = &self.shared_rate {
            p.pacing
                .share(shared.clone(), provider_rate_key(&config.name));
        }
        if let Some(slots) = &self.shared_slots {
            p.pacing
                .share_slots(slots.clone(), format!("slots/provider/{}", config.name));
        }
        self.providers
            .lock()
            .unwrap()
            .insert(config.name.clone(), p.clone());
        Ok(p)
    }

    fn outbox(&self) -> std::io::Result<Arc<dyn Transport>> {
        let mut slot = self.outbox.lock().unwrap();
        if let Some(t) = &*slot {
            return Ok(t.clone());
        }
        let t: Arc<dyn Transport> = Arc::new(match &self.outbox_place {
            OutboxPlace::File(path) => OutboxTransport::open(path)?,
            OutboxPlace::Shared { dir, worker } => OutboxTransport::open_shared(dir, worker)?,
        });
        *slot = Some(t.clone());
        Ok(t)
    }

    /// The figures of every provider this process opened.
    pub fn stats(&self) -> Vec<ProviderStats> {
        let mut out: Vec<ProviderStats> = self
            .providers
            .lock()
            .unwrap()
            .values()
            .map(|p| p.metrics.snapshot())
            .collect();
        out.sort_by(|a, b| a.provider.cmp(&b.provider));
        out
    }
}

fn provider_rate_key(provider: &str) -> String {
    format!("provider/{provider}")
}

/// Problems with the providers a campaign names: unknown names, or a
/// kind that cannot carry its channel.
pub fn check_providers(configs: &[ProviderConfig], c: &Campaign) -> Vec<FileDiagnostic> {
    let TransportSpec::Providers(names) = &c.transport else {
        return Vec::new();
    };
    // A custom sender decides the shape of its requests (an in-house
    // gateway may take email over HTTP); a provider refuses a request it
    // cannot carry, message by message.
    let custom_sender = matches!(c.stages.sender, ComponentSource::File(_));
    let mut problems = Vec::new();
    for name in names {
        let fits = |k: ProviderKind| match (k, c.channel()) {
            _ if custom_sender => true,
            (ProviderKind::Outbox, _) => true,
            (ProviderKind::Smtp, ch) => ch == Channel::Email,
            (ProviderKind::HttpSms, ch) => ch == Channel::Sms,
            (ProviderKind::Webhook, ch) => ch == Channel::Webhook,
        };
        let message = match configs.iter().find(|p| &p.name == name) {
            None if configs.is_empty() => format!(
                "provider `{name}` is not defined: providers are `[[provider]]` entries in squall.toml (pass it with --config)"
            ),
            None => format!(
                "provider `{name}` is not defined in squall.toml; it defines {}",
                configs
                    .iter()
                    .map(|p| format!("`{}`", p.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Some(p) if !fits(p.kind) => format!(
                "provider `{name}` is a {} provider and cannot carry {} messages",
                p.kind.as_str(),
                serde_json::to_value(c.channel())
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            ),
            Some(_) => continue,
        };
        problems.push(c.locate("delivery.providers", 1, 1, &message));
    }
    problems
}
