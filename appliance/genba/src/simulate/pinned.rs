//! TLS for simulated devices that pin a certificate, spoken as the firmware speaks it: HTTPS
//! with the firmware core's own session (`genba_firmware_core::tls`) and request writer, and
//! MQTT over TLS (and firmware downloads) with rustls under the core's pin and chain rule.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use embedded_io_adapters::tokio_1::FromTokio;
use embedded_io_async::Write as _;
use genba_firmware_core::http;
use genba_firmware_core::telemetry::JSON_MAX_LEN;
use genba_firmware_core::tls::{self, Fingerprint};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// Servers a device refused since its last batch was made, as the firmware counts them: one per
/// handshake whose chain did not hold the pin. The next batch carries the count
/// (`tls_refused`).
#[derive(Clone, Debug, Default)]
pub struct Refusals(Arc<AtomicU16>);

impl Refusals {
    fn count(&self) {
        // saturating, as the firmware's counter
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_add(1));
    }

    /// The count since the last take, reset to 0.
    pub fn take(&self) -> u16 {
        self.0.swap(0, Ordering::Relaxed)
    }
}

/// What a device that pins a certificate holds: the pin, and where it counts the servers it
/// refused.
#[derive(Clone, Debug)]
pub struct Pinned {
    pub pin: Fingerprint,
    pub refused: Refusals,
}

/// The core's rule in rustls: the chain must hold the pinned certificate and be signed down
/// to the server's own; the handshake signature is rustls's TLS 1.3 check. Names and dates are
/// not checked, as in the firmware.
#[derive(Debug)]
struct PinnedServer {
    pinned: Pinned,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let chain: Vec<&[u8]> = std::iter::once(end_entity.as_ref())
            .chain(intermediates.iter().map(|c| c.as_ref()))
            .collect();
        tls::check_chain(chain.iter().copied(), &self.pinned.pin).map_err(|why| {
            self.pinned.refused.count();
            rustls::Error::General(why.to_string())
        })?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        // what the firmware accepts
        vec![SignatureScheme::ECDSA_NISTP256_SHA256]
    }
}

/// A TLS 1.3 client configuration that trusts what a device pinning `pinned.pin` trusts, and
/// counts the servers it refuses.
pub fn client_config(pinned: &Pinned) -> anyhow::Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let algorithms = provider.signature_verification_algorithms;
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedServer {
            pinned: pinned.clone(),
            algorithms,
        }))
        .with_no_client_auth())
}

/// rumqttc's transport for a device that pins a certificate.
pub fn mqtt_transport(pinned: &Pinned) -> anyhow::Result<rumqttc::Transport> {
    Ok(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(Arc::new(client_config(pinned)?)),
    ))
}

/// One `POST` of `body` to `host:port` over HTTPS as the firmware sends it: the core's TLS
/// session pinned to `pinned.pin` (a refused server counted), the core's request, the status
/// line read back. Errors are
/// sentences. The session's future is not `Send` (the firmware runs it on one core), so it runs
/// on a thread of its own.
pub async fn post(
    host: String,
    port: u16,
    pinned: Pinned,
    api_key: String,
    body: Vec<u8>,
) -> Result<u16, String> {
    tokio::task::spawn_blocking(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let url = http::Url {
            tls: true,
            host: &host,
            port,
            path: genba_firmware_core::config::TELEMETRY_PATH,
        };
        rt.block_on(post_here(&url, &pinned, &api_key, &body))
    })
    .await
    .map_err(|e| e.to_string())?
}

async fn post_here(
    url: &http::Url<'_>,
    pinned: &Pinned,
    api_key: &str,
    body: &[u8],
) -> Result<u16, String> {
    let tcp = tokio::net::TcpStream::connect((url.host, url.port))
        .await
        .map_err(|e| format!("connect {}:{}: {e}", url.host, url.port))?;
    let (mut read, mut write) = (
        vec![0u8; tls::READ_BUFFER_LEN],
        vec![0u8; tls::WRITE_BUFFER_LEN],
    );
    let mut session = tls::open(
        FromTokio::new(tcp),
        &pinned.pin,
        rand_core::OsRng,
        &mut read,
        &mut write,
    )
    .await
    .map_err(|e| {
        if matches!(e, tls::Error::Refused(_)) {
            pinned.refused.count();
        }
        e.to_string()
    })?;
    let mut request = vec![0u8; JSON_MAX_LEN + 512];
    let n = http::write_post(&mut request, url, api_key, body).map_err(|e| e.to_string())?;
    session.write_all(&request[..n]).await.map_err(io)?;
    session.flush().await.map_err(io)?;
    // the status line is all a device reads
    let mut head = [0u8; 64];
    let mut got = 0;
    while got < head.len() && !head[..got].contains(&b'\n') {
        let n = session.read(&mut head[got..]).await.map_err(io)?;
        if n == 0 {
            break;
        }
        got += n;
    }
    http::parse_status(&head[..got]).map_err(|e| e.to_string())
}

fn io(e: impl std::fmt::Debug) -> String {
    format!("TLS: {e:?}")
}
