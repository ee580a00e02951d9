//! The device's TLS session (`genba_firmware_core::tls`) against a real rustls server on
//! loopback, with certificates made the way Genba's local CA makes them (ECDSA P-256).

use std::sync::Arc;

use embedded_io_adapters::tokio_1::FromTokio;
use genba_firmware_core::tls::{self, Error, Fingerprint, Refusal};
use rand_core::OsRng;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Ca {
    der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

fn ca() -> Ca {
    let params = || {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p
    };
    let key = KeyPair::generate().unwrap();
    let der = params().self_signed(&key).unwrap().der().clone();
    Ca {
        der,
        issuer: Issuer::new(params(), key),
    }
}

/// A server certificate for `localhost` issued by `ca`, and its key.
fn server(ca: &Ca) -> (CertificateDer<'static>, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    (
        params.signed_by(&key, &ca.issuer).unwrap().der().clone(),
        key,
    )
}

fn sha256(der: &[u8]) -> Fingerprint {
    Sha256::digest(der).into()
}

/// Serves `chain` with `key` whether they match or not (as someone who copied a chain would).
#[derive(Debug)]
struct Serve(Arc<CertifiedKey>);

impl ResolvesServerCert for Serve {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// Starts a TLS echo server for one connection; its address.
async fn echo_server(chain: Vec<CertificateDer<'static>>, key: &KeyPair) -> std::net::SocketAddr {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing = provider.key_provider.load_private_key(key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Serve(Arc::new(CertifiedKey::new(chain, signing)))));
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let Ok(mut tls) = acceptor.accept(tcp).await else {
            return; // the client refused the handshake
        };
        let mut buf = [0u8; 64];
        if let Ok(n) = tls.read(&mut buf).await {
            let _ = tls.write_all(&buf[..n]).await;
            let _ = tls.flush().await;
        }
    });
    addr
}

/// Opens a session pinned to `pin` and echoes a message through it.
async fn talk(addr: std::net::SocketAddr, pin: &Fingerprint) -> Result<Vec<u8>, Error> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = (
        vec![0u8; tls::READ_BUFFER_LEN],
        vec![0u8; tls::WRITE_BUFFER_LEN],
    );
    let mut session = tls::open(FromTokio::new(tcp), pin, OsRng, &mut read, &mut write).await?;
    session.write(b"batch 1").await.map_err(Error::Tls)?;
    session.flush().await.map_err(Error::Tls)?;
    let mut got = [0u8; 64];
    let n = session.read(&mut got).await.map_err(Error::Tls)?;
    Ok(got[..n].to_vec())
}

#[tokio::test]
async fn a_server_whose_chain_holds_the_pinned_ca_is_trusted() {
    let ca = ca();
    let (cert, key) = server(&ca);
    let addr = echo_server(vec![cert, ca.der.clone()], &key).await;
    assert_eq!(talk(addr, &sha256(&ca.der)).await.unwrap(), b"batch 1");
}

#[tokio::test]
async fn a_pinned_server_certificate_is_trusted_without_its_ca() {
    let ca = ca();
    let (cert, key) = server(&ca);
    let pin = sha256(&cert);
    let addr = echo_server(vec![cert], &key).await;
    assert_eq!(talk(addr, &pin).await.unwrap(), b"batch 1");
}

#[tokio::test]
async fn a_server_of_another_ca_is_refused() {
    let (ours, theirs) = (ca(), ca());
    let (cert, key) = server(&theirs);
    let addr = echo_server(vec![cert, theirs.der.clone()], &key).await;
    match talk(addr, &sha256(&ours.der)).await {
        Err(Error::Refused(Refusal::PinNotInChain)) => {}
        other => panic!("expected PinNotInChain, got {other:?}"),
    }
}

#[tokio::test]
async fn a_chain_that_shows_the_pinned_ca_without_being_signed_by_it_is_refused() {
    let (ours, theirs) = (ca(), ca());
    let (cert, key) = server(&theirs);
    // the pinned CA's certificate is public: anyone can append it
    let addr = echo_server(vec![cert, ours.der.clone()], &key).await;
    match talk(addr, &sha256(&ours.der)).await {
        Err(Error::Refused(Refusal::ChainBroken)) => {}
        other => panic!("expected ChainBroken, got {other:?}"),
    }
}

#[tokio::test]
async fn a_server_that_copied_the_chain_but_lacks_its_key_is_refused() {
    let ca = ca();
    let (cert, _key) = server(&ca);
    let impostor = KeyPair::generate().unwrap();
    let addr = echo_server(vec![cert, ca.der.clone()], &impostor).await;
    match talk(addr, &sha256(&ca.der)).await {
        Err(Error::Refused(Refusal::BadHandshakeSignature)) => {}
        other => panic!("expected BadHandshakeSignature, got {other:?}"),
    }
}

#[test]
fn certificates_that_are_not_der_x509_are_unreadable() {
    let ca = ca();
    let pin = sha256(b"not a certificate");
    let chain: [&[u8]; 2] = [b"not a certificate", &ca.der];
    assert_eq!(
        tls::check_chain(chain.iter().copied(), &pin).unwrap_err(),
        Refusal::Unreadable
    );
    let truncated = &ca.der[..ca.der.len() - 1];
    let chain: [&[u8]; 1] = [truncated];
    assert_eq!(
        tls::check_chain(chain.iter().copied(), &sha256(truncated)).unwrap_err(),
        Refusal::Unreadable
    );
    let chain: [&[u8]; 0] = [];
    assert_eq!(
        tls::check_chain(chain.iter().copied(), &pin).unwrap_err(),
        Refusal::PinNotInChain
    );
}
