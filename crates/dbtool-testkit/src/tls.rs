//! Throwaway certificates for TLS tests: a certificate authority made at run
//! time (rcgen), server certificates it signs, and a client connector that
//! trusts it. Nothing here is fit for anything but tests.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject as _;

use crate::error::{Error, Result};

/// A certificate authority that exists only in this process.
///
/// ```
/// let ca = dbtool_testkit::TestCa::new();
/// let (cert, key) = ca.issue(&["localhost", "127.0.0.1"]);
/// assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
/// assert!(cert.contains("BEGIN CERTIFICATE") && key.contains("PRIVATE KEY"));
/// ```
pub struct TestCa {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

impl TestCa {
    /// A new CA (a fresh key: certificates of another `TestCa` do not chain to it).
    pub fn new() -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("no names");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            // Unique, so a client trusting another TestCa sees an unknown issuer.
            .push(
                DnType::CommonName,
                format!("dbtool-testkit throwaway CA {}", crate::util::random_hex(8)),
            );
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("rcgen generates a key");
        let cert = params.self_signed(&key).expect("rcgen signs the CA");
        TestCa {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// The CA certificate (PEM), what clients trust (`sslrootcert`, `--cacert`).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A server certificate and its private key (both PEM) for `names`
    /// (DNS names or IP addresses), signed by this CA.
    pub fn issue(&self, names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("valid names");
        params
            .distinguished_name
            .push(DnType::CommonName, "dbtool-testkit server");
        let key = KeyPair::generate().expect("rcgen generates a key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("rcgen signs the server certificate");
        (cert.pem(), key.serialize_pem())
    }

    /// Writes a certificate and key for `names` to `dir/server.crt` and
    /// `dir/server.key` (mode 0600, owned by `owner` when given).
    pub(crate) fn write_server_files(
        &self,
        dir: &Path,
        names: &[&str],
        owner: Option<(u32, u32)>,
    ) -> Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        let (cert, key) = self.issue(names);
        for (name, text) in [("server.crt", cert), ("server.key", key)] {
            let path = dir.join(name);
            std::fs::write(&path, text)
                .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| Error::io(format!("chmod {}", path.display()), e))?;
            crate::util::chown(&path, owner)?;
        }
        Ok(())
    }
}

/// The CA every TLS server of this process is signed by.
pub(crate) fn shared_ca() -> &'static TestCa {
    static CA: OnceLock<TestCa> = OnceLock::new();
    CA.get_or_init(TestCa::new)
}

/// A tokio-postgres connector that trusts [`shared_ca`] (and checks host names).
pub(crate) fn pg_connector() -> tokio_postgres_rustls::MakeRustlsConnect {
    static TLS: OnceLock<tokio_postgres_rustls::MakeRustlsConnect> = OnceLock::new();
    TLS.get_or_init(|| {
        let mut roots = rustls::RootCertStore::empty();
        let der =
            rustls::pki_types::CertificateDer::from_pem_slice(shared_ca().cert_pem().as_bytes())
                .expect("the CA certificate is valid PEM");
        roots.add(der).expect("the CA certificate is valid");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("rustls defaults")
            .with_root_certificates(roots)
            .with_no_client_auth();
        tokio_postgres_rustls::MakeRustlsConnect::new(config)
    })
    .clone()
}
