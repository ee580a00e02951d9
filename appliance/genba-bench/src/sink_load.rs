//! (s) Delivery throughput per sink kind (docs/sinks.md): a backlog of messages journaled at
//! once, delivered by `genba up` to a receiver that enforces its own rate limit as its service
//! documents it (shared/refs: Slack about 1 post/s with short bursts, LINE 2,000 requests/s,
//! both answering 429 with `Retry-After` over it) or, for e-mail, a real SMTP server (Debian's
//! aiosmtpd). The figure is how long the backlog takes to be accepted by the receiver, as
//! genba's own sink cursor says, and how many requests and 429s that took.

use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use genba_testkit::fake_http::{FakeHttp, Reply};

use crate::peers::{self, Genba};

/// What a fake receiver answers inside and over its limit.
struct Service {
    kind: &'static str,
    /// Requests per second and burst the receiver takes; over it: 429 with `Retry-After: 1`.
    rate: f64,
    burst: f64,
    ok: &'static str,
    limited: &'static str,
    limit_text: &'static str,
}

const SERVICES: [Service; 3] = [
    Service {
        kind: "slack",
        rate: 1.0,
        burst: 3.0,
        ok: "ok",
        limited: "rate_limited",
        limit_text: "1/s, burst 3 (Slack's webhook limit)",
    },
    Service {
        kind: "webhook",
        rate: 20.0,
        burst: 20.0,
        ok: "{}",
        limited: "{\"error\":\"slow down\"}",
        limit_text: "20/s (a modest receiver)",
    },
    Service {
        kind: "line",
        rate: 2000.0,
        burst: 2000.0,
        ok: "{}",
        limited: "{\"message\":\"The API rate limit has been exceeded. Try again later.\"}",
        limit_text: "2,000/s (LINE's push limit)",
    },
];

/// A receiver on a real socket that takes `service.rate` requests per second (burst
/// `service.burst`) and answers 429 with `Retry-After: 1` over it.
fn fake(service: &'static Service) -> Result<FakeHttp> {
    let bucket = Mutex::new((service.burst, Instant::now()));
    let content_type = if service.ok == "ok" {
        "text/html"
    } else {
        "application/json"
    };
    let fake = FakeHttp::try_start(move |_req| {
        let allowed = bucket.lock().is_ok_and(|mut b| {
            let now = Instant::now();
            b.0 = (b.0 + now.duration_since(b.1).as_secs_f64() * service.rate).min(service.burst);
            b.1 = now;
            if b.0 >= 1.0 {
                b.0 -= 1.0;
                true
            } else {
                false
            }
        });
        if allowed {
            Reply::new(200, service.ok, content_type)
        } else {
            Reply::new(429, service.limited, content_type).header("retry-after", 1)
        }
    })?;
    Ok(fake)
}

/// Debian's aiosmtpd, as the e-mail sink's tests run it (no TLS, no AUTH here).
struct Smtp {
    port: u16,
    child: Child,
    maildir: tempfile::TempDir,
}

impl Smtp {
    fn start() -> Result<Smtp> {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../genba/tests/support/smtp_server.py"
        );
        let port = peers::free_port()?.port();
        let maildir = tempfile::tempdir()?;
        let mut child = Command::new("/usr/bin/python3")
            .arg(script)
            .arg(port.to_string())
            .arg(maildir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting aiosmtpd (Debian's python3-aiosmtpd)")?;
        let mut line = String::new();
        let stdout = child.stdout.take().context("aiosmtpd stdout")?;
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)?;
        if line.trim() != "READY" {
            let _ = child.kill();
            bail!("aiosmtpd did not start (is python3-aiosmtpd installed?)");
        }
        Ok(Smtp {
            port,
            child,
            maildir,
        })
    }

    fn mails(&self) -> usize {
        std::fs::read_dir(self.maildir.path())
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
                    .count()
            })
            .unwrap_or(0)
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the sink's cursor says: messages delivered.
fn delivered(data_dir: &std::path::Path) -> i64 {
    genba_store::Reader::open(&genba_store::db_path(data_dir))
        .and_then(|r| r.status(false))
        .map(|s| s.sinks.iter().map(|k| k.delivered).sum())
        .unwrap_or(0)
}

/// Starts `genba up` with one sink `bench` of `kind`, journals `n` alarms and waits until the
/// sink delivered all of them. Returns the seconds it took.
async fn deliver(genba_bin: &str, sink: &str, secrets: &str, n: usize) -> Result<f64> {
    let dir = tempfile::tempdir()?;
    let secrets_path = dir.path().join("secrets.toml");
    std::fs::write(&secrets_path, secrets)?;
    std::fs::set_permissions(
        &secrets_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )?;
    let genba = Genba::start_with(genba_bin, sink, dir).await?;
    let t = Instant::now();
    crate::fleet::publish_acknowledged(genba.mqtt, "alarms/bench", n).await?;
    let mut last = (0, Instant::now());
    loop {
        let d = delivered(genba.dir());
        if d >= n as i64 {
            return Ok(t.elapsed().as_secs_f64());
        }
        if d != last.0 {
            last = (d, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(60) {
            bail!("the {sink:?} sink delivered {d} of {n} and then nothing for 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const LINE_USER: &str = "U0123456789abcdef0123456789abcdef";

pub async fn run(genba_bin: &str, n: usize) -> Result<()> {
    println!("## (s) delivery throughput per sink kind: a backlog of {n} alarms, each sink at rate_per_sec = 10 and burst = 10 (the highest allowed) with its default max_batch");
    println!();
    println!("| sink | receiver's limit | seconds | messages/s | requests (mails) | 429 answers |");
    println!("|---|---|---:|---:|---:|---:|");
    let pace = "filters = [\"alarms/#\"]\nrate_per_sec = 10.0\nburst = 10\nmax_backoff_secs = 5\n";
    for service in &SERVICES {
        let fake = fake(service)?;
        let url = format!("http://{}/bench", fake.addr);
        let (config, secrets) = match service.kind {
            "line" => (
                format!("url = \"{url}\"\nto = [\"{LINE_USER}\"]\n"),
                "[sinks.bench]\nchannel_access_token = \"bench-token\"\n".to_owned(),
            ),
            _ => (String::new(), format!("[sinks.bench]\nurl = \"{url}\"\n")),
        };
        let sink = format!(
            "[[sinks]]\nname = \"bench\"\nkind = \"{}\"\n{pace}{config}",
            service.kind
        );
        let secs = deliver(genba_bin, &sink, &secrets, n).await?;
        println!(
            "| {} | {} | {secs:.1} | {:.0} | {} | {} |",
            service.kind,
            service.limit_text,
            n as f64 / secs,
            fake.received().len(),
            fake.received().iter().filter(|r| r.status == 429).count()
        );
    }
    match Smtp::start() {
        Ok(smtp) => {
            let sink = format!(
                "[[sinks]]\nname = \"bench\"\nkind = \"email\"\n{pace}to = [\"ops@example.com\"]\n\
                 [sinks.smtp]\nhost = \"127.0.0.1\"\nport = {}\nsecurity = \"none\"\nfrom = \"genba@example.com\"\n",
                smtp.port
            );
            let secs = deliver(genba_bin, &sink, "", n).await?;
            println!(
                "| email | aiosmtpd (real SMTP server), no limit | {secs:.1} | {:.0} | {} | - |",
                n as f64 / secs,
                smtp.mails()
            );
        }
        Err(e) => println!("| email | not run: {e} | | | | |"),
    }
    println!();
    Ok(())
}
