//! Claims in the delivery ledger that their owner left open (it crashed or
//! was killed between claiming and settling) are settled by asking the
//! transport what happened.

use std::collections::HashSet;

use crate::delivery::Transport;
use crate::store::{Settlement, Store, StoreError};

/// Claims left open by dead owners: delivered if the transport can prove
/// it, released (sent again) if it proves the opposite, else in doubt and
/// never sent again. Returns how many were settled.
pub async fn settle_in_doubt(
    store: &dyn Store,
    transport: &dyn Transport,
    campaign: &str,
    owner: &str,
) -> Result<usize, StoreError> {
    let open = store.unsettled(campaign, owner).await?;
    if open.is_empty() {
        return Ok(0);
    }
    let ids: HashSet<String> = open.iter().map(|u| u.message_id.clone()).collect();
    let known = transport.reconcile(&ids).await;
    let resolved: Vec<_> = open
        .into_iter()
        .map(|u| {
            let s = match &known {
                Some(delivered) if delivered.contains(&u.message_id) => Settlement::Delivered,
                Some(_) => Settlement::Released,
                None => Settlement::InDoubt,
            };
            (u, s)
        })
        .collect();
    let in_doubt = resolved
        .iter()
        .filter(|(_, s)| *s == Settlement::InDoubt)
        .count();
    tracing::info!(
        campaign,
        open_claims = resolved.len(),
        in_doubt,
        transport = transport.name(),
        "settled the delivery claims a dead worker left open"
    );
    store.resolve(campaign, &resolved).await?;
    Ok(resolved.len())
}
