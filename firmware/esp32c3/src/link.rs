//! A connection to the appliance: plain TCP, or TLS 1.3 on TCP when the device config pins a
//! certificate (`genba_firmware_core::tls`: the pin, the chain and the handshake signature
//! are checked there, the same code the host tests run against the appliance).

use embassy_net::Stack;
use embassy_net::tcp::TcpSocket;
use embassy_time::{Duration, with_timeout};
use embedded_io_async::{ErrorKind, ErrorType, Read, Write};
use embedded_tls::{Aes128GcmSha256, TlsConnection, TlsError};
use esp_hal::rng::Trng;
use genba_firmware_core::tls::{self, Fingerprint, READ_BUFFER_LEN, WRITE_BUFFER_LEN};
use log::error;

use crate::net::{self, NetError};
use crate::state::{self, TLS_REFUSED};

/// Record buffers of one TLS session (about 20 KiB).
pub struct TlsBuffers {
    read: [u8; READ_BUFFER_LEN],
    write: [u8; WRITE_BUFFER_LEN],
}

impl TlsBuffers {
    pub const fn new() -> Self {
        TlsBuffers {
            read: [0; READ_BUFFER_LEN],
            write: [0; WRITE_BUFFER_LEN],
        }
    }
}

/// An open connection.
// A link lives in its task's future, one at a time, never in a collection: the TLS variant's
// size is the session's state, not waste.
#[allow(clippy::large_enum_variant)]
pub enum Link<'a> {
    Plain(TcpSocket<'a>),
    Tls(TlsConnection<'a, TcpSocket<'a>, Aes128GcmSha256>),
}

/// An I/O error on either kind of connection.
#[derive(Debug)]
pub enum LinkError {
    Tcp(embassy_net::tcp::Error),
    Tls(TlsError),
}

impl embedded_io_async::Error for LinkError {
    fn kind(&self) -> ErrorKind {
        match self {
            LinkError::Tcp(e) => e.kind(),
            LinkError::Tls(e) => e.kind(),
        }
    }
}

impl core::fmt::Display for LinkError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            LinkError::Tcp(e) => write!(f, "TCP error: {e:?}"),
            LinkError::Tls(e) => write!(f, "TLS error: {e:?}"),
        }
    }
}

impl core::error::Error for LinkError {}

impl ErrorType for Link<'_> {
    type Error = LinkError;
}

impl Read for Link<'_> {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, LinkError> {
        match self {
            Link::Plain(s) => s.read(buf).await.map_err(LinkError::Tcp),
            Link::Tls(s) => s.read(buf).await.map_err(LinkError::Tls),
        }
    }
}

impl Write for Link<'_> {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, LinkError> {
        match self {
            Link::Plain(s) => s.write(buf).await.map_err(LinkError::Tcp),
            Link::Tls(s) => s.write(buf).await.map_err(LinkError::Tls),
        }
    }

    async fn flush(&mut self) -> Result<(), LinkError> {
        match self {
            Link::Plain(s) => s.flush().await.map_err(LinkError::Tcp),
            Link::Tls(s) => s.flush().await.map_err(LinkError::Tls),
        }
    }
}

impl Link<'_> {
    /// Ends the connection politely (TLS close_notify, TCP FIN), waiting at most 2 s.
    pub async fn close(self) {
        let mut socket = match self {
            Link::Plain(s) => s,
            Link::Tls(s) => match s.close().await {
                Ok(s) | Err((s, _)) => s,
            },
        };
        socket.close();
        let _ = with_timeout(Duration::from_secs(2), socket.flush()).await;
    }
}

/// Connects to `host:port`; with a `pin`, opens a TLS session on `tls` that trusts only a
/// server whose chain holds the pinned certificate. A refused certificate is logged as an
/// error (it means another appliance, or someone in between) and counted for the next batch.
pub async fn open<'a>(
    stack: Stack<'static>,
    server: (&str, u16),
    pin: Option<&Fingerprint>,
    (rx, tx): (&'a mut [u8], &'a mut [u8]),
    tls: &'a mut TlsBuffers,
    timeout: Duration,
) -> Result<Link<'a>, NetError> {
    let socket = net::connect(stack, server, rx, tx, timeout).await?;
    let Some(pin) = pin else {
        return Ok(Link::Plain(socket));
    };
    // the radio is on, so the TRNG has its entropy source
    let rng = Trng::try_new().map_err(|_| NetError::NoEntropy)?;
    let handshake = tls::open(socket, pin, rng, &mut tls.read, &mut tls.write);
    match with_timeout(net::CONNECT_TIMEOUT, handshake).await {
        Err(_) => Err(NetError::Timeout),
        Ok(Ok(session)) => Ok(Link::Tls(session)),
        Ok(Err(e)) => {
            if matches!(e, tls::Error::Refused(_)) {
                error!("appliance at {}:{} refused: {e}", server.0, server.1);
                state::with(&TLS_REFUSED, |n| *n = n.saturating_add(1));
            }
            Err(NetError::Tls(e))
        }
    }
}
