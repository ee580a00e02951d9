//! MQTT over TLS and HTTPS with the local certificate authority: real clients (Debian's
//! mosquitto_pub with OpenSSL, reqwest with rustls) trust the CA served at /ca.pem, and one
//! that trusts another CA is refused before anything is journaled.

mod common;

use std::time::Duration;

use common::{wait_until, Appliance};

const TLS_CONFIG: &str =
    "[mqtt]\ntls_listen = \"127.0.0.1:0\"\n[http]\ntls_listen = \"127.0.0.1:0\"\n";

fn mosquitto_pub_tls(port: u16, cafile: &std::path::Path, topic: &str) -> std::process::Output {
    std::process::Command::new(common::mosquitto_tool("mosquitto_pub"))
        .args(["-h", "localhost", "-p", &port.to_string(), "-q", "1"])
        .args(["-t", topic, "-m", "over tls", "--cafile"])
        .arg(cafile)
        .output()
        .expect("mosquitto_pub")
}

#[test]
fn mqtt_over_tls_and_https_use_the_local_ca_and_another_ca_is_refused() {
    common::install_crypto();
    let a = Appliance::start(TLS_CONFIG, "");
    let (mqtts, https) = (a.endpoint("mqtts").port(), a.endpoint("https").port());
    // The CA certificate is public, on plain HTTP too: a device needs it before TLS.
    let http = common::http::Http::new();
    let reply = http.get(&a.url("/ca.pem"), &[]);
    assert_eq!(reply.status, 200);
    let ca = reply.text.clone();
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"), "{ca}");
    let ca_file = a.dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca).unwrap();

    let out = mosquitto_pub_tls(mqtts, &ca_file, "notify/tls");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(wait_until(Duration::from_secs(5), || a
        .journal()
        .iter()
        .any(|(t, p)| t == "notify/tls" && p == "over tls")));

    // A client that trusts another CA refuses the broker's certificate.
    let other = tempfile::tempdir().unwrap();
    let other_ca = genba_tls::load(&genba_config::TlsConfig::default(), other.path())
        .unwrap()
        .ca_pem
        .unwrap();
    let other_file = other.path().join("other-ca.pem");
    std::fs::write(&other_file, other_ca).unwrap();
    let out = mosquitto_pub_tls(mqtts, &other_file, "notify/wrong-ca");
    assert!(
        !out.status.success(),
        "a client with another CA got through"
    );

    // HTTPS with the CA: served; without it: refused by the client.
    let trusting = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
        .build()
        .unwrap();
    let url = format!("https://localhost:{https}/health");
    let status = http.block_on(async { trusting.get(&url).send().await.map(|r| r.status()) });
    assert_eq!(status.unwrap().as_u16(), 200);
    let plain = reqwest::Client::new();
    let refused = http.block_on(async { plain.get(&url).send().await });
    assert!(
        refused.is_err(),
        "a client without the CA trusted the server"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(a.journal().iter().all(|(t, _)| t != "notify/wrong-ca"));
}

#[test]
fn the_local_ca_is_made_once_and_kept_across_restarts() {
    let mut a = Appliance::start(TLS_CONFIG, "");
    let ca_path = a.data_dir().join("tls").join("ca.pem");
    let first = std::fs::read_to_string(&ca_path).unwrap();
    assert!(a.terminate().success());
    a.spawn();
    assert_eq!(std::fs::read_to_string(&ca_path).unwrap(), first);
    // Served the same.
    let reply = common::http::Http::new().get(&a.url("/ca.pem"), &[]);
    assert_eq!(reply.text, first);
}

#[test]
fn mqtt_over_websocket_and_tls_trusts_the_local_ca() {
    common::install_crypto();
    let a = Appliance::start("[mqtt]\nwss_listen = \"127.0.0.1:0\"\n", "");
    let wss = a.endpoint("mqtt_wss");
    let ca = std::fs::read(a.data_dir().join("tls").join("ca.pem")).unwrap();
    let url = format!("wss://localhost:{}/mqtt", wss.port());
    let mut o = rumqttc::MqttOptions::new("browser-tls", url, wss.port());
    o.set_transport(rumqttc::Transport::Wss(rumqttc::TlsConfiguration::Simple {
        ca,
        alpn: None,
        client_auth: None,
    }));
    let (client, mut conn) = rumqttc::Client::new(o, 10);
    client
        .publish("notify/wss", rumqttc::QoS::AtLeastOnce, false, "secure")
        .unwrap();
    let acked = conn
        .iter()
        .take(10)
        .any(|e| matches!(e, Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)))));
    assert!(acked, "PUBACK over wss");
    assert!(wait_until(Duration::from_secs(5), || a
        .journal()
        .iter()
        .any(|(t, p)| t == "notify/wss" && p == "secure")));
}
