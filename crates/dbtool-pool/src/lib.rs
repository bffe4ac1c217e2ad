//! A read/write-splitting PostgreSQL pool: one primary, its replicas, health
//! and lag checks, and consistency tokens for reading your own writes.
//!
//! ```no_run
//! # async fn demo() -> Result<(), dbtool_pool::Error> {
//! use dbtool_pool::RwPool;
//!
//! let pool = RwPool::builder()
//!     .primary("postgres://app:secret@db1:5432/forums")
//!     .replica("postgres://app:secret@db2:5432/forums")
//!     .build()
//!     .await?;
//!
//! // Writes (and transactions) go to the primary.
//! let mut c = pool.write().await?;
//! let tx = c.transaction().await?;
//! tx.execute("UPDATE topics SET title = $1 WHERE id = $2", &[&"Hello", &7i64]).await?;
//! tx.commit().await?;
//! let token = pool.commit_token(&c).await?; // carry it in a cookie: token.to_string()
//! drop(c);
//!
//! // Reads go to a healthy replica (or the primary when none is).
//! let n: i64 = pool.read().await?.query_one("SELECT count(*) FROM topics", &[]).await?.get(0);
//!
//! // Read your own write: a replica that has replayed the commit, else the primary.
//! let row = pool.read_after(&token).await?
//!     .query_one("SELECT title FROM topics WHERE id = $1", &[&7i64]).await?;
//! # let _ = (n, row);
//! # Ok(()) }
//! ```
//!
//! Routing, defaults, metrics and failure behaviour are described in
//! `docs/pool.md`.

mod config;
mod conn;
mod error;
mod health;
mod mask;
pub mod metrics;
mod monitor;
mod pool;
mod status;
pub mod tls;
mod token;
mod url;
pub mod watchdog;

pub use config::{Builder, Config, Fallback, Strategy};
pub use conn::{Conn, Sql, Transaction};
pub use error::Error;
pub use mask::mask_password;
pub use pool::RwPool;
pub use status::{EjectReason, Ejection, Health, HostStatus, PoolState, Role};
pub use tls::{display_config, ConnectError, SslMode, Target, TlsError};
pub use token::Token;

/// The driver, re-exported so services use the same version.
pub use tokio_postgres;
