//! Just enough MQTT framing for the front door: split the stream into packets, read CONNECT
//! and PUBLISH, and build the CONNACK refusals. Everything else passes through untouched.

use std::collections::HashMap;

use tokio::io::{AsyncRead, AsyncReadExt};

pub const CONNECT: u8 = 1;
pub const CONNACK: u8 = 2;
pub const PUBLISH: u8 = 3;
pub const PUBACK: u8 = 4;
pub const PUBREC: u8 = 5;
pub const PUBREL: u8 = 6;
pub const PUBCOMP: u8 = 7;

/// The Topic Alias Maximum rumqttd announces in its MQTT 5 CONNACK.
pub const TOPIC_ALIAS_MAX: u16 = 4096;

/// Why the front door ends a connection, as an MQTT 5 reason code (3.1.1 just closes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    Malformed = 0x81,
    Protocol = 0x82,
    TopicInvalid = 0x90,
    AliasInvalid = 0x94,
    TooLarge = 0x95,
    ReceiveMaximumExceeded = 0x93,
}

#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    #[error("connection closed")]
    Closed,
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("packet of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("malformed {0}")]
    Malformed(&'static str),
    #[error("{1} (reason {0:?})")]
    Refused(Violation, &'static str),
}

impl PacketError {
    /// The MQTT 5 DISCONNECT reason for this error, if the client is to be told.
    pub fn violation(&self) -> Option<Violation> {
        match self {
            PacketError::Closed | PacketError::Io(_) => None,
            PacketError::TooLarge(_) => Some(Violation::TooLarge),
            PacketError::Malformed(_) => Some(Violation::Malformed),
            PacketError::Refused(v, _) => Some(*v),
        }
    }
}

/// MQTT 5 DISCONNECT from the server with `reason`.
pub fn disconnect_v5(reason: Violation) -> Vec<u8> {
    vec![0xE0, 0x02, reason as u8, 0x00]
}

/// MQTT 5 PUBACK or PUBREC (`kind`) for `pid` with a reason code.
pub fn ack_v5(kind: u8, pid: u16, reason: u8) -> Vec<u8> {
    let [hi, lo] = pid.to_be_bytes();
    vec![kind << 4, 0x04, hi, lo, reason, 0x00]
}

/// One packet: the fixed header's first byte and the bytes after the remaining length.
pub struct Frame {
    pub header: u8,
    pub body: Vec<u8>,
}

impl Frame {
    pub fn kind(&self) -> u8 {
        self.header >> 4
    }

    /// The packet as it goes on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.body.len() + 5);
        out.push(self.header);
        encode_varint(self.body.len(), &mut out);
        out.extend_from_slice(&self.body);
        out
    }
}

pub fn encode_varint(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            break;
        }
    }
}

/// Reads one packet; `Closed` on a clean end of stream before its first byte.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, max: usize) -> Result<Frame, PacketError> {
    let header = match r.read_u8().await {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(PacketError::Closed),
        Err(e) => return Err(e.into()),
    };
    let mut len = 0usize;
    let mut shift = 0;
    loop {
        let byte = r.read_u8().await?;
        len |= ((byte & 0x7f) as usize) << shift;
        if byte & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 21 {
            return Err(PacketError::Malformed("remaining length"));
        }
    }
    if len > max {
        return Err(PacketError::TooLarge(len));
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).await?;
    Ok(Frame { header, body })
}

/// A cursor over a packet body.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn u8(&mut self, what: &'static str) -> Result<u8, PacketError> {
        let b = *self.buf.get(self.pos).ok_or(PacketError::Malformed(what))?;
        self.pos += 1;
        Ok(b)
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, PacketError> {
        Ok(u16::from_be_bytes([self.u8(what)?, self.u8(what)?]))
    }
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], PacketError> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or(PacketError::Malformed(what))?;
        let s = self
            .buf
            .get(self.pos..end)
            .ok_or(PacketError::Malformed(what))?;
        self.pos = end;
        Ok(s)
    }
    fn binary(&mut self, what: &'static str) -> Result<&'a [u8], PacketError> {
        let n = self.u16(what)? as usize;
        self.take(n, what)
    }
    fn string(&mut self, what: &'static str) -> Result<&'a str, PacketError> {
        std::str::from_utf8(self.binary(what)?).map_err(|_| PacketError::Malformed(what))
    }
    fn varint(&mut self, what: &'static str) -> Result<usize, PacketError> {
        let mut n = 0usize;
        for shift in [0, 7, 14, 21] {
            let b = self.u8(what)?;
            n |= ((b & 0x7f) as usize) << shift;
            if b & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err(PacketError::Malformed(what))
    }
    /// MQTT 5 properties: returns the block's bytes.
    fn properties(&mut self, what: &'static str) -> Result<&'a [u8], PacketError> {
        let n = self.varint(what)?;
        self.take(n, what)
    }
}

pub const SUBSCRIBE: u8 = 8;
pub const UNSUBSCRIBE: u8 = 10;

/// The topic filters of a SUBSCRIBE or UNSUBSCRIBE body (for the session list; rumqttd
/// checks the packet itself).
pub fn filters(kind: u8, body: &[u8], v5: bool) -> Result<Vec<String>, PacketError> {
    let mut c = Cursor { buf: body, pos: 0 };
    c.u16("packet id")?;
    if v5 {
        c.properties("subscribe properties")?;
    }
    let mut out = Vec::new();
    while c.pos < body.len() {
        out.push(c.string("topic filter")?.to_owned());
        if kind == SUBSCRIBE {
            c.u8("subscription options")?;
        }
    }
    Ok(out)
}

/// What the front door needs from a CONNECT.
#[derive(Debug)]
pub struct Connect {
    /// 3 (MQTT 3.1), 4 (3.1.1) or 5.
    pub level: u8,
    pub keep_alive: u16,
    /// Clean Session (3.1.1) / Clean Start (5): the client starts without earlier state.
    pub clean_start: bool,
    /// MQTT 5: how many QoS 1/2 publishes the client takes unacknowledged.
    pub receive_maximum: Option<u16>,
    /// MQTT 5: the largest packet the client takes (whole packet, bytes).
    pub maximum_packet_size: Option<u32>,
    /// Offset of the keep-alive field in the body, to rewrite 0.
    pub keep_alive_at: usize,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<Vec<u8>>,
}

pub fn parse_connect(body: &[u8]) -> Result<Connect, PacketError> {
    let mut c = Cursor { buf: body, pos: 0 };
    let name = c.string("protocol name")?;
    if name != "MQTT" && name != "MQIsdp" {
        return Err(PacketError::Malformed("protocol name"));
    }
    let level = c.u8("protocol level")?;
    let flags = c.u8("connect flags")?;
    let keep_alive_at = c.pos;
    let keep_alive = c.u16("keep alive")?;
    let (mut receive_maximum, mut maximum_packet_size) = (None, None);
    if level == 5 {
        walk_properties(c.properties("connect properties")?, |id, v| match (id, v) {
            (0x21, [a, b]) => receive_maximum = Some(u16::from_be_bytes([*a, *b])),
            (0x27, [a, b, c, d]) => {
                maximum_packet_size = Some(u32::from_be_bytes([*a, *b, *c, *d]))
            }
            _ => {}
        })?;
        if receive_maximum == Some(0) || maximum_packet_size == Some(0) {
            return Err(PacketError::Refused(
                Violation::Protocol,
                "receive maximum or maximum packet size 0",
            ));
        }
    }
    let client_id = c.string("client id")?.to_owned();
    if flags & 0x04 != 0 {
        if level == 5 {
            c.properties("will properties")?;
        }
        c.string("will topic")?;
        c.binary("will payload")?;
    }
    let username = if flags & 0x80 != 0 {
        Some(c.string("username")?.to_owned())
    } else {
        None
    };
    let password = if flags & 0x40 != 0 {
        Some(c.binary("password")?.to_vec())
    } else {
        None
    };
    Ok(Connect {
        level,
        keep_alive,
        clean_start: flags & 0x02 != 0,
        receive_maximum,
        maximum_packet_size,
        keep_alive_at,
        client_id,
        username,
        password,
    })
}

/// The parts of a PUBLISH the journal keeps.
#[derive(Debug, PartialEq)]
pub struct Publish {
    pub topic: String,
    pub qos: u8,
    pub retain: bool,
    pub dup: bool,
    pub pid: Option<u16>,
    pub payload: Vec<u8>,
}

/// Parses and checks a PUBLISH from a client; for MQTT 5 resolves topic aliases through
/// `aliases`. A topic with a wildcard or a NUL, an empty topic without an alias, an unknown or
/// out-of-range alias, packet id 0 at QoS 1/2 and QoS 3 are refused: such a publish is never
/// journaled nor acknowledged.
pub fn parse_publish(
    frame: &Frame,
    v5: bool,
    aliases: &mut HashMap<u16, String>,
) -> Result<Publish, PacketError> {
    let qos = (frame.header >> 1) & 0x03;
    if qos == 3 {
        return Err(PacketError::Malformed("publish qos"));
    }
    let mut c = Cursor {
        buf: &frame.body,
        pos: 0,
    };
    let mut topic = c.string("topic")?.to_owned();
    let pid = if qos > 0 {
        let pid = c.u16("packet id")?;
        if pid == 0 {
            return Err(PacketError::Refused(Violation::Protocol, "packet id 0"));
        }
        Some(pid)
    } else {
        None
    };
    if v5 {
        let props = c.properties("publish properties")?;
        if let Some(alias) = topic_alias(props)? {
            if alias == 0 || alias > TOPIC_ALIAS_MAX {
                return Err(PacketError::Refused(
                    Violation::AliasInvalid,
                    "topic alias out of range",
                ));
            }
            if topic.is_empty() {
                topic = aliases.get(&alias).cloned().ok_or(PacketError::Refused(
                    Violation::Protocol,
                    "unknown topic alias",
                ))?;
            } else {
                aliases.insert(alias, topic.clone());
            }
        }
    }
    if topic.is_empty() {
        return Err(PacketError::Refused(Violation::Protocol, "empty topic"));
    }
    if topic.contains(['+', '#', '\0']) {
        return Err(PacketError::Refused(
            Violation::TopicInvalid,
            "wildcard or NUL in a topic name",
        ));
    }
    Ok(Publish {
        topic,
        qos,
        retain: frame.header & 0x01 != 0,
        dup: frame.header & 0x08 != 0,
        pid,
        payload: frame.body[c.pos..].to_vec(),
    })
}

/// Calls `each(id, value)` for every property of an MQTT 5 property block, `value` being the
/// property's bytes after its identifier.
fn walk_properties<'a>(
    props: &'a [u8],
    mut each: impl FnMut(usize, &'a [u8]),
) -> Result<(), PacketError> {
    let mut c = Cursor { buf: props, pos: 0 };
    while c.pos < props.len() {
        let id = c.varint("property id")?;
        let at = c.pos;
        match id {
            0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => {
                c.u8("property")?;
            }
            0x13 | 0x21 | 0x22 | 0x23 => {
                c.u16("property")?;
            }
            0x02 | 0x11 | 0x18 | 0x27 => {
                c.take(4, "property")?;
            }
            0x0B => {
                c.varint("property")?;
            }
            0x03 | 0x08 | 0x12 | 0x15 | 0x1A | 0x1C | 0x1F | 0x09 | 0x16 => {
                c.binary("property")?;
            }
            0x26 => {
                c.binary("user property")?;
                c.binary("user property")?;
            }
            _ => return Err(PacketError::Malformed("unknown property")),
        }
        each(id, &props[at..c.pos]);
    }
    Ok(())
}

/// Finds the Topic Alias (0x23) in an MQTT 5 property block.
fn topic_alias(props: &[u8]) -> Result<Option<u16>, PacketError> {
    let mut alias = None;
    walk_properties(props, |id, v| {
        if let (0x23, [hi, lo]) = (id, v) {
            alias = Some(u16::from_be_bytes([*hi, *lo]));
        }
    })?;
    Ok(alias)
}

/// An MQTT 5 CONNACK "success" with a Receive Maximum (0x21) added to its properties (the
/// front door keeps that limit; rumqttd announces none). Other CONNACKs are returned as they are.
pub fn connack_with_receive_maximum(connack: Frame, receive_maximum: u16) -> Frame {
    let mut c = Cursor {
        buf: &connack.body,
        pos: 0,
    };
    let (Ok(flags), Ok(0), Ok(props)) = (
        c.u8("connack flags"),
        c.u8("connack reason"),
        c.properties("connack properties"),
    ) else {
        return connack;
    };
    let mut has_it = false;
    if walk_properties(props, |id, _| has_it |= id == 0x21).is_err() || has_it {
        return connack;
    }
    let mut body = vec![flags, 0];
    encode_varint(props.len() + 3, &mut body);
    body.extend_from_slice(props);
    body.push(0x21);
    body.extend_from_slice(&receive_maximum.to_be_bytes());
    Frame {
        header: connack.header,
        body,
    }
}

/// Why a CONNECT is refused.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Refusal {
    BadVersion,
    BadCredentials,
    NotAuthorized,
    ServerBusy,
}

/// The CONNACK that tells a client why it is refused, in its protocol version.
pub fn connack_refusal(level: u8, why: Refusal) -> Vec<u8> {
    if level == 5 {
        let code = match why {
            Refusal::BadVersion => 0x84,
            Refusal::BadCredentials => 0x86,
            Refusal::NotAuthorized => 0x87,
            Refusal::ServerBusy => 0x89,
        };
        vec![0x20, 0x03, 0x00, code, 0x00]
    } else {
        let code = match why {
            Refusal::BadVersion => 0x01,
            Refusal::BadCredentials => 0x04,
            Refusal::NotAuthorized => 0x05,
            Refusal::ServerBusy => 0x03,
        };
        vec![0x20, 0x02, 0x00, code]
    }
}

/// An MQTT 3.1.1 CONNECT with credentials, used to probe the internal listeners.
pub fn connect_v4(client_id: &str, username: &str, password: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x80 | 0x40 | 0x02];
    body.extend_from_slice(&30u16.to_be_bytes());
    for s in [client_id, username, password] {
        body.extend_from_slice(&(s.len() as u16).to_be_bytes());
        body.extend_from_slice(s.as_bytes());
    }
    Frame { header: 0x10, body }.encode()
}

#[cfg(test)]
mod filter_tests {
    use super::*;

    #[test]
    fn subscribe_and_unsubscribe_filters_are_read_for_both_versions() {
        // 3.1.1 SUBSCRIBE: pid 1, "a/#" QoS 1, "b" QoS 0.
        let body = [0, 1, 0, 3, b'a', b'/', b'#', 1, 0, 1, b'b', 0];
        assert_eq!(filters(SUBSCRIBE, &body, false).unwrap(), ["a/#", "b"]);
        // MQTT 5 SUBSCRIBE with a subscription identifier property (0x0B, 7).
        let body = [0, 2, 2, 0x0B, 7, 0, 1, b'x', 0];
        assert_eq!(filters(SUBSCRIBE, &body, true).unwrap(), ["x"]);
        let body = [0, 3, 0, 1, b'x'];
        assert_eq!(filters(UNSUBSCRIBE, &body, false).unwrap(), ["x"]);
        assert!(filters(SUBSCRIBE, &[0, 1, 0, 9, b'a'], false).is_err());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connect_round_trips_through_framing_and_parsing() {
        let bytes = connect_v4("probe", "user", "pw");
        let mut r = &bytes[..];
        let frame = read_frame(&mut r, 1024).await.unwrap();
        assert_eq!(frame.kind(), CONNECT);
        let c = parse_connect(&frame.body).unwrap();
        assert_eq!(c.level, 4);
        assert_eq!(c.keep_alive, 30);
        assert!(c.clean_start);
        assert_eq!(c.client_id, "probe");
        assert_eq!(c.username.as_deref(), Some("user"));
        assert_eq!(c.password.as_deref(), Some(&b"pw"[..]));
        assert_eq!(
            &frame.body[c.keep_alive_at..c.keep_alive_at + 2],
            &30u16.to_be_bytes()
        );
    }

    #[tokio::test]
    async fn oversized_packet_is_refused_before_reading_its_body() {
        let mut bytes = vec![0x30];
        encode_varint(10_000, &mut bytes);
        let mut r = &bytes[..];
        assert!(matches!(
            read_frame(&mut r, 1000).await,
            Err(PacketError::TooLarge(10_000))
        ));
    }

    #[test]
    fn v5_publish_resolves_topic_alias() {
        let mut aliases = HashMap::new();
        // topic "a/b", qos 1, pid 9, properties: topic alias 3, payload "hi"
        let mut body = vec![0, 3, b'a', b'/', b'b', 0, 9, 3, 0x23, 0, 3];
        body.extend_from_slice(b"hi");
        let first = Frame { header: 0x32, body };
        let p = parse_publish(&first, true, &mut aliases).unwrap();
        assert_eq!(
            (p.topic.as_str(), p.qos, p.pid, &p.payload[..]),
            ("a/b", 1, Some(9), &b"hi"[..])
        );
        let mut body = vec![0, 0, 3, 0x23, 0, 3];
        body.extend_from_slice(b"yo");
        let second = Frame { header: 0x30, body };
        let p = parse_publish(&second, true, &mut aliases).unwrap();
        assert_eq!(
            (p.topic.as_str(), p.pid, &p.payload[..]),
            ("a/b", None, &b"yo"[..])
        );
    }

    #[test]
    fn v5_connect_limits_are_read() {
        // CONNECT v5, clean start, keep-alive 10, properties: receive maximum 2, maximum
        // packet size 256, a user property; client id "c".
        let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 10];
        let props = [0x21, 0, 2, 0x27, 0, 0, 1, 0, 0x26, 0, 1, b'k', 0, 1, b'v'];
        body.push(props.len() as u8);
        body.extend_from_slice(&props);
        body.extend_from_slice(&[0, 1, b'c']);
        let c = parse_connect(&body).unwrap();
        assert_eq!(
            (c.receive_maximum, c.maximum_packet_size),
            (Some(2), Some(256))
        );
        assert_eq!(c.client_id, "c");
    }

    #[test]
    fn v5_connack_gets_a_receive_maximum() {
        // success, session present 0, properties: topic alias maximum 4096.
        let connack = Frame {
            header: 0x20,
            body: vec![0, 0, 3, 0x22, 0x10, 0x00],
        };
        let out = connack_with_receive_maximum(connack, 100);
        assert_eq!(out.body, vec![0, 0, 6, 0x22, 0x10, 0x00, 0x21, 0, 100]);
        // A refusal is left alone.
        let refusal = Frame {
            header: 0x20,
            body: vec![0, 0x87, 0],
        };
        assert_eq!(
            connack_with_receive_maximum(refusal, 100).body,
            vec![0, 0x87, 0]
        );
    }

    #[test]
    fn v4_publish_flags_are_read() {
        let mut aliases = HashMap::new();
        let body = vec![0, 1, b't', 0, 1, b'x'];
        let p = parse_publish(&Frame { header: 0x3B, body }, false, &mut aliases).unwrap();
        assert_eq!((p.qos, p.retain, p.dup, p.pid), (1, true, true, Some(1)));
    }

    #[test]
    fn refusals_use_each_versions_codes() {
        assert_eq!(
            connack_refusal(4, Refusal::BadCredentials),
            vec![0x20, 2, 0, 4]
        );
        assert_eq!(
            connack_refusal(5, Refusal::BadCredentials),
            vec![0x20, 3, 0, 0x86, 0]
        );
    }
}
