//! `GET/POST /provision`: "Add a thermometer" (admins). The post is checked, registered and
//! turned into the device's config file by genba-platform `provisioning`, the code `genba
//! devices provision` runs; the file is handed over inside the answer and kept nowhere, or,
//! for a board plugged into this Pi, written to it first (genba-platform `board_flash`, as
//! `--write` does).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use axum::extract::{Query, Request, State as AxumState};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use base64::Engine;
use genba_console::provision::{self as page, ProvisionForm};
use genba_console::Role;
use genba_firmware_core::config::Pins;
use genba_platform::board_flash::{self, FlashError, Plan, Port, Reset};
use genba_platform::provisioning::{self, ProvisionError, Request as Asked, Transport};

use super::{db_error, html, posted, status_page, viewer};
use crate::Shared;

pub(super) async fn form_page(
    AxumState(state): AxumState<Shared>,
    headers: HeaderMap,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let v = match viewer(&state, &headers, &q, page::PATH) {
        Ok(v) => v,
        Err(r) => return r,
    };
    if v.role < Role::Admin {
        return status_page(&v, StatusCode::FORBIDDEN, "Your role may not do this.");
    }
    let mut values = defaults(&headers);
    let ports = port_names(&state);
    if let [one] = ports.as_slice() {
        values.insert("write_port".to_owned(), one.clone());
    }
    html(page::form(&v, &form(&state, &values, None, ports)), &q)
}

pub(super) async fn provision(AxumState(state): AxumState<Shared>, req: Request) -> Response {
    let (v, f) = match posted(&state, req, page::PATH, Role::Admin).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let refused = |e: ProvisionError| {
        let mut r = html(
            page::form(
                &v,
                &form(&state, &f, Some((e.field, &e.message)), port_names(&state)),
            ),
            &BTreeMap::new(),
        );
        *r.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
        r
    };
    let asked = match request(&f) {
        Ok(a) => a,
        Err(e) => return refused(e),
    };
    let prepared = match provisioning::prepare(&asked, &state.devices, state.local_ca.as_deref()) {
        Ok(p) => p,
        Err(e) => return refused(e),
    };
    // A board plugged into this Pi, when one was picked: written before anything is
    // registered, so a failed write leaves nothing behind.
    let written = match board_to_write(&state, &f) {
        Ok(None) => None,
        Ok(Some(board)) => {
            match write_board(&state, board, &f, &asked.id, &prepared.record).await {
                Ok(written) => Some(written),
                Err(WriteFailed::Refused(e)) => return refused(e),
                Err(WriteFailed::Db(e)) => return db_error(e),
            }
        }
        Err(e) => return refused(e),
    };
    let registered = state
        .db
        .run(move |c| {
            let tx = c.unchecked_transaction()?;
            let registered = provisioning::register(&tx, &prepared);
            if registered.is_ok() {
                tx.commit()?;
            }
            // the newest board image, for a new board's first flash
            let board = genba_store::firmware::newest_board(c)?;
            Ok((prepared, registered, board))
        })
        .await;
    let (prepared, registered, board) = match registered {
        Ok((p, Ok(r), board)) => (p, r, board),
        Ok((_, Err(e), _)) => {
            tracing::error!(error = %e, "console: provisioning");
            return refused(ProvisionError {
                field: "id",
                message: e.to_string(),
            });
        }
        Err(e) => return db_error(e),
    };
    tracing::info!(device = %asked.id, user = ?v.user, key = registered.key_id, "console: device provisioned");
    let file_name = format!("{}.genba-config.bin", asked.id);
    let done = page::Provisioned {
        id: &asked.id,
        new_device: registered.new_device,
        reports_to: format!("{} over {}", prepared.device.host, prepared.reports_over()),
        pin: prepared.pin_hex(),
        key_id: registered.key_id,
        flash_command: provisioning::flash_command(&file_name),
        config_offset: provisioning::PARTITION_OFFSET,
        file_base64: base64::engine::general_purpose::STANDARD.encode(&prepared.record),
        file_bytes: prepared.record.len(),
        file_name,
        board: board.as_ref().map(|b| page::BoardImage {
            version: &b.version,
            href: genba_store::firmware::board_download_path(&b.sha256),
        }),
        written,
    };
    let mut r = html(page::provisioned(&v, &done), &BTreeMap::new());
    // The page holds a secret: no copy in any cache, no referrer to other sites.
    r.headers_mut().insert(
        header::REFERRER_POLICY,
        header::HeaderValue::from_static("no-referrer"),
    );
    r
}

fn form<'a>(
    state: &'a Shared,
    values: &'a HashMap<String, String>,
    error: Option<(&'a str, &'a str)>,
    ports: Vec<String>,
) -> ProvisionForm<'a> {
    ProvisionForm {
        values,
        error,
        local_ca: state.local_ca.as_deref(),
        tls_mqtt: state.devices.tls(Transport::Mqtt),
        tls_http: state.devices.tls(Transport::Http),
        ports,
    }
}

/// The names of the [`offered`] ports, for the form.
fn port_names(state: &Shared) -> Vec<String> {
    offered(state).into_iter().map(|p| p.name).collect()
}

/// The boards this Pi can write: plugged into its USB, or the ports the settings name.
fn offered(state: &Shared) -> Vec<Port> {
    board_flash::offered(state.usb_ports.as_deref())
}

/// The board the post asks to write (`write_port`, one of [`offered`]) and how to reset it.
fn board_to_write(
    state: &Shared,
    f: &HashMap<String, String>,
) -> Result<Option<(Port, Reset)>, ProvisionError> {
    let Some(name) = f
        .get("write_port")
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
    else {
        return Ok(None);
    };
    let port = offered(state)
        .into_iter()
        .find(|p| p.name == name)
        .ok_or_else(|| ProvisionError {
            field: "write_port",
            message: format!(
                "no ESP32 board is plugged in at {name} any more; plug it in and reload the page"
            ),
        })?;
    let reset = match f.get("no_reset").map(String::as_str) {
        Some("1") => Reset::None,
        _ => Reset::Lines,
    };
    Ok(Some((port, reset)))
}

/// Why a board was not written: the form shows it at the port field, or the database failed.
enum WriteFailed {
    Refused(ProvisionError),
    Db(genba_store::StoreError),
}

/// Writes the device's config (`record`), inside the newest board image unless the form asks
/// for the config alone, to the board on `port`; what was written, in words.
async fn write_board(
    state: &Shared,
    (port, reset): (Port, Reset),
    f: &HashMap<String, String>,
    device: &str,
    record: &[u8],
) -> Result<String, WriteFailed> {
    let (record, firmware_dir) = (record.to_vec(), state.firmware_dir.clone());
    let config_only = f.get("config_only").is_some_and(|v| v == "1");
    let plan = state
        .db
        .run(move |c| {
            Ok(if config_only {
                Ok(Plan::config_only(&record))
            } else {
                Plan::board(c, &firmware_dir, &record)
            })
        })
        .await
        .map_err(WriteFailed::Db)?
        .map_err(|e| WriteFailed::Refused(write_refused(e)))?;
    let write = move || board_flash::write(&port, reset, &plan, None).map(|()| (port, plan));
    match tokio::task::spawn_blocking(write).await {
        Ok(Ok((port, plan))) => {
            tracing::info!(device, port = %port.name, what = %plan.what(), "console: board written");
            Ok(format!("{}, {}", port.name, plan.what()))
        }
        Ok(Err(e)) => {
            tracing::warn!(device, error = %e, "console: board not written");
            Err(WriteFailed::Refused(write_refused(e)))
        }
        Err(e) => {
            tracing::error!(error = %e, "console: board write task");
            Err(WriteFailed::Refused(ProvisionError {
                field: "write_port",
                message: "the write stopped unexpectedly; nothing was registered".into(),
            }))
        }
    }
}

/// A failed write as the form shows it: at the port field, and nothing registered.
fn write_refused(e: FlashError) -> ProvisionError {
    ProvisionError {
        field: "write_port",
        message: format!("{e}; nothing was registered"),
    }
}

/// The form's first values: the defaults devices are provisioned with, and this Pi's address
/// as the browser reached it when that is a LAN address a device could use too.
fn defaults(headers: &HeaderMap) -> HashMap<String, String> {
    let d = Asked::new("", "", "", Transport::Mqtt);
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.rsplit_once(':').map_or(Some(h), |(host, _)| Some(host)))
        .and_then(|h| h.parse::<IpAddr>().ok())
        .filter(|ip| matches!(ip, IpAddr::V4(v4) if !v4.is_loopback() && !v4.is_unspecified()))
        .map(|ip| ip.to_string())
        .unwrap_or_default();
    HashMap::from([
        ("appliance".to_owned(), host),
        ("transport".to_owned(), "mqtt".to_owned()),
        ("interval".to_owned(), d.interval_s.to_string()),
        ("onewire_gpio".to_owned(), d.pins.onewire.to_string()),
        ("led_gpio".to_owned(), d.pins.led.to_string()),
        ("ntp_server".to_owned(), d.ntp_server),
    ])
}

/// The posted form as a provisioning request; a number that is not one names its field.
fn request(f: &HashMap<String, String>) -> Result<Asked, ProvisionError> {
    let text = |key: &str| f.get(key).map(|s| s.trim().to_owned()).unwrap_or_default();
    fn number<T: std::str::FromStr>(
        f: &HashMap<String, String>,
        key: &'static str,
    ) -> Result<T, ProvisionError> {
        let raw = f.get(key).map(|s| s.trim()).unwrap_or_default();
        raw.parse().map_err(|_| ProvisionError {
            field: key,
            message: format!("{raw:?} is not a number in range"),
        })
    }
    let transport = match text("transport").as_str() {
        "http" => Transport::Http,
        "mqtt" | "" => Transport::Mqtt,
        other => {
            return Err(ProvisionError {
                field: "transport",
                message: format!("{other:?}: mqtt or http expected"),
            })
        }
    };
    // The pass phrase is taken as typed: spaces may belong to it.
    let pass = f.get("wifi_pass").cloned().unwrap_or_default();
    let mut asked = Asked::new(&text("id"), &text("wifi_ssid"), &pass, transport);
    asked.appliance = Some(text("appliance")).filter(|a| !a.is_empty());
    asked.interval_s = number(f, "interval")?;
    asked.pins = Pins {
        onewire: number(f, "onewire_gpio")?,
        led: number(f, "led_gpio")?,
        led_active_low: text("led_active_high") != "1",
    };
    asked.offsets = text("offsets")
        .split(',')
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .map(str::to_owned)
        .collect();
    let ntp = text("ntp_server");
    if !ntp.is_empty() {
        asked.ntp_server = ntp;
    }
    asked.pin = Some(text("pin")).filter(|p| !p.is_empty());
    Ok(asked)
}
