//! The MQTT 3.1.1 and 5.0 wire format, for a server: split the stream into packets, read
//! what clients send (CONNECT, PUBLISH, the acknowledgements, SUBSCRIBE, UNSUBSCRIBE,
//! DISCONNECT) and write what a server sends. One codec for both versions: MQTT 5 adds
//! reason codes and properties, written only when the connection speaks it.

use std::collections::HashMap;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt};

pub const CONNECT: u8 = 1;
pub const CONNACK: u8 = 2;
pub const PUBLISH: u8 = 3;
pub const PUBACK: u8 = 4;
pub const PUBREC: u8 = 5;
pub const PUBREL: u8 = 6;
pub const PUBCOMP: u8 = 7;
pub const SUBSCRIBE: u8 = 8;
pub const SUBACK: u8 = 9;
pub const UNSUBSCRIBE: u8 = 10;
pub const UNSUBACK: u8 = 11;
pub const PINGREQ: u8 = 12;
pub const PINGRESP: u8 = 13;
pub const DISCONNECT: u8 = 14;
pub const AUTH: u8 = 15;

/// The Topic Alias Maximum the broker announces to MQTT 5 clients (aliases a client may set).
pub const TOPIC_ALIAS_MAX: u16 = 64;

/// Why the broker ends a connection, as an MQTT 5 reason code (3.1.1 just closes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    Malformed = 0x81,
    Protocol = 0x82,
    KeepAliveTimeout = 0x8D,
    SessionTakenOver = 0x8E,
    TopicInvalid = 0x90,
    ReceiveMaximumExceeded = 0x93,
    AliasInvalid = 0x94,
    TooLarge = 0x95,
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

fn protocol(what: &'static str) -> PacketError {
    PacketError::Refused(Violation::Protocol, what)
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
        put_frame(&mut out, self.header, &self.body);
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

fn varint_len(n: usize) -> usize {
    match n {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Appends a whole packet (fixed header, remaining length, body) to `out`.
fn put_frame(out: &mut Vec<u8>, header: u8, body: &[u8]) {
    out.push(header);
    encode_varint(body.len(), out);
    out.extend_from_slice(body);
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
    fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0 }
    }
    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }
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
        utf8(self.binary(what)?, what)
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
    fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos.min(self.buf.len())..]
    }
}

/// An MQTT UTF-8 string: valid UTF-8 without NUL (MQTT-1.5.3-2).
fn utf8<'a>(b: &'a [u8], what: &'static str) -> Result<&'a str, PacketError> {
    let s = std::str::from_utf8(b).map_err(|_| PacketError::Malformed(what))?;
    if s.contains('\0') {
        return Err(PacketError::Malformed(what));
    }
    Ok(s)
}

fn be_u32(v: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(v.try_into().ok()?))
}

fn be_u16(v: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(v.try_into().ok()?))
}

/// Calls `each(id, value)` for every property of an MQTT 5 property block, `value` being the
/// property's bytes after its identifier.
fn walk_properties<'a>(
    props: &'a [u8],
    mut each: impl FnMut(usize, &'a [u8]) -> Result<(), PacketError>,
) -> Result<(), PacketError> {
    let mut c = Cursor::new(props);
    while !c.done() {
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
            0x03 | 0x08 | 0x12 | 0x15 | 0x1A | 0x1C | 0x1F => {
                c.string("property")?;
            }
            0x09 | 0x16 => {
                c.binary("property")?;
            }
            0x26 => {
                c.string("user property")?;
                c.string("user property")?;
            }
            _ => return Err(PacketError::Malformed("unknown property")),
        }
        each(id, &props[at..c.pos])?;
    }
    Ok(())
}

/// A will message from CONNECT.
#[derive(Debug, Clone)]
pub struct Will {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    /// MQTT 5 Will Delay Interval, seconds.
    pub delay: u32,
    /// MQTT 5 Message Expiry Interval of the will, seconds.
    pub expiry: Option<u32>,
    /// MQTT 5 properties to pass on with the will (see [`Publish::props`]).
    pub props: Bytes,
}

/// A CONNECT.
#[derive(Debug)]
pub struct Connect {
    /// 3 (MQTT 3.1), 4 (3.1.1) or 5.
    pub level: u8,
    pub keep_alive: u16,
    /// Clean Session (3.1.1) / Clean Start (5): the client starts without earlier state.
    pub clean_start: bool,
    /// MQTT 5 Session Expiry Interval (seconds; absent is 0).
    pub session_expiry: u32,
    /// MQTT 5: how many QoS 1/2 publishes the client takes unacknowledged.
    pub receive_maximum: Option<u16>,
    /// MQTT 5: the largest packet the client takes (whole packet, bytes).
    pub maximum_packet_size: Option<u32>,
    /// MQTT 5: how many topic aliases the client takes from the server.
    pub topic_alias_maximum: u16,
    /// MQTT 5 Request Problem Information (absent is 1).
    pub request_problem_info: bool,
    /// MQTT 5 Authentication Method (enhanced authentication, not supported).
    pub auth_method: Option<String>,
    pub client_id: String,
    pub will: Option<Will>,
    pub username: Option<String>,
    pub password: Option<Vec<u8>>,
}

/// The MQTT 5 properties of a PUBLISH that travel with the message to subscribers: all but
/// Topic Alias (per connection), Subscription Identifier (per subscriber) and Message
/// Expiry Interval (rewritten on the way out), re-encoded as a property block body.
fn forwarded_properties(props: &[u8]) -> Result<(Option<u32>, Bytes), PacketError> {
    let mut expiry = None;
    let mut kept = Vec::new();
    walk_properties(props, |id, v| {
        match id {
            0x02 => expiry = be_u32(v),
            0x23 | 0x0B => {}
            0x01 | 0x03 | 0x08 | 0x09 | 0x26 => {
                encode_varint(id, &mut kept);
                kept.extend_from_slice(v);
            }
            _ => return Err(protocol("property not allowed in PUBLISH")),
        }
        Ok(())
    })?;
    Ok((expiry, Bytes::from(kept)))
}

pub fn parse_connect(body: &[u8]) -> Result<Connect, PacketError> {
    let mut c = Cursor::new(body);
    let name = c.string("protocol name")?;
    if name != "MQTT" && name != "MQIsdp" {
        return Err(PacketError::Malformed("protocol name"));
    }
    let level = c.u8("protocol level")?;
    let flags = c.u8("connect flags")?;
    if flags & 0x01 != 0 {
        return Err(PacketError::Malformed("reserved connect flag"));
    }
    let keep_alive = c.u16("keep alive")?;
    let mut connect = Connect {
        level,
        keep_alive,
        clean_start: flags & 0x02 != 0,
        session_expiry: 0,
        receive_maximum: None,
        maximum_packet_size: None,
        topic_alias_maximum: 0,
        request_problem_info: true,
        auth_method: None,
        client_id: String::new(),
        will: None,
        username: None,
        password: None,
    };
    if level == 5 {
        walk_properties(c.properties("connect properties")?, |id, v| {
            match id {
                0x11 => connect.session_expiry = be_u32(v).unwrap_or(0),
                0x21 => connect.receive_maximum = be_u16(v),
                0x27 => connect.maximum_packet_size = be_u32(v),
                0x22 => connect.topic_alias_maximum = be_u16(v).unwrap_or(0),
                0x17 => connect.request_problem_info = v != [0],
                0x15 => {
                    connect.auth_method =
                        Some(String::from_utf8_lossy(v.get(2..).unwrap_or_default()).into())
                }
                0x19 | 0x26 | 0x16 => {}
                _ => return Err(protocol("property not allowed in CONNECT")),
            }
            Ok(())
        })?;
        if connect.receive_maximum == Some(0) || connect.maximum_packet_size == Some(0) {
            return Err(protocol("receive maximum or maximum packet size 0"));
        }
    }
    connect.client_id = c.string("client id")?.to_owned();
    if flags & 0x04 != 0 {
        let (mut delay, mut expiry, mut props) = (0, None, Bytes::new());
        if level == 5 {
            let will_props = c.properties("will properties")?;
            let mut rest = Vec::new();
            walk_properties(will_props, |id, v| {
                match id {
                    0x18 => delay = be_u32(v).unwrap_or(0),
                    0x02 => expiry = be_u32(v),
                    0x01 | 0x03 | 0x08 | 0x09 | 0x26 => {
                        encode_varint(id, &mut rest);
                        rest.extend_from_slice(v);
                    }
                    _ => return Err(protocol("property not allowed in a will")),
                }
                Ok(())
            })?;
            props = Bytes::from(rest);
        }
        let topic = c.string("will topic")?.to_owned();
        if !crate::topic::valid_topic(&topic) {
            return Err(PacketError::Refused(
                Violation::TopicInvalid,
                "will topic invalid",
            ));
        }
        let payload = Bytes::copy_from_slice(c.binary("will payload")?);
        let qos = (flags >> 3) & 0x03;
        if qos == 3 {
            return Err(PacketError::Malformed("will qos"));
        }
        connect.will = Some(Will {
            topic,
            payload,
            qos,
            retain: flags & 0x20 != 0,
            delay,
            expiry,
            props,
        });
    } else if flags & 0x38 != 0 {
        return Err(PacketError::Malformed("will flags without a will"));
    }
    if flags & 0x80 != 0 {
        connect.username = Some(c.string("username")?.to_owned());
    }
    if flags & 0x40 != 0 {
        connect.password = Some(c.binary("password")?.to_vec());
    }
    Ok(connect)
}

/// A PUBLISH from a client.
#[derive(Debug, PartialEq)]
pub struct Publish {
    pub topic: String,
    pub qos: u8,
    pub retain: bool,
    pub dup: bool,
    pub pid: Option<u16>,
    pub payload: Bytes,
    /// MQTT 5 Message Expiry Interval, seconds.
    pub expiry: Option<u32>,
    /// MQTT 5 properties passed on to subscribers (payload format, content type, response
    /// topic, correlation data, user properties), as property block bytes.
    pub props: Bytes,
}

/// Parses and checks a PUBLISH from a client; for MQTT 5 resolves topic aliases through
/// `aliases`. A topic with a wildcard or a NUL, an empty topic without an alias, an unknown or
/// out-of-range alias, packet id 0 at QoS 1/2 and QoS 3 are refused.
pub fn parse_publish(
    frame: &Frame,
    v5: bool,
    aliases: &mut HashMap<u16, String>,
) -> Result<Publish, PacketError> {
    let qos = (frame.header >> 1) & 0x03;
    if qos == 3 {
        return Err(PacketError::Malformed("publish qos"));
    }
    let mut c = Cursor::new(&frame.body);
    let mut topic = c.string("topic")?.to_owned();
    let pid = if qos > 0 {
        let pid = c.u16("packet id")?;
        if pid == 0 {
            return Err(protocol("packet id 0"));
        }
        Some(pid)
    } else {
        None
    };
    let (mut expiry, mut props) = (None, Bytes::new());
    if v5 {
        let block = c.properties("publish properties")?;
        let mut alias = None;
        walk_properties(block, |id, v| {
            if id == 0x23 {
                alias = be_u16(v);
            }
            Ok(())
        })?;
        (expiry, props) = forwarded_properties(block)?;
        if let Some(alias) = alias {
            if alias == 0 || alias > TOPIC_ALIAS_MAX {
                return Err(PacketError::Refused(
                    Violation::AliasInvalid,
                    "topic alias out of range",
                ));
            }
            if topic.is_empty() {
                topic = aliases
                    .get(&alias)
                    .cloned()
                    .ok_or(protocol("unknown topic alias"))?;
            } else {
                aliases.insert(alias, topic.clone());
            }
        }
    }
    if topic.is_empty() {
        return Err(protocol("empty topic"));
    }
    if !crate::topic::valid_topic(&topic) {
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
        payload: Bytes::copy_from_slice(c.rest()),
        expiry,
        props,
    })
}

/// PUBACK, PUBREC, PUBREL or PUBCOMP: packet id and reason code (0 when absent).
pub fn parse_ack(frame: &Frame) -> Result<(u16, u8), PacketError> {
    let mut c = Cursor::new(&frame.body);
    let pid = c.u16("packet id")?;
    let reason = if c.done() { 0 } else { c.u8("reason code")? };
    Ok((pid, reason))
}

/// One topic filter of a SUBSCRIBE with its options.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscribeFilter {
    pub filter: String,
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    /// 0: send retained messages; 1: only for a new subscription; 2: never.
    pub retain_handling: u8,
}

#[derive(Debug, PartialEq)]
pub struct Subscribe {
    pub pid: u16,
    pub id: Option<u32>,
    pub filters: Vec<SubscribeFilter>,
}

pub fn parse_subscribe(frame: &Frame, v5: bool) -> Result<Subscribe, PacketError> {
    if frame.header & 0x0F != 0x02 {
        return Err(PacketError::Malformed("subscribe flags"));
    }
    let mut c = Cursor::new(&frame.body);
    let pid = c.u16("packet id")?;
    let mut id = None;
    if v5 {
        walk_properties(c.properties("subscribe properties")?, |pid_, v| {
            match pid_ {
                0x0B => {
                    let mut vc = Cursor::new(v);
                    let n = vc.varint("subscription identifier")?;
                    if n == 0 {
                        return Err(protocol("subscription identifier 0"));
                    }
                    id = u32::try_from(n).ok();
                }
                0x26 => {}
                _ => return Err(protocol("property not allowed in SUBSCRIBE")),
            }
            Ok(())
        })?;
    }
    let mut filters = Vec::new();
    while !c.done() {
        let filter = c.string("topic filter")?.to_owned();
        let options = c.u8("subscription options")?;
        let reserved = if v5 { 0xC0 } else { 0xFC };
        if options & reserved != 0 || options & 0x03 == 3 || (options >> 4) & 0x03 == 3 {
            return Err(PacketError::Malformed("subscription options"));
        }
        filters.push(SubscribeFilter {
            filter,
            qos: options & 0x03,
            no_local: v5 && options & 0x04 != 0,
            retain_as_published: v5 && options & 0x08 != 0,
            retain_handling: if v5 { (options >> 4) & 0x03 } else { 0 },
        });
    }
    if filters.is_empty() {
        return Err(protocol("SUBSCRIBE without a topic filter"));
    }
    Ok(Subscribe { pid, id, filters })
}

/// UNSUBSCRIBE: packet id and filters.
pub fn parse_unsubscribe(frame: &Frame, v5: bool) -> Result<(u16, Vec<String>), PacketError> {
    if frame.header & 0x0F != 0x02 {
        return Err(PacketError::Malformed("unsubscribe flags"));
    }
    let mut c = Cursor::new(&frame.body);
    let pid = c.u16("packet id")?;
    if v5 {
        c.properties("unsubscribe properties")?;
    }
    let mut filters = Vec::new();
    while !c.done() {
        filters.push(c.string("topic filter")?.to_owned());
    }
    if filters.is_empty() {
        return Err(protocol("UNSUBSCRIBE without a topic filter"));
    }
    Ok((pid, filters))
}

/// DISCONNECT from a client: reason code and, MQTT 5, a new Session Expiry Interval.
pub fn parse_disconnect(frame: &Frame) -> Result<(u8, Option<u32>), PacketError> {
    let mut c = Cursor::new(&frame.body);
    if c.done() {
        return Ok((0, None));
    }
    let reason = c.u8("reason code")?;
    let mut expiry = None;
    if !c.done() {
        walk_properties(c.properties("disconnect properties")?, |id, v| {
            if id == 0x11 {
                expiry = be_u32(v);
            }
            Ok(())
        })?;
    }
    Ok((reason, expiry))
}

/// A packet id and reason code acknowledgement (PUBACK, PUBREC, PUBREL, PUBCOMP), written
/// into `out`. MQTT 3.1.1 and a success in MQTT 5 use the short form.
pub fn put_ack(out: &mut Vec<u8>, kind: u8, pid: u16, reason: u8, v5: bool) {
    let header = kind << 4 | if kind == PUBREL { 0x02 } else { 0 };
    let [hi, lo] = pid.to_be_bytes();
    if v5 && reason != 0 {
        out.extend_from_slice(&[header, 0x03, hi, lo, reason]);
    } else {
        out.extend_from_slice(&[header, 0x02, hi, lo]);
    }
}

pub fn ack(kind: u8, pid: u16, reason: u8, v5: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(5);
    put_ack(&mut out, kind, pid, reason, v5);
    out
}

/// MQTT 5 DISCONNECT from the server with `reason`.
pub fn disconnect_v5(reason: Violation) -> Vec<u8> {
    vec![0xE0, 0x02, reason as u8, 0x00]
}

pub fn pingresp() -> Vec<u8> {
    vec![PINGRESP << 4, 0]
}

/// SUBACK with one return code per filter (3.1.1: 0, 1, 2 or 0x80).
pub fn suback(pid: u16, codes: &[u8], v5: bool) -> Vec<u8> {
    let mut body = pid.to_be_bytes().to_vec();
    if v5 {
        body.push(0);
    }
    body.extend_from_slice(codes);
    let mut out = Vec::with_capacity(body.len() + 5);
    put_frame(&mut out, SUBACK << 4, &body);
    out
}

/// UNSUBACK; MQTT 5 carries a reason code per filter (0 success, 0x11 no subscription).
pub fn unsuback(pid: u16, codes: &[u8], v5: bool) -> Vec<u8> {
    let mut body = pid.to_be_bytes().to_vec();
    if v5 {
        body.push(0);
        body.extend_from_slice(codes);
    }
    let mut out = Vec::with_capacity(body.len() + 5);
    put_frame(&mut out, UNSUBACK << 4, &body);
    out
}

/// What an accepting CONNACK tells an MQTT 5 client.
#[derive(Debug, Default)]
pub struct ConnackProperties {
    pub assigned_client_id: Option<String>,
    pub receive_maximum: u16,
    pub topic_alias_maximum: u16,
    pub maximum_packet_size: u32,
    pub server_keep_alive: Option<u16>,
    pub session_expiry: Option<u32>,
}

/// CONNACK "accepted".
pub fn connack_accepted(session_present: bool, v5: Option<&ConnackProperties>) -> Vec<u8> {
    let mut body = vec![u8::from(session_present), 0];
    if let Some(p) = v5 {
        let mut props = Vec::new();
        props.push(0x21);
        props.extend_from_slice(&p.receive_maximum.to_be_bytes());
        props.push(0x22);
        props.extend_from_slice(&p.topic_alias_maximum.to_be_bytes());
        props.push(0x27);
        props.extend_from_slice(&p.maximum_packet_size.to_be_bytes());
        if let Some(id) = &p.assigned_client_id {
            props.push(0x12);
            props.extend_from_slice(&(id.len() as u16).to_be_bytes());
            props.extend_from_slice(id.as_bytes());
        }
        if let Some(k) = p.server_keep_alive {
            props.push(0x13);
            props.extend_from_slice(&k.to_be_bytes());
        }
        if let Some(e) = p.session_expiry {
            props.push(0x11);
            props.extend_from_slice(&e.to_be_bytes());
        }
        encode_varint(props.len(), &mut body);
        body.extend_from_slice(&props);
    }
    let mut out = Vec::with_capacity(body.len() + 5);
    put_frame(&mut out, CONNACK << 4, &body);
    out
}

/// How a PUBLISH goes out to one subscriber.
pub struct OutgoingPublish<'a> {
    pub topic: &'a str,
    pub payload: &'a [u8],
    pub qos: u8,
    pub retain: bool,
    pub dup: bool,
    pub pid: u16,
    /// MQTT 5 only (ignored for 3.1.1):
    pub props: &'a [u8],
    pub expiry: Option<u32>,
    pub subscription_ids: &'a [u32],
    /// Topic alias to set; with `topic` empty, the alias alone names the topic.
    pub alias: Option<u16>,
}

/// Appends a PUBLISH to `out`; returns its size on the wire.
pub fn put_publish(out: &mut Vec<u8>, p: &OutgoingPublish<'_>, v5: bool) -> usize {
    let header = PUBLISH << 4 | (u8::from(p.dup) << 3) | (p.qos << 1) | u8::from(p.retain);
    let mut props = Vec::new();
    if v5 {
        if let Some(e) = p.expiry {
            props.push(0x02);
            props.extend_from_slice(&e.to_be_bytes());
        }
        if let Some(a) = p.alias {
            props.push(0x23);
            props.extend_from_slice(&a.to_be_bytes());
        }
        for id in p.subscription_ids {
            props.push(0x0B);
            encode_varint(*id as usize, &mut props);
        }
        props.extend_from_slice(p.props);
    }
    let mut len = 2 + p.topic.len() + p.payload.len();
    if p.qos > 0 {
        len += 2;
    }
    if v5 {
        len += varint_len(props.len()) + props.len();
    }
    let start = out.len();
    out.push(header);
    encode_varint(len, out);
    out.extend_from_slice(&(p.topic.len() as u16).to_be_bytes());
    out.extend_from_slice(p.topic.as_bytes());
    if p.qos > 0 {
        out.extend_from_slice(&p.pid.to_be_bytes());
    }
    if v5 {
        encode_varint(props.len(), out);
        out.extend_from_slice(&props);
    }
    out.extend_from_slice(p.payload);
    out.len() - start
}

/// Why a CONNECT is refused.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Refusal {
    BadVersion,
    BadCredentials,
    NotAuthorized,
    ServerBusy,
    /// 3.1.1: a client id the server does not accept (empty without Clean Session).
    IdentifierRejected,
    /// MQTT 5: an authentication method the server does not support.
    BadAuthMethod,
}

/// The CONNACK that tells a client why it is refused, in its protocol version.
pub fn connack_refusal(level: u8, why: Refusal) -> Vec<u8> {
    if level == 5 {
        let code = match why {
            Refusal::BadVersion => 0x84,
            Refusal::BadCredentials => 0x86,
            Refusal::NotAuthorized => 0x87,
            Refusal::ServerBusy => 0x89,
            Refusal::IdentifierRejected => 0x85,
            Refusal::BadAuthMethod => 0x8C,
        };
        vec![0x20, 0x03, 0x00, code, 0x00]
    } else {
        let code = match why {
            Refusal::BadVersion => 0x01,
            Refusal::IdentifierRejected => 0x02,
            Refusal::ServerBusy => 0x03,
            Refusal::BadCredentials => 0x04,
            Refusal::NotAuthorized | Refusal::BadAuthMethod => 0x05,
        };
        vec![0x20, 0x02, 0x00, code]
    }
}

/// An MQTT 3.1.1 CONNECT with credentials (the health probe's).
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
    fn v5_publish_resolves_topic_alias_and_keeps_forwarded_properties() {
        let mut aliases = HashMap::new();
        // topic "a/b", qos 1, pid 9, properties: topic alias 3, expiry 7, content type "t".
        let mut body = vec![
            0, 3, b'a', b'/', b'b', 0, 9, 12, 0x23, 0, 3, 0x02, 0, 0, 0, 7,
        ];
        body.extend_from_slice(&[0x03, 0, 1, b't']);
        body.extend_from_slice(b"hi");
        let first = Frame { header: 0x32, body };
        let p = parse_publish(&first, true, &mut aliases).unwrap();
        assert_eq!(
            (p.topic.as_str(), p.qos, p.pid, &p.payload[..]),
            ("a/b", 1, Some(9), &b"hi"[..])
        );
        assert_eq!(p.expiry, Some(7));
        assert_eq!(&p.props[..], &[0x03, 0, 1, b't']);
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
    fn v5_connect_limits_session_expiry_and_will_are_read() {
        // CONNECT v5, clean start + will QoS 1, keep-alive 10, properties: receive maximum 2,
        // maximum packet size 256, session expiry 60, a user property; client id "c";
        // will properties: delay 5; will topic "w", payload "x".
        let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, 0x02 | 0x04 | 0x08, 0, 10];
        let props = [
            0x21, 0, 2, 0x27, 0, 0, 1, 0, 0x11, 0, 0, 0, 60, 0x26, 0, 1, b'k', 0, 1, b'v',
        ];
        body.push(props.len() as u8);
        body.extend_from_slice(&props);
        body.extend_from_slice(&[0, 1, b'c']);
        body.extend_from_slice(&[5, 0x18, 0, 0, 0, 5]);
        body.extend_from_slice(&[0, 1, b'w', 0, 1, b'x']);
        let c = parse_connect(&body).unwrap();
        assert_eq!(
            (c.receive_maximum, c.maximum_packet_size, c.session_expiry),
            (Some(2), Some(256), 60)
        );
        assert_eq!(c.client_id, "c");
        let will = c.will.unwrap();
        assert_eq!((will.topic.as_str(), will.qos, will.delay), ("w", 1, 5));
    }

    #[test]
    fn v4_publish_flags_are_read() {
        let mut aliases = HashMap::new();
        let body = vec![0, 1, b't', 0, 1, b'x'];
        let p = parse_publish(&Frame { header: 0x3B, body }, false, &mut aliases).unwrap();
        assert_eq!((p.qos, p.retain, p.dup, p.pid), (1, true, true, Some(1)));
    }

    #[test]
    fn subscribe_options_are_read_for_both_versions() {
        // 3.1.1 SUBSCRIBE: pid 1, "a/#" QoS 1, "b" QoS 0.
        let body = vec![0, 1, 0, 3, b'a', b'/', b'#', 1, 0, 1, b'b', 0];
        let s = parse_subscribe(&Frame { header: 0x82, body }, false).unwrap();
        assert_eq!(s.pid, 1);
        assert_eq!(s.filters[0].filter, "a/#");
        assert_eq!(s.filters[1].qos, 0);
        // MQTT 5: subscription identifier 7, "x" with QoS 2, no local, retain as published,
        // retain handling 2.
        let body = vec![0, 2, 2, 0x0B, 7, 0, 1, b'x', 0x02 | 0x04 | 0x08 | 0x20];
        let s = parse_subscribe(&Frame { header: 0x82, body }, true).unwrap();
        assert_eq!(s.id, Some(7));
        let f = &s.filters[0];
        assert_eq!(
            (f.qos, f.no_local, f.retain_as_published, f.retain_handling),
            (2, true, true, 2)
        );
        // Reserved bits set: malformed.
        let body = vec![0, 1, 0, 1, b'b', 0x40];
        assert!(parse_subscribe(&Frame { header: 0x82, body }, true).is_err());
        let (pid, filters) = parse_unsubscribe(
            &Frame {
                header: 0xA2,
                body: vec![0, 3, 0, 1, b'x'],
            },
            false,
        )
        .unwrap();
        assert_eq!((pid, filters), (3, vec!["x".to_string()]));
    }

    #[test]
    fn outgoing_publish_length_matches_what_is_written() {
        for (v5, qos, props) in [(false, 0u8, &b""[..]), (true, 1, &[0x03u8, 0, 1, b't'][..])] {
            let payload = vec![7u8; 300];
            let mut out = Vec::new();
            let n = put_publish(
                &mut out,
                &OutgoingPublish {
                    topic: "a/b",
                    payload: &payload,
                    qos,
                    retain: true,
                    dup: false,
                    pid: 5,
                    props,
                    expiry: Some(9),
                    subscription_ids: &[1, 300],
                    alias: None,
                },
                v5,
            );
            assert_eq!(n, out.len());
            let mut r = &out[..];
            let frame = futures_lite_block(read_frame(&mut r, 10_000)).unwrap();
            let mut aliases = HashMap::new();
            // Subscription identifiers are not allowed from clients, so only check the body
            // length and the payload's position.
            assert_eq!(frame.header & 0x01, 1);
            assert!(frame.body.ends_with(&payload));
            if !v5 {
                let p = parse_publish(&frame, false, &mut aliases).unwrap();
                assert_eq!(p.topic, "a/b");
            }
        }
    }

    fn futures_lite_block<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
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
        assert_eq!(
            connack_refusal(4, Refusal::IdentifierRejected),
            vec![0x20, 2, 0, 2]
        );
    }
}
