//! A tiny blocking RESP client: enough to ping nodes and read CLUSTER INFO/NODES
//! without a runtime (several callers are sync) and without spawning redis-cli.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::error::{Error, Result};

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
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    (&stream).write_all(req.as_bytes()).map_err(err)?;
    let mut reader = BufReader::new(stream);
    read_reply(&mut reader).map_err(|e| match e {
        Error::Io { source, .. } => err(source),
        Error::Redis(m) => Error::Redis(format!("{} on {addr}: {m}", args.join(" "))),
        other => other,
    })
}

fn read_reply(r: &mut BufReader<TcpStream>) -> Result<String> {
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
