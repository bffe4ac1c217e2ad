//! Connecting to Postgres the way libpq does: `sslmode` and `sslrootcert`,
//! on rustls (no OpenSSL).
//!
//! tokio-postgres knows only `disable`, `prefer` and `require`, and rejects
//! libpq options it does not know. [`Target`] parses a URL or a `key=value`
//! string, takes out `sslmode`, `sslrootcert` and `password_file` (a file holding
//! the password, so it never appears on a command line), which it handles itself, and hands the rest to tokio-postgres. [`Target::tls`] builds
//! the matching rustls connector:
//!
//! | sslmode       | encrypted            | server certificate checked         |
//! |---------------|----------------------|------------------------------------|
//! | `disable`     | never                | -                                  |
//! | `prefer` (default) | if the server offers | no (as libpq)                  |
//! | `require`     | always               | no, unless `sslrootcert` is given (as libpq) |
//! | `verify-ca`   | always               | chain to the root CA               |
//! | `verify-full` | always               | chain and host name                |
//!
//! `verify-full` is what production should use. Passwords in free text are
//! masked with [`crate::mask_password`], dbtool's one masking helper; a
//! target prints as [`display_config`] does, without the password.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::SslMode as PgSslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Never encrypt.
    Disable,
    /// Encrypt when the server offers it; do not check the certificate (libpq's default).
    #[default]
    Prefer,
    /// Always encrypt; check the certificate only when a root CA is given.
    Require,
    /// Always encrypt; the certificate must chain to the root CA.
    VerifyCa,
    /// Always encrypt; the certificate must chain to the root CA and name the host.
    VerifyFull,
}

impl FromStr for SslMode {
    type Err = TlsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "disable" => SslMode::Disable,
            // libpq's `allow` tries plaintext first; encrypting when offered is strictly safer.
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(TlsError(format!(
                    "invalid sslmode {other:?}: expected disable, prefer, require, verify-ca or verify-full"
                )))
            }
        })
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        })
    }
}

/// A TLS or connection-string problem. The message never contains a password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsError(pub String);

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsError {}

/// A Postgres server to connect to: tokio-postgres settings plus the TLS
/// settings tokio-postgres does not parse.
#[derive(Clone)]
pub struct Target {
    /// Host, port, user, password, database, timeouts...
    pub config: tokio_postgres::Config,
    /// libpq's `sslmode`.
    pub ssl_mode: SslMode,
    /// libpq's `sslrootcert`: a PEM file of trusted CA certificates, or
    /// `system` for the operating system's store.
    pub root_cert: Option<PathBuf>,
    /// The server-side `statement_timeout` every connection starts with
    /// (see [`Target::set_statement_timeout`]); `None` leaves the server's.
    pub statement_timeout: Option<std::time::Duration>,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the password: tokio-postgres redacts it in its own Debug too.
        f.debug_struct("Target")
            .field("url", &self.to_string())
            .field("ssl_mode", &self.ssl_mode)
            .field("root_cert", &self.root_cert)
            .field("statement_timeout", &self.statement_timeout)
            .finish()
    }
}

impl fmt::Display for Target {
    /// `postgres://user@host:port/db`, never with the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", display_config(&self.config))
    }
}

/// `postgres://user@host:port/db` for a tokio-postgres config, without the password.
pub fn display_config(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let at = match config.get_user() {
        Some(u) if !u.is_empty() => format!("{u}@"),
        _ => String::new(),
    };
    format!(
        "postgres://{at}{host}:{port}/{}",
        config.get_dbname().unwrap_or("")
    )
}

impl FromStr for Target {
    type Err = TlsError;

    /// Parses a `postgres://` URL or a libpq `key=value` string.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut ssl_mode = None;
        let mut root_cert = None;
        let mut password_file = None;
        let rest = if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            strip_url_params(s, &mut ssl_mode, &mut root_cert, &mut password_file)?
        } else {
            strip_kv_params(s, &mut ssl_mode, &mut root_cert, &mut password_file)?
        };
        let mut config: tokio_postgres::Config = rest
            .parse()
            // tokio-postgres's messages do not echo the string, so no password leaks.
            // Its `Display` is only "invalid connection string"; the cause
            // (which option, which value) is its source.
            .map_err(|e| {
                TlsError(match std::error::Error::source(&e) {
                    Some(cause) => format!("invalid connection string: {cause}"),
                    None => "invalid connection string".to_owned(),
                })
            })?;
        if let Some(file) = password_file {
            if config.get_password().is_none() {
                config.password(read_password_file(Path::new(&file))?);
            }
        }
        let mut target = Target {
            config,
            ssl_mode: SslMode::Prefer,
            root_cert: root_cert.map(PathBuf::from),
            statement_timeout: None,
        };
        target.set_ssl_mode(ssl_mode.unwrap_or_default());
        Ok(target)
    }
}

/// Reads a password from a file (first line, trailing newline removed), so
/// it never has to be on a command line.
pub fn read_password_file(path: &Path) -> Result<String, TlsError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| TlsError(format!("cannot read password file {}: {e}", path.display())))?;
    Ok(text.lines().next().unwrap_or("").to_owned())
}

type Params<'a> = (
    &'a mut Option<SslMode>,
    &'a mut Option<String>,
    &'a mut Option<String>,
);

fn take_param(key: &str, value: &str, (mode, root, pwfile): Params<'_>) -> Result<bool, TlsError> {
    match key {
        "sslmode" => *mode = Some(value.parse()?),
        "sslrootcert" => *root = Some(value.to_owned()),
        "password_file" => *pwfile = Some(value.to_owned()),
        _ => return Ok(false),
    }
    Ok(true)
}

fn strip_url_params(
    s: &str,
    mode: &mut Option<SslMode>,
    root: &mut Option<String>,
    pwfile: &mut Option<String>,
) -> Result<String, TlsError> {
    let Some((base, query)) = s.split_once('?') else {
        return Ok(s.to_owned());
    };
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v);
        if !take_param(k, &v, (&mut *mode, &mut *root, &mut *pwfile))? {
            kept.push(pair);
        }
    }
    Ok(if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    })
}

fn strip_kv_params(
    s: &str,
    mode: &mut Option<SslMode>,
    root: &mut Option<String>,
    pwfile: &mut Option<String>,
) -> Result<String, TlsError> {
    // Values may be quoted ('...') with backslash escapes; keep tokens intact.
    let mut kept = Vec::new();
    let mut chars = s.trim().chars().peekable();
    while chars.peek().is_some() {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut token = String::new();
        let mut key = String::new();
        let mut value = String::new();
        let mut in_value = false;
        let mut quoted = false;
        while let Some(&c) = chars.peek() {
            if !quoted
                && c.is_whitespace()
                && in_value
                && !(value.is_empty() && token.ends_with('='))
            {
                break;
            }
            chars.next();
            token.push(c);
            if !in_value {
                if c == '=' {
                    in_value = true;
                } else if !c.is_whitespace() {
                    key.push(c);
                }
                continue;
            }
            match c {
                '\'' => quoted = !quoted,
                '\\' => {
                    if let Some(n) = chars.next() {
                        token.push(n);
                        value.push(n);
                    }
                }
                c if c.is_whitespace() && value.is_empty() && !quoted => {}
                c => value.push(c),
            }
        }
        if token.is_empty() {
            break;
        }
        if !take_param(&key, &value, (&mut *mode, &mut *root, &mut *pwfile))? {
            kept.push(token);
        }
    }
    Ok(kept.join(" "))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Target {
    /// A target from a tokio-postgres config, with libpq's default `prefer`.
    pub fn from_config(config: tokio_postgres::Config) -> Target {
        let ssl_mode = match config.get_ssl_mode() {
            tokio_postgres::config::SslMode::Disable => SslMode::Disable,
            tokio_postgres::config::SslMode::Require => SslMode::Require,
            _ => SslMode::Prefer,
        };
        Target {
            config,
            ssl_mode,
            root_cert: None,
            statement_timeout: None,
        }
    }

    /// Sets the server-side `statement_timeout` every connection starts
    /// with (zero: none, overriding the server's own default). A
    /// `statement_timeout` in the string's own `options` (`options=-c
    /// statement_timeout=5s`) wins over this.
    ///
    /// The bound also shapes the client-side watch (see
    /// [`crate::watchdog`]): a request that has heard nothing for the bound
    /// plus [`crate::watchdog::GRACE`] (at most
    /// [`crate::watchdog::LONGEST_WATCH`]) makes dbtool ask the server for a
    /// sign of life on a new connection, and the connection fails, naming
    /// the host, when none comes within `connect_timeout`.
    pub fn set_statement_timeout(&mut self, bound: std::time::Duration) -> &mut Target {
        self.statement_timeout = Some(bound);
        self
    }

    /// The `statement_timeout` connections start with: the string's own
    /// `options`, else [`Target::set_statement_timeout`]'s, else `None`
    /// (the server's default, unknown here).
    pub fn statement_timeout(&self) -> Option<std::time::Duration> {
        match self
            .config
            .get_options()
            .and_then(options_statement_timeout)
        {
            Some(given) => Some(given),
            None => self.statement_timeout,
        }
    }

    /// `host:port` of the first host, for messages.
    fn host_port(&self, i: usize) -> String {
        let host = match self.config.get_hosts().get(i) {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            #[cfg(unix)]
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "localhost".to_owned(),
        };
        format!("{host}:{}", self.port(i))
    }

    fn port(&self, i: usize) -> u16 {
        let ports = self.config.get_ports();
        match ports.len() {
            0 => 5432,
            1 => ports[0],
            _ => ports.get(i).copied().unwrap_or(5432),
        }
    }

    /// Sets `sslmode` (and the matching tokio-postgres mode).
    pub fn set_ssl_mode(&mut self, mode: SslMode) -> &mut Target {
        self.ssl_mode = mode;
        self.config.ssl_mode(match mode {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Prefer => PgSslMode::Prefer,
            _ => PgSslMode::Require,
        });
        self
    }

    /// The tokio-postgres config to connect with, to pair with [`Target::tls`]
    /// (for a pool of one's own, say): `sslmode` applied, and TLS off on
    /// Unix sockets, where libpq ignores `sslmode` too (the server never
    /// offers TLS there).
    pub fn pg_config(&self) -> tokio_postgres::Config {
        let mut c = self.config.clone();
        c.ssl_mode(match self.ssl_mode {
            _ if self.is_unix_socket() => PgSslMode::Disable,
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Prefer => PgSslMode::Prefer,
            _ => PgSslMode::Require,
        });
        c
    }

    /// The rustls connector for this target's `sslmode` and `sslrootcert`.
    pub fn tls(&self) -> Result<MakeRustlsConnect, TlsError> {
        make_tls(self.ssl_mode, self.root_cert.as_deref())
    }

    /// Connects one client and drives its connection on a background task.
    ///
    /// This (or [`Target::connect_raw`]) is how every part of dbtool opens a
    /// Postgres connection, so `sslmode` and `sslrootcert` hold everywhere.
    pub async fn connect(&self) -> Result<tokio_postgres::Client, ConnectError> {
        let (client, connection) = self.connect_raw().await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("postgres connection closed: {e}");
            }
        });
        Ok(client)
    }

    /// Connects one client and returns its connection, for callers that
    /// drive it themselves (to receive notifications, say).
    pub async fn connect_raw(&self) -> Result<(tokio_postgres::Client, Connection), ConnectError> {
        let tls = self.tls().map_err(|source| ConnectError::Tls {
            target: self.to_string(),
            source,
        })?;
        let config = self.session_config();
        let connect = self.connect_watched(config, tls);
        // tokio-postgres applies `connect_timeout` to the TCP connect only; a
        // server that accepts and never answers would hang the startup
        // handshake forever, so the whole attempt is bounded by it.
        match self.config.get_connect_timeout() {
            Some(&after) => match tokio::time::timeout(after, connect).await {
                Ok(r) => r,
                Err(_) => Err(ConnectError::Timeout {
                    target: self.to_string(),
                    after,
                }),
            },
            None => connect.await,
        }
    }

    /// Runs `work` (on connections dbtool does not open itself, such as
    /// sqlx's) while asking the server for a sign of life every watch
    /// period (see [`crate::watchdog`]), so a frozen server fails it with
    /// an error naming the host instead of hanging it.
    ///
    /// # Errors
    /// [`crate::watchdog::Frozen`] when a new connection got no answer
    /// within `connect_timeout`.
    pub async fn guard<F: std::future::Future>(
        &self,
        work: F,
    ) -> Result<F::Output, crate::watchdog::Frozen> {
        match self.tls() {
            Ok(tls) => {
                let config = self.session_config();
                self.watch_settings(0, &config, &tls).guard(work).await
            }
            // The work fails on the same settings, with its own message.
            Err(_) => Ok(work.await),
        }
    }

    /// [`Target::pg_config`] with the statement bound in `options`, unless
    /// the string's own `options` set one.
    fn session_config(&self) -> tokio_postgres::Config {
        let mut config = self.pg_config();
        let given = config.get_options().unwrap_or("").to_owned();
        if let (Some(bound), None) = (self.statement_timeout, options_statement_timeout(&given)) {
            let set = format!("-c statement_timeout={}", bound.as_millis());
            config.options(if given.is_empty() {
                set
            } else {
                format!("{given} {set}")
            });
        }
        config
    }

    /// Tries each host in turn (as libpq does) on a watched socket.
    async fn connect_watched(
        &self,
        config: tokio_postgres::Config,
        mut tls: MakeRustlsConnect,
    ) -> Result<(tokio_postgres::Client, Connection), ConnectError> {
        use tokio_postgres::tls::MakeTlsConnect;
        let hosts = config.get_hosts().to_vec();
        let count = hosts.len().max(1);
        let mut last = None;
        for i in 0..count {
            let host = hosts.get(i);
            let socket = match self.open(host, self.port(i), &config).await {
                Ok(s) => s,
                Err(source) => {
                    last = Some(ConnectError::Io {
                        target: self.to_string(),
                        source,
                    });
                    continue;
                }
            };
            let name = match host {
                Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
                _ => "localhost".to_owned(),
            };
            let settings = self.watch_settings(i, &config, &tls);
            let stream = crate::watchdog::Watched::new(socket, settings);
            let connector = <MakeRustlsConnect as MakeTlsConnect<
                crate::watchdog::Watched<crate::watchdog::Socket>,
            >>::make_tls_connect(&mut tls, &name)
            .map_err(|e| ConnectError::Tls {
                target: self.to_string(),
                source: TlsError(format!("tls setup failed: {e}")),
            })?;
            match config
                .connect_raw(stream, crate::watchdog::WatchedTls(connector))
                .await
            {
                Ok(pair) => return Ok(pair),
                Err(source) => {
                    last = Some(ConnectError::Postgres {
                        target: self.to_string(),
                        source,
                    })
                }
            }
        }
        Err(last.expect("at least one host was tried"))
    }

    /// Opens the socket to one host, with tokio-postgres's socket options.
    async fn open(
        &self,
        host: Option<&tokio_postgres::config::Host>,
        port: u16,
        config: &tokio_postgres::Config,
    ) -> std::io::Result<crate::watchdog::Socket> {
        match host {
            #[cfg(unix)]
            Some(tokio_postgres::config::Host::Unix(dir)) => {
                let path = dir.join(format!(".s.PGSQL.{port}"));
                Ok(crate::watchdog::Socket::Unix(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
            tcp => {
                let name = match tcp {
                    Some(tokio_postgres::config::Host::Tcp(h)) => h.as_str(),
                    _ => "localhost",
                };
                let stream = tokio::net::TcpStream::connect((name, port)).await?;
                stream.set_nodelay(true)?;
                if config.get_keepalives() {
                    let keepalive =
                        socket2::TcpKeepalive::new().with_time(config.get_keepalives_idle());
                    socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive)?;
                }
                Ok(crate::watchdog::Socket::Tcp(stream))
            }
        }
    }

    /// What the watch of a connection to host `i` needs: its name, the
    /// bound, and a sign-of-life check on a new (unwatched) connection.
    fn watch_settings(
        &self,
        i: usize,
        config: &tokio_postgres::Config,
        tls: &MakeRustlsConnect,
    ) -> crate::watchdog::Settings {
        let connect_timeout = config
            .get_connect_timeout()
            .copied()
            .unwrap_or(std::time::Duration::from_secs(10));
        let (config, tls) = (config.clone(), tls.clone());
        let prober: crate::watchdog::Prober = std::sync::Arc::new(move || {
            let (config, tls) = (config.clone(), tls.clone());
            Box::pin(async move {
                match tokio::time::timeout(connect_timeout, config.connect(tls)).await {
                    Ok(Ok((client, connection))) => {
                        drop(client);
                        let _ = connection.await;
                        true
                    }
                    // A refusal is an answer too: the server is alive.
                    Ok(Err(e)) => e.as_db_error().is_some(),
                    Err(_) => false,
                }
            })
        });
        crate::watchdog::Settings {
            host: self.host_port(i),
            statement_timeout: self.statement_timeout(),
            connect_timeout,
            prober,
        }
    }

    /// Whether every host is a Unix-domain socket.
    fn is_unix_socket(&self) -> bool {
        let hosts = self.config.get_hosts();
        #[cfg(unix)]
        {
            !hosts.is_empty()
                && hosts
                    .iter()
                    .all(|h| matches!(h, tokio_postgres::config::Host::Unix(_)))
        }
        #[cfg(not(unix))]
        {
            let _ = hosts;
            false
        }
    }
}

/// The connection half of [`Target::connect_raw`]: its stream is watched
/// (see [`crate::watchdog`]), over TLS or not.
pub type Connection = tokio_postgres::Connection<
    crate::watchdog::Watched<crate::watchdog::Socket>,
    crate::watchdog::Watched<
        <MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<
            crate::watchdog::Watched<crate::watchdog::Socket>,
        >>::Stream,
    >,
>;

/// The `statement_timeout` a libpq `options` string sets (`-c
/// statement_timeout=5s`, `-cstatement_timeout=5000`, `--statement-timeout=1min`),
/// in Postgres's units (a bare number is milliseconds).
pub fn options_statement_timeout(options: &str) -> Option<std::time::Duration> {
    let normalized = options.replace('-', "_");
    let at = normalized.find("statement_timeout")?;
    let value = normalized[at + "statement_timeout".len()..]
        .trim_start()
        .strip_prefix('=')?
        .trim_start();
    let value: String = value.chars().take_while(|c| !c.is_whitespace()).collect();
    let value = value.trim_matches('\'').trim_matches('"');
    let digits = value.chars().take_while(char::is_ascii_digit).count();
    let n: u64 = value[..digits].parse().ok()?;
    let ms = match value[digits..].trim() {
        "" | "ms" => n,
        "s" => n * 1000,
        "min" => n * 60_000,
        "h" => n * 3_600_000,
        "d" => n * 86_400_000,
        _ => return None,
    };
    Some(std::time::Duration::from_millis(ms))
}

impl From<tokio_postgres::Config> for Target {
    fn from(config: tokio_postgres::Config) -> Target {
        Target::from_config(config)
    }
}

/// A target reads like the tokio-postgres config it wraps (`get_user()`,
/// `get_dbname()`...), so code written against a config keeps working.
impl std::ops::Deref for Target {
    type Target = tokio_postgres::Config;

    fn deref(&self) -> &tokio_postgres::Config {
        &self.config
    }
}

impl std::ops::DerefMut for Target {
    fn deref_mut(&mut self) -> &mut tokio_postgres::Config {
        &mut self.config
    }
}

/// A failed connection attempt, naming the target without its password.
#[derive(Debug)]
pub enum ConnectError {
    /// The TLS settings could not be used (unreadable CA file, ...).
    Tls {
        /// The target, password-free.
        target: String,
        /// What is wrong with the settings.
        source: TlsError,
    },
    /// No answer within `connect_timeout` (TCP connect, TLS and startup
    /// handshake together).
    Timeout {
        /// The target, password-free.
        target: String,
        /// The `connect_timeout` that expired.
        after: std::time::Duration,
    },
    /// The server's address could not be reached (refused, unroutable...).
    Io {
        /// The target, password-free.
        target: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The server refused or could not be reached.
    Postgres {
        /// The target, password-free.
        target: String,
        /// The cause.
        source: tokio_postgres::Error,
    },
}

impl ConnectError {
    /// The driver's error, when the server was reached or tried.
    pub fn as_postgres(&self) -> Option<&tokio_postgres::Error> {
        match self {
            ConnectError::Tls { .. } | ConnectError::Timeout { .. } | ConnectError::Io { .. } => {
                None
            }
            ConnectError::Postgres { source, .. } => Some(source),
        }
    }
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::Tls { target, source } => {
                write!(f, "cannot connect to {target}: {source}")
            }
            ConnectError::Timeout { target, after } => write!(
                f,
                "cannot connect to {target}: no answer within {}s (connect_timeout); is the server up and is this its address and port?",
                after.as_secs_f64()
            ),
            // Worded as tokio-postgres words it.
            ConnectError::Io { target, source } => {
                write!(f, "cannot connect to {target}: error connecting to server: {source}")
            }
            // The driver's message and its cause on one line ("error performing
            // TLS handshake: invalid peer certificate: UnknownIssuer"), so the
            // reason shows even where only `{}` is printed.
            ConnectError::Postgres { target, source } => {
                write!(f, "cannot connect to {target}: {}", chain(source))
            }
        }
    }
}

impl std::error::Error for ConnectError {}

/// An error and its causes, `: `-separated (tokio-postgres's `Display` shows
/// only the first level for some kinds).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = c.source();
    }
    out
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the rustls connector for an `sslmode` and an optional root CA file.
pub fn make_tls(mode: SslMode, root_cert: Option<&Path>) -> Result<MakeRustlsConnect, TlsError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(format!("tls setup failed: {e}")))?;
    let default_root = home_root_cert();
    let root_cert = root_cert.or(match mode {
        SslMode::VerifyCa | SslMode::VerifyFull => default_root.as_deref(),
        _ => None,
    });
    let config = match (mode, root_cert) {
        (SslMode::Disable | SslMode::Prefer, _) | (SslMode::Require, None) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
            .with_no_client_auth(),
        (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
            return Err(TlsError(format!(
                "sslmode={mode} needs a root certificate: set sslrootcert=FILE (or sslrootcert=system), \
                 or put it in ~/.postgresql/root.crt"
            )))
        }
        (SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull, Some(path)) => {
            let roots = Arc::new(load_roots(path)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| TlsError(format!("cannot use root certificate {}: {e}", path.display())))?;
            let verifier: Arc<dyn ServerCertVerifier> = if mode == SslMode::VerifyFull {
                webpki
            } else {
                // libpq's `require` with a root file and `verify-ca`: the chain is checked, the name is not.
                Arc::new(ChainOnly(webpki))
            };
            builder.dangerous().with_custom_certificate_verifier(verifier).with_no_client_auth()
        }
    };
    Ok(MakeRustlsConnect::new(config))
}

fn home_root_cert() -> Option<PathBuf> {
    let home = std::env::var_os("HOME")?;
    let p = Path::new(&home).join(".postgresql/root.crt");
    p.exists().then_some(p)
}

fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    if path == Path::new("system") {
        let found = rustls_native_certs::load_native_certs();
        for cert in found.certs {
            let _ = roots.add(cert);
        }
    } else {
        let certs = CertificateDer::pem_file_iter(path).map_err(|e| {
            TlsError(format!(
                "cannot read root certificate {}: {e}",
                path.display()
            ))
        })?;
        for cert in certs {
            let cert = cert.map_err(|e| {
                TlsError(format!("invalid root certificate {}: {e}", path.display()))
            })?;
            roots.add(cert).map_err(|e| {
                TlsError(format!("invalid root certificate {}: {e}", path.display()))
            })?;
        }
    }
    if roots.is_empty() {
        return Err(TlsError(format!(
            "no certificates in root certificate file {}",
            path.display()
        )));
    }
    Ok(roots)
}

/// `prefer` and `require` without a root CA: encrypted, not authenticated
/// (libpq's behaviour). Handshake signatures are still checked.
#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted root; the host name is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_tls_params_are_taken_out_and_the_rest_parsed() {
        let t: Target = "postgres://app:pw@db.example:6432/forums?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=x"
            .parse()
            .unwrap();
        assert_eq!(t.ssl_mode, SslMode::VerifyFull);
        assert_eq!(t.root_cert.as_deref(), Some(Path::new("/etc/ca.pem")));
        assert_eq!(t.config.get_application_name(), Some("x"));
        assert_eq!(t.to_string(), "postgres://app@db.example:6432/forums");
    }

    #[test]
    fn key_value_strings_work_too() {
        let t: Target =
            "host=db port=6000 user=app dbname='my db' sslmode=require sslrootcert=/ca.pem"
                .parse()
                .unwrap();
        assert_eq!(t.ssl_mode, SslMode::Require);
        assert_eq!(t.root_cert.as_deref(), Some(Path::new("/ca.pem")));
        assert_eq!(t.config.get_dbname(), Some("my db"));
        assert_eq!(t.config.get_ports(), &[6000]);
    }

    #[test]
    fn a_statement_timeout_in_options_is_read_in_postgres_units() {
        let t = |o: &str| options_statement_timeout(o).map(|d| d.as_millis());
        assert_eq!(t("-c statement_timeout=5000"), Some(5000));
        assert_eq!(t("-c statement_timeout=5s"), Some(5000));
        assert_eq!(t("-cstatement_timeout=2min -c work_mem=4MB"), Some(120_000));
        assert_eq!(t("--statement-timeout=0"), Some(0));
        assert_eq!(t("-c work_mem=4MB"), None);
    }

    #[test]
    fn the_string_s_own_statement_timeout_wins() {
        let mut t: Target = "postgres://u@h/db?options=-c%20statement_timeout%3D7s"
            .parse()
            .unwrap();
        t.set_statement_timeout(std::time::Duration::from_secs(30));
        assert_eq!(
            t.statement_timeout(),
            Some(std::time::Duration::from_secs(7))
        );
        assert_eq!(
            t.session_config().get_options(),
            Some("-c statement_timeout=7s")
        );
        let mut plain: Target = "postgres://u@h/db".parse().unwrap();
        plain.set_statement_timeout(std::time::Duration::from_secs(30));
        assert_eq!(
            plain.session_config().get_options(),
            Some("-c statement_timeout=30000")
        );
    }

    #[test]
    fn default_is_prefer_like_libpq() {
        let t: Target = "postgres://h/db".parse().unwrap();
        assert_eq!(t.ssl_mode, SslMode::Prefer);
    }

    #[test]
    fn bad_sslmode_is_named() {
        let err = "postgres://u:secret@h/db?sslmode=always"
            .parse::<Target>()
            .unwrap_err();
        assert!(err.0.contains("\"always\""), "{err}");
        assert!(!err.0.contains("secret"));
    }

    #[test]
    fn verify_full_without_a_root_certificate_says_what_to_do() {
        let err = match make_tls(SslMode::VerifyFull, Some(Path::new("/nonexistent/ca.pem"))) {
            Err(e) => e,
            Ok(_) => panic!("a missing CA file must be an error"),
        };
        assert!(err.0.contains("/nonexistent/ca.pem"), "{err}");
    }

    #[test]
    fn password_file_fills_a_missing_password() {
        let dir = std::env::temp_dir().join(format!("dbtool-pw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pw");
        std::fs::write(&file, "s3cret\n").unwrap();
        let t: Target = format!("postgres://app@h/db?password_file={}", file.display())
            .parse()
            .unwrap();
        assert_eq!(t.config.get_password(), Some(&b"s3cret"[..]));
        assert!(!format!("{t:?}").contains("s3cret"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
