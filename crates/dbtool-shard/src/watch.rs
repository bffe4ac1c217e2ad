//! Picking up new map versions from the catalog while running.

use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::catalog::Catalog;
use crate::error::Error;
use crate::map::BucketRange;
use crate::router::Hold;
use crate::router::Router;

/// How a router follows the catalog: see [`Router::watch`].
#[derive(Debug, Clone)]
pub struct Watch {
    /// The catalog database.
    pub catalog: dbtool_pool::Target,
    /// Poll `max(version)` this often (`None`: only LISTEN).
    pub poll: Option<Duration>,
    /// LISTEN for announced versions (immediate pick-up).
    pub listen: bool,
}

impl<P: Send + Sync + 'static> Router<P> {
    /// Follows the catalog in a background task: on each announcement (LISTEN)
    /// and every `poll`, loads the newest version if it is newer than the
    /// current one and [`install`](Router::install)s it. A version naming an
    /// unknown shard is refused (logged once, in [`Router::refresh_error`])
    /// and the current map stays. The task reconnects with backoff after
    /// errors and ends when the router is dropped. Calling it again replaces
    /// the previous watcher.
    pub fn watch(self: &Arc<Self>, watch: Watch) {
        if watch.poll.is_none() && !watch.listen {
            return;
        }
        let router = Arc::downgrade(self);
        let task = tokio::spawn(async move {
            let mut backoff = Duration::from_millis(250);
            loop {
                match follow(&router, &watch).await {
                    Ok(()) => return,
                    Err(e) => {
                        let Some(r) = router.upgrade() else { return };
                        tracing::warn!(error = %e, "shard map watcher failed; retrying in {backoff:?}");
                        metrics::counter!("dbtool_shard_map_refresh_errors_total").increment(1);
                        set_error(&r, Some(e.to_string()));
                    }
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        });
        let old = self
            .watcher
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(task);
        if let Some(old) = old {
            old.abort();
        }
    }
}

/// One connection's worth of following; `Ok` when the router is gone.
async fn follow<P>(router: &Weak<Router<P>>, watch: &Watch) -> Result<(), Error> {
    let (catalog, mut announced) = Catalog::connect_listening(&watch.catalog, watch.listen).await?;
    if watch.listen {
        // Freezes of bucket moves are announced here (payload: the move id).
        catalog
            .client()
            .batch_execute(&format!("LISTEN {FREEZE_CHANNEL}"))
            .await
            .map_err(|source| Error::Catalog {
                action: "cannot LISTEN for bucket freezes",
                catalog: catalog.name().to_string(),
                source,
            })?;
    }
    let mut refused: Option<u64> = None;
    loop {
        // Check first: a version may have been published while disconnected.
        let Some(current) = router.upgrade().map(|r| r.version()) else {
            return Ok(());
        };
        match catalog.latest_version().await? {
            Some(latest) if refused == Some(latest) => {}
            Some(latest) if latest > current => {
                if let Some(map) = catalog.load(Some(latest)).await? {
                    let Some(r) = router.upgrade() else {
                        return Ok(());
                    };
                    match r.install(map) {
                        Ok(_) => set_error(&r, None),
                        Err(e) => {
                            tracing::error!(error = %e, "shard map version refused; keeping version {current}");
                            set_error(&r, Some(e.to_string()));
                            refused = Some(latest);
                        }
                    }
                }
            }
            _ => {
                if let Some(r) = router.upgrade() {
                    set_error(&r, None);
                }
            }
        }
        // After the map: a released hold must find the new version installed.
        let holds = load_holds(&catalog).await?;
        if let Some(r) = router.upgrade() {
            r.set_holds(holds);
        }
        let poll = watch.poll.unwrap_or(Duration::from_secs(3600));
        tokio::select! {
            got = announced.recv(), if watch.listen => {
                if got.is_none() {
                    return Err(Error::Disconnected { catalog: catalog.name().to_string() });
                }
            }
            _ = tokio::time::sleep(poll) => {}
        }
    }
}

/// The channel on which bucket moves announce their freezes (payload: the
/// move id); routers then reload `dbtool.shard_freeze`.
pub const FREEZE_CHANNEL: &str = "dbtool_shard_freeze";

/// The bucket ranges held by moves now (none when the table does not exist).
async fn load_holds(catalog: &Catalog) -> Result<Vec<Hold>, Error> {
    let rows = catalog
        .client()
        .query(
            "SELECT first_bucket, last_bucket, extract(epoch FROM until)::float8 FROM dbtool.shard_freeze",
            &[],
        )
        .await;
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {
            return Ok(Vec::new())
        }
        Err(source) => {
            return Err(Error::Catalog {
                action: "cannot read the bucket freezes",
                catalog: catalog.name().to_string(),
                source,
            })
        }
    };
    let mut holds = Vec::new();
    for r in rows {
        let (first, last, until): (i32, i32, f64) = (r.get(0), r.get(1), r.get(2));
        holds.push(Hold {
            range: BucketRange::new(first as u16, last as u16)?,
            until: std::time::UNIX_EPOCH + Duration::from_secs_f64(until.max(0.0)),
        });
    }
    Ok(holds)
}

fn set_error<P>(router: &Router<P>, error: Option<String>) {
    *router
        .refresh_error
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = error;
}
