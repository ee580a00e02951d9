//! HTTP load: C clients, each with one keep-alive connection, sending `GET /notify` in a loop.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use crate::Figures;

pub async fn run(addr: SocketAddr, clients: usize, duration: Duration) -> Result<Figures> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        tasks.push(tokio::spawn(async move {
            client(addr, c, started, duration).await
        }));
    }
    let (mut ok, mut total, mut latencies) = (0u64, 0u64, Vec::new());
    for t in tasks {
        let (o, n, l) = t.await??;
        ok += o;
        total += n;
        latencies.extend(l);
    }
    Ok(Figures::from_samples(
        ok,
        total,
        started.elapsed(),
        latencies,
    ))
}

async fn client(
    addr: SocketAddr,
    c: usize,
    started: Instant,
    duration: Duration,
) -> Result<(u64, u64, Vec<u64>)> {
    closed_loop(addr, started, duration, |n| {
        Ok(
            hyper::Request::get(format!("/notify?topic=bench/http/{c}&message=load+{n}"))
                .header("host", addr.to_string())
                .body(Full::new(Bytes::new()))?,
        )
    })
    .await
}

/// One keep-alive connection sending requests back to back until `duration` has passed;
/// returns (2xx answers, requests, latencies in µs). The first request must succeed.
pub async fn closed_loop(
    addr: SocketAddr,
    started: Instant,
    duration: Duration,
    mut request: impl FnMut(u64) -> Result<hyper::Request<Full<Bytes>>>,
) -> Result<(u64, u64, Vec<u64>)> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let (mut ok, mut n, mut latencies) = (0u64, 0u64, Vec::new());
    while started.elapsed() < duration {
        let req = request(n)?;
        let path = req.uri().path().to_owned();
        let t = Instant::now();
        // The connection task may not have run yet (hyper refuses a send before it is ready).
        sender.ready().await?;
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        resp.into_body().collect().await?;
        latencies.push(t.elapsed().as_micros() as u64);
        n += 1;
        if status.is_success() {
            ok += 1;
        } else if n == 1 {
            bail!("{path} answered {status}");
        }
    }
    Ok((ok, n, latencies))
}
