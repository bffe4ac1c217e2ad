//! A tiny blocking RESP client: enough to ping nodes and read CLUSTER INFO/NODES
//! without a runtime (several callers are sync) and without spawning redis-cli.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::error::{Error, Result};

/// Nodes that speak TLS (signed by [`crate::tls::shared_ca`]) and want a
/// password: `host:port` -> password.
fn secured() -> &'static std::sync::Mutex<std::collections::HashMap<String, String>> {
    static NODES: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<String, String>>> =
        std::sync::OnceLock::new();
    NODES.get_or_init(Default::default)
}

/// From now on, talk TLS to `addr` and authenticate with `password` first.
pub(crate) fn secure(addr: &str, password: &str) {
    secured()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(addr.to_owned(), password.to_owned());
}

fn password_of(addr: &str) -> Option<String> {
    secured()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(addr)
        .cloned()
}

type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn tls_stream(addr: &str, stream: TcpStream) -> std::io::Result<TlsStream> {
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    let ca = rustls::pki_types::CertificateDer::from_pem_slice(
        crate::tls::shared_ca().cert_pem().as_bytes(),
    )
    .map_err(std::io::Error::other)?;
    roots.add(ca).map_err(std::io::Error::other)?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h).to_owned();
    let name = rustls::pki_types::ServerName::try_from(host).map_err(std::io::Error::other)?;
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name)
        .map_err(std::io::Error::other)?;
    Ok(rustls::StreamOwned::new(conn, stream))
}

fn request(args: &[&str]) -> String {
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    req
}

/// A reply, flattened: arrays become their elements joined by newlines.
pub(crate) fn command(addr: &str, args: &[&str]) -> Result<String> {
    let err = |e: std::io::Error| Error::Redis(format!("{} on {addr}: {e}", args.join(" ")));
    // host:port may name a host (external backend), so resolve it.
    let sock = std::net::ToSocketAddrs::to_socket_addrs(addr)
        .map_err(err)?
        .next()
        .ok_or_else(|| Error::Config(format!("redis address {addr} resolves to nothing")))?;
    let stream = TcpStream::connect_timeout(&sock, Duration::from_secs(2)).map_err(err)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(err)?;
    stream
        .set_write_timeout(Some(Duration::from_secs(5)))
        .map_err(err)?;
    let reply = match password_of(addr) {
        None => {
            (&stream).write_all(request(args).as_bytes()).map_err(err)?;
            read_reply(&mut BufReader::new(stream))
        }
        Some(password) => {
            let mut tls = tls_stream(addr, stream).map_err(err)?;
            let req = request(&["AUTH", &password]) + &request(args);
            tls.write_all(req.as_bytes()).map_err(err)?;
            let mut reader = BufReader::new(tls);
            read_reply(&mut reader).and_then(|_| read_reply(&mut reader))
        }
    };
    reply.map_err(|e| match e {
        Error::Io { source, .. } => err(source),
        Error::Redis(m) => Error::Redis(format!("{} on {addr}: {m}", args.join(" "))),
        other => other,
    })
}

fn read_reply<R: BufRead>(r: &mut R) -> Result<String> {
    let mut line = String::new();
    r.read_line(&mut line)
        .map_err(|e| Error::io("reading a redis reply", e))?;
    let line = line.trim_end_matches(['\r', '\n']);
    let (kind, rest) = line.split_at(line.len().min(1));
    match kind {
        "+" | ":" => Ok(rest.to_string()),
        "-" => Err(Error::Redis(rest.to_string())),
        "$" => {
            let n: i64 = rest
                .parse()
                .map_err(|_| Error::Redis(format!("bad reply {line}")))?;
            if n < 0 {
                return Ok(String::new());
            }
            let mut buf = vec![0; n as usize + 2];
            r.read_exact(&mut buf)
                .map_err(|e| Error::io("reading a redis reply", e))?;
            buf.truncate(n as usize);
            Ok(String::from_utf8_lossy(&buf).into_owned())
        }
        "*" => {
            let n: i64 = rest
                .parse()
                .map_err(|_| Error::Redis(format!("bad reply {line}")))?;
            let items = (0..n.max(0))
                .map(|_| read_reply(r))
                .collect::<Result<Vec<_>>>()?;
            Ok(items.join("\n"))
        }
        _ => Err(Error::Redis(format!("unexpected reply {line:?}"))),
    }
}

/// `field:value` from an INFO-style reply.
pub(crate) fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.trim_end().strip_prefix(field)?.strip_prefix(':'))
}
