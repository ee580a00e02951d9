//! "Add a thermometer": the form that provisions a device from the Pi, and the answer that
//! hands over its config file once. The bridge checks and registers (genba-platform
//! `provisioning`, the code `genba devices provision` runs); this module only renders.

use std::collections::HashMap;

use maud::{html, Markup};

use crate::i18n::tr;
use crate::layout::{csrf_field, page, Flash, Nav, Viewer};

/// The path of the form.
pub const PATH: &str = "/provision";

/// What the form shows: the values typed or the defaults (never the Wi-Fi pass phrase), and
/// the field a refusal names.
pub struct ProvisionForm<'a> {
    pub values: &'a HashMap<String, String>,
    /// (field, message) of a refused post.
    pub error: Option<(&'a str, &'a str)>,
    /// The local CA's SHA-256, which a device pins by default when the appliance serves its
    /// transport over TLS.
    pub local_ca: Option<&'a str>,
    /// Whether devices are served MQTT over TLS, and HTTPS.
    pub tls_mqtt: bool,
    pub tls_http: bool,
    /// The serial ports of the ESP32 boards plugged into this Pi, which it can write.
    pub ports: Vec<String>,
}

impl<'a> ProvisionForm<'a> {
    /// Which transports a device that leaves the pin empty speaks over TLS.
    fn tls_by_default(&self) -> (bool, bool) {
        let ca = self.local_ca.is_some();
        (ca && self.tls_mqtt, ca && self.tls_http)
    }

    fn pin_placeholder(&self) -> &'a str {
        match self.tls_by_default() {
            (false, false) => "none",
            _ => self.local_ca.unwrap_or("none"),
        }
    }

    /// The hint under the pin field: what an empty pin means for each transport.
    fn pin_hint(&self) -> &'static str {
        match self.tls_by_default() {
            (true, true) => "Empty: the device pins this Pi's certificate authority and speaks only TLS.",
            (true, false) => "Empty: an MQTT device pins this Pi's certificate authority and speaks only TLS; an HTTP device speaks plain HTTP, as this Pi serves no HTTPS to devices.",
            (false, true) => "Empty: an HTTP device pins this Pi's certificate authority and speaks only HTTPS; an MQTT device speaks plain MQTT, as this Pi serves no MQTT over TLS.",
            (false, false) => "Empty: this Pi serves no TLS to devices, so the device speaks plain MQTT or HTTP.",
        }
    }

    fn value(&self, key: &str) -> &str {
        self.values.get(key).map(String::as_str).unwrap_or_default()
    }

    /// `aria-invalid` for the field a refusal names.
    fn invalid(&self, key: &str) -> Option<&'static str> {
        self.error.filter(|(f, _)| *f == key).map(|_| "true")
    }
}

pub fn form(v: &Viewer, f: &ProvisionForm) -> Markup {
    let l = v.lang;
    let flash = f.error.map(|(field, message)| {
        Flash::Error(format!("{} ({field}): {message}", tr(l, "Not added")))
    });
    let transport = f.value("transport");
    let body = html! {
        p.muted { (tr(l, "The Pi registers the thermometer, gives it its own device key and makes its config file. You write the file to the board over USB; nothing is compiled.")) }
        form.stack #provision method="post" action=(PATH) style="max-width:36rem" autocomplete="off" {
            (csrf_field(v))
            label for="id" { (tr(l, "Device id")) " (A-Z a-z 0-9 - _ .)" }
            input #id name="id" value=(f.value("id")) required maxlength="32" pattern="[A-Za-z0-9._\\-]{1,32}" aria-invalid=[f.invalid("id")];
            label for="wifi_ssid" { (tr(l, "Wi-Fi network (SSID)")) }
            input #wifi_ssid name="wifi_ssid" value=(f.value("wifi_ssid")) required maxlength="32" aria-invalid=[f.invalid("wifi_ssid")];
            label for="wifi_pass" { (tr(l, "Wi-Fi pass phrase (empty for an open network)")) }
            input #wifi_pass name="wifi_pass" type="password" maxlength="63" aria-invalid=[f.invalid("wifi_pass")];
            label for="appliance" { (tr(l, "This Pi's address as the device reaches it (it looks for genba.local first)")) }
            input #appliance name="appliance" value=(f.value("appliance")) maxlength="63" aria-invalid=[f.invalid("appliance")];
            label for="transport" { (tr(l, "Transport")) }
            select #transport name="transport" aria-invalid=[f.invalid("transport")] {
                option value="mqtt" selected[transport != "http"] { (tr(l, "MQTT: readings and commands, updates included")) }
                option value="http" selected[transport == "http"] { (tr(l, "HTTP: readings only")) }
            }
            label for="interval" { (tr(l, "Seconds between readings")) }
            input #interval name="interval" type="number" min="5" max="86400" value=(f.value("interval")) required aria-invalid=[f.invalid("interval")];
            details open[f.error.is_some_and(|(k, _)| !matches!(k, "id" | "wifi_ssid" | "wifi_pass" | "appliance" | "transport" | "interval"))] {
                summary { (tr(l, "More settings")) }
                div.stack {
                    label for="onewire_gpio" { (tr(l, "DS18B20 data GPIO")) }
                    input #onewire_gpio name="onewire_gpio" type="number" min="0" max="21" value=(f.value("onewire_gpio")) aria-invalid=[f.invalid("onewire_gpio")];
                    label for="led_gpio" { (tr(l, "Status LED GPIO")) }
                    input #led_gpio name="led_gpio" type="number" min="0" max="21" value=(f.value("led_gpio")) aria-invalid=[f.invalid("led_gpio")];
                    label for="led_active_high" {
                        input #led_active_high name="led_active_high" type="checkbox" value="1" style="width:auto" checked[f.value("led_active_high") == "1"];
                        " " (tr(l, "The LED lights when its pin is high"))
                    }
                    label for="offsets" { (tr(l, "Probe offsets (SENSOR_ID=°C, comma-separated)")) }
                    input #offsets name="offsets" value=(f.value("offsets")) placeholder="28FF4C3A91160457=-0.25" aria-invalid=[f.invalid("offsets")];
                    label for="ntp_server" { (tr(l, "Time server (NTP)")) }
                    input #ntp_server name="ntp_server" value=(f.value("ntp_server")) maxlength="63" aria-invalid=[f.invalid("ntp_server")];
                    label for="pin" { (tr(l, "Pinned certificate: SHA-256, or none")) }
                    input #pin name="pin" value=(f.value("pin")) maxlength="64" placeholder=(f.pin_placeholder()) aria-invalid=[f.invalid("pin")];
                    p.muted { (tr(l, f.pin_hint())) }
                }
            }
            @if f.ports.is_empty() {
                p.muted #usb-none { (tr(l, "A board plugged into this Pi's USB can be written by the Pi itself: plug it in and reload this page.")) }
            } @else {
                fieldset #usb {
                    legend { (tr(l, "Write it to the board plugged into this Pi")) }
                    label for="write_port" { (tr(l, "USB port")) }
                    select #write_port name="write_port" aria-invalid=[f.invalid("write_port")] {
                        option value="" { (tr(l, "No: I write the file from my computer")) }
                        @for port in &f.ports {
                            option value=(port) selected[f.value("write_port") == port] { (port) }
                        }
                    }
                    label for="config_only" {
                        input #config_only name="config_only" type="checkbox" value="1" style="width:auto" checked[f.value("config_only") == "1"];
                        " " (tr(l, "Only the config: the board runs Genba's firmware already"))
                    }
                    label for="no_reset" {
                        input #no_reset name="no_reset" type="checkbox" value="1" style="width:auto" checked[f.value("no_reset") == "1"];
                        " " (tr(l, "The board is in its loader already (BOOT held while plugging it in); press RESET afterwards"))
                    }
                    p.muted { (tr(l, "The Pi writes its newest board image with this config inside, checks it and restarts the board. If the write fails, nothing is registered.")) }
                }
            }
            button type="submit" { (tr(l, "Add the thermometer")) }
        }
    };
    page(v, Nav::None, tr(l, "Add a thermometer"), flash, body)
}

/// The name a board image is saved under: `genba-fw-VERSION-board.bin`.
pub fn board_file_name(version: &str) -> String {
    format!("genba-fw-{version}-board.bin")
}

/// A board image the Pi keeps, for a new board's first flash.
pub struct BoardImage<'a> {
    pub version: &'a str,
    /// Its path on this Pi (`/firmware/SHA256-board.bin`).
    pub href: String,
}

/// The answer to a provisioning that worked. The config file comes inside the page (a
/// `data:` link) and is kept nowhere on the Pi: it holds the Wi-Fi pass phrase and the key.
pub struct Provisioned<'a> {
    pub id: &'a str,
    pub new_device: bool,
    /// "192.168.1.10 over MQTT over TLS (port 8883)".
    pub reports_to: String,
    pub pin: Option<String>,
    pub key_id: i64,
    pub file_name: String,
    /// The file as base64.
    pub file_base64: String,
    pub file_bytes: usize,
    pub flash_command: String,
    /// Where the config partition starts in the flash (the firmware core's
    /// `config::PARTITION_OFFSET`): where the page's script puts the file into a board image.
    pub config_offset: u32,
    /// The newest board image kept, for a new board.
    pub board: Option<BoardImage<'a>>,
    /// What the Pi wrote to a board on its USB, in words; then the file is not handed over.
    pub written: Option<String>,
}

pub fn provisioned(v: &Viewer, p: &Provisioned) -> Markup {
    let l = v.lang;
    let title = if p.new_device {
        tr(l, "Thermometer registered")
    } else {
        tr(l, "Thermometer registered already: it gets a new key")
    };
    let body = html! {
        dl #provisioned {
            dt { (tr(l, "Device")) } dd #provisioned-id { a href={ "/devices/" (p.id) } { (p.id) } }
            dt { (tr(l, "Reports to")) } dd { (p.reports_to) }
            dt { (tr(l, "Pinned certificate")) }
            dd { @match &p.pin { Some(fp) => code { (fp) }, None => (tr(l, "none (plain MQTT or HTTP)")) } }
            dt { (tr(l, "Credential")) }
            dd { (tr(l, "device key")) " #" (p.key_id) " · " code { "genba keys revoke " (p.key_id) } " " (tr(l, "revokes it alone")) }
        }
        @if let Some(written) = &p.written {
            p.banner.ok #written role="status" { (tr(l, "Written to the board and checked:")) " " (written) }
            p { (tr(l, "The secrets went to the board only: no copy of the config file is anywhere. Mount the thermometer; it finds this Pi, logs in with its own key and appears on the Overview with its first reading.")) }
            p { a.button href=(PATH) { (tr(l, "Add another")) } }
        } @else {
            (handed_over(v, p))
        }
    };
    page(v, Nav::None, title, None, body)
}

/// The config file handed over in the page, and how to write it to the board.
fn handed_over(v: &Viewer, p: &Provisioned) -> Markup {
    let l = v.lang;
    html! {
        p {
            a.button #config-download download=(p.file_name) href={ "data:application/octet-stream;base64," (p.file_base64) } {
                (tr(l, "Download the config file")) " (" (p.file_name) ", " (p.file_bytes / 1024) " KiB)"
            }
        }
        p.banner role="note" { (tr(l, "The file holds the Wi-Fi pass phrase and the device key. This page is its only copy: download it now, and delete it once it is on the board.")) }
        @if let Some(b) = &p.board {
            // Made by console.js in the browser (the secrets do not go back to the Pi); shown
            // only where the script runs.
            @let whole = format!("{}.genba-board.bin", p.id);
            div #whole hidden data-board=(b.href) data-name=(whole) data-offset=(p.config_offset) data-failed=(tr(l, "The image could not be made")) {
                h2 { (tr(l, "A new board: one image, one command")) }
                p {
                    button #whole-image type="button" { (tr(l, "Download this board's whole image")) }
                    " " span.muted { (whole) ", 4 MiB: " (tr(l, "firmware")) " " (b.version) " + " (tr(l, "this config")) }
                }
                p.banner.error role="alert" hidden {}
                pre { code #whole-command { "espflash write-bin 0x0 " (whole) } }
                p.muted { (tr(l, "Your browser makes it from the Pi's board image and the config file above, so it holds the same secrets. It covers the whole flash: a board that already has data loses it.")) }
            }
        }
        h2 { (tr(l, if p.board.is_some() { "Or step by step" } else { "Write it to the thermometer" })) }
        ol.stack {
            @match &p.board {
                Some(b) => li #new-board {
                    (tr(l, "A new board needs Genba's firmware once, before its config file:")) " "
                    a href=(b.href) download=(board_file_name(b.version)) { (tr(l, "Download the board image")) " (" (b.version) ")" }
                    pre { code { "espflash write-bin 0x0 " (board_file_name(b.version)) } }
                },
                None => li { (tr(l, "A new board needs Genba's firmware first:")) " " a href="/firmware" { (tr(l, "Firmware")) } " · firmware/README.md (Flash)" },
            }
            li { (tr(l, "Connect the board over USB and run:")) pre { code #flash-command { (p.flash_command) } } }
            li { (tr(l, "Reset the board. It finds this Pi, logs in with its own key and appears on the Overview with its first reading.")) }
        }
        p { a.button href=(PATH) { (tr(l, "Add another")) } }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::i18n::Lang;

    fn form<'v>(
        values: &'v HashMap<String, String>,
        ca: Option<&'static str>,
        mqtt: bool,
        http: bool,
    ) -> ProvisionForm<'v> {
        ProvisionForm {
            values,
            error: None,
            local_ca: ca,
            tls_mqtt: mqtt,
            tls_http: http,
            ports: Vec::new(),
        }
    }

    #[test]
    fn the_pin_hint_names_the_transports_an_empty_pin_makes_tls() {
        let v = HashMap::new();
        let ca = Some("ab12");
        let https_only = form(&v, ca, false, true);
        assert!(https_only
            .pin_hint()
            .starts_with("Empty: an HTTP device pins"));
        assert_eq!(https_only.pin_placeholder(), "ab12");
        let mqtts_only = form(&v, ca, true, false);
        assert!(mqtts_only
            .pin_hint()
            .starts_with("Empty: an MQTT device pins"));
        let both = form(&v, ca, true, true);
        assert!(both.pin_hint().starts_with("Empty: the device pins"));
        // Without a local CA nothing is pinned by default, whatever is served.
        let no_ca = form(&v, None, true, true);
        assert!(no_ca.pin_hint().contains("serves no TLS"));
        assert_eq!(no_ca.pin_placeholder(), "none");
        // Every hint has its Japanese text.
        for f in [https_only, mqtts_only, both, no_ca] {
            assert_ne!(tr(Lang::Ja, f.pin_hint()), f.pin_hint());
        }
    }
}
