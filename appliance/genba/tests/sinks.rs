//! The delivery sinks beside Slack, each against a receiver that behaves as its service
//! documents (shared/refs/notify-channels-slack-line-smtp.md): a signed webhook, LINE
//! Messaging API push (a fake: LINE cannot run here), and e-mail through a real SMTP server
//! (aiosmtpd from Debian) with STARTTLS and AUTH. Outages end with every message delivered
//! once and in order; refusals park messages with the receiver's reason, and `genba sinks
//! retry` sends them again once the cause is fixed.

mod common;

use std::collections::{HashSet, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::fake_http::{FakeHttp, Reply, Req};
use common::http::Http;
use common::{wait_until, Appliance};

fn send(h: &Http, a: &Appliance, topic: &str, text: &str) {
    let r = h.post(
        &a.url("/notify"),
        "application/json",
        serde_json::json!({"topic": topic, "message": text}).to_string(),
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.json);
}

/// `m-NNN` numbers in `text`, in order.
fn numbers(text: &str) -> Vec<u32> {
    text.split(|c: char| !c.is_ascii_alphanumeric() && c != '-')
        .filter_map(|w| w.strip_prefix("m-").and_then(|n| n.parse().ok()))
        .collect()
}

/// The sink called `name` in `genba status --json`.
fn sink_state(a: &Appliance, name: &str) -> serde_json::Value {
    let (ok, text) = a.genba(&["status", "--json"]);
    assert!(ok, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["sinks"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == name).cloned())
        .unwrap_or_else(|| panic!("no sink {name} in {v}"))
}

const HOOK_SECRET: &str = "whsec-test-5f1c2a9e";

fn webhook_config(extra: &str) -> String {
    format!(
        "[[sinks]]\nname = \"hook\"\nkind = \"webhook\"\nfilters = [\"notify/#\"]\nrate_per_sec = 10.0\n\
         timeout_secs = 2\nmax_backoff_secs = 1\n{extra}"
    )
}

fn webhook_secrets(fake: &FakeHttp) -> String {
    format!(
        "[sinks.hook]\nurl = \"{}\"\nsigning_secret = \"{HOOK_SECRET}\"\n",
        fake.url("/hooks/genba?token=XXXXSECRETXXXX")
    )
}

/// Message numbers of the deliveries the receiver accepted (2xx), in order.
fn accepted_numbers(fake: &FakeHttp) -> Vec<u32> {
    fake.received()
        .iter()
        .filter(|r| (200..300).contains(&r.status))
        .flat_map(|r| {
            r.json()["messages"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|m| numbers(m["payload"].as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn a_signed_webhook_delivers_every_message_once_in_order_through_errors_and_retry_after() {
    let script = Arc::new(Mutex::new(VecDeque::from([
        Reply::json(503, serde_json::json!({"error": "maintenance"})),
        Reply::json(429, serde_json::json!({"error": "slow down"})).header("retry-after", 1),
        Reply::new(502, "<html>bad gateway</html>", "text/html"),
    ])));
    let s = script.clone();
    let fake = FakeHttp::start(move |_| {
        s.lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| Reply::json(200, serde_json::json!({"ok": true})))
    });
    let a = Appliance::start(&webhook_config(""), &webhook_secrets(&fake));
    let h = Http::new();
    for i in 0..20 {
        send(&h, &a, "notify/line1", &format!("m-{i:03}"));
    }
    send(&h, &a, "other/topic", "m-999 not for this sink");
    assert!(
        wait_until(Duration::from_secs(60), || accepted_numbers(&fake).len()
            >= 20),
        "accepted so far: {:?}\nlog:\n{}",
        accepted_numbers(&fake),
        a.log()
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        accepted_numbers(&fake),
        (0..20).collect::<Vec<_>>(),
        "each once, in order"
    );

    let received = fake.received();
    assert_eq!(
        received.iter().filter(|r| r.status >= 400).count(),
        3,
        "one attempt per scripted failure: {received:?}"
    );
    // The retried batch is the same delivery: receivers can drop repeats by this header.
    let deliveries: Vec<_> = received
        .iter()
        .map(|r| r.header("x-genba-delivery").unwrap_or_default().to_owned())
        .collect();
    assert_eq!(deliveries[0], deliveries[1], "{deliveries:?}");
    assert!(deliveries[0].starts_with("hook-"), "{deliveries:?}");
    // 429 with Retry-After: 1 is honoured before the next attempt.
    let gap = received[2].at.duration_since(received[1].at);
    assert!(
        gap >= Duration::from_millis(900),
        "retried {gap:?} after a 429"
    );

    // Every request is signed as devices sign theirs: HMAC-SHA256 of "{timestamp}.{body}".
    for r in &received {
        let ts = r.header("x-genba-timestamp").expect("timestamp header");
        let sig = r.header("x-genba-signature").expect("signature header");
        assert_eq!(
            sig,
            genba_telemetry::signing::sign(HOOK_SECRET, ts, &r.body)
        );
        assert_ne!(sig, genba_telemetry::signing::sign("other", ts, &r.body));
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
    let body = received.last().unwrap().json();
    assert_eq!(body["sink"], "hook");
    assert!(body["messages"][0]["received_at"].is_string(), "{body}");

    let state = sink_state(&a, "webhook:hook");
    assert_eq!(state["backlog"], 0, "{state}");
    assert_eq!(state["parked"], 0, "{state}");
    let (_, list) = a.genba(&["sinks", "list"]);
    assert!(list.contains("hook") && list.contains("webhook"), "{list}");
    assert!(
        !list.contains("XXXXSECRETXXXX") && !a.log().contains("XXXXSECRETXXXX"),
        "the webhook URL's token leaked"
    );
}

#[test]
fn a_refused_delivery_is_parked_with_the_reason_and_sent_again_after_sinks_retry() {
    let refuse = Arc::new(AtomicBool::new(true));
    let r = refuse.clone();
    let fake = FakeHttp::start(move |_| {
        if r.load(Ordering::SeqCst) {
            Reply::json(422, serde_json::json!({"error": "unknown field: qos"}))
        } else {
            Reply::json(202, serde_json::json!({}))
        }
    });
    let a = Appliance::start(&webhook_config(""), &webhook_secrets(&fake));
    let h = Http::new();
    send(&h, &a, "notify/a", "m-001 refused at first");
    assert!(
        wait_until(Duration::from_secs(20), || sink_state(&a, "webhook:hook")
            ["parked"]
            == 1),
        "{}",
        a.log()
    );
    let state = sink_state(&a, "webhook:hook");
    assert!(
        state["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("422") && e.contains("unknown field")),
        "{state}"
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        fake.received().len(),
        1,
        "a refusal is not retried by itself"
    );

    // The receiver is fixed; the operator asks for the parked message again.
    refuse.store(false, Ordering::SeqCst);
    let (ok, out) = a.genba(&["sinks", "retry", "hook"]);
    assert!(ok && out.contains("1 parked message"), "{out}");
    assert!(
        wait_until(Duration::from_secs(20), || accepted_numbers(&fake) == [1]),
        "{:?}\n{}",
        fake.received(),
        a.log()
    );
    assert!(wait_until(Duration::from_secs(10), || {
        let s = sink_state(&a, "webhook:hook");
        s["parked"] == 0 && s["delivered"] == 1
    }));
    let (ok, out) = a.genba(&["sinks", "retry", "hook"]);
    assert!(ok && out.contains(" 0 parked"), "{out}");

    // `genba sinks test` sends one message now and reports the answer.
    let (ok, out) = a.genba(&["sinks", "test", "hook"]);
    assert!(ok, "{out}");
    assert!(out.contains("delivered"), "{out}");
    let last = fake.received().last().unwrap().json();
    assert_eq!(last["messages"][0]["topic"], "genba/test", "{last}");
    refuse.store(true, Ordering::SeqCst);
    let (ok, out) = a.genba(&["sinks", "test", "hook"]);
    assert!(
        !ok && out.contains("refused") && out.contains("422"),
        "{out}"
    );
    let (ok, out) = a.genba(&["sinks", "test", "nosuch"]);
    assert!(!ok && out.contains("no sink named"), "{out}");
}

const LINE_TOKEN: &str = "line-channel-token-abcdef123456";
const LINE_USER: &str = "U0123456789abcdef0123456789abcdef";

/// LINE's push endpoint as documented: Bearer token, X-Line-Retry-Key (a UUID; a key already
/// accepted is answered 409), a known `to`, 1-5 messages. `lose_first` accepts the first
/// request but answers 500, as in LINE's 2022 incident, so the client must retry with the
/// same key.
struct FakeLine {
    http: FakeHttp,
    accepted: Arc<Mutex<Vec<String>>>,
}

fn fake_line(lose_first: bool) -> FakeLine {
    let accepted: Arc<Mutex<Vec<String>>> = Arc::default();
    let keys: Arc<Mutex<HashSet<String>>> = Arc::default();
    let lose = Arc::new(AtomicBool::new(lose_first));
    let acc = accepted.clone();
    let http = FakeHttp::start(move |req: &Req| {
        let error =
            |status, message: &str| Reply::json(status, serde_json::json!({"message": message}));
        if req.header("authorization") != Some(&format!("Bearer {LINE_TOKEN}")) {
            return error(
                401,
                "Authentication failed. Confirm that the access token in the authorization header is valid.",
            );
        }
        let Some(key) = req.header("x-line-retry-key").map(str::to_owned) else {
            return error(400, "X-Line-Retry-Key header is required for this test");
        };
        if key.len() != 36 || key.split('-').count() != 5 {
            return error(400, "The value of the X-Line-Retry-Key header is invalid");
        }
        let body = req.json();
        if body["to"] != LINE_USER {
            return error(
                400,
                "The property, 'to', in the request body is invalid (line: -, column: -)",
            );
        }
        let messages = body["messages"].as_array().cloned().unwrap_or_default();
        if messages.is_empty() || messages.len() > 5 {
            return error(400, "Size must be between 1 and 5");
        }
        if !keys.lock().unwrap().insert(key) {
            return Reply::json(
                409,
                serde_json::json!({"message": "The retry key is already accepted", "sentMessages": []}),
            );
        }
        acc.lock().unwrap().extend(
            messages
                .iter()
                .map(|m| m["text"].as_str().unwrap_or_default().to_owned()),
        );
        if lose.swap(false, Ordering::SeqCst) {
            return error(500, "An error occurred in the internal server");
        }
        Reply::json(
            200,
            serde_json::json!({"sentMessages": [{"id": "1", "quoteToken": "q"}]}),
        )
    });
    FakeLine { http, accepted }
}

#[test]
fn line_pushes_each_message_once_across_a_lost_answer_and_parks_on_a_bad_token() {
    let line = fake_line(true);
    let config = format!(
        "[[sinks]]\nname = \"shop\"\nkind = \"line\"\nfilters = [\"alarms/#\"]\nto = [\"{LINE_USER}\"]\n\
         url = \"{url}\"\ntemplate = \"{{topic.1}}: {{payload}}\"\nrate_per_sec = 10.0\nmax_backoff_secs = 1\n\
         [[sinks]]\nname = \"revoked\"\nkind = \"line\"\nfilters = [\"alarms/#\"]\nto = [\"{LINE_USER}\"]\n\
         url = \"{url}\"\nrate_per_sec = 10.0\n",
        url = line.http.url("/v2/bot/message/push")
    );
    let secrets = format!(
        "[sinks.shop]\nchannel_access_token = \"{LINE_TOKEN}\"\n\
         [sinks.revoked]\nchannel_access_token = \"revoked-token-0000\"\n"
    );
    let a = Appliance::start(&config, &secrets);
    let h = Http::new();
    for i in 0..12 {
        send(&h, &a, "alarms/fridge-2/warm", &format!("m-{i:03}"));
    }
    assert!(
        wait_until(Duration::from_secs(30), || sink_state(&a, "line:shop")
            ["backlog"]
            == 0
            && sink_state(&a, "line:revoked")["parked"] != 0),
        "{}",
        a.log()
    );
    let texts = line.accepted.lock().unwrap().clone();
    let got: Vec<u32> = texts.iter().flat_map(|t| numbers(t)).collect();
    assert_eq!(
        got,
        (0..12).collect::<Vec<_>>(),
        "each once, in order: {texts:?}"
    );
    assert!(
        texts[0].starts_with("fridge-2: m-000"),
        "template: {texts:?}"
    );
    assert!(
        line.http.received().iter().any(|r| r.status == 409),
        "the retry after the lost answer reused the key"
    );
    let revoked = sink_state(&a, "line:revoked");
    assert!(
        revoked["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("401") && e.contains("Authentication failed")),
        "{revoked}"
    );
    let (_, status) = a.genba(&["status"]);
    assert!(
        !status.contains("revoked-token") && !a.log().contains(LINE_TOKEN),
        "a token leaked"
    );
}

/// Debian's aiosmtpd running tests/support/smtp_server.py.
struct Smtp {
    child: Child,
    maildir: PathBuf,
}

impl Smtp {
    fn start(
        port: u16,
        maildir: &Path,
        tls: Option<(&Path, &Path)>,
        auth: Option<(&str, &str)>,
    ) -> Smtp {
        std::fs::create_dir_all(maildir).unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/smtp_server.py");
        let mut c = Command::new("/usr/bin/python3");
        c.arg(script).arg(port.to_string()).arg(maildir);
        if let Some((cert, key)) = tls {
            c.arg("--cert").arg(cert).arg("--key").arg(key);
        }
        if let Some((user, password)) = auth {
            c.args(["--user", user, "--password", password]);
        }
        let mut child = c
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("/usr/bin/python3 (scripts/test installs python3-aiosmtpd)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(
            line.trim(),
            "READY",
            "aiosmtpd did not start (apt install python3-aiosmtpd)"
        );
        Smtp {
            child,
            maildir: maildir.to_owned(),
        }
    }

    /// The mails received so far, oldest first.
    fn mails(&self) -> Vec<String> {
        let mut names: Vec<_> = std::fs::read_dir(&self.maildir)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "eml"))
            .collect();
        names.sort();
        names
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect()
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        if let Some(mut stdin) = self.child.stdin.take() {
            let _ = stdin.flush();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn email_over_starttls_folds_an_outage_backlog_into_one_digest_and_parks_a_refused_recipient() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("smtp.crt"), dir.path().join("smtp.key"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let port = common::free_port().port();
    let config = format!(
        "[[sinks]]\nname = \"ops\"\nkind = \"email\"\nfilters = [\"alarms/#\"]\nto = [\"ops@example.com\"]\n\
         rate_per_sec = 1.0\nmax_backoff_secs = 1\ntimeout_secs = 5\n\
         [sinks.smtp]\nhost = \"localhost\"\nport = {port}\nsecurity = \"starttls\"\n\
         from = \"Genba <genba@example.com>\"\nsubject = \"Genba: {{count}} alarm(s)\"\nca_file = \"{ca}\"\n\
         [[sinks]]\nname = \"gone\"\nkind = \"email\"\nfilters = [\"alarms/#\"]\nto = [\"refuse@example.com\"]\n\
         rate_per_sec = 1.0\nmax_backoff_secs = 1\ntimeout_secs = 5\n\
         [sinks.smtp]\nhost = \"localhost\"\nport = {port}\nsecurity = \"starttls\"\n\
         from = \"genba@example.com\"\nca_file = \"{ca}\"\n",
        ca = cert_path.display()
    );
    let secrets = "[sinks.ops]\nusername = \"genba\"\npassword = \"smtp-pass-8c1d\"\n\
                   [sinks.gone]\nusername = \"genba\"\npassword = \"smtp-pass-8c1d\"\n";
    let a = Appliance::start(&config, secrets);
    let h = Http::new();
    // The mail server is down while 30 alarms arrive.
    for i in 0..30 {
        send(&h, &a, "alarms/freezer-1/warm", &format!("m-{i:03}"));
    }
    assert!(
        wait_until(Duration::from_secs(20), || sink_state(&a, "email:ops")
            ["failures"]
            .as_i64()
            .is_some_and(|f| f > 0)),
        "{}",
        a.log()
    );
    let smtp = Smtp::start(
        port,
        &dir.path().join("mail"),
        Some((&cert_path, &key_path)),
        Some(("genba", "smtp-pass-8c1d")),
    );
    assert!(
        wait_until(Duration::from_secs(30), || sink_state(&a, "email:ops")
            ["backlog"]
            == 0),
        "{}",
        a.log()
    );
    let mails = smtp.mails();
    let got: Vec<u32> = mails.iter().flat_map(|m| numbers(m)).collect();
    assert_eq!(got, (0..30).collect::<Vec<_>>(), "each once, in order");
    assert_eq!(mails.len(), 1, "the backlog is one digest: {mails:?}");
    assert!(
        mails[0].contains("Subject: Genba: 30 alarm(s)"),
        "{}",
        mails[0]
    );
    assert!(mails[0].contains("To: ops@example.com"), "{}", mails[0]);

    // 550 for the other sink's recipient: parked with the server's reason.
    assert!(
        wait_until(Duration::from_secs(20), || sink_state(&a, "email:gone")
            ["parked"]
            .as_i64()
            .is_some_and(|p| p > 0)),
        "{}",
        a.log()
    );
    let gone = sink_state(&a, "email:gone");
    assert!(
        gone["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("550")),
        "{gone}"
    );
    assert!(
        !a.log().contains("smtp-pass-8c1d"),
        "the SMTP password leaked"
    );
}

#[test]
fn exment_is_listed_and_tested_among_the_sinks_and_a_failed_test_names_the_cause() {
    let a = Appliance::start(
        "[exment]\nbase_url = \"http://127.0.0.1:1\"\ntimeout_secs = 2\n",
        "[exment]\nclient_id = \"genba-id\"\nclient_secret = \"exment-secret-5f2a\"\napi_key = \"k\"\n",
    );
    let (ok, out) = a.genba(&["sinks", "list", "--json"]);
    assert!(ok, "{out}");
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "exment")
        .unwrap_or_else(|| panic!("no exment row in {out}"));
    assert_eq!(row["kind"], "exment");
    assert_eq!(row["state"]["delivered"], 0);

    // Nothing listens on port 1: the test says so, and keeps the secret out of the answer.
    let (ok, out) = a.genba(&["sinks", "test", "exment"]);
    assert!(!ok, "a test against a closed port passed: {out}");
    assert!(
        out.contains("exment") && out.contains("unavailable"),
        "{out}"
    );
    assert!(
        !out.contains("exment-secret-5f2a"),
        "the secret leaked: {out}"
    );
}
