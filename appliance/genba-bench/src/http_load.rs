//! HTTP load: C clients, each with one keep-alive connection, sending `GET /notify` in a loop.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
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
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .context("connecting to /notify")?;
    stream.set_nodelay(true)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let (mut ok, mut n, mut latencies) = (0u64, 0u64, Vec::new());
    while started.elapsed() < duration {
        let req = hyper::Request::get(format!("/notify?topic=bench/http/{c}&message=load+{n}"))
            .header("host", addr.to_string())
            .body(Empty::<Bytes>::new())?;
        let t = Instant::now();
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        resp.into_body().collect().await?;
        latencies.push(t.elapsed().as_micros() as u64);
        n += 1;
        if status.is_success() {
            ok += 1;
        }
    }
    Ok((ok, n, latencies))
}
