//! The processes under test: `genba up` and Mosquitto, each on free loopback ports with its own
//! temporary directory, stopped when dropped.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub fn free_port() -> Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

async fn wait_for_port(addr: SocketAddr, child: &mut Child) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("process exited early: {status}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("nothing listens on {addr} after 30 s")
}

pub struct Genba {
    pub mqtt: SocketAddr,
    pub http: SocketAddr,
    bin: String,
    child: Child,
    dir: tempfile::TempDir,
}

impl Genba {
    pub async fn start(bin: &str) -> Result<Genba> {
        Genba::start_with(bin, "", tempfile::tempdir()?).await
    }

    /// Starts `genba up` on `dir` (which may hold a database already) with `extra` config. It
    /// listens on ports it picks itself (port 0) and says which in `run/endpoints.json`, so no
    /// other process can take a port between our choice and its bind.
    pub async fn start_with(bin: &str, extra: &str, dir: tempfile::TempDir) -> Result<Genba> {
        // The per-key and per-address telemetry limits would throttle a load from one address.
        let config = dir.path().join("genba.toml");
        std::fs::write(
            &config,
            format!("[telemetry]\nrate_per_sec = 1000000.0\nburst = 1000000\n{extra}"),
        )?;
        let endpoints = dir.path().join("run").join("endpoints.json");
        let _ = std::fs::remove_file(&endpoints);
        let mut child = Command::new(bin)
            .arg("up")
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(dir.path())
            .args(["--mqtt", "127.0.0.1:0", "--http", "127.0.0.1:0"])
            .env("GENBA_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {bin}"))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let (mqtt, http) = loop {
            let read = std::fs::read_to_string(&endpoints)
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .filter(|v| v["pid"].as_u64() == Some(u64::from(child.id())));
            if let Some(v) = read {
                let addr = |k: &str| -> Result<SocketAddr> {
                    v[k].as_str()
                        .context("endpoints.json")?
                        .parse()
                        .context("endpoints.json address")
                };
                break (addr("mqtt")?, addr("http")?);
            }
            if let Some(status) = child.try_wait()? {
                bail!("genba up exited early: {status}");
            }
            if Instant::now() > deadline {
                bail!("genba up wrote no endpoints.json within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        wait_for_port(http, &mut child).await?;
        wait_for_port(mqtt, &mut child).await?;
        Ok(Genba {
            mqtt,
            http,
            bin: bin.to_owned(),
            child,
            dir,
        })
    }

    /// Makes `n` device keys with `genba keys add`; returns (device id, key).
    pub fn device_keys(&self, n: usize) -> Result<Vec<(String, String)>> {
        (0..n)
            .map(|i| {
                let device = format!("bench-dev-{i:02}");
                let out = Command::new(&self.bin)
                    .args(["keys", "add", "--device", &device, "--data-dir"])
                    .arg(self.dir.path())
                    .output()?;
                if !out.status.success() {
                    bail!("genba keys add: {}", String::from_utf8_lossy(&out.stderr));
                }
                let text = String::from_utf8_lossy(&out.stdout);
                let key = text.lines().last().unwrap_or_default().trim().to_owned();
                Ok((device, key))
            })
            .collect()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Makes `n` REST API tokens (read scope) with `genba tokens add`.
    pub fn api_tokens(&self, n: usize) -> Result<Vec<String>> {
        (0..n)
            .map(|i| {
                let out = Command::new(&self.bin)
                    .args([
                        "tokens",
                        "add",
                        "--name",
                        &format!("bench-{i}"),
                        "--json",
                        "--data-dir",
                    ])
                    .arg(self.dir.path())
                    .output()?;
                if !out.status.success() {
                    bail!("genba tokens add: {}", String::from_utf8_lossy(&out.stderr));
                }
                let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
                Ok(v["token"].as_str().unwrap_or_default().to_owned())
            })
            .collect()
    }
}

impl Drop for Genba {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Mosquitto {
    pub addr: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    /// Mosquitto with settings that do not throttle the load: anonymous on loopback, a deep
    /// queue and the same in-flight window the client uses.
    pub async fn start(bin: &str) -> Result<Mosquitto> {
        Mosquitto::start_on(bin, free_port()?, "").await
    }

    /// The same on a given address, with `extra` lines appended to its configuration (a
    /// bridge `connection`, for instance).
    pub async fn start_on(bin: &str, addr: SocketAddr, extra: &str) -> Result<Mosquitto> {
        let dir = tempfile::tempdir()?;
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {} 127.0.0.1\nallow_anonymous true\nmax_inflight_messages 100\nmax_queued_messages 1000000\npersistence false\n{extra}",
                addr.port()
            ),
        )?;
        let mut child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {bin} (install Debian's mosquitto)"))?;
        wait_for_port(addr, &mut child).await?;
        Ok(Mosquitto {
            addr,
            child,
            _dir: dir,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn mosquitto_version(bin: &str) -> String {
    let out = Command::new(bin).arg("-h").output();
    out.ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(|l| l.trim().to_owned())
        })
        .unwrap_or_else(|| "mosquitto".into())
}

fn status_field_kib(pid: u32, field: &str) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {field} for pid {pid}"))
}

pub fn rss_kib(pid: u32) -> Result<u64> {
    status_field_kib(pid, "VmRSS:")
}

/// The private part of the resident memory (heap, stacks, anonymous maps), without the
/// executable's and libraries' file pages.
pub fn rss_anon_kib(pid: u32) -> Result<u64> {
    status_field_kib(pid, "RssAnon:")
}

pub fn peak_rss_kib(pid: u32) -> Result<u64> {
    status_field_kib(pid, "VmHWM:")
}
