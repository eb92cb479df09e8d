//! The owner's side of sealed invite-only rooms, run by every node: after
//! changes to its store, the grants that [`Store::key_upkeep_unlocked`]
//! plans for the users unlocked here (the current epoch to each new
//! invitee or member, a new epoch to all when someone left or was removed)
//! are applied and gossiped. Policy lives in the store; this is only the
//! loop that runs it at the right moments.

use std::sync::Arc;
use std::time::Duration;

use tincan_core::Body;
use tincan_store::Store;
use tincan_store::clock::StoreClock;
use tokio::sync::broadcast::error::RecvError;

use crate::Mesh;

/// How often upkeep runs without a change: a user unlocked since (a login)
/// may own rooms with members waiting for a grant.
const IDLE_PERIOD: Duration = Duration::from_secs(5);
/// Changes closer together than this share one upkeep run.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// Runs key upkeep until the mesh stops. Spawn it beside the mesh.
pub async fn run_key_upkeep(mesh: Mesh, store: Arc<Store>, clock: Arc<StoreClock>) {
    let mut changes = store.subscribe();
    loop {
        let relevant = tokio::select! {
            c = changes.recv() => match c {
                Ok(change) => matters(&change.record.record().body),
                // Missed changes: run once to be sure.
                Err(RecvError::Lagged(_)) => true,
                Err(RecvError::Closed) => return,
            },
            _ = tokio::time::sleep(IDLE_PERIOD) => true,
        };
        if !relevant {
            continue;
        }
        tokio::time::sleep(DEBOUNCE).await;
        // What came meanwhile is covered by this run.
        while changes.try_recv().is_ok() {}
        let (s, c) = (store.clone(), clock.clone());
        let planned = tokio::task::spawn_blocking(move || {
            let hlc = c.now(&s).map_err(tincan_store::WriteError::from)?;
            s.key_upkeep_unlocked(hlc)
        })
        .await;
        let records = match planned {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "key upkeep failed; trying again at the next change");
                continue;
            }
            Err(_) => return,
        };
        for record in records {
            match mesh.publish(record).await {
                Ok(_) => {}
                Err(crate::error::PublishError::Stopped(_)) => return,
                Err(e) => tracing::warn!(error = %e, "a planned key grant was not applied"),
            }
        }
    }
}

/// Whether a change can alter who should hold a room's key.
fn matters(body: &Body) -> bool {
    matches!(
        body,
        Body::Member(_) | Body::Room(_) | Body::KeyGrant(_) | Body::Tombstone(_)
    )
}
