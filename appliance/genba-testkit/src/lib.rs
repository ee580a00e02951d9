//! Support shared by the appliance's tests and its benchmark program (never by the appliance
//! itself): [`fake_http`], a receiver on a real socket that answers as the fake service it is
//! given decides, [`fake_exment`], the Exment API on it, and [`fake_esp_rom`], an ESP32-C3's
//! ROM loader on a pty.

pub mod fake_esp_rom;
pub mod fake_exment;
pub mod fake_http;
