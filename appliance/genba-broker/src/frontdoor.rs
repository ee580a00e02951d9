//! The public MQTT port. Where an MQTT message enters Genba.
//!
//! Each connection's CONNECT is read here: MQTT 3.1.1 goes to rumqttd's v4 listener, MQTT 5
//! to its v5 listener (both on loopback), so one port serves both. Bad credentials get a
//! CONNACK with the reason code (rumqttd would just close), and keep-alive 0 is accepted.
//! Every PUBLISH from a client is appended to the journal; QoS 1/2 publishes are forwarded
//! to the broker only after the commit, so a PUBACK/PUBREC always means "durable".

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use genba_store::{Journal, NewMessage};
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::auth::{Access, Verifier};
use crate::packet::{self, connack_refusal, read_frame, Frame, PacketError, Refusal};

/// Keep-alive that replaces 0 (rumqttd refuses 0): the longest MQTT allows, about 18 hours.
const KEEP_ALIVE_FOR_ZERO: u16 = u16::MAX;
/// Packets in flight between a client's reader and its journal-ordered forwarder.
const FORWARD_QUEUE: usize = 256;

pub(crate) struct FrontDoor {
    pub v4: SocketAddr,
    pub v5: SocketAddr,
    pub verifier: Verifier,
    pub journal: Journal,
    pub max_packet: usize,
    pub connections: Arc<Semaphore>,
}

impl FrontDoor {
    pub(crate) async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "mqtt accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let door = self.clone();
            tokio::spawn(async move {
                if let Err(e) = door.handle(stream).await {
                    tracing::debug!(%peer, error = %e, "mqtt connection ended");
                }
            });
        }
    }

    async fn handle(&self, stream: TcpStream) -> Result<(), PacketError> {
        let (rd, mut wr) = stream.into_split();
        let mut rd = BufReader::with_capacity(16 * 1024, rd);
        let first = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            read_frame(&mut rd, 64 * 1024),
        )
        .await
        .map_err(|_| PacketError::Malformed("no CONNECT within 10 s"))??;
        if first.kind() != packet::CONNECT {
            return Err(PacketError::Malformed("first packet is not CONNECT"));
        }
        let mut connect_frame = first;
        let connect = packet::parse_connect(&connect_frame.body)?;
        let refuse = |why| connack_refusal(connect.level, why);
        let upstream_addr = match connect.level {
            4 => self.v4,
            5 => self.v5,
            _ => {
                wr.write_all(&refuse(Refusal::BadVersion)).await?;
                return Ok(());
            }
        };
        let Ok(_slot) = self.connections.clone().try_acquire_owned() else {
            wr.write_all(&refuse(Refusal::ServerBusy)).await?;
            return Ok(());
        };
        let access = self
            .verifier
            .check(connect.username.as_deref(), connect.password.as_deref())
            .await;
        if access == Access::Denied {
            let why = if connect.username.is_some() {
                Refusal::BadCredentials
            } else {
                Refusal::NotAuthorized
            };
            tracing::info!(client_id = %connect.client_id, user = ?connect.username, "mqtt connect refused");
            wr.write_all(&refuse(why)).await?;
            return Ok(());
        }
        if connect.keep_alive == 0 {
            let at = connect.keep_alive_at;
            connect_frame.body[at..at + 2].copy_from_slice(&KEEP_ALIVE_FOR_ZERO.to_be_bytes());
        }
        let upstream = TcpStream::connect(upstream_addr).await?;
        let _ = upstream.set_nodelay(true);
        let (mut up_rd, up_wr) = upstream.into_split();
        let mut up_wr = BufWriter::with_capacity(16 * 1024, up_wr);
        up_wr.write_all(&connect_frame.encode()).await?;
        up_wr.flush().await?;

        // Broker -> client: bytes as they come.
        let down = tokio::spawn(async move {
            let _ = tokio::io::copy(&mut up_rd, &mut wr).await;
            let _ = wr.shutdown().await;
        });
        // Client -> broker: packets, publishes held until their journal commit.
        let (fwd_tx, fwd_rx) = mpsc::channel(FORWARD_QUEUE);
        let forward = tokio::spawn(forward_in_order(fwd_rx, up_wr));
        let journal_it = access == Access::Client;
        let source = format!("mqtt:{}", connect.client_id);
        let result = self
            .read_client(&mut rd, connect.level == 5, journal_it, &source, fwd_tx)
            .await;
        let _ = forward.await;
        down.abort();
        result
    }

    async fn read_client(
        &self,
        rd: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
        v5: bool,
        journal_it: bool,
        source: &str,
        fwd: mpsc::Sender<(Frame, Option<Commit>)>,
    ) -> Result<(), PacketError> {
        let mut aliases = HashMap::new();
        loop {
            let frame = match read_frame(rd, self.max_packet).await {
                Ok(f) => f,
                Err(PacketError::Closed) => return Ok(()),
                Err(e) => return Err(e),
            };
            let mut commit = None;
            if journal_it && frame.kind() == packet::PUBLISH {
                let p = packet::parse_publish(&frame, v5, &mut aliases)?;
                if !p.topic.starts_with('$') {
                    let qos = p.qos;
                    let rx = self
                        .journal
                        .submit(NewMessage {
                            source: source.to_owned(),
                            topic: p.topic,
                            payload: p.payload,
                            qos,
                            retain: p.retain,
                            mqtt_pid: p.pid,
                            dup: p.dup,
                        })
                        .await
                        .map_err(|e| std::io::Error::other(e.to_string()))?;
                    // QoS 0 has no acknowledgement to hold back.
                    if qos > 0 {
                        commit = Some(rx);
                    }
                }
            }
            if fwd.send((frame, commit)).await.is_err() {
                return Ok(());
            }
        }
    }
}

type Commit = oneshot::Receiver<genba_store::Result<i64>>;

/// Writes packets to the broker in arrival order, each after its journal commit. A failed
/// commit ends the connection, so the client never gets an acknowledgement for it.
async fn forward_in_order(
    mut rx: mpsc::Receiver<(Frame, Option<Commit>)>,
    mut up: BufWriter<tokio::net::tcp::OwnedWriteHalf>,
) {
    while let Some((frame, commit)) = rx.recv().await {
        if let Some(commit) = commit {
            match commit.await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "journal commit failed; closing the client connection");
                    return;
                }
                Err(_) => return,
            }
        }
        if up.write_all(&frame.encode()).await.is_err() {
            return;
        }
        if rx.is_empty() && up.flush().await.is_err() {
            return;
        }
    }
    let _ = up.flush().await;
    let _ = up.shutdown().await;
}
