//! TLS for the broker (MQTT over TLS) and the bridge (HTTPS), with rustls and ring.
//!
//! The server certificate comes from the settings (`[tls] cert` and `key`, PEM), or, when none
//! is set, from a local certificate authority Genba makes once in `DATA_DIR/tls/`: `ca.pem` (the
//! certificate devices and browsers are given to trust, also served at `/ca.pem`), `ca.key`
//! (mode 600, kept to issue a new server certificate), `server.pem` (the server certificate
//! and the CA's) and `server.key` (mode 600). The server certificate names `[tls] names`
//! (default `genba.local`, `localhost`), the machine's host name and 127.0.0.1; it is issued
//! again when those names change. With `[tls] client_ca`, clients must present a certificate
//! from that CA.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use genba_config::TlsConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

pub use tokio_rustls::TlsAcceptor;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no {what} in it (PEM expected)")]
    Pem { path: PathBuf, what: &'static str },
    #[error("cannot make the local certificates: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS settings refused: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client_ca {path}: {message}")]
    ClientCa { path: PathBuf, message: String },
}

/// What serving TLS needs.
#[derive(Clone)]
pub struct ServerTls {
    pub acceptor: TlsAcceptor,
    /// The local CA's certificate (PEM) to hand to devices and browsers; `None` when the
    /// certificate comes from the settings.
    pub ca_pem: Option<String>,
    /// SHA-256 of the server certificate (DER), lower-case hex: what a device may pin.
    pub fingerprint: String,
    /// SHA-256 of the local CA's certificate (DER), lower-case hex; `None` when the
    /// certificate comes from the settings. It stays when the server certificate is issued
    /// again (other names), so it is the steadier pin.
    pub ca_fingerprint: Option<String>,
}

/// The directory of the local CA and certificate.
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("tls")
}

/// Loads the configured certificate, or the local one (made on first use).
pub fn load(cfg: &TlsConfig, data_dir: &Path) -> Result<ServerTls, TlsError> {
    let (chain_pem, key_pem, ca_pem) = match (&cfg.cert, &cfg.key) {
        (Some(cert), Some(key)) => (read(cert)?, read(key)?, None),
        _ => {
            let local = local_certificate(&dir(data_dir), &names(cfg))?;
            (local.0, local.1, Some(local.2))
        }
    };
    let source = cfg
        .cert
        .clone()
        .unwrap_or_else(|| dir(data_dir).join("server.pem"));
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|_| TlsError::Pem {
            path: source.clone(),
            what: "certificate",
        })?;
    let first = chain.first().ok_or(TlsError::Pem {
        path: source.clone(),
        what: "certificate",
    })?;
    let fingerprint = hex(&Sha256::digest(first.as_ref()));
    let ca_fingerprint = match &ca_pem {
        Some(pem) => Some(ca_fingerprint_of(pem, &dir(data_dir).join("ca.pem"))?),
        None => None,
    };
    let key_path = cfg
        .key
        .clone()
        .unwrap_or_else(|| dir(data_dir).join("server.key"));
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|_| TlsError::Pem {
        path: key_path,
        what: "private key",
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let config = match &cfg.client_ca {
        None => builder.with_no_client_auth().with_single_cert(chain, key)?,
        Some(path) => {
            let pem = read(path)?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let cert = cert.map_err(|_| TlsError::Pem {
                    path: path.clone(),
                    what: "certificate",
                })?;
                roots.add(cert).map_err(|e| TlsError::ClientCa {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| TlsError::ClientCa {
                path: path.clone(),
                message: e.to_string(),
            })?;
            builder
                .with_client_cert_verifier(verifier)
                .with_single_cert(chain, key)?
        }
    };
    Ok(ServerTls {
        acceptor: TlsAcceptor::from(Arc::new(config)),
        ca_pem,
        fingerprint,
        ca_fingerprint,
    })
}

/// The names the local server certificate is for: the configured ones and the host name.
fn names(cfg: &TlsConfig) -> Vec<String> {
    let mut names = cfg.names.clone();
    if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let host = host.trim();
        if !host.is_empty() {
            names.push(host.to_owned());
            names.push(format!("{host}.local"));
        }
    }
    names.push("127.0.0.1".into());
    names.sort();
    names.dedup();
    names
}

/// SHA-256 (DER, lower-case hex) of the local CA's certificate in `data_dir`, when Genba has
/// made one (at the first start with TLS on and no certificate in the settings).
pub fn local_ca_fingerprint(data_dir: &Path) -> Result<Option<String>, TlsError> {
    let path = dir(data_dir).join("ca.pem");
    match std::fs::read_to_string(&path) {
        Ok(pem) => ca_fingerprint_of(&pem, &path).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(TlsError::File { path, source }),
    }
}

fn ca_fingerprint_of(pem: &str, path: &Path) -> Result<String, TlsError> {
    let ca = CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|_| TlsError::Pem {
        path: path.to_owned(),
        what: "certificate",
    })?;
    Ok(hex(&Sha256::digest(ca.as_ref())))
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::File {
        path: path.to_owned(),
        source,
    })
}

fn write(path: &Path, text: &str, private: bool) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| TlsError::File {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(err)?;
    f.write_all(text.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// Returns (server chain PEM, server key PEM, CA certificate PEM), making what is missing:
/// the CA once, the server certificate again when its names changed.
fn local_certificate(dir: &Path, names: &[String]) -> Result<(String, String, String), TlsError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    std::fs::create_dir_all(dir).map_err(|source| TlsError::File {
        path: dir.to_owned(),
        source,
    })?;
    // The broker and the bridge may start together (separate units): one makes, the other
    // waits and reads.
    let lock_path = dir.join(".lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|source| TlsError::File {
            path: lock_path.clone(),
            source,
        })?;
    lock.lock().map_err(|source| TlsError::File {
        path: lock_path,
        source,
    })?;
    let (ca_pem_path, ca_key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
    let (server_path, key_path, names_path) = (
        dir.join("server.pem"),
        dir.join("server.key"),
        dir.join("server.names"),
    );
    // Valid from 2020: a Pi without a clock source starts in the past.
    let ca_params = || -> Result<CertificateParams, rcgen::Error> {
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name
            .push(DnType::CommonName, "Genba local certificate authority");
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2060, 1, 1);
        Ok(p)
    };
    if !ca_pem_path.exists() || !ca_key_path.exists() {
        let key = KeyPair::generate()?;
        let cert = ca_params()?.self_signed(&key)?;
        write(&ca_key_path, &key.serialize_pem(), true)?;
        write(&ca_pem_path, &cert.pem(), false)?;
        let _ = std::fs::remove_file(&names_path);
        tracing::info!(dir = %dir.display(), "made a local certificate authority");
    }
    let ca_pem = read(&ca_pem_path)?;
    let wanted = names.join("\n");
    let current = std::fs::read_to_string(&names_path).unwrap_or_default();
    if current != wanted || !server_path.exists() || !key_path.exists() {
        let ca_key = KeyPair::from_pem(&read(&ca_key_path)?)?;
        // The same subject and key as ca.pem: what a certificate it signs names as issuer.
        let issuer = Issuer::new(ca_params()?, ca_key);
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(names.to_vec())?;
        p.distinguished_name.push(DnType::CommonName, "genba");
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2060, 1, 1);
        let cert = p.signed_by(&key, &issuer)?;
        write(&key_path, &key.serialize_pem(), true)?;
        write(&server_path, &format!("{}{}", cert.pem(), ca_pem), false)?;
        write(&names_path, &wanted, false)?;
        tracing::info!(names = ?names, "issued the local server certificate");
    }
    Ok((read(&server_path)?, read(&key_path)?, ca_pem))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_ca_is_made_once_and_the_server_certificate_follows_the_names() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = TlsConfig::default();
        let first = load(&cfg, dir.path()).unwrap();
        let ca = first.ca_pem.clone().unwrap();
        assert!(ca.contains("BEGIN CERTIFICATE"));
        let mode = |name: &str| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(dir.path().join("tls").join(name))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("ca.key"), 0o600);
        assert_eq!(mode("server.key"), 0o600);
        // Loaded again: the same CA and certificate.
        let again = load(&cfg, dir.path()).unwrap();
        assert_eq!(again.ca_pem.as_deref(), Some(ca.as_str()));
        assert_eq!(again.fingerprint, first.fingerprint);
        // Other names: same CA, a new server certificate.
        cfg.names.push("shop.example".into());
        let renamed = load(&cfg, dir.path()).unwrap();
        assert_eq!(renamed.ca_pem.as_deref(), Some(ca.as_str()));
        assert_ne!(renamed.fingerprint, first.fingerprint);
        // The CA's fingerprint is the SHA-256 of ca.pem's certificate, and stays.
        let ca_der = CertificateDer::from_pem_slice(ca.as_bytes()).unwrap();
        let ca_fp = hex(&Sha256::digest(ca_der.as_ref()));
        assert_eq!(first.ca_fingerprint.as_deref(), Some(ca_fp.as_str()));
        assert_eq!(
            local_ca_fingerprint(dir.path()).unwrap(),
            first.ca_fingerprint
        );
        assert_eq!(renamed.ca_fingerprint, first.ca_fingerprint);
        assert_ne!(ca_fp, first.fingerprint);
    }

    #[test]
    fn processes_starting_together_share_one_ca_and_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let loads: Vec<_> = (0..4)
            .map(|_| {
                let d = dir.path().to_owned();
                std::thread::spawn(move || load(&TlsConfig::default(), &d).unwrap())
            })
            .collect();
        let got: Vec<ServerTls> = loads.into_iter().map(|t| t.join().unwrap()).collect();
        assert!(got.iter().all(|t| t.ca_pem == got[0].ca_pem));
        assert!(got.iter().all(|t| t.fingerprint == got[0].fingerprint));
    }

    #[test]
    fn a_configured_certificate_that_is_not_pem_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, "not a certificate").unwrap();
        std::fs::write(&key, "not a key").unwrap();
        let cfg = TlsConfig {
            cert: Some(cert.clone()),
            key: Some(key),
            ..TlsConfig::default()
        };
        let e = load(&cfg, dir.path()).err().unwrap().to_string();
        assert!(e.contains(&cert.display().to_string()), "{e}");
    }
}
