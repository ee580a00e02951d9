//! Raw MQTT packets on real sockets, for tests that must see every byte the broker sends
//! (reason codes, flags) or send what no client library would (invalid packets).

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// MQTT 3.1.1 or 5 CONNECT, clean session, keep-alive 30, no credentials.
pub fn connect_packet(level: u8, client_id: &str) -> Vec<u8> {
    connect_with(level, client_id, true)
}

pub fn connect_with(level: u8, client_id: &str, clean: bool) -> Vec<u8> {
    let flags = if clean { 0x02 } else { 0x00 };
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', level, flags, 0, 30];
    if level == 5 {
        body.push(0); // no properties
    }
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    frame(0x10, &body)
}

pub fn frame(header: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![header];
    let mut n = body.len();
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

/// PUBLISH with a raw topic (bytes, so invalid ones can be sent), QoS, packet id, payload.
pub fn publish(level: u8, topic: &[u8], qos: u8, pid: u16, payload: &[u8]) -> Vec<u8> {
    let mut body = (topic.len() as u16).to_be_bytes().to_vec();
    body.extend_from_slice(topic);
    if qos > 0 {
        body.extend_from_slice(&pid.to_be_bytes());
    }
    if level == 5 {
        body.push(0);
    }
    body.extend_from_slice(payload);
    frame(0x30 | (qos << 1), &body)
}

/// Reads one packet: (first byte, body); `None` once the server closed the connection.
pub fn read_packet(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut first = [0u8; 1];
    match s.read_exact(&mut first) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => return None,
        Err(e) if e.kind() == ErrorKind::ConnectionReset => return None,
        Err(e) => panic!("read: {e}"),
    }
    let mut len = 0usize;
    let mut shift = 0;
    loop {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).ok()?;
        len |= ((b[0] & 0x7f) as usize) << shift;
        if b[0] & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    let mut body = vec![0; len];
    s.read_exact(&mut body).ok()?;
    Some((first[0], body))
}

/// A connected raw client: CONNECT sent, CONNACK "accepted" read.
pub fn connected(a: &super::Appliance, level: u8, client_id: &str) -> TcpStream {
    connected_with(a, level, client_id, true)
}

pub fn connected_with(a: &super::Appliance, level: u8, client_id: &str, clean: bool) -> TcpStream {
    let mut s = TcpStream::connect(a.mqtt).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&connect_with(level, client_id, clean)).unwrap();
    let (header, body) = read_packet(&mut s).expect("CONNACK");
    assert_eq!(header, 0x20, "CONNACK");
    assert_eq!(body[1], 0, "CONNACK accepted: {body:?}");
    s
}

/// Asserts the server ends the connection: for MQTT 5 with a DISCONNECT carrying `reason`.
pub fn assert_refused(s: &mut TcpStream, level: u8, reason: u8, what: &str) {
    if level == 5 {
        let p = read_packet(s);
        assert_eq!(
            p.as_ref().map(|(h, b)| (*h, b.first().copied())),
            Some((0xE0, Some(reason))),
            "{what}: expected DISCONNECT {reason:#x}, got {p:?}"
        );
    }
    assert_eq!(read_packet(s), None, "{what}: connection not closed");
}

/// A publish that must go through: its PUBACK reason (MQTT 5) or plain PUBACK (3.1.1).
pub fn assert_puback(s: &mut TcpStream, pid: u16, reason: u8, what: &str) {
    let (header, body) = read_packet(s).unwrap_or_else(|| panic!("{what}: closed"));
    assert_eq!(header, 0x40, "{what}: PUBACK, got {header:#x} {body:?}");
    assert_eq!(&body[..2], &pid.to_be_bytes(), "{what}");
    assert_eq!(body.get(2).copied().unwrap_or(0), reason, "{what}: reason");
}

/// The same PUBLISH with the DUP flag set.
pub fn as_dup(mut packet: Vec<u8>) -> Vec<u8> {
    packet[0] |= 0x08;
    packet
}

/// MQTT 5 CONNECT with Receive Maximum and Maximum Packet Size.
pub fn connect_v5_limited(
    client_id: &str,
    receive_maximum: u16,
    maximum_packet_size: u32,
) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 30];
    let mut props = vec![0x21];
    props.extend_from_slice(&receive_maximum.to_be_bytes());
    props.push(0x27);
    props.extend_from_slice(&maximum_packet_size.to_be_bytes());
    body.push(props.len() as u8);
    body.extend_from_slice(&props);
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    frame(0x10, &body)
}

/// The payload of a PUBLISH body (MQTT 5, QoS 1): after topic, packet id and properties.
pub fn v5_publish_parts(body: &[u8]) -> (u16, Vec<u8>) {
    let topic_len = u16::from_be_bytes([body[0], body[1]]) as usize;
    let pid = u16::from_be_bytes([body[2 + topic_len], body[3 + topic_len]]);
    let props_len = body[4 + topic_len] as usize;
    (pid, body[5 + topic_len + props_len..].to_vec())
}

/// MQTT 5 CONNECT: Clean Start, an optional Session Expiry Interval, keep-alive 30.
pub fn connect_v5(client_id: &str, clean: bool, expiry: Option<u32>) -> Vec<u8> {
    let flags = if clean { 0x02 } else { 0x00 };
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, flags, 0, 30];
    match expiry {
        Some(e) => {
            body.push(5);
            body.push(0x11);
            body.extend_from_slice(&e.to_be_bytes());
        }
        None => body.push(0),
    }
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    frame(0x10, &body)
}

/// Sends `connect`; returns the stream and the CONNACK's Session Present flag (panics on a
/// refusal).
pub fn connect_raw(a: &super::Appliance, connect: &[u8]) -> (TcpStream, bool) {
    let mut s = TcpStream::connect(a.mqtt).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(connect).unwrap();
    let (header, body) = read_packet(&mut s).expect("CONNACK");
    assert_eq!(header, 0x20, "CONNACK");
    assert_eq!(body[1], 0, "CONNACK accepted: {body:?}");
    (s, body[0] & 0x01 == 1)
}

/// SUBSCRIBE of one filter with its options byte (QoS in the two low bits); waits for the
/// SUBACK and returns its return code.
pub fn subscribe(s: &mut TcpStream, level: u8, pid: u16, filter: &str, options: u8) -> u8 {
    let mut body = pid.to_be_bytes().to_vec();
    if level == 5 {
        body.push(0);
    }
    body.extend_from_slice(&(filter.len() as u16).to_be_bytes());
    body.extend_from_slice(filter.as_bytes());
    body.push(options);
    s.write_all(&frame(0x82, &body)).unwrap();
    loop {
        let (h, b) = read_packet(s).expect("SUBACK");
        if h == 0x90 {
            return *b.last().expect("return code");
        }
    }
}

/// A PUBLISH as a client receives it.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    pub qos: u8,
    pub dup: bool,
    pub retain: bool,
    pub topic: String,
    pub pid: u16,
    pub payload: Vec<u8>,
}

pub fn parse_publish(level: u8, header: u8, body: &[u8]) -> Received {
    let qos = (header >> 1) & 0x03;
    let n = u16::from_be_bytes([body[0], body[1]]) as usize;
    let topic = String::from_utf8(body[2..2 + n].to_vec()).unwrap();
    let mut at = 2 + n;
    let mut pid = 0;
    if qos > 0 {
        pid = u16::from_be_bytes([body[at], body[at + 1]]);
        at += 2;
    }
    if level == 5 {
        // Property length: a variable byte integer.
        let mut len = 0usize;
        let mut shift = 0;
        loop {
            let b = body[at];
            at += 1;
            len |= ((b & 0x7f) as usize) << shift;
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
        }
        at += len;
    }
    Received {
        qos,
        dup: header & 0x08 != 0,
        retain: header & 0x01 != 0,
        topic,
        pid,
        payload: body[at..].to_vec(),
    }
}

/// Reads until a PUBLISH arrives, acknowledging nothing; `None` when the connection closes
/// (a read timeout panics).
pub fn next_publish(s: &mut TcpStream, level: u8) -> Option<Received> {
    loop {
        let (h, b) = read_packet(s)?;
        if h & 0xF0 == 0x30 {
            return Some(parse_publish(level, h, &b));
        }
    }
}

/// Acknowledges a received QoS 1 publish (PUBACK).
pub fn puback(s: &mut TcpStream, pid: u16) {
    let [hi, lo] = pid.to_be_bytes();
    s.write_all(&[0x40, 0x02, hi, lo]).unwrap();
}

/// Whether nothing arrives within `wait`.
pub fn silent_for(s: &mut TcpStream, wait: Duration) -> bool {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut probe = [0u8; 1];
    let quiet = matches!(s.peek(&mut probe), Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    quiet
}
