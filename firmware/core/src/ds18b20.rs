//! DS18B20 decoding: the 9-byte scratchpad, the 64-bit ROM code and the Dallas/Maxim CRC8.
//!
//! The bus I/O (reset, ROM search, CONVERT T, READ SCRATCHPAD) lives in the firmware; this
//! module only turns the bytes read from the bus into a checked temperature, so every rule
//! about bad values is tested on the host:
//!
//! - a scratchpad or ROM code whose CRC8 does not match is rejected ([`Error::Crc`]);
//! - all `0xFF` bytes (nobody pulled the bus low: probe disconnected) and all `0x00` bytes
//!   (bus shorted to ground; the CRC of zeros is zero, so the CRC alone would accept it)
//!   are rejected ([`Error::Disconnected`], [`Error::BusShorted`]);
//! - a configuration register that is not of the form `0RR11111` is rejected;
//! - the power-on value +85.0 °C (the sensor has not completed a conversion since it was
//!   powered, typically after a brown-out on parasite power) is rejected ([`Error::PowerOnValue`]);
//! - anything outside the sensor's -55..=+125 °C range is rejected ([`Error::OutOfRange`]);
//!   this also catches the `-127` "disconnected" sentinel that some drivers report
//!   ([`check_celsius`]).

use core::fmt;

use heapless::String;

/// DS18B20 family code (first byte of the ROM code).
pub const FAMILY_CODE: u8 = 0x28;
/// ROM command: address one device.
pub const CMD_MATCH_ROM: u8 = 0x55;
/// ROM command: address all devices.
pub const CMD_SKIP_ROM: u8 = 0xCC;
/// Function command: start a temperature conversion.
pub const CMD_CONVERT_T: u8 = 0x44;
/// Function command: read the 9-byte scratchpad.
pub const CMD_READ_SCRATCHPAD: u8 = 0xBE;
/// Function command: write TH, TL and the configuration register.
pub const CMD_WRITE_SCRATCHPAD: u8 = 0x4E;

/// The raw temperature word the sensor holds after power-on, +85.0 °C.
pub const POWER_ON_RAW: i16 = 0x0550;
/// Lowest temperature the DS18B20 measures, in °C.
pub const MIN_CELSIUS: f32 = -55.0;
/// Highest temperature the DS18B20 measures, in °C.
pub const MAX_CELSIUS: f32 = 125.0;

/// Dallas/Maxim CRC8 (polynomial x^8 + x^5 + x^4 + 1, reflected 0x8C, initial value 0).
///
/// The CRC over data followed by its own CRC byte is 0, which is how both the scratchpad
/// and the ROM code are checked.
pub fn crc8(data: &[u8]) -> u8 {
    let mut crc: u8 = 0;
    for &byte in data {
        let mut b = byte;
        for _ in 0..8 {
            let mix = (crc ^ b) & 0x01;
            crc >>= 1;
            if mix != 0 {
                crc ^= 0x8C;
            }
            b >>= 1;
        }
    }
    crc
}

/// Why bytes read from a DS18B20 were rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The CRC8 byte does not match the data.
    Crc {
        /// CRC computed over the data bytes.
        computed: u8,
        /// CRC byte that was read.
        received: u8,
    },
    /// Every byte read as `0xFF`: no device answered (probe unplugged, broken wire).
    Disconnected,
    /// Every byte read as `0x00`: the data line is held low.
    BusShorted,
    /// The configuration register is not `0RR11111`: not a DS18B20 scratchpad.
    BadConfig(u8),
    /// +85.0 °C: the power-on value, no conversion has completed.
    PowerOnValue,
    /// The temperature is outside -55..=+125 °C (or not a number).
    OutOfRange,
    /// The ROM code's family byte is not the DS18B20's 0x28.
    WrongFamily(u8),
    /// A hex ROM code string is not 16 hex digits.
    BadHex,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Crc { computed, received } => {
                write!(
                    f,
                    "CRC mismatch (computed {computed:#04x}, received {received:#04x})"
                )
            }
            Error::Disconnected => {
                f.write_str("no answer on the 1-Wire bus (all bytes 0xFF): probe disconnected")
            }
            Error::BusShorted => f.write_str("1-Wire bus held low (all bytes 0x00)"),
            Error::BadConfig(c) => write!(f, "invalid configuration register {c:#04x}"),
            Error::PowerOnValue => f.write_str("85.0 °C power-on value: no conversion completed"),
            Error::OutOfRange => f.write_str("temperature outside -55..=125 °C"),
            Error::WrongFamily(c) => write!(f, "family code {c:#04x} is not a DS18B20 (0x28)"),
            Error::BadHex => f.write_str("ROM code must be 16 hex digits"),
        }
    }
}

crate::impl_error!(Error);

/// Conversion resolution, set by bits 5-6 of the configuration register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// 9 bits, 0.5 °C steps, 93.75 ms conversion.
    Bits9,
    /// 10 bits, 0.25 °C steps, 187.5 ms conversion.
    Bits10,
    /// 11 bits, 0.125 °C steps, 375 ms conversion.
    Bits11,
    /// 12 bits, 0.0625 °C steps, 750 ms conversion (power-on default).
    Bits12,
}

impl Resolution {
    /// Decodes the configuration register (`0 R1 R0 1 1 1 1 1`).
    pub fn from_config(config: u8) -> Result<Self, Error> {
        if config & 0x9F != 0x1F {
            return Err(Error::BadConfig(config));
        }
        Ok(match (config >> 5) & 0x03 {
            0 => Resolution::Bits9,
            1 => Resolution::Bits10,
            2 => Resolution::Bits11,
            _ => Resolution::Bits12,
        })
    }

    /// The configuration register value that selects this resolution.
    pub fn config_byte(self) -> u8 {
        0x1F | (self.index() << 5)
    }

    /// Number of bits (9..=12).
    pub fn bits(self) -> u8 {
        9 + self.index()
    }

    /// Worst-case conversion time in milliseconds (rounded up).
    pub fn conversion_time_ms(self) -> u32 {
        match self {
            Resolution::Bits9 => 94,
            Resolution::Bits10 => 188,
            Resolution::Bits11 => 375,
            Resolution::Bits12 => 750,
        }
    }

    /// Mask of the temperature word bits that are defined at this resolution
    /// (the lowest 3, 2 or 1 bits are undefined below 12 bits).
    pub fn mask(self) -> u16 {
        0xFFFF << (3 - self.index())
    }

    fn index(self) -> u8 {
        match self {
            Resolution::Bits9 => 0,
            Resolution::Bits10 => 1,
            Resolution::Bits11 => 2,
            Resolution::Bits12 => 3,
        }
    }
}

/// A checked temperature in the sensor's native unit, 1/16 °C.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Temperature {
    sixteenths: i16,
}

impl Temperature {
    /// Interprets a raw 12-bit temperature word (two's complement, 1/16 °C per LSB),
    /// rejecting the power-on value and out-of-range values.
    pub fn from_raw(raw: i16) -> Result<Self, Error> {
        if raw == POWER_ON_RAW {
            return Err(Error::PowerOnValue);
        }
        // -55 °C = -880/16, +125 °C = 2000/16
        if !(-880..=2000).contains(&raw) {
            return Err(Error::OutOfRange);
        }
        Ok(Temperature { sixteenths: raw })
    }

    /// The raw word, 1/16 °C per unit.
    pub fn raw(self) -> i16 {
        self.sixteenths
    }

    /// Degrees Celsius (exact: every 1/16 step is representable in f32).
    pub fn celsius(self) -> f32 {
        f32::from(self.sixteenths) / 16.0
    }

    /// Ten-thousandths of a degree Celsius (exact integer form, 0.0625 °C = 625).
    pub fn ten_thousandths(self) -> i32 {
        i32::from(self.sixteenths) * 625
    }
}

/// A decoded scratchpad.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scratchpad {
    /// The temperature, masked to the configured resolution.
    pub temperature: Temperature,
    /// The configured resolution.
    pub resolution: Resolution,
    /// Alarm high register (TH), also usable as a user byte.
    pub th: i8,
    /// Alarm low register (TL), also usable as a user byte.
    pub tl: i8,
}

/// Decodes and checks the 9 scratchpad bytes (LSB, MSB, TH, TL, config, 3 reserved, CRC).
pub fn decode_scratchpad(bytes: &[u8; 9]) -> Result<Scratchpad, Error> {
    if bytes.iter().all(|&b| b == 0xFF) {
        return Err(Error::Disconnected);
    }
    if bytes.iter().all(|&b| b == 0x00) {
        return Err(Error::BusShorted);
    }
    let computed = crc8(&bytes[..8]);
    if computed != bytes[8] {
        return Err(Error::Crc {
            computed,
            received: bytes[8],
        });
    }
    let resolution = Resolution::from_config(bytes[4])?;
    let word = u16::from_le_bytes([bytes[0], bytes[1]]) & resolution.mask();
    let temperature = Temperature::from_raw(word as i16)?;
    Ok(Scratchpad {
        temperature,
        resolution,
        th: bytes[2] as i8,
        tl: bytes[3] as i8,
    })
}

/// Checks a temperature that came from elsewhere (another driver, the simulator, a parsed
/// payload): rejects NaN, the 85.0 °C power-on value and anything outside -55..=125 °C
/// (which covers the `-127` "device disconnected" sentinel of common drivers).
pub fn check_celsius(celsius: f32) -> Result<f32, Error> {
    if celsius.is_nan() || !(MIN_CELSIUS..=MAX_CELSIUS).contains(&celsius) {
        return Err(Error::OutOfRange);
    }
    if celsius == 85.0 {
        return Err(Error::PowerOnValue);
    }
    Ok(celsius)
}

/// A 64-bit 1-Wire ROM code: family code, 48-bit serial number, CRC8 (wire order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RomCode([u8; 8]);

impl RomCode {
    /// Checks a ROM code of any 1-Wire family: not all-zero / all-`0xFF`, and its CRC matches.
    pub fn new(bytes: [u8; 8]) -> Result<Self, Error> {
        if bytes.iter().all(|&b| b == 0xFF) {
            return Err(Error::Disconnected);
        }
        if bytes.iter().all(|&b| b == 0x00) {
            return Err(Error::BusShorted);
        }
        let computed = crc8(&bytes[..7]);
        if computed != bytes[7] {
            return Err(Error::Crc {
                computed,
                received: bytes[7],
            });
        }
        Ok(RomCode(bytes))
    }

    /// Like [`RomCode::new`], and also requires the DS18B20 family code 0x28.
    pub fn ds18b20(bytes: [u8; 8]) -> Result<Self, Error> {
        let rom = Self::new(bytes)?;
        if rom.family() != FAMILY_CODE {
            return Err(Error::WrongFamily(rom.family()));
        }
        Ok(rom)
    }

    /// Builds a ROM code from its 64-bit little-endian integer form (as many 1-Wire
    /// search implementations return it: family code in the lowest byte).
    pub fn from_u64(v: u64) -> Result<Self, Error> {
        Self::new(v.to_le_bytes())
    }

    /// Parses the 16-hex-digit form produced by [`RomCode::to_hex`] (either case).
    pub fn from_hex(s: &str) -> Result<Self, Error> {
        let s = s.as_bytes();
        if s.len() != 16 {
            return Err(Error::BadHex);
        }
        let mut bytes = [0u8; 8];
        for (i, pair) in s.chunks_exact(2).enumerate() {
            let hi = hex_value(pair[0]).ok_or(Error::BadHex)?;
            let lo = hex_value(pair[1]).ok_or(Error::BadHex)?;
            bytes[i] = (hi << 4) | lo;
        }
        Self::new(bytes)
    }

    /// The 8 bytes in wire order.
    pub fn bytes(&self) -> [u8; 8] {
        self.0
    }

    /// The family code (first byte).
    pub fn family(&self) -> u8 {
        self.0[0]
    }

    /// Upper-case hex in wire order, e.g. `28FF4C3A91160457`: exactly 16 characters,
    /// which is the `sensor_hw_id` used in telemetry.
    pub fn to_hex(&self) -> String<16> {
        const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
        let mut s = String::new();
        for b in self.0 {
            // 8 bytes -> 16 chars, exactly the capacity
            let _ = s.push(char::from(DIGITS[usize::from(b >> 4)]));
            let _ = s.push(char::from(DIGITS[usize::from(b & 0x0F)]));
        }
        s
    }
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a 12-bit scratchpad around a raw temperature word, with a correct CRC.
    fn pad(raw: u16, config: u8) -> [u8; 9] {
        let [lsb, msb] = raw.to_le_bytes();
        let mut b = [lsb, msb, 0x4B, 0x46, config, 0xFF, 0x0C, 0x10, 0];
        b[8] = crc8(&b[..8]);
        b
    }

    #[test]
    fn crc8_matches_published_vectors() {
        // Maxim application note 27: serial 0x000001B81C, family 0x02 -> CRC 0xA2.
        assert_eq!(crc8(&[0x02, 0x1C, 0xB8, 0x01, 0x00, 0x00, 0x00]), 0xA2);
        // DS18B20 power-on scratchpad as read from real sensors: 50 05 4B 46 7F FF 0C 10 | 1C
        assert_eq!(
            crc8(&[0x50, 0x05, 0x4B, 0x46, 0x7F, 0xFF, 0x0C, 0x10]),
            0x1C
        );
        // data followed by its CRC checks to zero
        assert_eq!(crc8(&[0x02, 0x1C, 0xB8, 0x01, 0x00, 0x00, 0x00, 0xA2]), 0);
        assert_eq!(crc8(&[]), 0);
    }

    #[test]
    fn datasheet_temperature_table() {
        // DS18B20 datasheet, "Temperature/Data Relationship" table (12-bit).
        let table: [(u16, f32, i32); 10] = [
            (0x07D0, 125.0, 1_250_000),
            (0x0191, 25.0625, 250_625),
            (0x00A2, 10.125, 101_250),
            (0x0008, 0.5, 5_000),
            (0x0000, 0.0, 0),
            (0xFFF8, -0.5, -5_000),
            (0xFF5E, -10.125, -101_250),
            (0xFE6F, -25.0625, -250_625),
            (0xFC90, -55.0, -550_000),
            (0x0001, 0.0625, 625),
        ];
        for (raw, celsius, e4) in table {
            let sp =
                decode_scratchpad(&pad(raw, 0x7F)).unwrap_or_else(|e| panic!("{raw:#06x}: {e}"));
            assert_eq!(sp.temperature.celsius(), celsius, "raw {raw:#06x}");
            assert_eq!(sp.temperature.ten_thousandths(), e4, "raw {raw:#06x}");
            assert_eq!(sp.temperature.raw(), raw as i16);
            assert_eq!(sp.resolution, Resolution::Bits12);
            assert_eq!((sp.th, sp.tl), (0x4B, 0x46));
        }
    }

    #[test]
    fn power_on_85_is_rejected() {
        // +85 °C, raw 0x0550 from the datasheet table, is the power-on reset value
        assert_eq!(
            decode_scratchpad(&pad(0x0550, 0x7F)),
            Err(Error::PowerOnValue)
        );
        // the exact power-on scratchpad read from a fresh sensor
        let fresh = [0x50, 0x05, 0x4B, 0x46, 0x7F, 0xFF, 0x0C, 0x10, 0x1C];
        assert_eq!(decode_scratchpad(&fresh), Err(Error::PowerOnValue));
        assert_eq!(check_celsius(85.0), Err(Error::PowerOnValue));
        // 85.0625 is a real reading
        assert_eq!(
            decode_scratchpad(&pad(0x0551, 0x7F)).map(|s| s.temperature.celsius()),
            Ok(85.0625)
        );
    }

    #[test]
    fn disconnected_and_shorted_bus_are_rejected() {
        assert_eq!(decode_scratchpad(&[0xFF; 9]), Err(Error::Disconnected));
        // CRC8 of zeros is zero, so this would pass the CRC; it must still be rejected
        assert_eq!(crc8(&[0u8; 8]), 0);
        assert_eq!(decode_scratchpad(&[0x00; 9]), Err(Error::BusShorted));
        assert_eq!(check_celsius(-127.0), Err(Error::OutOfRange));
        assert_eq!(check_celsius(f32::NAN), Err(Error::OutOfRange));
        assert_eq!(check_celsius(-55.0), Ok(-55.0));
        assert_eq!(check_celsius(125.5), Err(Error::OutOfRange));
    }

    #[test]
    fn crc_failures_are_rejected() {
        let good = pad(0x0191, 0x7F);
        assert!(decode_scratchpad(&good).is_ok());
        // flip one bit in the temperature
        let mut bad = good;
        bad[0] ^= 0x01;
        assert!(
            matches!(decode_scratchpad(&bad), Err(Error::Crc { received, .. }) if received == good[8])
        );
        // corrupt the CRC byte itself
        let mut bad = good;
        bad[8] = bad[8].wrapping_add(1);
        assert_eq!(
            decode_scratchpad(&bad),
            Err(Error::Crc {
                computed: good[8],
                received: good[8].wrapping_add(1)
            })
        );
        // a single bit flip anywhere in the 9 bytes is caught
        for i in 0..9 {
            for bit in 0..8 {
                let mut b = good;
                b[i] ^= 1 << bit;
                assert!(decode_scratchpad(&b).is_err(), "byte {i} bit {bit}");
            }
        }
    }

    #[test]
    fn resolution_masks_undefined_bits() {
        // 25.0625 °C word with the lowest bits set; at lower resolutions they are undefined
        let cases = [
            (0x1F, Resolution::Bits9, 25.0, 94),
            (0x3F, Resolution::Bits10, 25.0, 188),
            (0x5F, Resolution::Bits11, 25.0, 375),
            (0x7F, Resolution::Bits12, 25.0625, 750),
        ];
        for (config, res, celsius, ms) in cases {
            let sp = decode_scratchpad(&pad(0x0191, config))
                .unwrap_or_else(|e| panic!("{config:#x}: {e}"));
            assert_eq!(sp.resolution, res);
            assert_eq!(sp.temperature.celsius(), celsius, "{res:?}");
            assert_eq!(res.config_byte(), config);
            assert_eq!(res.conversion_time_ms(), ms);
            assert_eq!(Resolution::from_config(config), Ok(res));
        }
        assert_eq!(Resolution::Bits9.bits(), 9);
        assert_eq!(Resolution::Bits12.bits(), 12);
        // -10.125 at 9 bits: 0xFF5E & 0xFFF8 = 0xFF58 = -10.5 (rounds toward -inf, as the sensor does)
        assert_eq!(
            decode_scratchpad(&pad(0xFF5E, 0x1F)).map(|s| s.temperature.celsius()),
            Ok(-10.5)
        );
        // a config byte that is not 0RR11111
        assert_eq!(
            decode_scratchpad(&pad(0x0191, 0x00)),
            Err(Error::BadConfig(0x00))
        );
        assert_eq!(
            decode_scratchpad(&pad(0x0191, 0xFF)),
            Err(Error::BadConfig(0xFF))
        );
    }

    #[test]
    fn out_of_range_words_are_rejected() {
        // +125.0625 and -55.0625
        assert_eq!(
            decode_scratchpad(&pad(0x07D1, 0x7F)),
            Err(Error::OutOfRange)
        );
        assert_eq!(
            decode_scratchpad(&pad(0xFC8F, 0x7F)),
            Err(Error::OutOfRange)
        );
        // -127 °C expressed as a raw word
        assert_eq!(Temperature::from_raw(-127 * 16), Err(Error::OutOfRange));
    }

    #[test]
    fn rom_code_crc_and_hex() {
        let mut bytes = [0x28, 0xFF, 0x4C, 0x3A, 0x91, 0x16, 0x04, 0];
        bytes[7] = crc8(&bytes[..7]);
        let rom = RomCode::ds18b20(bytes).expect("valid ROM");
        let hex = rom.to_hex();
        assert_eq!(hex.len(), 16);
        assert!(hex.starts_with("28FF4C3A911604"));
        assert_eq!(RomCode::from_hex(&hex), Ok(rom));
        assert_eq!(RomCode::from_hex(&hex.to_ascii_lowercase()), Ok(rom));
        assert_eq!(RomCode::from_u64(u64::from_le_bytes(bytes)), Ok(rom));
        assert_eq!(rom.bytes(), bytes);

        // application note 27 example is a valid ROM code of family 0x02 but not a DS18B20
        let an27 = [0x02, 0x1C, 0xB8, 0x01, 0x00, 0x00, 0x00, 0xA2];
        assert!(RomCode::new(an27).is_ok());
        assert_eq!(RomCode::ds18b20(an27), Err(Error::WrongFamily(0x02)));

        let mut bad = bytes;
        bad[3] ^= 0x10;
        assert!(matches!(RomCode::new(bad), Err(Error::Crc { .. })));
        assert_eq!(RomCode::new([0; 8]), Err(Error::BusShorted));
        assert_eq!(RomCode::new([0xFF; 8]), Err(Error::Disconnected));
        assert_eq!(RomCode::from_hex("28FF"), Err(Error::BadHex));
        assert_eq!(RomCode::from_hex("28FF4C3A9116045G"), Err(Error::BadHex));
    }
}
