//! Constructing a [`Cache`] (connect, TLS, the background tasks it
//! spawns), closing it, and its plain accessors. Kept apart from the
//! cache operations so the connection setup reads in one place.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fred::clients::Client;
use fred::interfaces::{ClientLike, PubsubInterface};
use fred::types::config::{ReconnectPolicy, ServerConfig, UnresponsiveConfig};
use fred::types::Builder;
use rand::Rng;

use super::inspect::stats_task;
use super::invalidate::pending_task;
use super::local::l1_task;
use super::routing::{routes_task, Routes};
use super::{Cache, Inner};
use crate::codec::{Codec, Json};
use crate::coherence::Pending;
use crate::flight::Flights;
use crate::keys::Keys;
use crate::l1::L1;
use crate::stats::{Recorder, Stats};
use crate::{Config, Error};

impl Cache<Json> {
    /// Connects to the cluster with the JSON codec.
    ///
    /// Fails when the config is invalid or no seed node answers within
    /// `connect_timeout_ms`; after that, Redis trouble never fails a read.
    pub async fn connect(config: Config) -> Result<Cache<Json>, Error> {
        Cache::connect_with_codec(config, Json).await
    }
}

impl<C: Codec> Cache<C> {
    /// Connects with another [`Codec`].
    pub async fn connect_with_codec(config: Config, codec: C) -> Result<Cache<C>, Error> {
        let config = config.resolved()?;
        let hosts = config.validate()?;
        let timeout = config.command_timeout();
        let connect_timeout = Duration::from_millis(config.connect_timeout_ms.max(1));
        let mut fc = fred::types::config::Config {
            server: ServerConfig::new_clustered(hosts),
            username: config.username.clone(),
            password: config.password.clone(),
            fail_fast: true,
            ..Default::default()
        };
        if config.tls {
            fc.tls = Some(tls_config(&config)?);
        }
        let mut builder = Builder::from_config(fc);
        builder.with_connection_config(|c| {
            c.connection_timeout = connect_timeout;
            c.internal_command_timeout = connect_timeout;
            c.max_command_attempts = config.retry.retries + 1;
            // A node that stops answering (paused, network split) is dropped
            // and reconnected instead of holding commands until the timeout.
            let unresponsive = (timeout * 8).max(Duration::from_secs(2));
            c.unresponsive = UnresponsiveConfig {
                max_timeout: Some(unresponsive),
                interval: unresponsive / 4,
            };
        });
        builder.with_performance_config(|p| p.default_command_timeout = timeout);
        if config.reconnect {
            // fred's default is no reconnect at all. Retry forever with the
            // old app's backoff: min(step * attempt, max).
            builder.set_policy(ReconnectPolicy::new_linear(
                0,
                config.retry.max_ms,
                config.retry.step_ms,
            ));
        }
        let nodes = crate::config::mask_url(&config.nodes.join(","));
        let connect_err = |error| Error::Connect {
            nodes: nodes.clone(),
            error,
        };
        let client = builder.build().map_err(connect_err)?;
        init(&client, connect_timeout).await.map_err(connect_err)?;
        // One client per master for the keys (see `routing`): a master that
        // fails then holds up only the commands on its own slots.
        let routes = Routes::new(
            client.clone(),
            builder.clone(),
            config.breaker.failures,
            Duration::from_millis(config.breaker.open_ms),
            connect_timeout,
        );
        if let Err(e) = routes.refresh(true).await {
            let _ = client.quit().await;
            for c in routes.clients() {
                let _ = c.quit().await;
            }
            return Err(connect_err(e));
        }

        let (subscriber, l1) = if config.l1.enabled {
            let sub = builder.build().map_err(connect_err)?;
            init(&sub, connect_timeout).await.map_err(connect_err)?;
            let l1 = L1::new(
                config.l1.max_entries,
                config.l1.ttl_secs.saturating_mul(1000),
            );
            (Some(sub), Some(l1))
        } else {
            (None, None)
        };

        let inner = Arc::new(Inner {
            keys: Keys::new(&config.namespace),
            stats: Recorder::new(&config.namespace),
            routes,
            pending: Pending::default(),
            flights: Flights::default(),
            instance: rand::rng().random(),
            client,
            subscriber,
            codec,
            l1,
            cfg: config,
            tasks: Mutex::new(Vec::new()),
        });
        let mut tasks = vec![
            tokio::spawn(routes_task(Arc::downgrade(&inner))),
            tokio::spawn(pending_task(Arc::downgrade(&inner))),
        ];
        if let Some(sub) = &inner.subscriber {
            let channel = inner.keys.channel();
            sub.subscribe(channel.as_str()).await.map_err(connect_err)?;
            if let Some(l1) = &inner.l1 {
                l1.set_live(true);
            }
            tasks.push(tokio::spawn(l1_task(
                Arc::downgrade(&inner),
                sub.clone(),
                inner.client.clone(),
                channel,
            )));
        }
        if inner.cfg.stats_flush_secs > 0 {
            tasks.push(tokio::spawn(stats_task(
                Arc::downgrade(&inner),
                Duration::from_secs(inner.cfg.stats_flush_secs),
            )));
        }
        *inner.tasks.lock().expect("tasks lock") = tasks;
        Ok(Cache { inner })
    }

    /// Closes the connections (this handle's and every clone's) and stops
    /// the background tasks, waiting for Redis to acknowledge. Dropping the
    /// last handle does the same in the background; a short-lived process
    /// (a CLI command) calls this before it exits so nothing is cut off
    /// mid-QUIT while the runtime shuts down.
    pub async fn close(&self) {
        let tasks = self
            .inner
            .tasks
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default();
        for t in tasks {
            t.abort();
        }
        if let Some(s) = &self.inner.subscriber {
            let _ = s.quit().await;
        }
        for c in self.inner.routes.clients() {
            let _ = c.quit().await;
        }
        let _ = self.inner.client.quit().await;
    }

    /// The configuration in use.
    pub fn config(&self) -> &Config {
        &self.inner.cfg
    }

    /// The fred cluster client underneath, for commands this crate does
    /// not wrap. The cache's own commands go to one client per master
    /// instead, so that a failed master holds up only its own slots.
    pub fn redis(&self) -> &Client {
        &self.inner.client
    }

    /// This process's counters since connect.
    pub fn stats(&self) -> Stats {
        self.inner.stats.snapshot()
    }

    /// True while the circuit breaker of any master skips Redis.
    pub fn breaker_open(&self) -> bool {
        self.inner.routes.any_open()
    }

    /// The masters (`host:port`) whose circuit breaker is open now: only
    /// the keys in their slots skip Redis.
    pub fn open_breakers(&self) -> Vec<String> {
        self.inner.routes.open_nodes()
    }

    /// Invalidations (`delete`, `invalidate_tag`) that have not reached
    /// Redis yet. They are retried in the background until they land; until
    /// then this process treats their keys, and every entry with their tags,
    /// as misses.
    pub fn pending_invalidations(&self) -> usize {
        self.inner.pending.len()
    }
}

pub(super) async fn init<T: ClientLike>(
    client: &T,
    timeout: Duration,
) -> Result<fred::types::ConnectHandle, fred::error::Error> {
    match tokio::time::timeout(timeout, client.init()).await {
        Ok(r) => r,
        Err(_) => {
            let _ = client.quit().await;
            Err(fred::error::Error::new(
                fred::error::ErrorKind::Timeout,
                format!("no answer within {} ms", timeout.as_millis()),
            ))
        }
    }
}

pub(super) fn tls_config(config: &Config) -> Result<fred::types::config::TlsConfig, Error> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    match &config.tls_ca {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    Error::Config(format!("cannot read tls_ca {}: {e}", path.display()))
                })?;
            for c in certs {
                roots.add(c).map_err(|e| {
                    Error::Config(format!("bad certificate in {}: {e}", path.display()))
                })?;
            }
        }
        None => {
            let _ = rustls::crypto::ring::default_provider().install_default();
            return fred::types::config::TlsConnector::default_rustls()
                .map(Into::into)
                .map_err(|e| {
                    Error::Config(format!("cannot load the system CA roots: {e} (set tls_ca)"))
                });
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("tls: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(fred::types::config::TlsConnector::from(tls).into())
}
