//! The front door's protocol checks, with raw MQTT packets on real sockets against `genba up`:
//! what it refuses is never acknowledged nor journaled, and how each version is told.

mod common;

use std::io::{ErrorKind, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::mqtt_raw::*;
use common::{wait_until, Appliance};

#[test]
fn invalid_topics_and_packet_id_zero_are_refused_never_acknowledged_nor_journaled() {
    let a = Appliance::start("", "");
    let cases: [(&[u8], u16, u8, &str); 5] = [
        (b"notify/#", 1, 0x90, "multi-level wildcard"),
        (b"a/+/b", 1, 0x90, "single-level wildcard"),
        // U+0000 in any MQTT string makes the packet malformed (MQTT 5 1.5.4).
        (b"notify/a\0b", 1, 0x81, "NUL byte"),
        (b"notify/pid0", 0, 0x82, "packet id 0 at QoS 1"),
        (b"", 1, 0x82, "empty topic without alias"),
    ];
    for level in [4u8, 5] {
        for (i, (topic, pid, reason, what)) in cases.iter().enumerate() {
            let mut s = connected(&a, level, &format!("bad-{level}-{i}"));
            s.write_all(&publish(level, topic, 1, *pid, b"must not be journaled"))
                .unwrap();
            assert_refused(&mut s, level, *reason, &format!("MQTT {level}: {what}"));
        }
    }
    // The door still works, and only the valid publish is in the journal.
    for level in [4u8, 5] {
        let mut s = connected(&a, level, &format!("good-{level}"));
        s.write_all(&publish(level, b"notify/ok", 1, 7, b"fine"))
            .unwrap();
        assert_puback(&mut s, 7, 0, "valid publish");
    }
    assert!(wait_until(Duration::from_secs(5), || a.journal().len() == 2));
    let j = a.journal();
    assert!(
        j.iter().all(|(t, p)| t == "notify/ok" && p == "fine"),
        "{j:?}"
    );
}

#[test]
fn sys_topic_publishes_are_acknowledged_not_journaled() {
    let a = Appliance::start("", "");
    // MQTT 5: PUBACK 0x87 (not authorized); 3.1.1: a plain PUBACK, as Mosquitto does.
    for (level, reason) in [(5u8, 0x87u8), (4, 0)] {
        let mut s = connected(&a, level, &format!("sys-{level}"));
        s.write_all(&publish(level, b"$SYS/broker/uptime", 1, 3, b"1"))
            .unwrap();
        assert_puback(&mut s, 3, reason, "$SYS publish");
        // The connection stays usable.
        s.write_all(&publish(level, b"notify/after-sys", 1, 4, b"ok"))
            .unwrap();
        assert_puback(&mut s, 4, 0, "publish after $SYS");
    }
    assert!(wait_until(Duration::from_secs(5), || a.journal().len() == 2));
    assert!(a.journal().iter().all(|(t, _)| t == "notify/after-sys"));
}

#[test]
fn payload_of_max_payload_is_accepted_one_byte_more_is_refused_unjournaled() {
    let max = 4096;
    let a = Appliance::start(&format!("[mqtt]\nmax_payload = {max}\n"), "");
    let exact = vec![b'x'; max];
    let over = vec![b'y'; max + 1];
    for level in [4u8, 5] {
        let mut s = connected(&a, level, &format!("size-{level}"));
        s.write_all(&publish(level, b"notify/exact", 1, 1, &exact))
            .unwrap();
        assert_puback(&mut s, 1, 0, "payload == max_payload");
        s.write_all(&publish(level, b"notify/over", 1, 2, &over))
            .unwrap();
        assert_refused(&mut s, level, 0x95, "payload == max_payload + 1");
    }
    assert!(wait_until(Duration::from_secs(5), || a.journal().len() == 2));
    let j = a.journal();
    assert!(
        j.iter().all(|(t, p)| t == "notify/exact" && p.len() == max),
        "{:?}",
        j.iter().map(|(t, p)| (t, p.len())).collect::<Vec<_>>()
    );
}

#[test]
fn a_second_connect_closes_the_connection() {
    let a = Appliance::start("", "");
    for level in [4u8, 5] {
        let mut s = connected(&a, level, &format!("twice-{level}"));
        s.write_all(&connect_packet(level, &format!("twice-{level}")))
            .unwrap();
        assert_refused(&mut s, level, 0x82, "second CONNECT");
    }
}

#[test]
fn sockets_without_connect_hold_slots_clients_beyond_get_busy_and_health_still_passes() {
    let a = Appliance::start("[mqtt]\nmax_connections = 2\n", "");
    // Two sockets that never send CONNECT take both client slots.
    let idle: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(a.mqtt).unwrap())
        .collect();
    // Give the door a moment to accept them (it takes the slot at accept).
    let busy = wait_until(Duration::from_secs(5), || {
        let mut s = TcpStream::connect(a.mqtt).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(&connect_packet(4, "third")).unwrap();
        matches!(read_packet(&mut s), Some((0x20, b)) if b == [0, 3])
    });
    assert!(
        busy,
        "third client did not get CONNACK 3 (server unavailable)"
    );
    // The health probe goes through the public port as genba's own user: not refused.
    let reply = common::http::Http::new().get(&a.url("/health"), &[]);
    assert_eq!(
        reply.status, 200,
        "/health with every client slot taken: {}",
        reply.json
    );
    drop(idle);
    // Slots come back.
    assert!(wait_until(Duration::from_secs(5), || {
        let mut s = TcpStream::connect(a.mqtt).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(&connect_packet(4, "later")).unwrap();
        matches!(read_packet(&mut s), Some((0x20, b)) if b == [0, 0])
    }));
}

#[test]
fn dup_resend_is_matched_only_where_it_can_be_a_resend() {
    let a = Appliance::start("", "");
    let count = |topic: &str| a.journal().iter().filter(|(t, _)| t == topic).count();
    // A clean connection publishes pid 5; later, another clean connection of the same client
    // sends a new identical event with pid 5 flagged DUP (its first copy never arrived).
    // Clean start means nothing from before is in flight: it is a new publication.
    let mut s = connected(&a, 4, "dup-client");
    s.write_all(&publish(4, b"notify/door", 1, 5, b"open"))
        .unwrap();
    assert_puback(&mut s, 5, 0, "first event");
    drop(s);
    let mut s = connected(&a, 4, "dup-client");
    let second = publish(4, b"notify/door", 1, 5, b"open");
    s.write_all(&as_dup(second.clone())).unwrap();
    assert_puback(&mut s, 5, 0, "second event, DUP on a clean connection");
    assert!(wait_until(Duration::from_secs(5), || count("notify/door") == 2));
    // A real resend on the same connection is still stored once.
    s.write_all(&as_dup(second)).unwrap();
    assert_puback(&mut s, 5, 0, "resend on the same connection");
    // A persistent session's resend after a reconnect is stored once too.
    let mut p = connected_with(&a, 4, "dup-persistent", false);
    p.write_all(&publish(4, b"notify/persist", 1, 9, b"p"))
        .unwrap();
    assert_puback(&mut p, 9, 0, "persistent session publish");
    drop(p);
    let mut p = connected_with(&a, 4, "dup-persistent", false);
    p.write_all(&as_dup(publish(4, b"notify/persist", 1, 9, b"p")))
        .unwrap();
    assert_puback(&mut p, 9, 0, "persistent session resend");
    // A publish after both, to know the journal has caught up.
    p.write_all(&publish(4, b"notify/last", 1, 10, b"l"))
        .unwrap();
    assert_puback(&mut p, 10, 0, "last");
    assert!(wait_until(Duration::from_secs(5), || count("notify/last") == 1));
    assert_eq!(count("notify/door"), 2, "{:?}", a.journal());
    assert_eq!(count("notify/persist"), 1, "{:?}", a.journal());
}

#[test]
fn normal_operation_logs_no_error_lines() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("genba.toml");
    std::fs::write(&config, "").unwrap();
    let data = dir.path().join("data");
    let log_path = dir.path().join("genba.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = common::genba_up(&data)
        .arg("--config")
        .arg(&config)
        .env("GENBA_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let endpoints = data.join("run").join("endpoints.json");
    assert!(wait_until(Duration::from_secs(30), || endpoints.exists()));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&endpoints).unwrap()).unwrap();
    let mqtt: std::net::SocketAddr = v["mqtt"].as_str().unwrap().parse().unwrap();
    let http = v["http"].as_str().unwrap().to_string();
    let probes = common::http::Http::new();
    for i in 0..3 {
        // A health probe, a client that says DISCONNECT, one that just closes.
        assert_eq!(
            probes.get(&format!("http://{http}/health"), &[]).status,
            200
        );
        let out = common::mosquitto_pub(mqtt.port(), &["-q", "1", "-t", "t/x", "-m", "m"]);
        assert!(out.status.success());
        let mut s = TcpStream::connect(mqtt).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&connect_packet(5, &format!("abrupt-{i}")))
            .unwrap();
        assert!(read_packet(&mut s).is_some());
    }
    // Let the broker notice the last close, then stop.
    std::thread::sleep(Duration::from_millis(500));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
    let text = std::fs::read_to_string(&log_path).unwrap();
    let errors: Vec<&str> = text.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(errors.is_empty(), "{errors:#?}");
}

#[test]
fn v5_receive_maximum_and_maximum_packet_size_of_the_client_are_kept() {
    let a = Appliance::start("", "");
    let mut sub = TcpStream::connect(a.mqtt).unwrap();
    sub.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    sub.write_all(&connect_v5_limited("limited", 2, 64))
        .unwrap();
    let (h, b) = read_packet(&mut sub).expect("CONNACK");
    assert_eq!((h, b[1]), (0x20, 0), "CONNACK accepted");
    // SUBSCRIBE pid 1, no properties, "lim/#" at QoS 1.
    let mut body = vec![0, 1, 0, 0, 5];
    body.extend_from_slice(b"lim/#");
    body.push(0x01);
    sub.write_all(&frame(0x82, &body)).unwrap();
    assert_eq!(read_packet(&mut sub).map(|(h, _)| h), Some(0x90), "SUBACK");

    let mut publisher = connected(&a, 4, "lim-publisher");
    let big = [b'B'; 100];
    for (pid, payload) in [
        (1u16, &b"m1"[..]),
        (2, &big[..]),
        (3, &b"m2"[..]),
        (4, &b"m3"[..]),
    ] {
        publisher
            .write_all(&publish(4, b"lim/t", 1, pid, payload))
            .unwrap();
        assert_puback(&mut publisher, pid, 0, "publisher");
    }
    // m1 and m2 arrive; the 100-byte one is over the client's 64-byte packets and skipped.
    let mut got = Vec::new();
    for _ in 0..2 {
        let (h, body) = read_packet(&mut sub).expect("PUBLISH");
        assert_eq!(h & 0xF0, 0x30, "PUBLISH");
        got.push(v5_publish_parts(&body));
    }
    assert_eq!(
        got.iter().map(|(_, p)| p.as_slice()).collect::<Vec<_>>(),
        vec![&b"m1"[..], &b"m2"[..]]
    );
    // m3 waits: two publishes are unacknowledged, the client's Receive Maximum.
    sub.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut probe = [0u8; 1];
    assert!(
        matches!(sub.peek(&mut probe), Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut),
        "a third publish arrived beyond Receive Maximum 2: {:?}",
        read_packet(&mut sub)
    );
    // Acknowledge m1: m3 comes.
    sub.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let [hi, lo] = got[0].0.to_be_bytes();
    sub.write_all(&[0x40, 0x02, hi, lo]).unwrap();
    let (h, body) = read_packet(&mut sub).expect("PUBLISH m3");
    assert_eq!(h & 0xF0, 0x30);
    assert_eq!(v5_publish_parts(&body).1, b"m3");
}

#[test]
fn v5_clients_are_told_a_receive_maximum_and_held_to_it() {
    let a = Appliance::start("", "");
    let mut s = TcpStream::connect(a.mqtt).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&connect_packet(5, "eager")).unwrap();
    let (h, connack) = read_packet(&mut s).expect("CONNACK");
    assert_eq!((h, connack[1]), (0x20, 0));
    let at = connack
        .windows(3)
        .position(|w| w[0] == 0x21)
        .expect("Receive Maximum in CONNACK");
    let max = u16::from_be_bytes([connack[at + 1], connack[at + 2]]);
    assert!(max > 0 && max < u16::MAX, "{connack:?}");
    // QoS 2 publishes whose flows are never completed (no PUBREL): one more than the maximum.
    for pid in 1..=max + 1 {
        s.write_all(&publish(5, b"notify/eager", 2, pid, b"x"))
            .unwrap();
    }
    let mut pubrecs = 0;
    let end = loop {
        match read_packet(&mut s) {
            Some((0x50, _)) => pubrecs += 1,
            other => break other,
        }
    };
    assert_eq!(
        end.map(|(h, b)| (h, b.first().copied())),
        Some((0xE0, Some(0x93))),
        "DISCONNECT 0x93 (Receive Maximum exceeded) after {pubrecs} PUBRECs"
    );
    // The DISCONNECT may overtake PUBRECs still on their way from the broker; the publish
    // over the maximum is not journaled.
    assert!(pubrecs <= usize::from(max));
    assert!(wait_until(Duration::from_secs(5), || a.journal().len()
        == usize::from(max)));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(a.journal().len(), usize::from(max));
}

#[test]
fn a_311_client_with_more_in_flight_than_the_receive_maximum_is_slowed_not_cut_off() {
    let a = Appliance::start("", "");
    let mut s = connected(&a, 4, "eager-311");
    // 300 QoS 1 publishes before reading a single PUBACK (genba's own bridge keeps 500 in
    // flight): 3.1.1 has no way to be told a limit, so all are taken.
    let mut burst = Vec::new();
    for pid in 1..=300u16 {
        burst.extend(publish(4, b"notify/burst", 1, pid, b"x"));
    }
    s.write_all(&burst).unwrap();
    for pid in 1..=300u16 {
        assert_puback(&mut s, pid, 0, "burst");
    }
    assert!(wait_until(Duration::from_secs(10), || a.journal().len() == 300));
}
