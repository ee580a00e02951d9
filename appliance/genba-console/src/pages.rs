//! The pages: overview, device, alarms, HACCP record, delivery, firmware, send (adding a
//! thermometer is [`crate::provision`]). Each takes what the bridge read from the store and
//! returns markup; none of them touches the store itself.

use genba_store::alarms::Alarm;
use genba_store::devices::Device;
use genba_store::firmware::{FirmwareImage, UpdateRequest, UpdateState};
use genba_store::streams::{Record, StreamInfo};
use genba_store::{SinkState, StoreStatus};
use maud::{html, Markup};
use serde_json::json;

use crate::chart::{self, ChartData};
use crate::i18n::{tr, Lang};
use crate::layout::{ago, csrf_field, local_time, page, raw, Flash, Nav, Role, Viewer};

/// A device counts as silent when nothing came for this long (or a silent rule says so).
pub const SILENT_AFTER_MS: i64 = 30 * 60_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CardState {
    Alarm,
    Silent,
    Ok,
    Disabled,
}

impl CardState {
    pub fn class(self) -> &'static str {
        match self {
            CardState::Alarm => "alarm",
            CardState::Silent => "silent",
            CardState::Ok => "ok",
            CardState::Disabled => "disabled",
        }
    }
}

/// One device on the overview.
pub struct DeviceCard {
    pub device: Device,
    pub streams: Vec<StreamInfo>,
    pub open_alarms: Vec<Alarm>,
}

impl DeviceCard {
    pub fn state(&self, now_ms: i64) -> CardState {
        if !self.device.enabled {
            CardState::Disabled
        } else if self.open_alarms.iter().any(|a| a.condition == "silent") {
            CardState::Silent
        } else if !self.open_alarms.is_empty() {
            CardState::Alarm
        } else if self
            .device
            .last_seen_at_ms
            .is_none_or(|t| now_ms - t > SILENT_AFTER_MS)
        {
            CardState::Silent
        } else {
            CardState::Ok
        }
    }
}

/// A stream's latest value with its unit, as cards and tables show it.
pub fn value_text(s: &StreamInfo) -> String {
    match (s.last_value, &s.last_text) {
        (Some(v), _) => {
            let n = format!("{}", (v * 100.0).round() / 100.0);
            if s.unit.is_empty() {
                n
            } else {
                format!("{n} {}", s.unit)
            }
        }
        (None, Some(t)) => t.clone(),
        (None, None) => "–".into(),
    }
}

fn stream_title(s: &StreamInfo) -> &str {
    if s.label.is_empty() {
        &s.name
    } else {
        &s.label
    }
}

fn device_title(d: &Device) -> &str {
    if d.name.is_empty() {
        &d.id
    } else {
        &d.name
    }
}

/// Cards in the order a user wants: alarms first, then silent, ok, disabled; by name within.
pub fn sort_cards(cards: &mut [DeviceCard], now_ms: i64) {
    cards.sort_by(|a, b| {
        (a.state(now_ms), device_title(&a.device)).cmp(&(b.state(now_ms), device_title(&b.device)))
    });
}

pub fn overview(v: &Viewer, cards: &[DeviceCard], now_ms: i64) -> Markup {
    let l = v.lang;
    let body = html! {
        p #live-lost .banner.error role="alert" { (tr(l, "Connection lost; retrying…")) }
        @if cards.is_empty() {
            p { (tr(l, "No devices yet. They appear with their first message.")) }
        }
        div.cards data-live="1" data-never=(tr(l, "never")) {
            @for c in cards {
                @let state = c.state(now_ms);
                a.card.(state.class()) id={ "device-" (c.device.id) } href={ "/devices/" (c.device.id) } {
                    h3 {
                        span { (device_title(&c.device)) }
                        span.state.(state.class()) { (tr(l, state.class())) }
                    }
                    @if !c.device.location.is_empty() { div.where { (c.device.location) } }
                    ul.vals {
                        @for s in &c.streams {
                            li { span { (stream_title(s)) } span.v data-stream=(s.name) { (value_text(s)) } }
                        }
                    }
                    @for a in &c.open_alarms {
                        div.where role="note" { "⚠ " (a.message) }
                    }
                    div.seen {
                        (tr(l, "last seen")) ": "
                        span data-seen=(c.device.last_seen_at_ms.unwrap_or(0)) { (ago(l, now_ms, c.device.last_seen_at_ms)) }
                    }
                }
            }
        }
        @if v.role >= Role::Admin {
            p.noprint { a.button #add-device href=(crate::provision::PATH) { (tr(l, "Add a thermometer")) } }
        }
    };
    page(v, Nav::Overview, tr(l, "Overview"), None, body)
}

/// What `/console/live` sends: the same states and values the cards show.
pub fn live_snapshot(lang: Lang, cards: &[DeviceCard], now_ms: i64) -> serde_json::Value {
    json!({
        "devices": cards.iter().map(|c| {
            let state = c.state(now_ms);
            json!({
                "id": c.device.id,
                "state": state.class(),
                "state_text": tr(lang, state.class()),
                "last_seen": c.device.last_seen_at_ms,
                "streams": c.streams.iter().map(|s| json!({"name": s.name, "text": value_text(s)})).collect::<Vec<_>>(),
            })
        }).collect::<Vec<_>>()
    })
}

/// Chart ranges offered on the device page.
pub const RANGES: &[(&str, &str, i64)] = &[
    ("24h", "24 h", 86_400_000),
    ("7d", "7 d", 7 * 86_400_000),
    ("30d", "30 d", 30 * 86_400_000),
    ("1y", "1 y", 365 * 86_400_000),
];

/// One stream's chart on the device page.
pub struct StreamChart {
    pub stream: StreamInfo,
    pub points: Vec<(i64, f64)>,
    pub bands: Vec<(i64, f64, f64)>,
    pub thresholds: Vec<f64>,
    pub alarms: Vec<(i64, i64)>,
}

pub struct DevicePage {
    pub device: Device,
    pub charts: Vec<StreamChart>,
    /// Text streams (no chart): name and latest value.
    pub texts: Vec<StreamInfo>,
    pub range: &'static str,
    pub from_ms: i64,
    pub to_ms: i64,
    pub records: Vec<Record>,
    pub alarms: Vec<Alarm>,
}

pub fn device(v: &Viewer, p: &DevicePage, flash: Option<Flash>) -> Markup {
    let l = v.lang;
    let d = &p.device;
    let body = html! {
        p.muted {
            (d.id) " · " (tr(l, if d.enabled { "ok" } else { "disabled" }))
            @if !d.location.is_empty() { " · " (d.location) }
            @if let Some(fw) = &d.firmware { " · fw " (fw) }
            @if let Some(rssi) = d.rssi { " · " (rssi) " dBm" }
            " · " (tr(l, "last seen")) " " (d.last_seen_at_ms.map(local_time).unwrap_or_else(|| tr(l, "never").into()))
        }
        nav.ranges aria-label="range" {
            @for (key, text, _) in RANGES {
                @if *key == p.range { a aria-current="true" href={ "?range=" (key) } { (tr(l, text)) } }
                @else { a href={ "?range=" (key) } { (tr(l, text)) } }
            }
        }
        @for c in &p.charts {
            figure.chart data-stream=(c.stream.name) data-points=(c.points.len()) {
                figcaption { (stream_title(&c.stream)) " — " (value_text(&c.stream)) }
                @if c.points.is_empty() { p.muted { (tr(l, "No data in this range.")) } }
                (raw(chart::svg(&ChartData {
                    from_ms: p.from_ms,
                    to_ms: p.to_ms,
                    points: &c.points,
                    bands: &c.bands,
                    thresholds: &c.thresholds,
                    alarms: &c.alarms,
                    unit: &c.stream.unit,
                })))
            }
        }
        @if !p.texts.is_empty() {
            ul.vals { @for s in &p.texts { li { span { (stream_title(s)) } span.v { (value_text(s)) } } } }
        }
        @if !p.alarms.is_empty() {
            h2 { (tr(l, "Alarms")) }
            (alarm_table(v, &p.alarms, false))
        }
        @if v.role >= Role::Operator {
            h2 { (tr(l, "Send a command")) }
            form.inline method="post" action={ "/devices/" (d.id) "/command" } {
                (csrf_field(v))
                div style="flex:1 1 16rem" {
                    label for="command" { (tr(l, "Command")) " (devices/" (d.id) "/commands)" }
                    input #command name="payload" required maxlength="4096" placeholder="{\"cmd\":\"led\",\"on\":true}";
                }
                button type="submit" { (tr(l, "Send")) }
            }
        }
        h2 { (tr(l, "Recent messages")) }
        div.scroll { table {
            thead { tr { th { (tr(l, "Time")) } th { "tag" } th { (tr(l, "Message")) } } }
            tbody { @for r in &p.records {
                tr { td { (local_time(r.at_ms)) } td { (r.tag.clone().unwrap_or_default()) } td { code { (r.body) } } }
            } }
        } }
        @if v.role >= Role::Admin {
            h2 { (tr(l, "Device")) }
            form.stack method="post" action={ "/devices/" (d.id) } {
                (csrf_field(v))
                label for="name" { (tr(l, "Name")) }
                input #name name="name" value=(d.name) maxlength="64";
                label for="location" { (tr(l, "Location")) }
                input #location name="location" value=(d.location) maxlength="64";
                label for="tags" { (tr(l, "Tags")) " (, )" }
                input #tags name="tags" value=(d.tags.join(", "));
                button type="submit" { (tr(l, "Save")) }
            }
            h2 { (tr(l, "Streams")) }
            @for (i, c) in p.charts.iter().map(|c| &c.stream).chain(p.texts.iter()).enumerate() {
                form.inline method="post" action={ "/devices/" (d.id) "/stream" } {
                    (csrf_field(v))
                    input type="hidden" name="stream" value=(c.name);
                    div { label for={ "label" (i) } { (c.name) " · " (tr(l, "Label")) } input id={ "label" (i) } name="label" value=(c.label) maxlength="64"; }
                    div { label for={ "unit" (i) } { (tr(l, "Unit")) } input id={ "unit" (i) } name="unit" value=(c.unit) maxlength="16"; }
                    button type="submit" { (tr(l, "Save")) }
                }
            }
        }
    };
    page(v, Nav::None, device_title(d), flash, body)
}

fn alarm_table(v: &Viewer, alarms: &[Alarm], with_ack: bool) -> Markup {
    let l = v.lang;
    html! {
        div.scroll { table {
            thead { tr {
                th { "#" } th { (tr(l, "Raised")) } th { (tr(l, "Device")) } th { (tr(l, "Message")) }
                th { (tr(l, "Cleared")) } th { (tr(l, "Corrective action")) }
            } }
            tbody { @for a in alarms {
                tr id={ "alarm-" (a.id) } data-state=(a.state()) {
                    td { (a.id) } td { (local_time(a.raised_at_ms)) }
                    td { a href={ "/devices/" (a.device_id) } { (a.device_id) } " · " (a.stream) }
                    td { (a.message) @if a.escalated_at_ms.is_some() { " (" (tr(l, "escalated")) ")" } }
                    td { (a.cleared_at_ms.map(local_time).unwrap_or_default()) }
                    td {
                        @if let Some(note) = &a.note {
                            (note) br; span.muted { (tr(l, "by")) " " (a.acked_by.clone().unwrap_or_default()) ", " (a.acked_at_ms.map(local_time).unwrap_or_default()) }
                        } @else if with_ack && v.role >= Role::Operator {
                            form.stack method="post" action={ "/alarms/" (a.id) "/ack" } {
                                (csrf_field(v))
                                label for={ "note-" (a.id) } { (tr(l, "Corrective action taken (required)")) }
                                textarea id={ "note-" (a.id) } name="note" required maxlength="2000" rows="2" {}
                                button type="submit" { (tr(l, "Acknowledge")) }
                            }
                        } @else { span.muted { (tr(l, "raised")) } }
                    }
                }
            } }
        } }
    }
}

pub fn alarms(v: &Viewer, open: &[Alarm], past: &[Alarm], flash: Option<Flash>) -> Markup {
    let l = v.lang;
    let body = html! {
        h2 { (tr(l, "Open alarms")) }
        @if open.is_empty() { p { (tr(l, "No alarms.")) } } @else { (alarm_table(v, open, true)) }
        h2 { (tr(l, "Past alarms")) }
        @if past.is_empty() { p { (tr(l, "No alarms.")) } } @else { (alarm_table(v, past, true)) }
    };
    page(v, Nav::Alarms, tr(l, "Alarms"), flash, body)
}

/// One check slot of one probe: its start and value.
pub struct SlotValue {
    pub slot_ms: i64,
    pub celsius: f64,
}

/// The HACCP sheet of one device for a period.
pub struct HaccpDevice {
    pub device: Device,
    /// Probe id (with its label) and its slot values.
    pub probes: Vec<(String, String, Vec<SlotValue>)>,
    pub deviations: Vec<Alarm>,
}

pub struct HaccpSheet {
    /// `2026-12` or `2026-12-01`.
    pub period: String,
    pub monthly: bool,
    pub slot_minutes: u32,
    pub devices: Vec<HaccpDevice>,
}

/// Every check time of a device's probes, in order.
fn slot_times(d: &HaccpDevice) -> Vec<i64> {
    let mut slots: Vec<i64> = d
        .probes
        .iter()
        .flat_map(|p| p.2.iter().map(|s| s.slot_ms))
        .collect();
    slots.sort_unstable();
    slots.dedup();
    slots
}

pub fn haccp(v: &Viewer, sheet: &HaccpSheet) -> Markup {
    let l = v.lang;
    let kind = if sheet.monthly { "month" } else { "day" };
    let body = html! {
        form.inline.noprint method="get" action="/haccp" {
            div { label for="period" { (tr(l, if sheet.monthly { "Month" } else { "Day" })) }
                input #period name=(kind) type=(kind) value=(sheet.period); }
            button type="submit" { "OK" }
            a.button href={ "/haccp.csv?" (kind) "=" (sheet.period) } { (tr(l, "Download CSV")) }
            a.button href={ "/haccp?" (if sheet.monthly { "day" } else { "month" }) "=" (if sheet.monthly { format!("{}-01", sheet.period) } else { sheet.period[..7].to_string() }) } {
                (tr(l, if sheet.monthly { "Day" } else { "Month" }))
            }
            button type="button" onclick="window.print()" { (tr(l, "Print")) }
        }
        p.muted { (tr(l, "Temperature record")) " · " (sheet.period) " · " (tr(l, "Slots")) ": " (sheet.slot_minutes) " min" }
        @for d in &sheet.devices {
            section {
                h2 { (device_title(&d.device)) @if !d.device.location.is_empty() { " · " (d.device.location) } }
                @let slots = slot_times(d);
                div.scroll { table {
                    thead { tr { th { (tr(l, "Check")) } @for (id, label, _) in &d.probes { th { (if label.is_empty() { id } else { label }) " (°C)" } } } }
                    tbody { @for s in &slots { tr {
                        td { (local_time(*s)) }
                        @for (_, _, values) in &d.probes {
                            td.num { @if let Some(x) = values.iter().find(|x| x.slot_ms == *s) { (format!("{:.1}", x.celsius)) } }
                        }
                    } } }
                } }
                h2 { (tr(l, "Deviations and corrective actions")) }
                @if d.deviations.is_empty() { p { (tr(l, "No deviations.")) } }
                @else { (alarm_table(v, &d.deviations, false)) }
            }
        }
        div.signoff {
            div { (tr(l, "Checked by")) } div { (tr(l, "Date")) } div { (tr(l, "Signature")) }
        }
    };
    page(v, Nav::Haccp, tr(l, "HACCP record"), None, body)
}

/// The CSV an inspector or a spreadsheet takes: one row per check value, then the deviations.
pub fn haccp_csv(sheet: &HaccpSheet) -> String {
    fn field(s: &str) -> String {
        if s.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_owned()
        }
    }
    let mut out = String::from("record,device,location,probe,check_time,celsius,rule,message,cleared,corrective_action,acknowledged_by\r\n");
    for d in &sheet.devices {
        for (id, label, values) in &d.probes {
            let probe = if label.is_empty() { id } else { label };
            for s in values {
                out.push_str(&format!(
                    "check,{},{},{},{},{:.2},,,,,\r\n",
                    field(&d.device.id),
                    field(&d.device.location),
                    field(probe),
                    local_time(s.slot_ms),
                    s.celsius
                ));
            }
        }
        for a in &d.deviations {
            out.push_str(&format!(
                "deviation,{},{},{},{},{},{},{},{},{},{}\r\n",
                field(&d.device.id),
                field(&d.device.location),
                field(&a.stream),
                local_time(a.raised_at_ms),
                a.value.map(|v| format!("{v:.2}")).unwrap_or_default(),
                field(&a.rule),
                field(&a.message),
                a.cleared_at_ms.map(local_time).unwrap_or_default(),
                field(a.note.as_deref().unwrap_or_default()),
                field(a.acked_by.as_deref().unwrap_or_default())
            ));
        }
    }
    out
}

/// A note of the Exment forwarder (last success, last error) with its time.
fn noted(note: &Option<String>, at_ms: Option<i64>) -> String {
    match (note, at_ms) {
        (Some(m), Some(at)) => format!("{} ({m})", local_time(at)),
        _ => String::new(),
    }
}

/// `retryable`: sinks whose parked messages may be tried again from here (the telemetry
/// consumer after the device was added or enabled; delivery sinks after the receiver was fixed).
pub fn delivery(
    v: &Viewer,
    status: &StoreStatus,
    retryable: &[&str],
    flash: Option<Flash>,
) -> Markup {
    let l = v.lang;
    let sink_row = |s: &SinkState| {
        html! {
            tr {
                td { (s.name) } td.num { (s.backlog) } td.num { (s.delivered) } td.num { (s.parked) }
                td { (s.last_ok_at_ms.map(local_time).unwrap_or_default()) }
                td { (s.last_error.clone().unwrap_or_default()) }
                td {
                    @if s.parked > 0 && retryable.contains(&s.name.as_str()) && v.role >= Role::Operator {
                        form method="post" action="/delivery/retry" {
                            (csrf_field(v))
                            input type="hidden" name="sink" value=(s.name);
                            button type="submit" { (tr(l, "Retry parked")) }
                        }
                    }
                }
            }
        }
    };
    let body = html! {
        div.scroll { table {
            thead { tr {
                th { (tr(l, "Sink")) } th { (tr(l, "Backlog")) } th { (tr(l, "Delivered")) } th { (tr(l, "Parked")) }
                th { (tr(l, "Last success")) } th { (tr(l, "Last error")) } th { span.muted { "" } }
            } }
            tbody {
                @for s in &status.sinks { (sink_row(s)) }
                @if let Some(e) = &status.exment {
                    tr {
                        td { "exment" } td.num { (e.unknown) } td.num { (e.sent) } td.num { (e.refused) }
                        td { (noted(&e.last_success, e.last_success_at_ms)) } td { (noted(&e.last_error, e.last_error_at_ms)) } td {}
                    }
                }
            }
        } }
        h2 { (tr(l, "Parked messages")) }
        div.scroll { table {
            thead { tr { th { (tr(l, "Sink")) } th { "#" } th { (tr(l, "Topic")) } th { (tr(l, "Reason")) } th { (tr(l, "Time")) } } }
            tbody { @for p in &status.recent_parked {
                tr { td { (p.sink) } td { (p.journal_id) } td { (p.topic) } td { (p.reason) } td { (local_time(p.parked_at_ms)) } }
            } }
        } }
    };
    page(v, Nav::Delivery, tr(l, "Delivery"), flash, body)
}

/// The firmware images kept for updates (`genba firmware add`), the devices running each, and
/// per device an update button (operators) that queues the `update` command for an image.
/// The Pi's own software, for the Firmware page: what runs and what the installer said.
pub struct PiUpdate<'a> {
    /// The root slot running (A or B); none off the SD-card image.
    pub slot: Option<char>,
    pub release: Option<&'a str>,
    /// An uploaded bundle waits for the installer.
    pub pending: bool,
    /// The installer's last lines, newest first.
    pub results: &'a [String],
}

pub fn firmware(
    v: &Viewer,
    images: &[FirmwareImage],
    devices: &[Device],
    requests: &[UpdateRequest],
    pi: &PiUpdate,
    flash: Option<Flash>,
) -> Markup {
    let l = v.lang;
    let asked = |d: &Device| requests.iter().find(|r| r.device_id == d.id);
    let can_update = v.role >= Role::Operator && !images.is_empty();
    let running = |version: &str| {
        devices
            .iter()
            .filter(|d| d.firmware.as_deref() == Some(version))
            .count()
    };
    let body = html! {
        h2 { (tr(l, "Firmware images")) }
        @if images.is_empty() {
            p { (tr(l, "No firmware images yet. Add one on the appliance:")) " " code { "genba firmware add genba-fw-esp32c3.bin" } }
        } @else {
            div.scroll { table #firmware-images {
                thead { tr {
                    th { (tr(l, "Version")) } th.wide { (tr(l, "Project")) } th { (tr(l, "Size")) }
                    th.wide { "SHA-256" } th.wide { (tr(l, "Added")) } th { (tr(l, "Devices running it")) } th {}
                } }
                tbody { @for i in images {
                    tr data-version=(i.version) {
                        td { strong { (i.version) } } td.wide { (i.project) } td.num { (size_text(i.size)) }
                        td.wide { code title=(i.sha256) { (i.sha256.get(..12).unwrap_or(&i.sha256)) "…" } }
                        td.wide { (local_time(i.added_at_ms)) }
                        td.num { (running(&i.version)) }
                        td {
                            a href=(genba_store::firmware::download_path(&i.sha256)) download { (tr(l, "Download")) }
                            @if i.board_size.is_some() {
                                " · " a.board href=(genba_store::firmware::board_download_path(&i.sha256)) download=(crate::provision::board_file_name(&i.version)) { (tr(l, "Board image")) }
                            }
                        }
                    }
                } }
            } }
        }
        h2 { (tr(l, "Devices")) }
        @if devices.is_empty() {
            p { (tr(l, "No devices yet. They appear with their first message.")) }
        } @else {
            div.scroll { table #firmware-devices {
                thead { tr {
                    th { (tr(l, "Device")) } th { (tr(l, "Firmware")) } th.wide { (tr(l, "last seen")) }
                    th { (tr(l, "Last update asked")) }
                    @if can_update { th { (tr(l, "Update")) } }
                } }
                tbody { @for d in devices {
                    tr id={ "fw-" (d.id) } {
                        td { a href={ "/devices/" (d.id) } { (device_title(d)) } }
                        td.firmware { (d.firmware.as_deref().unwrap_or(tr(l, "not reported"))) }
                        td.wide { (d.last_seen_at_ms.map(local_time).unwrap_or_else(|| tr(l, "never").into())) }
                        td.asked {
                            @if let Some(r) = asked(d) {
                                (r.version) " · " (local_time(r.requested_at_ms)) " · " (r.requested_by.trim_start_matches("console:"))
                                br;
                                @match r.state(d) {
                                    UpdateState::Running => span.state.ok { (tr(l, "running it")) },
                                    UpdateState::Waiting => span.state.silent { (tr(l, "waiting for its next report")) },
                                    UpdateState::NotTaken => span.state.alarm { (tr(l, "reported since without it")) },
                                }
                            }
                        }
                        @if can_update {
                            td {
                                // Only devices that report a version run Genba's firmware.
                                @if d.firmware.is_some() {
                                    form.inline method="post" action={ "/devices/" (d.id) "/update" } {
                                        (csrf_field(v))
                                        select name="image" aria-label=(tr(l, "Version")) {
                                            @for i in images {
                                                @if d.firmware.as_deref() == Some(i.version.as_str()) {
                                                    option value=(i.sha256) disabled { (i.version) " (" (tr(l, "running")) ")" }
                                                } @else {
                                                    option value=(i.sha256) { (i.version) }
                                                }
                                            }
                                        }
                                        button type="submit" { (tr(l, "Update")) }
                                    }
                                }
                            }
                        }
                    }
                } }
            } }
            p.muted { (tr(l, "A device installs the image at once, tries it once and keeps it only when its first report after the restart reaches the appliance; otherwise it returns to the version it ran before. The version it reports shows here.")) }
        }
        h2 #pi-update { (tr(l, "This Genba")) }
        dl.pi {
            dt { (tr(l, "Running")) }
            dd #pi-running {
                @match pi.slot {
                    Some(slot) => { (tr(l, "slot")) " " (slot) }
                    None => { (tr(l, "not the SD-card image (no A/B slots)")) }
                }
                @if let Some(release) = pi.release { " · " (release) }
            }
            @if pi.pending {
                dt { (tr(l, "Waiting")) }
                dd #pi-pending { (tr(l, "an uploaded bundle waits to be installed")) }
            }
            @if !pi.results.is_empty() {
                dt { (tr(l, "Last updates")) }
                dd #pi-results { @for r in pi.results { (r) br; } }
            }
        }
        @if v.role >= Role::Admin {
            form #pi-upload method="post" action="/firmware/pi-update" enctype="multipart/form-data" {
                (csrf_field(v))
                label for="pi-bundle" { (tr(l, "Update bundle (.raucb)")) }
                " "
                input #pi-bundle type="file" name="bundle" accept=".raucb" required;
                button type="submit" { (tr(l, "Upload and install")) }
            }
        }
        p.muted { (tr(l, "The Pi installs a signed bundle into its other root slot, restarts into it, and keeps it once Genba is ready; otherwise it goes back to the slot it ran before. Data and settings stay.")) }
    };
    page(v, Nav::Firmware, tr(l, "Firmware"), flash, body)
}

/// A size as people read it: bytes when small, else KiB.
fn size_text(bytes: i64) -> String {
    if bytes < 10 * 1024 {
        format!("{bytes} B")
    } else {
        format!("{:.0} KiB", bytes as f64 / 1024.0)
    }
}

pub fn send_form(v: &Viewer, default_topic: &str, flash: Option<Flash>) -> Markup {
    let l = v.lang;
    let body = html! {
        form.stack method="post" action="/notify" style="max-width:32rem" {
            (csrf_field(v))
            label for="topic" { (tr(l, "Topic")) }
            input #topic name="topic" value=(default_topic) required;
            label for="message" { (tr(l, "Message")) }
            textarea #message name="message" rows="3" required {}
            button type="submit" { (tr(l, "Send")) }
        }
    };
    page(v, Nav::Send, tr(l, "Send a notification"), flash, body)
}

/// The answer to a form post of `/notify` from a browser.
pub fn sent(v: &Viewer, id: i64, topic: &str, sinks: &[String]) -> Markup {
    let l = v.lang;
    let body = html! {
        p.banner.ok role="status" { (tr(l, "Sent.")) " #" (id) " · " code { (topic) } }
        @if sinks.is_empty() { p { (tr(l, "No sink takes this topic; it is stored only.")) } }
        @else { p { (tr(l, "It will be delivered to")) ": " @for (i, s) in sinks.iter().enumerate() { @if i > 0 { ", " } strong { (s) } } } }
        p { a.button href="/send" { (tr(l, "Send another")) } }
    };
    page(v, Nav::Send, tr(l, "Send a notification"), None, body)
}

/// A plain message page (not found, forbidden).
pub fn message(v: &Viewer, title: &str, text: &str) -> Markup {
    page(v, Nav::None, title, None, html! { p { (text) } })
}
