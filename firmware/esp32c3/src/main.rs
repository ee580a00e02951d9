//! Genba ESP32-C3 thermometer.
//!
//! Reads every DS18B20 on one 1-Wire bus each report interval, stamps the batch (SNTP time,
//! or "unsynced" until the first sync), queues it in a bounded RAM backlog and delivers the
//! backlog oldest first to the Genba appliance over MQTT 5 (`devices/{id}/telemetry`, QoS 1,
//! username/password) or HTTP (`POST /api/telemetry` with `X-API-Key`). Commands arrive on
//! `devices/{id}/commands`. Wi-Fi and the appliance link reconnect with exponential backoff
//! and jitter. All settings come from the provisioning file at build time (see build.rs).
//!
//! The wire format, sensor decoding, backlog, backoff and command rules are in
//! `genba-firmware-core`, which is tested on the host.
#![no_std]
#![no_main]

extern crate alloc;

#[macro_use]
mod provisioning {
    include!(concat!(env!("OUT_DIR"), "/provisioning.rs"));
}
mod net;
mod sensors;
mod state;

use embassy_executor::Spawner;
use embassy_futures::select::{Either, select};
use embassy_net::{Runner, StackResources};
use embassy_time::{Duration, Timer};
use esp_backtrace as _;
use esp_hal::clock::CpuClock;
use esp_hal::gpio::{DriveMode, Flex, InputConfig, Level, Output, OutputConfig, Pull};
use esp_hal::rng::Rng;
use esp_hal::timer::timg::TimerGroup;
use esp_radio::wifi::sta::StationConfig;
use esp_radio::wifi::{AuthenticationMethodConfig, Config, Interface, WifiController};
use genba_firmware_core::backoff::Backoff;
use genba_firmware_core::offsets::Offsets;
use log::{error, info, warn};
use static_cell::StaticCell;

use crate::provisioning::{DEVICE_ID, FROM_EXAMPLE, OFFSETS, WIFI_PASSWORD, WIFI_SSID};

esp_bootloader_esp_idf::esp_app_desc!();

/// Keeps the IP stack running.
#[embassy_executor::task]
async fn net_task(mut runner: Runner<'static, Interface>) {
    runner.run().await
}

/// Keeps the station associated: reconnects with backoff after a drop, and samples the RSSI.
#[embassy_executor::task]
async fn wifi_task(mut controller: WifiController<'static>) {
    let mut backoff = Backoff::new(2_000, 60_000);
    loop {
        match controller.connect_async().await {
            Ok(_) => {
                info!("Wi-Fi associated with {WIFI_SSID}");
                backoff.reset();
                loop {
                    match select(
                        controller.wait_for_disconnect_async(),
                        Timer::after(Duration::from_secs(10)),
                    )
                    .await
                    {
                        Either::First(_) => break,
                        Either::Second(()) => {
                            if let Ok(rssi) = controller.rssi() {
                                let rssi = i16::try_from(rssi).unwrap_or(i16::MIN);
                                state::with(&state::RSSI, |r| *r = rssi);
                            }
                        }
                    }
                }
                state::with(&state::RSSI, |r| *r = 0);
                warn!("Wi-Fi disconnected");
            }
            Err(e) => warn!("Wi-Fi connect to {WIFI_SSID} failed: {e:?}"),
        }
        let delay = backoff.next_delay_ms(Rng::new().random());
        Timer::after(Duration::from_millis(u64::from(delay))).await;
    }
}

fn station_config() -> Option<Config> {
    let ssid = WIFI_SSID.try_into().ok()?;
    let auth = if WIFI_PASSWORD.is_empty() {
        AuthenticationMethodConfig::Open
    } else {
        AuthenticationMethodConfig::Wpa2Personal(WIFI_PASSWORD.try_into().ok()?)
    };
    Some(Config::Station(
        StationConfig::default()
            .with_ssid(ssid)
            .with_authentication(auth),
    ))
}

#[esp_rtos::main]
async fn main(spawner: Spawner) -> ! {
    esp_println::logger::init_logger_from_env();
    let peripherals = esp_hal::init(esp_hal::Config::default().with_cpu_clock(CpuClock::max()));
    // the Wi-Fi driver needs a heap; the RAM the bootloader used is reclaimed for it
    esp_alloc::heap_allocator!(#[esp_hal::ram(reclaimed)] size: 66320);

    let timg0 = TimerGroup::new(peripherals.TIMG0);
    esp_rtos::start(timg0.timer0, peripherals.FROM_CPU_INTR0);

    info!(
        "Genba thermometer {DEVICE_ID}, firmware {}",
        env!("CARGO_PKG_VERSION")
    );
    if FROM_EXAMPLE {
        warn!("built from cfg.toml.example: Wi-Fi and broker settings are placeholders");
    }
    match Offsets::parse_list(OFFSETS) {
        Ok(o) => state::with(&state::SETTINGS, |s| s.offsets = o),
        Err(e) => error!("provisioned offsets ignored: {e}"),
    }

    // status LED, off until a command says otherwise
    let led = Output::new(led_pin!(peripherals), Level::Low, OutputConfig::default());

    // 1-Wire bus: open drain with the internal pull-up (fit the external 4.7 kΩ as well)
    let mut ow = Flex::new(onewire_pin!(peripherals));
    ow.apply_output_config(
        &OutputConfig::default()
            .with_drive_mode(DriveMode::OpenDrain)
            .with_pull(Pull::Up),
    );
    ow.apply_input_config(&InputConfig::default().with_pull(Pull::Up));
    ow.set_output_enable(true);
    ow.set_input_enable(true);
    ow.set_high();
    match sensors::sensor_task(sensors::Bus::new(ow)) {
        Ok(token) => spawner.spawn(token),
        Err(e) => error!("cannot start the sensor task: {e:?}"),
    }

    // Wi-Fi station and the IP stack (DHCP)
    let mut controller = match WifiController::new(peripherals.WIFI, Default::default()) {
        Ok(c) => c,
        Err(e) => halt("Wi-Fi driver failed to start", e),
    };
    match station_config().map(|cfg| controller.set_config(&cfg)) {
        Some(Ok(())) => {}
        Some(Err(e)) => halt("Wi-Fi configuration refused", e),
        None => halt("Wi-Fi SSID or password does not fit", ()),
    }
    let rng = Rng::new();
    let seed = (u64::from(rng.random()) << 32) | u64::from(rng.random());
    static RESOURCES: StaticCell<StackResources<5>> = StaticCell::new();
    let (stack, runner) = embassy_net::new(
        Interface::station(),
        embassy_net::Config::dhcpv4(Default::default()),
        RESOURCES.init(StackResources::new()),
        seed,
    );
    match (net_task(runner), wifi_task(controller)) {
        (Ok(net), Ok(wifi)) => {
            spawner.spawn(net);
            spawner.spawn(wifi);
        }
        _ => halt("cannot start the network tasks", ()),
    }

    net::run(stack, led).await
}

/// Logs a fatal start-up error, waits 30 s (so the log can be read and a reset loop does not
/// hammer anything) and resets the chip.
fn halt(what: &str, e: impl core::fmt::Debug) -> ! {
    error!("{what}: {e:?}; resetting in 30 s");
    esp_hal::delay::Delay::new().delay_millis(30_000);
    esp_hal::system::software_reset()
}
