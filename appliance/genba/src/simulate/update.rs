//! The device side of firmware updates in `genba simulate`, as the ESP32-C3 firmware runs it:
//! the `update` command, the download from the appliance checked by the firmware core as it
//! arrives (`ota::Download`), and the try-once life of the new image (`ota::on_boot`,
//! `ota::on_delivered`). Instead of writing a flash slot, a simulated device "restarts" into the
//! version it downloaded; `--broken-firmware VERSION` makes that version one that never
//! delivers, so its trial ends in a rollback.

use std::time::{Duration, Instant};

use genba_firmware_core::command::Command;
use genba_firmware_core::image::{self, AppInfo};
use genba_firmware_core::ota::{self, BootAction, SlotState};

/// What one simulated device runs, and the state of its trial.
pub struct Firmware {
    running: String,
    /// The version to return to while a new one is on trial.
    previous: Option<String>,
    state: SlotState,
    trial_since: Option<Instant>,
    /// Downloaded and checked; the device restarts into it once its backlog is sent.
    pending: Option<String>,
    /// A version that never delivers.
    broken: Option<String>,
    trial: Duration,
}

impl Firmware {
    pub fn new(version: &str, broken: Option<&str>, trial: Duration) -> Firmware {
        Firmware {
            running: version.to_owned(),
            previous: None,
            // flashed over USB: no otadata state, treated as confirmed
            state: SlotState::Undefined,
            trial_since: None,
            pending: None,
            broken: broken.map(str::to_owned),
            trial,
        }
    }

    /// The version the device reports as `fw`.
    pub fn version(&self) -> &str {
        &self.running
    }

    /// Whether the running image delivers batches (a broken one on trial does not).
    pub fn delivers(&self) -> bool {
        !(self.state == SlotState::PendingVerify && self.broken.as_ref() == Some(&self.running))
    }

    /// The appliance acknowledged a batch.
    pub fn delivered(&mut self, device: &str) {
        let next = ota::on_delivered(self.state);
        if next != self.state {
            eprintln!(
                "{device}: firmware {} confirmed by its first delivered batch",
                self.running
            );
            self.previous = None;
            self.trial_since = None;
        }
        self.state = next;
    }

    /// Restarts when due: into a downloaded update once `backlog_empty`, or out of a trial
    /// that ran past its deadline. Returns true when the device restarted (its RAM, and so its
    /// backlog, is gone).
    pub fn restart_if_due(&mut self, device: &str, backlog_empty: bool) -> bool {
        if let Some(version) = self.pending.take_if(|_| backlog_empty) {
            self.previous = Some(std::mem::replace(&mut self.running, version));
            self.state = SlotState::New;
            self.boot(device);
            return true;
        }
        let expired = self.trial_since.is_some_and(|t| t.elapsed() >= self.trial);
        if self.state == SlotState::PendingVerify && expired {
            eprintln!(
                "{device}: firmware {} delivered nothing within {:.1} s; restarting",
                self.running,
                self.trial.as_secs_f64()
            );
            self.boot(device);
            return true;
        }
        false
    }

    /// What the firmware does at boot about the image it runs.
    fn boot(&mut self, device: &str) {
        match ota::on_boot(self.state) {
            BootAction::Run => {}
            BootAction::Try => {
                eprintln!("{device}: running firmware {} on trial", self.running);
                self.state = SlotState::PendingVerify;
                self.trial_since = Some(Instant::now());
            }
            BootAction::RollBack => {
                let failed = self.running.clone();
                if let Some(previous) = self.previous.take() {
                    self.running = previous;
                }
                eprintln!(
                    "{device}: firmware {failed} never confirmed; back to {} (the update did not take)",
                    self.running
                );
                self.state = SlotState::Valid;
                self.trial_since = None;
            }
        }
    }

    /// A payload received on `devices/{id}/commands`.
    pub async fn command(
        &mut self,
        device: &str,
        payload: &[u8],
        client: &reqwest::Client,
        http_base: &str,
    ) {
        let cmd = match Command::parse(payload) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{device}: command refused: {e}");
                return;
            }
        };
        let Command::Update {
            version,
            sha256,
            size,
        } = cmd
        else {
            eprintln!("{device}: command {cmd:?} (not simulated)");
            return;
        };
        if !ota::may_update(self.state) {
            eprintln!(
                "{device}: update to {version} refused: firmware {} is on trial ({:?})",
                self.running, self.state
            );
            return;
        }
        let url = format!("{http_base}{}", image::download_path(&sha256));
        match download(client, &url, sha256, size).await {
            Ok(info) if info.version.as_str() == version.as_str() => {
                eprintln!(
                    "{device}: update to {version}: {size} bytes downloaded and checked; \
                     restarting into it once the backlog is sent"
                );
                self.pending = Some(version.to_string());
            }
            Ok(info) => eprintln!(
                "{device}: update to {version} refused: the image says version {}",
                info.version
            ),
            Err(e) => eprintln!("{device}: update to {version} refused: {e}"),
        }
    }
}

/// Fetches an image and checks it as it arrives, as the firmware writes it to its other slot.
async fn download(
    client: &reqwest::Client,
    url: &str,
    sha256: [u8; 32],
    size: u32,
) -> Result<AppInfo, String> {
    let mut r = client.get(url).send().await.map_err(|e| e.to_string())?;
    if !r.status().is_success() {
        return Err(format!("GET {url}: HTTP {}", r.status()));
    }
    let mut check = ota::Download::new(sha256, size);
    while let Some(chunk) = r.chunk().await.map_err(|e| e.to_string())? {
        check.feed(&chunk).map_err(|e| e.to_string())?;
    }
    check.finish().map_err(|e| e.to_string())
}
