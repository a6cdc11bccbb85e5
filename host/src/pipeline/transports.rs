//! The ways out one process has opened: a transport per destination,
//! shared by every campaign that names it, so that campaigns share each
//! provider's connection pool, rate limit and circuit breaker.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use squall_pipeline_core::message::Channel;

use crate::campaign::{Campaign, FileDiagnostic, TransportSpec};
use crate::delivery::Transport;
use crate::delivery::chain::ProviderChain;
use crate::delivery::metrics::ProviderStats;
use crate::delivery::null::NullTransport;
use crate::delivery::outbox::OutboxTransport;
use crate::delivery::provider::{Provider, ProviderConfig, ProviderKind};
use crate::runtime::ComponentSource;

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
}

impl Transports {
    pub fn new(configs: Vec<ProviderConfig>, outbox_place: OutboxPlace) -> Transports {
        Transports {
            configs,
            outbox_place,
            outbox: Mutex::new(None),
            providers: Mutex::new(HashMap::new()),
            made: Mutex::new(HashMap::new()),
        }
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
