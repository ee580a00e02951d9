//! Asking the LAN where the appliance is: a one-shot mDNS query for `_genba._tcp.local.` and
//! the reading of its answers into [`Found`] appliances for [`discovery::choose`].
//!
//! # The exchange
//!
//! A device sends [`query`] from an ordinary UDP port (not 5353) to [`GROUP`]:[`PORT`]. Such a
//! "one-shot" query (RFC 6762 §5.1) needs no multicast group membership and no port 5353 of the
//! device's own: every responder answers it by unicast to the port it came from, repeating the
//! query id (RFC 6762 §6.7). The answer carries the PTR record (`_genba._tcp.local.` → the
//! instance) and, as additional records (RFC 6763 §12), the instance's SRV record (its host
//! name), its TXT record (ports and fingerprints, read by [`Service::from_txt_rdata`]) and the
//! host's A records. [`read_response`] joins them: one [`Found`] per instance and IPv4 address.
//!
//! The firmware sends the query over embassy-net at boot and when the appliance in use stops
//! answering; `genba simulate --discover` sends the same bytes from the host and reads the
//! answers with the same code, so the appliance's own announcement tests this module.
//!
//! # Reading untrusted packets
//!
//! Anyone on the LAN can send anything to the device's port. The reader never indexes outside
//! the packet, follows a compression pointer only backwards (so it cannot loop), bounds a name
//! to 255 bytes, skips records it does not need, ignores goodbyes (TTL 0) and keeps at most
//! `N` appliances (the caller's buffer): a malformed packet is an error or fewer appliances,
//! never a panic.
//!
//! [`discovery::choose`]: crate::discovery::choose

use core::fmt;
use core::net::{IpAddr, Ipv4Addr};

use heapless::{String, Vec};

use crate::discovery::{Announcement, Service, TxtError, INSTANCE_MAX, SERVICE_TYPE};

/// The mDNS IPv4 multicast group.
pub const GROUP: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 251);
/// The mDNS port.
pub const PORT: u16 = 5353;
/// Length of the DNS header.
const HEADER_LEN: usize = 12;
/// `_genba._tcp.local.` as DNS labels: 1+6 + 1+4 + 1+5 + 1.
const SERVICE_NAME_LEN: usize = 19;
/// Length of the query [`query`] writes.
pub const QUERY_LEN: usize = HEADER_LEN + SERVICE_NAME_LEN + 4;

const TYPE_A: u16 = 1;
const TYPE_PTR: u16 = 12;
const TYPE_TXT: u16 = 16;
const TYPE_SRV: u16 = 33;
const CLASS_IN: u16 = 1;
/// The top bit of a record's class is mDNS's cache-flush flag, not part of the class.
const CLASS_MASK: u16 = 0x7fff;
/// The QR bit of the header flags: set in responses.
const FLAG_RESPONSE: u16 = 0x8000;
/// Longest DNS name on the wire (RFC 1035 §3.1).
const NAME_MAX: usize = 255;
/// Records of one packet looked at; the rest are ignored (an answer about one appliance has
/// four or five).
const RECORDS_MAX: usize = 48;

/// The query for `_genba._tcp.local.` PTR records, with the id `id` (the answer repeats it).
pub fn query(id: u16) -> [u8; QUERY_LEN] {
    let mut q = [0u8; QUERY_LEN];
    q[0..2].copy_from_slice(&id.to_be_bytes());
    // flags 0 (a standard query), one question, no records
    q[4..6].copy_from_slice(&1u16.to_be_bytes());
    let mut pos = HEADER_LEN;
    for label in SERVICE_TYPE.split('.').filter(|l| !l.is_empty()) {
        q[pos] = label.len() as u8; // the labels of a constant, each < 64
        q[pos + 1..pos + 1 + label.len()].copy_from_slice(label.as_bytes());
        pos += 1 + label.len();
    }
    pos += 1; // the root label
    q[pos..pos + 2].copy_from_slice(&TYPE_PTR.to_be_bytes());
    q[pos + 2..pos + 4].copy_from_slice(&CLASS_IN.to_be_bytes());
    q
}

/// How long to wait, after the query has been sent `sent` times (1 or more) with no answer,
/// before sending it again: 1 s, 2 s, 4 s and so on, at most [`RESEND_MAX_MS`]. A query or its
/// answer can be lost (a busy responder, a Wi-Fi frame dropped, a responder that joined the
/// group a moment late), so a querier that hears nothing asks again, as RFC 6762 §5.2 paces
/// it: the first two queries at least a second apart, each interval at least double the last.
pub fn resend_after_ms(sent: u32) -> u32 {
    let doublings = sent.saturating_sub(1).min(RESEND_MAX_MS.ilog2());
    (1000u32 << doublings).min(RESEND_MAX_MS)
}

/// The longest wait between two sends of the query (one minute).
pub const RESEND_MAX_MS: u32 = 60_000;

/// Why a packet was not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseError {
    /// It ends inside its header, a record or a name.
    Truncated,
    /// It is a query, not a response.
    NotAResponse,
    /// It answers another query (its id is not ours).
    OtherQuery,
    /// A name in it is malformed: a reserved label type, a pointer forwards or out of the
    /// packet, or longer than 255 bytes.
    BadName,
}

impl fmt::Display for ResponseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ResponseError::Truncated => "mDNS packet is truncated",
            ResponseError::NotAResponse => "mDNS packet is a query, not a response",
            ResponseError::OtherQuery => "mDNS response answers another query",
            ResponseError::BadName => "mDNS packet has a malformed name",
        })
    }
}

crate::impl_error!(ResponseError);

/// One appliance that answered: its instance name, one of its IPv4 addresses and its TXT
/// record as read (or why it could not be read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The DNS-SD instance name (`genba` in `genba._genba._tcp.local.`).
    pub instance: String<INSTANCE_MAX>,
    /// An IPv4 address of its host.
    pub address: Ipv4Addr,
    /// What its TXT record says.
    pub service: Result<Service, TxtError>,
}

impl Found {
    /// As [`discovery::choose`](crate::discovery::choose) takes it.
    pub fn announcement(&self) -> Announcement<'_> {
        Announcement {
            instance: &self.instance,
            address: IpAddr::V4(self.address),
            service: self.service,
        }
    }
}

/// Reads one response to [`query`]`(id)` and adds the appliances in it to `found`: one entry per
/// instance and address, an entry already there (the same instance and address, from an
/// earlier packet) updated in place. Returns how many entries were added; stops adding when
/// `found` is full. Instances whose SRV, TXT or A record is not in the packet are left out.
pub fn read_response<const N: usize>(
    packet: &[u8],
    id: u16,
    found: &mut Vec<Found, N>,
) -> Result<usize, ResponseError> {
    let header = packet.get(..HEADER_LEN).ok_or(ResponseError::Truncated)?;
    let word = |i: usize| u16::from_be_bytes([header[i], header[i + 1]]);
    if word(2) & FLAG_RESPONSE == 0 {
        return Err(ResponseError::NotAResponse);
    }
    if word(0) != id {
        return Err(ResponseError::OtherQuery);
    }
    let mut pos = HEADER_LEN;
    for _ in 0..word(4) {
        pos = skip_name(packet, pos)? + 4; // type and class
    }
    let count = usize::from(word(6)) + usize::from(word(8)) + usize::from(word(10));
    let mut records: Vec<Record<'_>, RECORDS_MAX> = Vec::new();
    for _ in 0..count {
        let (record, next) = Record::read(packet, pos)?;
        pos = next;
        if record.ttl != 0 && record.class & CLASS_MASK == CLASS_IN {
            let _ = records.push(record); // a full list ignores the rest
        }
    }
    let mut added = 0;
    let service_type =
        |r: &&Record<'_>| r.kind == TYPE_PTR && name_is(packet, r.name, SERVICE_TYPE);
    for ptr in records.iter().filter(service_type) {
        let instance_name = ptr.data_at;
        let Some(instance) = first_label(packet, instance_name) else {
            continue;
        };
        let of_instance = |kind: u16| {
            records
                .iter()
                .find(move |r| r.kind == kind && names_equal(packet, r.name, instance_name))
        };
        let (Some(srv), Some(txt)) = (of_instance(TYPE_SRV), of_instance(TYPE_TXT)) else {
            continue;
        };
        let target = srv.data_at + 6; // priority, weight, port, then the host name
        if srv.data.len() < 7 {
            continue;
        }
        let service = Service::from_txt_rdata(txt.data);
        let addresses = records.iter().filter(|r| {
            r.kind == TYPE_A && r.data.len() == 4 && names_equal(packet, r.name, target)
        });
        for a in addresses {
            let address = Ipv4Addr::new(a.data[0], a.data[1], a.data[2], a.data[3]);
            let entry = Found {
                instance: instance.clone(),
                address,
                service,
            };
            match found
                .iter_mut()
                .find(|f| f.address == address && f.instance == instance)
            {
                Some(known) => *known = entry,
                None => {
                    if found.push(entry).is_err() {
                        return Ok(added);
                    }
                    added += 1;
                }
            }
        }
    }
    Ok(added)
}

/// A resource record: where its owner name starts, its type, class, TTL and data.
struct Record<'p> {
    name: usize,
    kind: u16,
    class: u16,
    ttl: u32,
    /// Where `data` starts in the packet (names in it may point back into the packet).
    data_at: usize,
    data: &'p [u8],
}

impl<'p> Record<'p> {
    /// The record at `pos`, and where the next one starts.
    fn read(packet: &'p [u8], pos: usize) -> Result<(Record<'p>, usize), ResponseError> {
        let fixed = skip_name(packet, pos)?;
        let field = packet
            .get(fixed..fixed + 10)
            .ok_or(ResponseError::Truncated)?;
        let u16_at = |i: usize| u16::from_be_bytes([field[i], field[i + 1]]);
        let len = usize::from(u16_at(8));
        let data_at = fixed + 10;
        let data = packet
            .get(data_at..data_at + len)
            .ok_or(ResponseError::Truncated)?;
        let record = Record {
            name: pos,
            kind: u16_at(0),
            class: u16_at(2),
            ttl: u32::from_be_bytes([field[4], field[5], field[6], field[7]]),
            data_at,
            data,
        };
        Ok((record, data_at + len))
    }
}

/// Where the name at `pos` ends (after its root label or its first pointer).
fn skip_name(packet: &[u8], mut pos: usize) -> Result<usize, ResponseError> {
    loop {
        let len = *packet.get(pos).ok_or(ResponseError::Truncated)?;
        match len & 0xc0 {
            0x00 if len == 0 => return Ok(pos + 1),
            0x00 => pos += 1 + usize::from(len),
            0xc0 => {
                packet.get(pos + 1).ok_or(ResponseError::Truncated)?;
                return Ok(pos + 2);
            }
            _ => return Err(ResponseError::BadName),
        }
    }
}

/// The labels of the name at `pos`, compression pointers followed.
struct Labels<'p> {
    packet: &'p [u8],
    pos: usize,
    /// Bytes of the name so far, for the 255-byte bound.
    len: usize,
    done: bool,
}

impl<'p> Iterator for Labels<'p> {
    type Item = Result<&'p [u8], ResponseError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let step = (|| loop {
            let len = *self.packet.get(self.pos).ok_or(ResponseError::Truncated)?;
            match len & 0xc0 {
                0x00 if len == 0 => return Ok(None),
                0x00 => {
                    let start = self.pos + 1;
                    let end = start + usize::from(len);
                    let label = self
                        .packet
                        .get(start..end)
                        .ok_or(ResponseError::Truncated)?;
                    self.len += 1 + label.len();
                    if self.len > NAME_MAX {
                        return Err(ResponseError::BadName);
                    }
                    self.pos = end;
                    return Ok(Some(label));
                }
                0xc0 => {
                    let low = *self
                        .packet
                        .get(self.pos + 1)
                        .ok_or(ResponseError::Truncated)?;
                    let target = usize::from(u16::from_be_bytes([len & 0x3f, low]));
                    // only backwards: every jump lowers `pos`, so there is no loop
                    if target >= self.pos {
                        return Err(ResponseError::BadName);
                    }
                    self.pos = target;
                }
                _ => return Err(ResponseError::BadName),
            }
        })();
        match step {
            Ok(Some(label)) => Some(Ok(label)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

fn labels(packet: &[u8], pos: usize) -> Labels<'_> {
    Labels {
        packet,
        pos,
        len: 0,
        done: false,
    }
}

/// Whether two names in the packet are the same (ASCII case-insensitive); a malformed one
/// equals nothing.
fn names_equal(packet: &[u8], a: usize, b: usize) -> bool {
    let (mut a, mut b) = (labels(packet, a), labels(packet, b));
    loop {
        match (a.next(), b.next()) {
            (None, None) => return true,
            (Some(Ok(x)), Some(Ok(y))) if x.eq_ignore_ascii_case(y) => {}
            _ => return false,
        }
    }
}

/// Whether the name at `pos` is `dotted` (`a.b.c.`, case-insensitive).
fn name_is(packet: &[u8], pos: usize, dotted: &str) -> bool {
    let mut wanted = dotted.split('.').filter(|l| !l.is_empty());
    let mut got = labels(packet, pos);
    loop {
        match (got.next(), wanted.next()) {
            (None, None) => return true,
            (Some(Ok(x)), Some(y)) if x.eq_ignore_ascii_case(y.as_bytes()) => {}
            _ => return false,
        }
    }
}

/// The first label of the name at `pos` as an instance name (UTF-8, at most 63 bytes).
fn first_label(packet: &[u8], pos: usize) -> Option<String<INSTANCE_MAX>> {
    let label = labels(packet, pos).next()?.ok()?;
    let text = core::str::from_utf8(label).ok()?;
    String::try_from(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::Fingerprint;

    #[test]
    fn an_unanswered_query_is_sent_again_a_second_later_then_at_doubling_intervals() {
        let waits: std::vec::Vec<u32> = (1..=8).map(resend_after_ms).collect();
        assert_eq!(waits, [1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000]);
        assert_eq!(resend_after_ms(0), 1000);
        assert_eq!(resend_after_ms(u32::MAX), RESEND_MAX_MS);
    }

    /// A DNS message writer for the tests: names may end in a pointer to an earlier offset.
    struct Packet(std::vec::Vec<u8>);

    impl Packet {
        fn response(id: u16, questions: u16, records: u16) -> Packet {
            let mut p = Packet(std::vec::Vec::new());
            p.u16(id)
                .u16(0x8400)
                .u16(questions)
                .u16(records)
                .u16(0)
                .u16(0);
            p
        }
        fn u16(&mut self, v: u16) -> &mut Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn here(&self) -> usize {
            self.0.len()
        }
        /// `labels`, then the root label or a pointer to `tail`.
        fn name(&mut self, labels: &[&str], tail: Option<usize>) -> &mut Self {
            for l in labels {
                self.0.push(l.len() as u8);
                self.0.extend_from_slice(l.as_bytes());
            }
            match tail {
                Some(at) => {
                    self.u16(0xc000 | at as u16);
                }
                None => self.0.push(0),
            }
            self
        }
        /// Type, class (cache-flush set), TTL and RDATA length; the caller writes the data.
        fn record_head(&mut self, kind: u16, ttl: u32, len: u16) -> &mut Self {
            self.u16(kind).u16(0x8001);
            self.0.extend_from_slice(&ttl.to_be_bytes());
            self.u16(len)
        }
    }

    const FP: Fingerprint = [0xab; 32];

    fn txt_rdata() -> std::vec::Vec<u8> {
        let mut out = std::vec::Vec::new();
        let fp = std::format!("fp={}", crate::discovery::hex(&FP));
        let pairs = ["v=1", "mqtt=1883", "http=8080", fp.as_str()];
        for p in pairs {
            out.push(p.len() as u8);
            out.extend_from_slice(p.as_bytes());
        }
        out
    }

    /// What mdns-sd and Avahi send: the question repeated, the PTR answer, then SRV, TXT and A
    /// as additional records, names compressed against earlier ones.
    fn appliance_answer(id: u16, instance: &str, addresses: &[[u8; 4]], ttl: u32) -> Packet {
        let mut p = Packet::response(id, 1, 0);
        let service = p.here();
        p.name(&["_genba", "_tcp", "local"], None)
            .u16(TYPE_PTR)
            .u16(1);
        // PTR: service -> instance.service
        p.name(&[], Some(service));
        let len = 1 + instance.len() as u16 + 2;
        p.record_head(TYPE_PTR, ttl, len);
        let instance_at = p.here();
        p.name(&[instance], Some(service));
        // SRV: instance -> port 1883, host pi.local
        p.name(&[], Some(instance_at));
        p.record_head(TYPE_SRV, ttl, 6 + 1 + 2 + 2);
        p.u16(0).u16(0).u16(1883);
        let host_at = p.here();
        p.name(&["pi"], Some(service + 12)); // "local" inside the service name
                                             // TXT
        let txt = txt_rdata();
        p.name(&[], Some(instance_at));
        p.record_head(TYPE_TXT, ttl, txt.len() as u16);
        p.0.extend_from_slice(&txt);
        for a in addresses {
            p.name(&[], Some(host_at));
            p.record_head(TYPE_A, ttl, 4);
            p.0.extend_from_slice(a);
        }
        let records = 3 + addresses.len() as u16;
        p.0[6..8].copy_from_slice(&1u16.to_be_bytes()); // one answer (the PTR)
        p.0[10..12].copy_from_slice(&(records - 1).to_be_bytes()); // the rest additional
        p
    }

    #[test]
    fn the_query_asks_for_the_service_ptr_records() {
        let q = query(0x1234);
        assert_eq!(&q[..12], &[0x12, 0x34, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&q[12..31], b"\x06_genba\x04_tcp\x05local\x00");
        assert_eq!(&q[31..], &[0, 12, 0, 1]);
    }

    #[test]
    fn an_answer_gives_each_address_of_the_instance_with_its_txt() {
        let p = appliance_answer(7, "genba", &[[192, 168, 1, 20], [10, 0, 0, 5]], 120);
        let mut found: Vec<Found, 4> = Vec::new();
        assert_eq!(read_response(&p.0, 7, &mut found), Ok(2));
        assert_eq!(found[0].instance.as_str(), "genba");
        assert_eq!(found[0].address, Ipv4Addr::new(192, 168, 1, 20));
        assert_eq!(found[1].address, Ipv4Addr::new(10, 0, 0, 5));
        let service = found[0].service.unwrap();
        assert_eq!(service.mqtt, Some(1883));
        assert_eq!(service.http, Some(8080));
        assert_eq!(service.fingerprint, Some(FP));
        let a = found[1].announcement();
        assert_eq!(a.address, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5)));
    }

    #[test]
    fn the_same_appliance_answering_twice_is_one_entry() {
        let p = appliance_answer(7, "genba", &[[192, 168, 1, 20]], 120);
        let mut found: Vec<Found, 4> = Vec::new();
        assert_eq!(read_response(&p.0, 7, &mut found), Ok(1));
        assert_eq!(read_response(&p.0, 7, &mut found), Ok(0));
        assert_eq!(found.len(), 1);
    }

    #[test]
    fn a_full_list_keeps_what_it_has() {
        let p = appliance_answer(
            7,
            "genba",
            &[[10, 0, 0, 1], [10, 0, 0, 2], [10, 0, 0, 3]],
            120,
        );
        let mut found: Vec<Found, 2> = Vec::new();
        assert_eq!(read_response(&p.0, 7, &mut found), Ok(2));
        assert_eq!(found.len(), 2);
    }

    #[test]
    fn goodbyes_queries_and_other_ids_give_nothing() {
        let mut found: Vec<Found, 4> = Vec::new();
        let goodbye = appliance_answer(7, "genba", &[[10, 0, 0, 1]], 0);
        assert_eq!(read_response(&goodbye.0, 7, &mut found), Ok(0));
        let other = appliance_answer(8, "genba", &[[10, 0, 0, 1]], 120);
        assert_eq!(
            read_response(&other.0, 7, &mut found),
            Err(ResponseError::OtherQuery)
        );
        assert_eq!(
            read_response(&query(7), 7, &mut found),
            Err(ResponseError::NotAResponse)
        );
        assert!(found.is_empty());
    }

    #[test]
    fn another_service_or_a_missing_txt_is_left_out() {
        // the same packet shape for `_http._tcp`
        let mut p = appliance_answer(7, "genba", &[[10, 0, 0, 1]], 120);
        p.0[12..19].copy_from_slice(b"\x06_other");
        let mut found: Vec<Found, 4> = Vec::new();
        assert_eq!(read_response(&p.0, 7, &mut found), Ok(0));
        // no TXT: the TXT record's type changed to something else
        let mut p = appliance_answer(7, "genba", &[[10, 0, 0, 1]], 120);
        let txt_type = p.0.windows(4).position(|w| w == [0, 16, 0x80, 1]).unwrap();
        p.0[txt_type + 1] = 99;
        assert_eq!(read_response(&p.0, 7, &mut found), Ok(0));
    }

    #[test]
    fn names_compare_through_pointers_and_case() {
        let mut p = Packet::response(1, 0, 0);
        let a = p.here();
        p.name(&["Genba", "_tcp", "LOCAL"], None);
        let b = p.here();
        p.name(&["genba"], Some(a + 6));
        assert!(names_equal(&p.0, a, b));
        assert!(name_is(&p.0, b, "genba._tcp.local."));
        assert!(!name_is(&p.0, b, "genba._tcp."));
        assert!(!name_is(&p.0, b, "genba._tcp.local.x."));
    }

    #[test]
    fn a_pointer_forwards_or_to_itself_is_a_bad_name() {
        let mut p = Packet::response(1, 0, 0);
        let at = p.here();
        p.u16(0xc000 | at as u16); // points at itself
        assert_eq!(labels(&p.0, at).next(), Some(Err(ResponseError::BadName)));
        let mut p = Packet::response(1, 0, 0);
        let at = p.here();
        p.u16(0xc000 | (at as u16 + 2)); // forwards
        p.name(&["x"], None);
        assert_eq!(labels(&p.0, at).next(), Some(Err(ResponseError::BadName)));
    }

    #[test]
    fn a_name_longer_than_255_bytes_is_a_bad_name() {
        let mut p = Packet::response(1, 0, 0);
        let label = "a".repeat(63);
        let at = p.here();
        p.name(&[&label, &label, &label, &label, &label], None);
        let last = labels(&p.0, at).last();
        assert_eq!(last, Some(Err(ResponseError::BadName)));
    }

    #[test]
    fn every_truncation_and_every_flipped_byte_is_read_without_a_panic() {
        let p = appliance_answer(7, "genba", &[[192, 168, 1, 20]], 120);
        let mut found: Vec<Found, 4> = Vec::new();
        for end in 0..p.0.len() {
            // a cut packet is an error or (cut inside the last A record's data) fewer entries
            if let Ok(n) = read_response(&p.0[..end], 7, &mut found) {
                assert_eq!(n, 0, "a packet cut at {end} gave an appliance");
            }
        }
        for i in 0..p.0.len() {
            for bit in 0..8 {
                let mut bad = p.0.clone();
                bad[i] ^= 1 << bit;
                found.clear();
                let _ = read_response(&bad, 7, &mut found);
                assert!(found.len() <= 1);
            }
        }
    }
}
