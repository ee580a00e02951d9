//! TLS to the appliance: a TLS 1.3 client session ([`embedded_tls`]) that trusts exactly the
//! certificate the device config pins ([`crate::config::DeviceConfig::ca_sha256`]).
//!
//! A pinned device has no list of public CAs and no names to check: the appliance is whoever
//! holds a certificate chain that contains the pinned certificate (the appliance's local CA, or
//! its server certificate itself). [`PinnedVerifier`] accepts a handshake when
//!
//! 1. one certificate the server sent has the pinned SHA-256 (of its DER);
//! 2. every certificate below it in the chain, down to the server's own, is signed by the one
//!    after it (ECDSA P-256 with SHA-256, what Genba's local CA issues);
//! 3. the server's `CertificateVerify` signature over the handshake verifies with the key of its
//!    own certificate.
//!
//! Anything else ends the handshake with a [`Refusal`] that says which step failed, so the
//! firmware can log it. Names and validity dates are not checked: the pin is the identity, and
//! a device may not know the time yet when it first connects. The session offers
//! `TLS_AES_128_GCM_SHA256` with a P-256 key share, which rustls (the appliance's TLS) serves.

use core::fmt;

use der::asn1::BitStringRef;
use der::{Decode, Reader, SliceReader, Tag, TagNumber};
use embedded_io_async::{Read, Write};
use embedded_tls::{
    Aes128GcmSha256, CertificateEntryRef, CertificateRef, CertificateVerifyRef, CryptoProvider,
    CryptoRngCore, SignatureScheme, TlsConfig, TlsConnection, TlsContext, TlsError, TlsVerifier,
};
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey;
use sha2::{Digest, Sha256};

use crate::config::FINGERPRINT_LEN;

/// The SHA-256 of a certificate's DER.
pub type Fingerprint = [u8; FINGERPRINT_LEN];

/// Size of the buffer a session decrypts records into: the largest TLS 1.3 record, a 5-byte
/// header and at most 2^14 + 256 bytes of ciphertext (RFC 8446 §5.2). A server may send records
/// that large (rustls does for bulk data, such as a firmware download).
pub const READ_BUFFER_LEN: usize = 5 + 16384 + 256;
/// Size of the buffer a session encrypts records from; longer writes become several records.
pub const WRITE_BUFFER_LEN: usize = 4096;

/// The only signature algorithm accepted on certificates: the DER of the AlgorithmIdentifier
/// `ecdsa-with-SHA256` (OID 1.2.840.10045.4.3.2, no parameters; RFC 5758 §3.2).
const ECDSA_WITH_SHA256: &[u8] = &[
    0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02,
];

/// Why a server was not trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No certificate the server sent has the pinned SHA-256: another appliance, or someone
    /// in between.
    PinNotInChain,
    /// A certificate between the server's own and the pinned one is not signed by the
    /// certificate after it.
    ChainBroken,
    /// A certificate is not readable as X.509 DER with an ECDSA P-256 key and an
    /// ecdsa-with-SHA256 signature.
    Unreadable,
    /// The server's handshake signature uses another scheme than ECDSA P-256/SHA-256, or does
    /// not verify with its certificate's key.
    BadHandshakeSignature,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::PinNotInChain => "no certificate of the server has the pinned SHA-256",
            Refusal::ChainBroken => {
                "the server's certificate chain is not signed up to the pinned certificate"
            }
            Refusal::Unreadable => {
                "a server certificate is not X.509 with an ECDSA P-256 key and SHA-256 signature"
            }
            Refusal::BadHandshakeSignature => {
                "the server's handshake signature does not verify with its certificate"
            }
        })
    }
}

/// Why a TLS session did not open.
#[derive(Debug, Clone, Copy)]
pub enum Error {
    /// The server's certificate was refused.
    Refused(Refusal),
    /// The handshake failed otherwise (I/O, an alert from the server, a malformed message).
    Tls(TlsError),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Refused(r) => write!(f, "server certificate refused: {r}"),
            Error::Tls(e) => write!(f, "TLS handshake failed: {e:?}"),
        }
    }
}

crate::impl_error!(Refusal, Error);

/// The parts of an X.509 certificate the checks read, borrowed from its DER.
struct Certificate<'a> {
    /// The `tbsCertificate` element, tag and length included: what the issuer signed.
    tbs: &'a [u8],
    /// The issuer's signature (DER-encoded ECDSA).
    signature: Signature,
    /// The certificate's own public key.
    key: VerifyingKey,
}

impl<'a> Certificate<'a> {
    fn parse(der: &'a [u8]) -> Result<Self, Refusal> {
        Self::read(der).map_err(|_: der::Error| Refusal::Unreadable)?
    }

    /// The DER reading; the outer `Result` is the DER's, the inner one the content's.
    fn read(der: &'a [u8]) -> der::Result<Result<Self, Refusal>> {
        let mut outer = SliceReader::new(der)?;
        let (tbs, algorithm, signature) = outer.sequence(|r| {
            let tbs = r.tlv_bytes()?;
            let algorithm = r.tlv_bytes()?;
            let signature = BitStringRef::decode(r)?;
            Ok((tbs, algorithm, signature))
        })?;
        outer.finish(())?;
        let spki = SliceReader::new(tbs)?.sequence(|r| {
            // [0] version (optional), serial, signature algorithm, issuer, validity, subject
            if r.peek_tag()?
                == (Tag::ContextSpecific {
                    constructed: true,
                    number: TagNumber::N0,
                })
            {
                r.tlv_bytes()?;
            }
            for _ in 0..5 {
                r.tlv_bytes()?;
            }
            let spki = r.tlv_bytes()?;
            // issuer/subject unique ids and extensions: not needed
            while !r.is_finished() {
                r.tlv_bytes()?;
            }
            Ok(spki)
        })?;
        if algorithm != ECDSA_WITH_SHA256 {
            return Ok(Err(Refusal::Unreadable));
        }
        let signature = signature
            .as_bytes()
            .and_then(|b| Signature::from_der(b).ok());
        let key = VerifyingKey::from_public_key_der(spki).ok();
        Ok(match (signature, key) {
            (Some(signature), Some(key)) => Ok(Certificate {
                tbs,
                signature,
                key,
            }),
            _ => Err(Refusal::Unreadable),
        })
    }
}

/// The server's key, when its chain reaches a certificate whose SHA-256 is `pin`. `chain` is in
/// TLS order: the server's own certificate first, each one followed by its issuer.
pub fn check_chain<'a>(
    chain: impl IntoIterator<Item = &'a [u8]> + Clone,
    pin: &Fingerprint,
) -> Result<VerifyingKey, Refusal> {
    let pinned_at = chain
        .clone()
        .into_iter()
        .position(|der| Sha256::digest(der).as_slice() == pin.as_slice())
        .ok_or(Refusal::PinNotInChain)?;
    let mut certs = chain.into_iter().take(pinned_at + 1);
    let server = Certificate::parse(certs.next().ok_or(Refusal::PinNotInChain)?)?;
    let mut subject = server.tbs;
    let mut signature = server.signature;
    for issuer in certs {
        let issuer = Certificate::parse(issuer)?;
        issuer
            .key
            .verify(subject, &signature)
            .map_err(|_| Refusal::ChainBroken)?;
        subject = issuer.tbs;
        signature = issuer.signature;
    }
    Ok(server.key)
}

/// The TLS 1.3 `CertificateVerify` check (RFC 8446 §4.4.3): `signature` by the server's `key`
/// over 64 spaces, the server context string, a zero byte and the handshake hash.
fn check_handshake_signature(
    key: &VerifyingKey,
    transcript_hash: &[u8],
    scheme: SignatureScheme,
    signature: &[u8],
) -> Result<(), Refusal> {
    const CONTEXT: &[u8] = b"TLS 1.3, server CertificateVerify\x00";
    let mut message = [0x20u8; 64 + CONTEXT.len() + 32];
    message[64..64 + CONTEXT.len()].copy_from_slice(CONTEXT);
    let hash = message
        .get_mut(64 + CONTEXT.len()..)
        .filter(|h| h.len() == transcript_hash.len())
        .ok_or(Refusal::BadHandshakeSignature)?;
    hash.copy_from_slice(transcript_hash);
    if scheme != SignatureScheme::EcdsaSecp256r1Sha256 {
        return Err(Refusal::BadHandshakeSignature);
    }
    let signature = Signature::from_der(signature).map_err(|_| Refusal::BadHandshakeSignature)?;
    key.verify(&message, &signature)
        .map_err(|_| Refusal::BadHandshakeSignature)
}

/// Trusts a server whose chain holds the pinned certificate; see the module documentation.
pub struct PinnedVerifier {
    pin: Fingerprint,
    /// The server's key and the handshake hash after its certificate, between the two checks.
    server: Option<(VerifyingKey, Sha256)>,
    /// Why the server was refused, when it was.
    refusal: Option<Refusal>,
}

impl PinnedVerifier {
    /// A verifier for one handshake.
    pub fn new(pin: Fingerprint) -> Self {
        PinnedVerifier {
            pin,
            server: None,
            refusal: None,
        }
    }

    fn refuse(&mut self, why: Refusal) -> TlsError {
        self.refusal = Some(why);
        TlsError::InvalidCertificate
    }
}

impl TlsVerifier<Aes128GcmSha256> for PinnedVerifier {
    fn set_hostname_verification(&mut self, _hostname: &str) -> Result<(), TlsError> {
        // the pin is the identity; names are not checked
        Ok(())
    }

    fn verify_certificate(
        &mut self,
        transcript: &Sha256,
        cert: CertificateRef,
    ) -> Result<(), TlsError> {
        let mut chain: heapless::Vec<&[u8], 16> = heapless::Vec::new();
        for entry in &cert.entries {
            match entry {
                CertificateEntryRef::X509(der) => {
                    let _ = chain.push(der); // both hold at most 16
                }
                CertificateEntryRef::RawPublicKey(_) => {
                    return Err(self.refuse(Refusal::Unreadable));
                }
            }
        }
        match check_chain(chain.iter().copied(), &self.pin) {
            Ok(key) => {
                self.server = Some((key, transcript.clone()));
                Ok(())
            }
            Err(why) => Err(self.refuse(why)),
        }
    }

    fn verify_signature(&mut self, verify: CertificateVerifyRef) -> Result<(), TlsError> {
        let Some((key, transcript)) = self.server.take() else {
            return Err(self.refuse(Refusal::BadHandshakeSignature));
        };
        check_handshake_signature(
            &key,
            &transcript.finalize(),
            verify.signature_scheme,
            verify.signature,
        )
        .map_err(|why| self.refuse(why))
    }
}

/// Randomness and the pinned verifier, for one handshake.
struct Provider<R> {
    rng: R,
    verifier: PinnedVerifier,
}

impl<R: CryptoRngCore> CryptoProvider for Provider<R> {
    type CipherSuite = Aes128GcmSha256;
    // no client certificate, so nothing is signed
    type Signature = &'static [u8];

    fn rng(&mut self) -> impl CryptoRngCore {
        &mut self.rng
    }

    fn verifier(&mut self) -> Result<&mut impl TlsVerifier<Aes128GcmSha256>, TlsError> {
        Ok(&mut self.verifier)
    }
}

/// A TLS session on `socket`, opened with a server that passes [`PinnedVerifier`] for `pin`.
/// `read` should hold [`READ_BUFFER_LEN`] bytes and `write` [`WRITE_BUFFER_LEN`]; `rng` must be
/// a cryptographic random source (the key share and the client random come from it).
pub async fn open<'b, S: Read + Write + 'b, R: CryptoRngCore>(
    socket: S,
    pin: &Fingerprint,
    rng: R,
    read: &'b mut [u8],
    write: &'b mut [u8],
) -> Result<TlsConnection<'b, S, Aes128GcmSha256>, Error> {
    let config = TlsConfig::new();
    let mut provider = Provider {
        rng,
        verifier: PinnedVerifier::new(*pin),
    };
    let mut session = TlsConnection::new(socket, read, write);
    match session.open(TlsContext::new(&config, &mut provider)).await {
        Ok(()) => Ok(session),
        Err(e) => Err(match provider.verifier.refusal {
            Some(why) => Error::Refused(why),
            None => Error::Tls(e),
        }),
    }
}
