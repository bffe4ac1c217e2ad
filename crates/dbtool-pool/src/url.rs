//! Connection strings: parsing and printing them without their passwords.

use tokio_postgres::config::Host;

use crate::tls::Target;
use crate::{mask_password, Error};

/// Parses a URL or key/value string, with libpq's TLS settings; the error
/// never shows the password.
pub(crate) fn parse(url: &str) -> Result<Target, Error> {
    url.parse::<Target>().map_err(|source| Error::Url {
        url: mask_password(url),
        source,
    })
}

/// `host:port` of a parsed config, the label used in metrics, status and errors.
pub(crate) fn host_label(cfg: &tokio_postgres::Config) -> String {
    let ports = cfg.get_ports();
    let hosts: Vec<String> = cfg
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            match h {
                Host::Tcp(name) => format!("{name}:{port}"),
                #[cfg(unix)]
                Host::Unix(path) => format!("{}:{port}", path.display()),
            }
        })
        .collect();
    if hosts.is_empty() {
        "localhost:5432".to_string()
    } else {
        hosts.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_errors_never_show_the_password() {
        let err = parse("postgres://u:topsecret@h:notaport/d").unwrap_err();
        assert!(!format!("{err:#}").contains("topsecret"), "{err:#}");
        assert!(format!("{err}").contains("u:***@h"), "{err}");
    }

    #[test]
    fn host_label_is_host_and_port() {
        assert_eq!(
            host_label(&parse("postgres://u:p@db1:6543/x").unwrap()),
            "db1:6543"
        );
        assert_eq!(
            host_label(&parse("postgres://u:p@db1/x").unwrap()),
            "db1:5432"
        );
    }
}
