//! The Pi's own A/B update from the web console (docs/image.md, "Updates"). An admin uploads a
//! RAUC bundle (`.raucb`); it is streamed to `DATA_DIR/updates/genba-update.raucb.part` and
//! renamed to `genba-update.raucb` once complete. On the SD-card image a root unit
//! (`genba-update-upload.path`) hands that file to RAUC, which checks its signature against the
//! image's key and writes the other root slot; the Pi then restarts to try it once. The bridge
//! itself never runs as root and never installs anything: it only keeps the file.
//!
//! What the Firmware page shows of it: the slot running (`rauc.slot=` on the kernel command
//! line), the release (`/usr/share/genba/release`), whether a bundle waits, and the last lines
//! the installer wrote to `DATA_DIR/updates/result.txt`.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::io::AsyncWriteExt;

/// The bundle the image's installer picks up.
pub const BUNDLE_FILE: &str = "genba-update.raucb";
/// The installer's results, one line each, newest last.
pub const RESULT_FILE: &str = "result.txt";
/// An upload larger than this is refused (a bundle is about 150 MB; a root slot is 400 MiB).
pub const MAX_BUNDLE_BYTES: u64 = 1 << 30;
/// A RAUC bundle is a squashfs image: it starts with the squashfs magic.
const SQUASHFS_MAGIC: &[u8; 4] = b"hsqs";

/// What the console shows of the Pi's own updates.
pub struct PiUpdate {
    pub slot: Option<char>,
    pub release: Option<String>,
    /// A bundle was uploaded and waits for the installer.
    pub pending: bool,
    /// The installer's last lines, newest first.
    pub results: Vec<String>,
}

/// The root slot a kernel command line boots: `rauc.slot=A` or `rauc.slot=B`.
pub fn booted_slot(cmdline: &str) -> Option<char> {
    cmdline.split_whitespace().find_map(|arg| match arg {
        "rauc.slot=A" => Some('A'),
        "rauc.slot=B" => Some('B'),
        _ => None,
    })
}

/// The last `n` lines of an update result file, newest first (none when it is missing).
pub fn last_results(file: &Path, n: usize) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .rev()
        .take(n)
        .map(str::to_string)
        .collect()
}

/// Reads the slot, release, pending bundle and results.
pub fn status(updates_dir: &Path) -> PiUpdate {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let release = std::fs::read_to_string("/usr/share/genba/release")
        .ok()
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty());
    PiUpdate {
        slot: booted_slot(&cmdline),
        release,
        pending: updates_dir.join(BUNDLE_FILE).exists(),
        results: last_results(&updates_dir.join(RESULT_FILE), 5),
    }
}

impl PiUpdate {
    /// The API's view (`GET /v2/system/update`).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "slot": self.slot.map(String::from),
            "release": self.release,
            "pending": self.pending,
            "results": self.results,
        })
    }
}

/// Why an upload was not kept.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("the file is not a RAUC update bundle (.raucb from scripts/build-image)")]
    NotABundle,
    #[error("the file is larger than {MAX_BUNDLE_BYTES} bytes")]
    TooLarge,
    #[error("the file is empty")]
    Empty,
    #[error("the upload was cut off: {0}")]
    Cut(String),
    #[error("the bundle cannot be stored: {0}")]
    Io(#[from] std::io::Error),
}

impl UploadError {
    /// The HTTP status the console and the API answer with.
    pub fn status(&self) -> axum::http::StatusCode {
        use axum::http::StatusCode;
        match self {
            UploadError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            UploadError::NotABundle | UploadError::Empty => StatusCode::UNPROCESSABLE_ENTITY,
            UploadError::Cut(_) => StatusCode::BAD_REQUEST,
            UploadError::Io(io) if io.kind() == std::io::ErrorKind::StorageFull => {
                StatusCode::INSUFFICIENT_STORAGE
            }
            UploadError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// Streams an uploaded file (a multipart field of the console's form, or the API's request
/// body) to `updates_dir/genba-update.raucb`, through a `.part` file that is synced and
/// renamed, so the installer never sees half a bundle. Returns its size.
pub async fn save<E: std::fmt::Display>(
    updates_dir: &Path,
    body: impl Stream<Item = Result<Bytes, E>>,
) -> Result<u64, UploadError> {
    let mut body = std::pin::pin!(body);
    tokio::fs::create_dir_all(updates_dir).await?;
    let part: PathBuf = updates_dir.join(format!("{BUNDLE_FILE}.part"));
    let result = async {
        let mut file = tokio::fs::File::create(&part).await?;
        let mut size: u64 = 0;
        let mut head: Vec<u8> = Vec::with_capacity(4);
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| UploadError::Cut(e.to_string()))?;
            if head.len() < 4 {
                head.extend(chunk.iter().take(4 - head.len()));
                if head.len() == 4 && head.as_slice() != SQUASHFS_MAGIC {
                    return Err(UploadError::NotABundle);
                }
            }
            size += chunk.len() as u64;
            if size > MAX_BUNDLE_BYTES {
                return Err(UploadError::TooLarge);
            }
            file.write_all(&chunk).await?;
        }
        if size == 0 {
            return Err(UploadError::Empty);
        }
        if head.len() < 4 {
            return Err(UploadError::NotABundle);
        }
        file.sync_all().await?;
        Ok(size)
    }
    .await;
    match result {
        Ok(size) => {
            tokio::fs::rename(&part, updates_dir.join(BUNDLE_FILE)).await?;
            // The rename is durable only once the folder is synced: a power cut before would
            // lose an upload the page already confirmed.
            tokio::fs::File::open(updates_dir).await?.sync_all().await?;
            Ok(size)
        }
        Err(e) => {
            let _ = tokio::fs::remove_file(&part).await;
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_running_slot_comes_from_rauc_slot_on_the_command_line() {
        assert_eq!(booted_slot("console=tty0 rauc.slot=B rootwait"), Some('B'));
        assert_eq!(booted_slot("console=tty0 root=/dev/vda2"), None);
        assert_eq!(booted_slot("rauc.slot=C"), None);
    }

    #[test]
    fn the_last_results_are_newest_first_and_none_without_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(RESULT_FILE);
        assert!(last_results(&file, 5).is_empty());
        std::fs::write(&file, "1 first\n2 second\n3 third\n").unwrap();
        assert_eq!(last_results(&file, 2), ["3 third", "2 second"]);
    }
}
