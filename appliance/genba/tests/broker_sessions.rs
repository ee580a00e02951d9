//! The broker's delivery rules and state, with raw MQTT packets against `genba up`: QoS
//! downgrade, QoS 2 exactly once, MQTT 5 Session Expiry, retained messages and persistent
//! sessions across a restart and a SIGKILL, access rules and device accounts, and a flood
//! of connections.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::mqtt_raw::*;
use common::{wait_until, Appliance};

/// Publishes QoS 1 from a fresh clean connection and waits for its PUBACK.
fn publish_acked(a: &Appliance, client: &str, topic: &str, payload: &[u8], retain: bool) {
    let mut p = connected(a, 4, client);
    let mut packet = publish(4, topic.as_bytes(), 1, 1, payload);
    if retain {
        packet[0] |= 0x01;
    }
    p.write_all(&packet).unwrap();
    assert_puback(&mut p, 1, 0, topic);
}

#[test]
fn messages_arrive_at_the_lower_of_publish_and_subscription_qos() {
    let a = Appliance::start("", "");
    for level in [4u8, 5] {
        let mut sub = connected(&a, level, &format!("qos-sub-{level}"));
        assert_eq!(subscribe(&mut sub, level, 1, "qos/high", 2), 2);
        assert_eq!(subscribe(&mut sub, level, 2, "qos/low", 1), 1);
        let mut p = connected(&a, level, &format!("qos-pub-{level}"));
        // QoS 0 to a QoS 2 subscription arrives at QoS 0 (MQTT-3.8.4-6).
        p.write_all(&publish(level, b"qos/high", 0, 0, b"zero"))
            .unwrap();
        let got = next_publish(&mut sub, level).expect("publish");
        assert_eq!(
            (got.topic.as_str(), got.qos),
            ("qos/high", 0),
            "MQTT {level}"
        );
        // QoS 2 to a QoS 1 subscription arrives at QoS 1.
        p.write_all(&publish(level, b"qos/low", 2, 7, b"two"))
            .unwrap();
        let got = next_publish(&mut sub, level).expect("publish");
        assert_eq!(
            (got.topic.as_str(), got.qos),
            ("qos/low", 1),
            "MQTT {level}"
        );
    }
}

#[test]
fn a_qos2_resend_before_pubrel_is_delivered_once_and_later_messages_are_not_late() {
    let a = Appliance::start("", "");
    let mut sub = connected(&a, 4, "q2-sub");
    subscribe(&mut sub, 4, 1, "q2/#", 0);
    let mut p = connected(&a, 4, "q2-pub");
    let first = publish(4, b"q2/a", 2, 1, b"first");
    p.write_all(&first).unwrap();
    assert_eq!(read_packet(&mut p).map(|(h, _)| h), Some(0x50), "PUBREC");
    // The PUBREC was "lost": the client resends with DUP before its PUBREL.
    p.write_all(&as_dup(first)).unwrap();
    assert_eq!(
        read_packet(&mut p).map(|(h, _)| h),
        Some(0x50),
        "PUBREC again"
    );
    p.write_all(&[0x62, 0x02, 0x00, 0x01]).unwrap();
    assert_eq!(read_packet(&mut p).map(|(h, _)| h), Some(0x70), "PUBCOMP");
    // The next QoS 2 message arrives right after the first, not one step late.
    p.write_all(&publish(4, b"q2/b", 2, 2, b"second")).unwrap();
    assert_eq!(read_packet(&mut p).map(|(h, _)| h), Some(0x50));
    p.write_all(&[0x62, 0x02, 0x00, 0x02]).unwrap();
    assert_eq!(read_packet(&mut p).map(|(h, _)| h), Some(0x70));
    let one = next_publish(&mut sub, 4).expect("first");
    let two = next_publish(&mut sub, 4).expect("second");
    assert_eq!(
        (one.payload.as_slice(), two.payload.as_slice()),
        (&b"first"[..], &b"second"[..])
    );
    assert!(
        silent_for(&mut sub, Duration::from_millis(500)),
        "a copy too many"
    );
    // The journal holds each once.
    assert!(wait_until(Duration::from_secs(5), || a.journal().len() == 2));
}

#[test]
fn mqtt5_session_expiry_decides_what_outlives_the_connection() {
    let a = Appliance::start("", "");
    // Clean Start 1 with expiry 3600: the session outlives the connection.
    let (mut s, present) = connect_raw(&a, &connect_v5("exp-long", true, Some(3600)));
    assert!(!present);
    assert_eq!(subscribe(&mut s, 5, 1, "exp/long", 1), 1);
    s.write_all(&[0xE0, 0x00]).unwrap();
    drop(s);
    publish_acked(&a, "exp-pub-1", "exp/long", b"kept for you", false);
    let (mut s, present) = connect_raw(&a, &connect_v5("exp-long", false, Some(3600)));
    assert!(present, "session present");
    let got = next_publish(&mut s, 5).expect("queued message");
    assert_eq!(got.payload, b"kept for you");
    puback(&mut s, got.pid);

    // Clean Start 0 with expiry 0 (the default): nothing outlives the connection.
    let (mut s, _) = connect_raw(&a, &connect_v5("exp-zero", false, None));
    subscribe(&mut s, 5, 1, "exp/zero", 1);
    s.write_all(&[0xE0, 0x00]).unwrap();
    drop(s);
    std::thread::sleep(Duration::from_millis(200));
    let (_s, present) = connect_raw(&a, &connect_v5("exp-zero", false, None));
    assert!(!present, "no session after expiry 0");

    // Expiry 1: gone once the second has passed.
    let (mut s, _) = connect_raw(&a, &connect_v5("exp-short", true, Some(1)));
    subscribe(&mut s, 5, 1, "exp/short", 1);
    s.write_all(&[0xE0, 0x00]).unwrap();
    drop(s);
    std::thread::sleep(Duration::from_millis(2500));
    let (_s, present) = connect_raw(&a, &connect_v5("exp-short", false, Some(1)));
    assert!(!present, "session expired");
}

/// QoS 1 messages `m{i}` for each `i` of `range` on `inbox/x`, each acknowledged.
fn fill_inbox(a: &Appliance, range: std::ops::Range<u32>) {
    for i in range {
        let payload = format!("m{i}");
        publish_acked(
            a,
            &format!("inbox-pub-{i}"),
            "inbox/x",
            payload.as_bytes(),
            false,
        );
    }
}

/// The persistent session "keeper" comes back (`after` names the event for the messages):
/// its session is present and `m{i}` for each `i` of `range` arrives in order; each is
/// acknowledged. Returns the connection.
fn empty_inbox(a: &Appliance, range: std::ops::Range<u32>, after: &str) -> TcpStream {
    let (mut s, present) = connect_raw(a, &connect_with(4, "keeper", false));
    assert!(present, "session present after {after}");
    for i in range {
        let got = next_publish(&mut s, 4).unwrap_or_else(|| panic!("queued after {after}"));
        assert_eq!(got.payload, format!("m{i}").as_bytes());
        puback(&mut s, got.pid);
    }
    s
}

#[test]
fn retained_messages_and_persistent_sessions_survive_a_restart_and_a_sigkill() {
    let mut a = Appliance::start("", "");
    publish_acked(&a, "ret-pub", "state/door", b"open", true);
    // A persistent 3.1.1 session subscribes, goes away; three messages wait for it.
    let mut s = connected_with(&a, 4, "keeper", false);
    assert_eq!(subscribe(&mut s, 4, 1, "inbox/#", 1), 1);
    s.write_all(&[0xE0, 0x00]).unwrap();
    drop(s);
    fill_inbox(&a, 0..3);
    assert!(a.terminate().success());
    a.spawn();
    // The retained message is still there for a new subscriber.
    let mut r = connected(&a, 4, "ret-sub");
    subscribe(&mut r, 4, 1, "state/#", 1);
    let got = next_publish(&mut r, 4).expect("retained after restart");
    assert_eq!(
        (got.topic.as_str(), got.payload.as_slice(), got.retain),
        ("state/door", &b"open"[..], true)
    );
    // The session is still there, with its subscription and its three messages, in order.
    let mut s = empty_inbox(&a, 0..3, "a restart");
    s.write_all(&[0xE0, 0x00]).unwrap();
    drop(s);
    // Two more while it is away, then SIGKILL right after their PUBACKs: acknowledged means
    // stored for the session too.
    fill_inbox(&a, 3..5);
    a.kill9();
    a.spawn();
    let mut s = empty_inbox(&a, 3..5, "SIGKILL");
    // Acknowledged ones are not delivered again.
    assert!(silent_for(&mut s, Duration::from_millis(500)));
    // A retained message is cleared by an empty retained publish, and stays cleared.
    publish_acked(&a, "ret-clear", "state/door", b"", true);
    a.kill9();
    a.spawn();
    let mut r = connected(&a, 4, "ret-sub-2");
    subscribe(&mut r, 4, 1, "state/#", 1);
    assert!(
        silent_for(&mut r, Duration::from_millis(500)),
        "cleared retained message came back"
    );
}

fn user_config(acl: &str) -> String {
    let hash = common::hash_password("device-secret-1");
    format!(
        "[mqtt]\nallow_anonymous = false\n\
         [[mqtt.users]]\nname = \"fridge-1\"\npassword_hash = \"{hash}\"\ndevice = \"fridge-1\"\n\
         [[mqtt.users]]\nname = \"phone\"\npassword_hash = \"{hash}\"\n{acl}"
    )
}

fn connect_as(level: u8, client_id: &str, user: &str) -> Vec<u8> {
    connect_login(level, client_id, user, "device-secret-1")
}

fn connect_login(level: u8, client_id: &str, user: &str, password: &str) -> Vec<u8> {
    let mut body = vec![
        0,
        4,
        b'M',
        b'Q',
        b'T',
        b'T',
        level,
        0x02 | 0x80 | 0x40,
        0,
        30,
    ];
    if level == 5 {
        body.push(0);
    }
    for s in [client_id, user, password] {
        body.extend_from_slice(&(s.len() as u16).to_be_bytes());
        body.extend_from_slice(s.as_bytes());
    }
    frame(0x10, &body)
}

#[test]
fn device_accounts_and_access_rules_limit_topics_and_denials_are_never_journaled() {
    let a = Appliance::start(
        &user_config("[[mqtt.acl]]\nuser = \"phone\"\npublish = [\"notify/#\"]\nsubscribe = [\"alarms/#\"]\n"),
        "",
    );
    for level in [5u8, 4] {
        let (mut d, _) = connect_raw(
            &a,
            &connect_as(level, &format!("fridge-{level}"), "fridge-1"),
        );
        d.write_all(&publish(
            level,
            b"devices/fridge-1/telemetry",
            1,
            1,
            b"{\"t\":4}",
        ))
        .unwrap();
        assert_puback(&mut d, 1, 0, "own device topic");
        // Another device's topic: MQTT 5 is told 0x87, 3.1.1 gets a plain PUBACK; dropped.
        d.write_all(&publish(
            level,
            b"devices/fridge-2/telemetry",
            1,
            2,
            b"{\"t\":9}",
        ))
        .unwrap();
        assert_puback(
            &mut d,
            2,
            if level == 5 { 0x87 } else { 0 },
            "other device's topic",
        );
        assert_eq!(
            subscribe(&mut d, level, 3, "devices/fridge-1/commands", 1),
            1
        );
        assert_eq!(
            subscribe(&mut d, level, 4, "devices/#", 1),
            0x80,
            "wider than its own"
        );
        let (mut p, _) = connect_raw(&a, &connect_as(level, &format!("phone-{level}"), "phone"));
        assert_eq!(subscribe(&mut p, level, 1, "alarms/#", 0), 0);
        assert_eq!(subscribe(&mut p, level, 2, "devices/+/telemetry", 0), 0x80);
        p.write_all(&publish(level, b"notify/kitchen", 1, 3, b"hello"))
            .unwrap();
        assert_puback(&mut p, 3, 0, "granted publish");
        p.write_all(&publish(level, b"devices/fridge-1/commands", 1, 4, b"{}"))
            .unwrap();
        assert_puback(&mut p, 4, if level == 5 { 0x87 } else { 0 }, "not granted");
    }
    assert!(wait_until(Duration::from_secs(5), || a.journal().len() == 4));
    std::thread::sleep(Duration::from_millis(300));
    let topics: Vec<String> = a.journal().into_iter().map(|(t, _)| t).collect();
    assert_eq!(
        topics,
        [
            "devices/fridge-1/telemetry",
            "notify/kitchen",
            "devices/fridge-1/telemetry",
            "notify/kitchen"
        ]
    );
}

/// A new key of `device` (`genba keys add --device`): its id and the key.
fn device_key(a: &Appliance, device: &str) -> (i64, String) {
    let (ok, out) = a.genba(&["keys", "add", "--device", device, "--json"]);
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    (
        v["id"].as_i64().unwrap(),
        v["key"].as_str().unwrap().to_owned(),
    )
}

/// The CONNACK reason a CONNECT gets (0: accepted).
fn connack_reason(a: &Appliance, connect: &[u8]) -> u8 {
    let mut s = TcpStream::connect(a.mqtt).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(connect).unwrap();
    let (header, body) = read_packet(&mut s).expect("CONNACK");
    assert_eq!(header, 0x20, "CONNACK");
    body[1]
}

#[test]
fn a_device_logs_in_with_its_own_key_as_a_device_account_even_without_rules() {
    // No [[mqtt.users]], no rules, anonymous allowed: everyone else may do anything here.
    let a = Appliance::start("", "");
    let (id, key) = device_key(&a, "fridge-7");
    let (_, other_key) = device_key(&a, "fridge-8");
    for level in [5u8, 4] {
        let (mut d, _) = connect_raw(
            &a,
            &connect_login(level, &format!("f7-{level}"), "fridge-7", &key),
        );
        d.write_all(&publish(
            level,
            b"devices/fridge-7/telemetry",
            1,
            1,
            b"{\"t\":4}",
        ))
        .unwrap();
        assert_puback(&mut d, 1, 0, "own device topic");
        d.write_all(&publish(
            level,
            b"devices/fridge-8/telemetry",
            1,
            2,
            b"{\"t\":9}",
        ))
        .unwrap();
        assert_puback(
            &mut d,
            2,
            if level == 5 { 0x87 } else { 0 },
            "another device's topic",
        );
        d.write_all(&publish(level, b"notify/anything", 1, 3, b"x"))
            .unwrap();
        assert_puback(
            &mut d,
            3,
            if level == 5 { 0x87 } else { 0 },
            "not a device topic",
        );
        assert_eq!(
            subscribe(&mut d, level, 4, "devices/fridge-7/commands", 1),
            1
        );
        assert_eq!(subscribe(&mut d, level, 5, "devices/#", 1), 0x80);
    }
    // another device's key, a wrong key: refused (MQTT 5 0x86, 3.1.1 return code 4)
    let refused = |level: u8, password: &str| {
        connack_reason(&a, &connect_login(level, "f7-x", "fridge-7", password))
    };
    assert_eq!(refused(5, &other_key), 0x86);
    assert_eq!(refused(4, "not-the-key-0123456789"), 4);
    // a revoked key no longer opens the door
    let (ok, out) = a.genba(&["keys", "revoke", &id.to_string()]);
    assert!(ok, "{out}");
    assert_eq!(refused(5, &key), 0x86);
    // only the own topic's messages were journaled
    assert!(wait_until(Duration::from_secs(5), || a.journal().len() == 2));
    std::thread::sleep(Duration::from_millis(300));
    let topics: Vec<String> = a.journal().into_iter().map(|(t, _)| t).collect();
    assert_eq!(
        topics,
        ["devices/fridge-7/telemetry", "devices/fridge-7/telemetry"]
    );
}

#[test]
fn an_account_added_to_the_config_file_logs_in_without_a_restart_and_a_broken_edit_changes_nothing()
{
    let a = Appliance::start(&user_config(""), "");
    let path = a.dir.path().join("genba.toml");
    let hash = common::hash_password("new-secret-2");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(&format!(
        "\n[[mqtt.users]]\nname = \"fridge-2\"\npassword_hash = \"{hash}\"\ndevice = \"fridge-2\"\n"
    ));
    std::fs::write(&path, &text).unwrap();
    let login = || {
        common::mosquitto_pub(
            a.mqtt.port(),
            &[
                "-u",
                "fridge-2",
                "-P",
                "new-secret-2",
                "-t",
                "devices/fridge-2/hello",
                "-m",
                "x",
                "-q",
                "1",
            ],
        )
        .status
        .success()
    };
    // the running broker takes the new account within its 2 s look at the config file
    assert!(
        wait_until(Duration::from_secs(10), login),
        "the new account never logged in; log:\n{}",
        a.log()
    );
    assert!(
        a.log().contains("MQTT accounts and access rules reloaded"),
        "{}",
        a.log()
    );
    // a config edit that does not check leaves the accounts as they were
    std::fs::write(&path, format!("{text}\n[mqtt\nbroken = \n")).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || a
            .log()
            .contains("config changed but does not check")),
        "{}",
        a.log()
    );
    assert!(login(), "the account was lost with the broken edit");
}

#[test]
fn two_thousand_connections_at_once_are_all_served() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    // This test process holds 2,000 sockets too.
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if hard < 4096 {
        eprintln!("skipped: the hard open-file limit ({hard}) is below what 2,000 clients need");
        return;
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    let a = Appliance::start("[mqtt]\nmax_connections = 2500\n", "");
    let clients: Vec<TcpStream> = (0..2000)
        .map(|i| {
            let mut s = TcpStream::connect(a.mqtt).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            s.write_all(&connect_packet(4, &format!("flood-{i}")))
                .unwrap();
            s
        })
        .collect();
    let mut accepted = 0;
    for mut s in clients.iter() {
        let mut s2 = s.try_clone().unwrap();
        if matches!(read_packet(&mut s2), Some((0x20, b)) if b == [0, 0]) {
            accepted += 1;
        }
        let _ = s.flush();
    }
    assert_eq!(accepted, 2000, "CONNACK accepted for every client");
    // Still serving: a message goes through and /health passes.
    publish_acked(&a, "after-flood", "notify/flood", b"ok", false);
    let reply = common::http::Http::new().get(&a.url("/health"), &[]);
    assert_eq!(reply.status, 200, "{}", reply.json);
    let rss = std::fs::read_to_string(format!("/proc/{}/status", a.pid()))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS"))
        .unwrap_or("VmRSS: ?")
        .to_string();
    eprintln!("genba up with 2,000 MQTT connections: {rss}");
    drop(clients);
}

#[test]
fn a_subscription_wider_than_a_denied_topic_is_granted_without_its_messages() {
    let a = Appliance::start(
        "[mqtt]\n[[mqtt.acl]]\ndeny_subscribe = [\"secret/#\"]\n",
        "",
    );
    let mut s = connected(&a, 5, "wide");
    assert_eq!(subscribe(&mut s, 5, 1, "secret/+", 1), 0x80, "all denied");
    assert_eq!(
        subscribe(&mut s, 5, 2, "#", 1),
        1,
        "only overlaps the denial"
    );
    publish_acked(&a, "wide-pub-1", "secret/code", b"1234", false);
    publish_acked(&a, "wide-pub-2", "notify/open", b"ok", false);
    let got = next_publish(&mut s, 5).expect("publish");
    assert_eq!(
        got.topic, "notify/open",
        "secret/code must not be delivered"
    );
}

/// MQTT 3.1.1 CONNECT, clean session, with a retained QoS 1 will.
fn connect_with_retained_will(client_id: &str, topic: &str, message: &str) -> Vec<u8> {
    let mut body = vec![
        0,
        4,
        b'M',
        b'Q',
        b'T',
        b'T',
        4,
        0x02 | 0x04 | 0x08 | 0x20,
        0,
        30,
    ];
    for s in [client_id, topic, message] {
        body.extend_from_slice(&(s.len() as u16).to_be_bytes());
        body.extend_from_slice(s.as_bytes());
    }
    frame(0x10, &body)
}

#[test]
fn the_will_of_a_client_connected_at_a_crash_is_published_after_the_restart() {
    let mut a = Appliance::start("", "");
    // A graceful client's will is never published; a connected one's is, after the SIGKILL.
    let (mut polite, _) = connect_raw(
        &a,
        &connect_with_retained_will("polite", "lwt/polite", "gone"),
    );
    polite.write_all(&[0xE0, 0x00]).unwrap();
    let (_connected, _) = connect_raw(
        &a,
        &connect_with_retained_will("sensor-a", "lwt/sensor-a", "sensor-a is gone"),
    );
    a.kill9();
    a.spawn();
    let mut s = connected(&a, 4, "lwt-reader");
    subscribe(&mut s, 4, 1, "lwt/#", 1);
    let got = next_publish(&mut s, 4).expect("the will, retained");
    assert_eq!(
        (got.topic.as_str(), got.payload.as_slice()),
        ("lwt/sensor-a", &b"sensor-a is gone"[..])
    );
    assert!(
        silent_for(&mut s, Duration::from_millis(500)),
        "the graceful client's will came"
    );
    // The retained will stays retained across another restart (the stored will itself is gone).
    assert!(a.terminate().success());
    a.spawn();
    let mut s = connected(&a, 4, "lwt-reader-2");
    subscribe(&mut s, 4, 1, "lwt/#", 1);
    let again = next_publish(&mut s, 4).expect("the retained will is still retained");
    assert_eq!(again.topic, "lwt/sensor-a");
    assert!(silent_for(&mut s, Duration::from_millis(500)));
}
