//! Test harness: runs the real `genba` binary on free ports in a temp dir, and a fake Slack.
#![allow(dead_code)]

pub use genba_testkit::fake_http;
pub mod fake_slack;
pub mod http;
pub mod mqtt_raw;
pub mod openapi;
pub mod pki;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A `genba up` child process with its own data directory.
pub struct Appliance {
    pub dir: tempfile::TempDir,
    pub mqtt: SocketAddr,
    pub http: SocketAddr,
    config: PathBuf,
    child: Option<Child>,
}

impl Appliance {
    /// Starts `genba up` with `config` (TOML; may be empty) and `secrets` (TOML; mode 600).
    pub fn start(config: &str, secrets: &str) -> Appliance {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("genba.toml");
        std::fs::write(&config_path, config).unwrap();
        write_secrets(&dir.path().join("data").join("secrets.toml"), secrets);
        let mut a = Appliance {
            mqtt: free_port(),
            http: free_port(),
            dir,
            config: config_path,
            child: None,
        };
        a.spawn();
        a
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn db_path(&self) -> PathBuf {
        self.data_dir().join("genba.sqlite3")
    }

    /// An address the running process serves, by its key in `run/endpoints.json` (`mqtts`,
    /// `https`, `mqtt_ws`, ...: listeners configured on port 0).
    pub fn endpoint(&self, key: &str) -> SocketAddr {
        let text =
            std::fs::read_to_string(self.data_dir().join("run").join("endpoints.json")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v[key].as_str().expect(key).parse().unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    /// Starts the process (again) on the same ports and data directory; waits until it serves.
    pub fn spawn(&mut self) {
        let endpoints = self.data_dir().join("run").join("endpoints.json");
        let _ = std::fs::remove_file(&endpoints);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("genba.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_genba"))
            .arg("up")
            .arg("--config")
            .arg(&self.config)
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--mqtt")
            .arg(self.mqtt.to_string())
            .arg("--http")
            .arg(self.http.to_string())
            .env("GENBA_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn genba");
        let pid = child.id();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(text) = std::fs::read_to_string(&endpoints) {
                let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                if v["pid"].as_u64() == Some(pid as u64) {
                    return;
                }
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("genba exited early ({status}); log:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "genba did not start; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("genba.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "genba did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    /// A `genba` subcommand against this config and data dir, not started yet.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_genba"));
        c.args(args)
            .arg("--config")
            .arg(&self.config)
            .arg("--data-dir")
            .arg(self.data_dir());
        c
    }

    /// Runs a `genba` subcommand against this data dir; returns (status ok, stdout+stderr).
    /// A new API token with `scope` (`read`, `write`, `admin`), made by `genba tokens add`.
    pub fn api_token(&self, scope: &str) -> String {
        let (ok, out) = self.genba(&["tokens", "add", "--name", scope, "--scope", scope, "--json"]);
        assert!(ok, "{out}");
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        v["token"].as_str().unwrap().to_owned()
    }

    pub fn genba(&self, args: &[&str]) -> (bool, String) {
        let out = self.command(args).output().unwrap();
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    /// Journal rows as (topic, payload as text).
    pub fn journal(&self) -> Vec<(String, String)> {
        let conn = rusqlite::Connection::open(self.db_path()).unwrap();
        let mut stmt = conn
            .prepare("SELECT topic, payload FROM journal ORDER BY id")
            .unwrap();
        stmt.query_map([], |r| {
            let p: Vec<u8> = r.get(1)?;
            Ok((
                r.get::<_, String>(0)?,
                String::from_utf8_lossy(&p).into_owned(),
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    }

    pub fn integrity_check(&self) -> String {
        let conn = rusqlite::Connection::open(self.db_path()).unwrap();
        conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap()
    }
}

impl Drop for Appliance {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn write_secrets(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Polls `f` until it returns true or `limit` passes.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// Path of a Debian mosquitto client tool; tests need the real thing.
pub fn mosquitto_tool(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} not found: install Debian's mosquitto-clients (scripts/install-deps does)");
}

/// Path of Debian's Mosquitto broker, the peer and stand-in cluster of several tests.
pub fn mosquitto_broker() -> &'static str {
    ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("Debian's mosquitto (the broker) is needed: apt-get install mosquitto")
}

/// A child process killed and reaped when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `genba up` on free ports (port 0: `run/endpoints.json` says which) with `data_dir`; the
/// caller adds what it needs (a config, an environment, where output goes) and spawns it.
pub fn genba_up(data_dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_genba"));
    c.args([
        "up",
        "--mqtt",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
        "--data-dir",
    ])
    .arg(data_dir);
    c
}

/// An argon2 hash from `genba passwd`, the way an operator makes one.
pub fn hash_password(password: &str) -> String {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_genba"))
        .args(["passwd", "--json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(password.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["password_hash"].as_str().unwrap().to_owned()
}

/// `mosquitto_pub -h 127.0.0.1 -p PORT ARGS...`, waited for.
pub fn mosquitto_pub(port: u16, args: &[&str]) -> std::process::Output {
    Command::new(mosquitto_tool("mosquitto_pub"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("mosquitto_pub")
}

/// `mosquitto_sub -h 127.0.0.1 -p PORT ARGS...` running, stdout piped; give it time to subscribe.
pub fn mosquitto_sub(port: u16, args: &[&str]) -> Child {
    let child = Command::new(mosquitto_tool("mosquitto_sub"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub");
    std::thread::sleep(Duration::from_millis(700));
    child
}

/// `genba devices provision ID` with a Wi-Fi network and pass phrase, the appliance address and
/// transport given, then `extra`: (status ok, stdout+stderr).
pub fn provision(
    a: &Appliance,
    id: &str,
    appliance: &str,
    transport: &str,
    extra: &[&str],
) -> (bool, String) {
    let mut args = vec![
        "devices",
        "provision",
        id,
        "--wifi-ssid",
        "shop-floor",
        "--wifi-pass",
        "wifi-pass-1234",
        "--appliance",
        appliance,
        "--transport",
        transport,
    ];
    args.extend_from_slice(extra);
    a.genba(&args)
}
