//! Tracking: signed links in messages (`links`, `token`), telling people
//! from machines (`agents`), and provider feedback formats (`feedback`).
//! The HTTP endpoints that receive all this live in `api/`.

pub mod agents;
pub mod feedback;
pub mod links;
pub mod token;

use crate::store::{Store, StoreError};

pub use links::Tracker;
pub use token::{Link, LinkKind, Signer, TokenError};

/// Environment variable that sets the tracking key instead of the store's.
pub const KEY_ENV: &str = "SQUALL_TRACKING_KEY";

/// The key tracking links are signed with: `SQUALL_TRACKING_KEY` when set
/// (to rotate or manage it outside), else the store's own, made on first
/// use, so every worker and server sharing a store agrees without set-up.
pub async fn signing_key(store: &dyn Store) -> Result<Vec<u8>, StoreError> {
    match std::env::var(KEY_ENV) {
        Ok(k) if !k.is_empty() => Ok(k.into_bytes()),
        _ => store.tracking_key().await,
    }
}
