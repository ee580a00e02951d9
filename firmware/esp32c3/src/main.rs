//! Genba ESP32-C3 thermometer.
//!
//! Reads every DS18B20 on one 1-Wire bus each report interval, stamps the batch (SNTP time,
//! or "unsynced" until the first sync), queues it in a bounded RAM backlog and delivers the
//! backlog oldest first to the Genba appliance over MQTT 5 (`devices/{id}/telemetry`, QoS 1,
//! username/password) or HTTP (`POST /api/telemetry` with `X-API-Key`). Commands arrive on
//! `devices/{id}/commands`. Wi-Fi and the appliance link reconnect with exponential backoff
//! and jitter. Every per-device setting (device id, Wi-Fi, appliance, credential, pins,
//! interval, offsets) is read at boot from the `config` flash partition, which
//! `genba devices provision` writes; the image itself is the same for every device. Without a
//! valid config the device stays in a setup state that says why on the serial console.
//!
//! The `update` command installs a new firmware image from the appliance into the other OTA
//! slot; a new image is tried once and confirmed by its first delivered batch, else the device
//! returns to the previous one (`ota.rs`).
//!
//! The wire format, sensor decoding, backlog, backoff, command and update rules are in
//! `genba-firmware-core`, which is tested on the host.
#![no_std]
#![no_main]

extern crate alloc;

mod flash;
mod link;
mod net;
mod ota;
mod sensors;
mod state;
mod storage;

use embassy_executor::Spawner;
use embassy_futures::select::{Either, select};
use embassy_net::{Runner, StackResources};
use embassy_sync::mutex::Mutex;
use embassy_time::{Duration, Timer};
use esp_backtrace as _;
use esp_bootloader_esp_idf::partitions::FlashStorage;
use esp_hal::clock::CpuClock;
use esp_hal::gpio::{AnyPin, DriveMode, Flex, InputConfig, Level, Output, OutputConfig, Pull};
use esp_hal::rng::Rng;
use esp_hal::timer::timg::TimerGroup;
use esp_radio::wifi::sta::StationConfig;
use esp_radio::wifi::{AuthenticationMethodConfig, Config, Interface, WifiController};
use genba_firmware_core::backoff::Backoff;
use genba_firmware_core::config::{DeviceConfig, Transport};
use log::{error, info, warn};
use static_cell::StaticCell;

use crate::flash::{Flash, SharedFlash};

esp_bootloader_esp_idf::esp_app_desc!();

/// Keeps the IP stack running.
#[embassy_executor::task]
async fn net_task(mut runner: Runner<'static, Interface>) {
    runner.run().await
}

/// Keeps the station associated: reconnects with backoff after a drop, and samples the RSSI.
#[embassy_executor::task]
async fn wifi_task(mut controller: WifiController<'static>, ssid: &'static str) {
    let mut backoff = Backoff::new(2_000, 60_000);
    loop {
        match controller.connect_async().await {
            Ok(_) => {
                info!("Wi-Fi associated with {ssid}");
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
            Err(e) => warn!("Wi-Fi connect to {ssid} failed: {e:?}"),
        }
        let delay = backoff.next_delay_ms(Rng::new().random());
        Timer::after(Duration::from_millis(u64::from(delay))).await;
    }
}

fn station_config(cfg: &DeviceConfig) -> Option<Config> {
    let ssid = cfg.wifi_ssid.as_str().try_into().ok()?;
    let auth = if cfg.wifi_pass.is_empty() {
        AuthenticationMethodConfig::Open
    } else {
        AuthenticationMethodConfig::Wpa2Personal(cfg.wifi_pass.as_str().try_into().ok()?)
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

    info!("Genba thermometer, firmware {}", env!("CARGO_PKG_VERSION"));
    let mut flash = match Flash::new(FlashStorage::new(peripherals.FLASH)) {
        Ok(f) => f,
        Err(e) => setup_state(&storage::ConfigError::Table(e)).await,
    };
    // a new image's trial, or the rollback of one that failed, before anything else
    let trial = ota::boot(&mut flash);
    let (config_partition, config) = match storage::open(&mut flash) {
        Ok(found) => found,
        Err(e) => setup_state(&e).await,
    };
    // from here on the config writer and the update writer share the flash
    static FLASH: StaticCell<SharedFlash> = StaticCell::new();
    let flash: &'static SharedFlash = FLASH.init(Mutex::new(flash));
    if trial {
        match ota::trial_task(flash) {
            Ok(token) => spawner.spawn(token),
            Err(e) => error!("cannot start the trial timer: {e:?}"),
        }
    }
    static CONFIG: StaticCell<DeviceConfig> = StaticCell::new();
    let cfg: &'static DeviceConfig = CONFIG.init(config.clone());
    info!(
        "device {} -> {} ({}), every {} s, 1-Wire GPIO{}, LED GPIO{}",
        cfg.device_id,
        cfg.host,
        match cfg.transport() {
            Transport::Mqtt => "MQTT",
            Transport::Http => "HTTP",
        },
        cfg.interval_s,
        cfg.pins.onewire,
        cfg.pins.led
    );
    state::with(&state::SETTINGS, |s| {
        s.interval_s = cfg.interval_s;
        s.offsets = cfg.offsets.clone();
    });
    match storage::persist_task(flash, config_partition, config) {
        Ok(token) => spawner.spawn(token),
        Err(e) => error!("cannot start the config writer (settings stay in RAM): {e:?}"),
    }

    // The GPIOs a config may name (config::FREE_GPIOS), by number; the config checked that
    // the two pins are free and differ.
    let mut pins: [Option<AnyPin<'static>>; 22] = [const { None }; 22];
    let free: [(usize, AnyPin<'static>); 13] = [
        (0, peripherals.GPIO0.into()),
        (1, peripherals.GPIO1.into()),
        (2, peripherals.GPIO2.into()),
        (3, peripherals.GPIO3.into()),
        (4, peripherals.GPIO4.into()),
        (5, peripherals.GPIO5.into()),
        (6, peripherals.GPIO6.into()),
        (7, peripherals.GPIO7.into()),
        (8, peripherals.GPIO8.into()),
        (9, peripherals.GPIO9.into()),
        (10, peripherals.GPIO10.into()),
        (20, peripherals.GPIO20.into()),
        (21, peripherals.GPIO21.into()),
    ];
    for (n, pin) in free {
        pins[n] = Some(pin);
    }
    let mut take = |gpio: u8| pins.get_mut(usize::from(gpio)).and_then(Option::take);
    let (Some(led_pin), Some(onewire_pin)) = (take(cfg.pins.led), take(cfg.pins.onewire)) else {
        halt("the configured GPIOs are not available", cfg.pins)
    };

    // status LED, off until a command says otherwise
    let led = net::Led::new(
        Output::new(led_pin, Level::Low, OutputConfig::default()),
        cfg.pins.led_active_low,
    );

    // 1-Wire bus: open drain with the internal pull-up (fit the external 4.7 kΩ as well)
    let mut ow = Flex::new(onewire_pin);
    ow.apply_output_config(
        &OutputConfig::default()
            .with_drive_mode(DriveMode::OpenDrain)
            .with_pull(Pull::Up),
    );
    ow.apply_input_config(&InputConfig::default().with_pull(Pull::Up));
    ow.set_output_enable(true);
    ow.set_input_enable(true);
    ow.set_high();
    match sensors::sensor_task(sensors::Bus::new(ow), &cfg.device_id) {
        Ok(token) => spawner.spawn(token),
        Err(e) => error!("cannot start the sensor task: {e:?}"),
    }

    // Wi-Fi station and the IP stack (DHCP)
    let mut controller = match WifiController::new(peripherals.WIFI, Default::default()) {
        Ok(c) => c,
        Err(e) => halt("Wi-Fi driver failed to start", e),
    };
    match station_config(cfg).map(|station| controller.set_config(&station)) {
        Some(Ok(())) => {}
        Some(Err(e)) => halt("Wi-Fi configuration refused", e),
        None => halt("Wi-Fi SSID or password does not fit", ()),
    }
    let rng = Rng::new();
    let seed = (u64::from(rng.random()) << 32) | u64::from(rng.random());
    // DHCP, DNS, MQTT or HTTP, SNTP or mDNS, and an update's download
    static RESOURCES: StaticCell<StackResources<6>> = StaticCell::new();
    let (stack, runner) = embassy_net::new(
        Interface::station(),
        embassy_net::Config::dhcpv4(Default::default()),
        RESOURCES.init(StackResources::new()),
        seed,
    );
    match (net_task(runner), wifi_task(controller, &cfg.wifi_ssid)) {
        (Ok(net), Ok(wifi)) => {
            spawner.spawn(net);
            spawner.spawn(wifi);
        }
        _ => halt("cannot start the network tasks", ()),
    }
    match ota::update_task(stack, flash) {
        Ok(token) => spawner.spawn(token),
        Err(e) => error!("cannot start the update task (updates are refused): {e:?}"),
    }

    net::run(stack, led, cfg).await
}

/// No usable config: nothing to connect to. Says why on the serial console every minute until
/// someone writes a config (`genba devices provision`, then `espflash write-bin`) and resets.
async fn setup_state(why: &storage::ConfigError) -> ! {
    loop {
        error!("not provisioned: {why}");
        error!(
            "setup: on the appliance run `genba devices provision ID --wifi-ssid ... --out ID.bin`, \
             then `espflash write-bin {:#x} ID.bin` over USB, and reset",
            genba_firmware_core::config::PARTITION_OFFSET
        );
        Timer::after(Duration::from_secs(60)).await;
    }
}

/// Logs a fatal start-up error, waits 30 s (so the log can be read and a reset loop does not
/// hammer anything) and resets the chip.
fn halt(what: &str, e: impl core::fmt::Debug) -> ! {
    error!("{what}: {e:?}; resetting in 30 s");
    esp_hal::delay::Delay::new().delay_millis(30_000);
    esp_hal::system::software_reset()
}
