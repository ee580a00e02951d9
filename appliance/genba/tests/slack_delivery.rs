//! Slack delivery against a fake Slack that answers as Slack documents: outages (500, 503,
//! 429 with Retry-After, timeouts) end with every message delivered in order and without a
//! retry storm; permanent refusals park the message with Slack's reason, visible in status.

mod common;

use std::time::Duration;

use common::fake_slack::{Answer, FakeSlack};
use common::http::Http;
use common::{wait_until, Appliance};

fn config(rate: f64) -> String {
    format!(
        "[[slack.webhooks]]\nname = \"ops\"\nfilters = [\"notify/#\"]\nrate_per_sec = {rate}\nburst = 3\ntimeout_secs = 1\nmax_backoff_secs = 2\n"
    )
}

fn secrets(slack: &FakeSlack) -> String {
    format!("[slack]\nops = \"{}\"\n", slack.url())
}

/// Message numbers (`m-NNN`) in the order Slack accepted them.
fn delivered_numbers(slack: &FakeSlack) -> Vec<u32> {
    slack
        .delivered_texts()
        .iter()
        .flat_map(|t| {
            t.split(|c: char| !c.is_ascii_alphanumeric() && c != '-')
                .filter_map(|w| w.strip_prefix("m-").and_then(|n| n.parse().ok()))
                .collect::<Vec<u32>>()
        })
        .collect()
}

fn send(h: &Http, a: &Appliance, topic: &str, text: &str) {
    let r = h.post(
        &a.url("/notify"),
        "application/json",
        serde_json::json!({"topic": topic, "message": text}).to_string(),
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.json);
}

/// The `slack:ops` entry of a status document.
fn slack_sink(status: &serde_json::Value) -> &serde_json::Value {
    status["sinks"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == "slack:ops"))
        .unwrap_or_else(|| panic!("no slack:ops sink in {status}"))
}

#[test]
fn after_an_outage_of_500s_429_and_timeouts_every_message_arrives_once_in_order() {
    let slack = FakeSlack::start();
    slack.script([
        Answer::Error(500, "internal_error", None),
        Answer::Error(503, "service_unavailable", None),
        Answer::Error(429, "rate_limited", Some(2)),
        Answer::Hang(Duration::from_secs(3)),
        Answer::Error(500, "internal_error", None),
    ]);
    let a = Appliance::start(&config(10.0), &secrets(&slack));
    let h = Http::new();
    for i in 0..30 {
        send(&h, &a, "notify/line1", &format!("m-{i:03}"));
    }
    send(&h, &a, "other/topic", "m-999 not for this webhook");
    assert!(
        wait_until(Duration::from_secs(60), || delivered_numbers(&slack).len()
            >= 30),
        "delivered so far: {:?}\nlog:\n{}",
        delivered_numbers(&slack),
        a.log()
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        delivered_numbers(&slack),
        (0..30).collect::<Vec<_>>(),
        "each once, in order"
    );

    let received = slack.received();
    let failed: Vec<_> = received.iter().filter(|r| r.answered != "ok").collect();
    assert_eq!(
        failed.len(),
        5,
        "one attempt per scripted failure, no more: {:?}",
        received
    );
    // 429 Retry-After: 2 is honoured before the next attempt.
    let i429 = received
        .iter()
        .position(|r| r.answered == "rate_limited")
        .unwrap();
    let gap = received[i429 + 1].at.duration_since(received[i429].at);
    assert!(
        gap >= Duration::from_millis(1900),
        "retried {gap:?} after a 429 with Retry-After: 2"
    );
    // Backoff: never two failed attempts closer than the first backoff step (0.5 s minimum).
    for pair in failed.windows(2) {
        assert!(
            pair[1].at.duration_since(pair[0].at) >= Duration::from_millis(450),
            "retry storm: {received:?}"
        );
    }
    let (ok, status) = a.genba(&["status", "--json"]);
    assert!(ok, "{status}");
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    let sink = slack_sink(&v);
    assert_eq!(sink["backlog"], 0);
    assert_eq!(sink["parked"], 0);
    assert!(
        !status.contains("XXXXSECRETXXXX") && !a.log().contains("XXXXSECRETXXXX"),
        "webhook URL leaked"
    );
}

#[test]
fn a_permanent_error_parks_the_message_with_its_reason_and_delivery_goes_on() {
    let slack = FakeSlack::start();
    slack.script([Answer::Error(404, "channel_not_found", None)]);
    let a = Appliance::start(&config(10.0), &secrets(&slack));
    let h = Http::new();
    send(&h, &a, "notify/a", "m-001 lost channel");
    assert!(wait_until(Duration::from_secs(20), || !slack
        .received()
        .is_empty()));
    send(&h, &a, "notify/a", "m-002 after");
    assert!(
        wait_until(Duration::from_secs(20), || delivered_numbers(&slack)
            == vec![2]),
        "{:?}",
        slack.received()
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        slack.received().len(),
        2,
        "the parked message is not retried: {:?}",
        slack.received()
    );

    let (ok, text) = a.genba(&["status"]);
    assert!(ok, "{text}");
    assert!(text.contains("channel_not_found"), "{text}");
    assert!(!text.contains("no delivery sink"), "{text}");
    let r = h.get(&a.url("/status"), &[]);
    assert_eq!(r.status, 200);
    assert_eq!(slack_sink(&r.json)["parked"], 1, "{}", r.json);
    assert_eq!(
        r.json["recent_parked"][0]["reason"]
            .as_str()
            .map(|s| s.contains("channel_not_found")),
        Some(true),
        "{}",
        r.json
    );
    assert!(!r.json.to_string().contains("XXXXSECRETXXXX"));
}

#[test]
fn a_backlog_is_coalesced_and_posts_stay_within_the_rate() {
    let slack = FakeSlack::start();
    // Slack down while 60 messages arrive, then up: the backlog drains in a few folded posts.
    slack.set_default(Some(Answer::Error(503, "service_unavailable", None)));
    let a = Appliance::start(&config(1.0), &secrets(&slack));
    let h = Http::new();
    for i in 0..60 {
        send(&h, &a, "notify/burst", &format!("m-{i:03}"));
    }
    assert!(wait_until(Duration::from_secs(20), || !slack
        .received()
        .is_empty()));
    slack.set_default(None);
    assert!(
        wait_until(Duration::from_secs(60), || delivered_numbers(&slack).len()
            >= 60),
        "{:?}",
        delivered_numbers(&slack)
    );
    assert_eq!(delivered_numbers(&slack), (0..60).collect::<Vec<_>>());
    let posts = slack
        .received()
        .iter()
        .filter(|r| r.answered == "ok")
        .count();
    assert!(
        posts <= 4,
        "60 queued messages took {posts} posts; expected folding (max_coalesce 20)"
    );
    // The rate (1 per second, burst 3) holds for every attempt, failed ones included: no
    // 2-second window holds more than the burst plus two. Sleeps only lengthen the gaps, so
    // a slow machine cannot make this fail.
    let times: Vec<_> = slack.received().iter().map(|r| r.at).collect();
    for (i, start) in times.iter().enumerate() {
        let within = times[i..]
            .iter()
            .take_while(|t| t.duration_since(*start) < Duration::from_secs(2))
            .count();
        assert!(
            within <= 5,
            "{within} attempts within 2 s of attempt {i}: {:?}",
            slack.received()
        );
    }
}
