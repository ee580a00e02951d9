//! Wall-clock bookkeeping for a device without a battery-backed clock.
//!
//! The device counts milliseconds since boot. Once an SNTP answer arrives ([`sntp_parse`]),
//! [`Clock::sync`] records the epoch time of boot; from then on [`Clock::stamp`] gives epoch
//! milliseconds and an RFC 3339 UTC string. Before that, stamps are boot-relative and
//! `recorded_at` is [`crate::telemetry::UNSYNCED`] (the empty string).

use core::fmt::Write as _;

use heapless::String;

/// Seconds between the NTP epoch (1900) and the Unix epoch (1970).
pub const NTP_UNIX_OFFSET_S: u64 = 2_208_988_800;
/// SNTP server port.
pub const NTP_PORT: u16 = 123;
/// Size of an SNTP packet without extensions.
pub const SNTP_PACKET_LEN: usize = 48;
/// Times before 2024-01-01T00:00:00Z are treated as bogus (a server with no clock).
pub const MIN_VALID_EPOCH_MS: u64 = 1_704_067_200_000;

/// Formats epoch milliseconds as RFC 3339 UTC with milliseconds, e.g. `2026-02-15T12:00:00.000Z`.
pub fn rfc3339(epoch_ms: u64) -> String<32> {
    let secs = epoch_ms / 1000;
    let ms = epoch_ms % 1000;
    let days = secs / 86_400;
    let sod = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    let mut s = String::new();
    // at most 24 characters for years up to 9999 (u64::MAX ms is year ~584 million: 33+ chars,
    // which fails the write and leaves a truncated string; callers never pass such values)
    let _ = write!(
        s,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    );
    s
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// Whether `s` looks like `YYYY-MM-DD[T| ]HH:MM:SS[.f…][Z|±HH:MM]` with fields in range.
pub fn is_date_time(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() < 19 {
        return false;
    }
    let num = |from: usize, len: usize| -> Option<u32> {
        let part = b.get(from..from + len)?;
        part.iter().try_fold(0u32, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
        })
    };
    let shape = b[4] == b'-'
        && b[7] == b'-'
        && matches!(b[10], b'T' | b't' | b' ')
        && b[13] == b':'
        && b[16] == b':';
    let fields = (|| {
        let (mo, d, h, mi, sec) = (
            num(5, 2)?,
            num(8, 2)?,
            num(11, 2)?,
            num(14, 2)?,
            num(17, 2)?,
        );
        num(0, 4)?;
        Some((1..=12).contains(&mo) && (1..=31).contains(&d) && h < 24 && mi < 60 && sec <= 60)
    })();
    if !shape || fields != Some(true) {
        return false;
    }
    let mut rest = &b[19..];
    if let Some(frac) = rest.strip_prefix(b".") {
        let digits = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return false;
        }
        rest = &frac[digits..];
    }
    match rest {
        [] | [b'Z'] | [b'z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => [h1, h2, m1, m2].iter().all(|c| c.is_ascii_digit()),
        _ => false,
    }
}

/// Builds an SNTP v4 client request. `nonce` goes into the transmit timestamp and comes back
/// as the originate timestamp, which [`sntp_parse`] checks to reject stray or spoofed packets.
pub fn sntp_request(nonce: u64) -> [u8; SNTP_PACKET_LEN] {
    let mut p = [0u8; SNTP_PACKET_LEN];
    p[0] = 0x23; // LI 0, version 4, mode 3 (client)
    p[40..48].copy_from_slice(&nonce.to_be_bytes());
    p
}

/// Why an SNTP answer was not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SntpError {
    /// Shorter than 48 bytes.
    Short,
    /// Not a server (mode 4) answer.
    NotServer,
    /// The originate timestamp is not our request's nonce.
    WrongNonce,
    /// Stratum 0 ("kiss of death") or leap indicator 3 (server clock not synchronised).
    Unsynchronised,
    /// The time is before [`MIN_VALID_EPOCH_MS`].
    Implausible,
}

impl core::fmt::Display for SntpError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            SntpError::Short => "SNTP answer too short",
            SntpError::NotServer => "SNTP packet is not a server answer",
            SntpError::WrongNonce => "SNTP answer does not match our request",
            SntpError::Unsynchronised => "SNTP server is not synchronised",
            SntpError::Implausible => "SNTP time is implausible",
        })
    }
}

crate::impl_error!(SntpError);

/// Parses an SNTP answer to the request made with `nonce`, returning Unix epoch milliseconds
/// (the server's transmit timestamp; NTP era 1, from 2036, is handled).
pub fn sntp_parse(packet: &[u8], nonce: u64) -> Result<u64, SntpError> {
    if packet.len() < SNTP_PACKET_LEN {
        return Err(SntpError::Short);
    }
    if packet[0] & 0x07 != 4 {
        return Err(SntpError::NotServer);
    }
    let be64 = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&packet[at..at + 8]);
        u64::from_be_bytes(b)
    };
    if be64(24) != nonce {
        return Err(SntpError::WrongNonce);
    }
    if packet[1] == 0 || packet[0] >> 6 == 3 {
        return Err(SntpError::Unsynchronised);
    }
    let tx = be64(40);
    let mut secs = tx >> 32;
    let frac = tx & 0xFFFF_FFFF;
    // era 0 ends 2036-02-07; small values then mean era 1
    if secs < NTP_UNIX_OFFSET_S {
        secs += 1 << 32;
    }
    let ms = (secs - NTP_UNIX_OFFSET_S) * 1000 + ((frac * 1000) >> 32);
    if ms < MIN_VALID_EPOCH_MS {
        return Err(SntpError::Implausible);
    }
    Ok(ms)
}

/// A timestamp for one reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    /// Epoch ms when synced, ms since boot otherwise.
    pub ts_device: u64,
    /// RFC 3339 UTC when synced, empty otherwise.
    pub recorded_at: String<32>,
}

/// Maps the device's uptime to wall-clock time once synchronised.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Clock {
    boot_epoch_ms: Option<u64>,
}

impl Clock {
    /// An unsynchronised clock.
    pub const fn new() -> Self {
        Clock {
            boot_epoch_ms: None,
        }
    }

    /// Records that it is `epoch_ms` now, `uptime_ms` after boot. Returns the epoch time
    /// of boot. Later syncs correct drift.
    pub fn sync(&mut self, epoch_ms: u64, uptime_ms: u64) -> u64 {
        let boot = epoch_ms.saturating_sub(uptime_ms);
        self.boot_epoch_ms = Some(boot);
        boot
    }

    /// Whether a sync has happened.
    pub fn is_synced(&self) -> bool {
        self.boot_epoch_ms.is_some()
    }

    /// Epoch time of boot, once synced.
    pub fn boot_epoch_ms(&self) -> Option<u64> {
        self.boot_epoch_ms
    }

    /// The current time for a reading taken `uptime_ms` after boot.
    pub fn stamp(&self, uptime_ms: u64) -> Stamp {
        match self.boot_epoch_ms {
            Some(boot) => {
                let ts = boot.saturating_add(uptime_ms);
                Stamp {
                    ts_device: ts,
                    recorded_at: rfc3339(ts),
                }
            }
            None => Stamp {
                ts_device: uptime_ms,
                recorded_at: String::new(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(0).as_str(), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339(1_771_156_800_000).as_str(),
            "2026-02-15T12:00:00.000Z"
        );
        // leap day and end of year
        assert_eq!(
            rfc3339(1_709_208_000_123).as_str(),
            "2024-02-29T12:00:00.123Z"
        );
        assert_eq!(
            rfc3339(1_798_761_599_999).as_str(),
            "2026-12-31T23:59:59.999Z"
        );
        assert!(is_date_time(&rfc3339(1_771_156_800_000)));
    }

    #[test]
    fn recognises_date_times() {
        for ok in [
            "2026-02-15T12:00:00Z",
            "2026-02-15T12:00:00.5Z",
            "2026-02-15T21:00:00+09:00",
            "2026-02-15 12:00:00",
            "2026-02-15t12:00:00.123456z",
        ] {
            assert!(is_date_time(ok), "{ok}");
        }
        for bad in [
            "",
            "2026-02-15",
            "2026-13-15T12:00:00Z",
            "2026-02-15T25:00:00Z",
            "2026-02-15T12:00:00.Z",
            "2026-02-15T12:00:00+0900",
            "2026/02/15 12:00:00",
            "2026-02-15T12:00:00Zjunk",
        ] {
            assert!(!is_date_time(bad), "{bad}");
        }
    }

    fn answer(nonce: u64, ntp_secs: u64, frac: u32) -> [u8; 48] {
        let mut p = [0u8; 48];
        p[0] = 0x24; // LI 0, v4, mode 4
        p[1] = 2; // stratum
        p[24..32].copy_from_slice(&nonce.to_be_bytes());
        p[40..44].copy_from_slice(&(ntp_secs as u32).to_be_bytes());
        p[44..48].copy_from_slice(&frac.to_be_bytes());
        p
    }

    #[test]
    fn sntp_request_and_answer() {
        let req = sntp_request(0xDEAD_BEEF_0000_0001);
        assert_eq!(req[0], 0x23);
        assert_eq!(&req[40..48], &0xDEAD_BEEF_0000_0001u64.to_be_bytes());
        // 2026-02-15T12:00:00.5Z
        let secs = 1_771_156_800 + NTP_UNIX_OFFSET_S;
        let a = answer(7, secs, 0x8000_0000);
        assert_eq!(sntp_parse(&a, 7), Ok(1_771_156_800_500));
        assert_eq!(sntp_parse(&a, 8), Err(SntpError::WrongNonce));
        assert_eq!(sntp_parse(&a[..47], 7), Err(SntpError::Short));
        let mut kod = a;
        kod[1] = 0;
        assert_eq!(sntp_parse(&kod, 7), Err(SntpError::Unsynchronised));
        let mut li3 = a;
        li3[0] |= 0xC0;
        assert_eq!(sntp_parse(&li3, 7), Err(SntpError::Unsynchronised));
        let mut client = a;
        client[0] = 0x23;
        assert_eq!(sntp_parse(&client, 7), Err(SntpError::NotServer));
        // a server that answers 1900 + a bit
        assert_eq!(
            sntp_parse(&answer(7, NTP_UNIX_OFFSET_S + 5, 0), 7),
            Err(SntpError::Implausible)
        );
        // era 1 (after 2036-02-07): 2040-01-01 = 2208988800 s after 1970 ... wraps the 32-bit field
        let unix_2040 = 2_208_988_800u64;
        let a = answer(1, (unix_2040 + NTP_UNIX_OFFSET_S) & 0xFFFF_FFFF, 0);
        assert_eq!(
            sntp_parse(&a, 1).map(rfc3339).as_ref().map(|s| s.as_str()),
            Ok("2040-01-01T00:00:00.000Z")
        );
    }

    #[test]
    fn clock_stamps_before_and_after_sync() {
        let mut c = Clock::new();
        assert!(!c.is_synced());
        let s = c.stamp(1_500);
        assert_eq!(s.ts_device, 1_500);
        assert!(s.recorded_at.is_empty());
        let boot = c.sync(1_771_156_800_000, 10_000);
        assert_eq!(boot, 1_771_156_790_000);
        assert_eq!(c.boot_epoch_ms(), Some(boot));
        let s = c.stamp(10_250);
        assert_eq!(s.ts_device, 1_771_156_800_250);
        assert_eq!(s.recorded_at.as_str(), "2026-02-15T12:00:00.250Z");
    }
}
