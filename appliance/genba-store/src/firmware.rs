//! Firmware images kept for device updates: one row per image, its file at
//! `DATA_DIR/firmware/SHA256.bin` (written by `genba firmware add` before the row, removed after
//! it). Devices fetch the file by its SHA-256 and check it against that name. An image added as
//! a whole-flash board image (bootloader, partition table and the app, for new boards) also
//! keeps that file, `SHA256-board.bin` under the app's SHA-256.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::Serialize;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FirmwareImage {
    /// SHA-256 of the whole file, lower-case hex.
    pub sha256: String,
    /// The version in the image's app descriptor.
    pub version: String,
    /// The project name in it (`genba-fw-esp32c3`).
    pub project: String,
    pub size: i64,
    pub added_at_ms: i64,
    /// The size of its board image, when one is kept ([`board_file_name`]).
    pub board_size: Option<i64>,
}

/// Where the image files are.
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("firmware")
}

/// The file of the image with this SHA-256.
pub fn file(data_dir: &Path, sha256: &str) -> PathBuf {
    dir(data_dir).join(file_name(sha256))
}

/// The name of an image's file in [`dir`]: `SHA256.bin`.
pub fn file_name(sha256: &str) -> String {
    format!("{sha256}.bin")
}

/// The appliance's HTTP path of the image with this SHA-256 (`/firmware/SHA256.bin`), where the
/// devices fetch it: the firmware core's `image::download_path` for the hex form
/// (`genba_platform::updates` tests that they agree).
pub fn download_path(sha256: &str) -> String {
    format!("/firmware/{}", file_name(sha256))
}

/// The name of the board image of the app with this SHA-256: `SHA256-board.bin`.
pub fn board_file_name(sha256: &str) -> String {
    format!("{sha256}-board.bin")
}

/// The appliance's HTTP path of that board image (`/firmware/SHA256-board.bin`).
pub fn board_download_path(sha256: &str) -> String {
    format!("/firmware/{}", board_file_name(sha256))
}

/// Whether `s` is a SHA-256 as this table keeps it (64 lower-case hex digits).
pub fn is_sha256(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

const SELECT: &str = "SELECT sha256, version, project, size, added_at, board_size FROM firmware";

fn row(r: &Row) -> rusqlite::Result<FirmwareImage> {
    Ok(FirmwareImage {
        sha256: r.get(0)?,
        version: r.get(1)?,
        project: r.get(2)?,
        size: r.get(3)?,
        added_at_ms: r.get(4)?,
        board_size: r.get(5)?,
    })
}

/// Adds an image; false when one with this SHA-256 is there already (it stays as it was, but
/// gains the board image when this one brings it).
pub fn add(conn: &Connection, image: &FirmwareImage) -> rusqlite::Result<bool> {
    let known = find(conn, &image.sha256)?.is_some_and(|i| i.sha256 == image.sha256);
    conn.execute(
        "INSERT INTO firmware (sha256, version, project, size, added_at, board_size)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (sha256) DO UPDATE SET board_size = COALESCE(excluded.board_size, board_size)",
        params![
            image.sha256,
            image.version,
            image.project,
            image.size,
            image.added_at_ms,
            image.board_size
        ],
    )?;
    Ok(!known)
}

/// Every image, newest first.
pub fn list(conn: &Connection) -> rusqlite::Result<Vec<FirmwareImage>> {
    let mut stmt = conn.prepare_cached(&format!("{SELECT} ORDER BY added_at DESC, sha256"))?;
    let rows = stmt.query_map([], row)?;
    rows.collect()
}

/// The newest image that has a board image kept, for a new board's first flash.
pub fn newest_board(conn: &Connection) -> rusqlite::Result<Option<FirmwareImage>> {
    conn.query_row(
        &format!("{SELECT} WHERE board_size IS NOT NULL ORDER BY added_at DESC, sha256 LIMIT 1"),
        [],
        row,
    )
    .optional()
}

/// The image with this SHA-256, or else the newest with this version.
pub fn find(conn: &Connection, sha256_or_version: &str) -> rusqlite::Result<Option<FirmwareImage>> {
    conn.query_row(
        &format!(
            "{SELECT} WHERE sha256 = ?1 OR version = ?1
             ORDER BY sha256 = ?1 DESC, added_at DESC LIMIT 1"
        ),
        params![sha256_or_version],
        row,
    )
    .optional()
}

/// Removes the row of an image; false when there was none.
pub fn remove(conn: &Connection, sha256: &str) -> rusqlite::Result<bool> {
    Ok(conn.execute("DELETE FROM firmware WHERE sha256 = ?1", params![sha256])? == 1)
}

/// The last update asked of a device.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct UpdateRequest {
    pub device_id: String,
    pub version: String,
    pub sha256: String,
    pub requested_at_ms: i64,
    /// `cli`, `console:USER`.
    pub requested_by: String,
}

/// Where a device stands with the update last asked of it, from what it reported since.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateState {
    /// Its last report names the requested version.
    Running,
    /// Nothing reported since the request.
    Waiting,
    /// It reported since, still with another version (still downloading, or it refused the
    /// image or rolled back).
    NotTaken,
}

impl UpdateRequest {
    /// Where `device` stands with this request.
    pub fn state(&self, device: &crate::devices::Device) -> UpdateState {
        if device.firmware.as_deref() == Some(self.version.as_str()) {
            UpdateState::Running
        } else if device
            .last_seen_at_ms
            .is_some_and(|seen| seen > self.requested_at_ms)
        {
            UpdateState::NotTaken
        } else {
            UpdateState::Waiting
        }
    }
}

/// Records the update just asked of a device, replacing the one before.
pub fn record_request(conn: &Connection, request: &UpdateRequest) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT OR REPLACE INTO update_requests
            (device_id, version, sha256, requested_at, requested_by)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            request.device_id,
            request.version,
            request.sha256,
            request.requested_at_ms,
            request.requested_by
        ],
    )?;
    Ok(())
}

const SELECT_REQUEST: &str =
    "SELECT device_id, version, sha256, requested_at, requested_by FROM update_requests";

fn request_row(r: &Row) -> rusqlite::Result<UpdateRequest> {
    Ok(UpdateRequest {
        device_id: r.get(0)?,
        version: r.get(1)?,
        sha256: r.get(2)?,
        requested_at_ms: r.get(3)?,
        requested_by: r.get(4)?,
    })
}

/// The last update asked of each device, by device id.
pub fn requests(conn: &Connection) -> rusqlite::Result<Vec<UpdateRequest>> {
    let mut stmt = conn.prepare_cached(&format!("{SELECT_REQUEST} ORDER BY device_id"))?;
    let rows = stmt.query_map([], request_row)?;
    rows.collect()
}

/// The last update asked of one device.
pub fn request_of(conn: &Connection, device_id: &str) -> rusqlite::Result<Option<UpdateRequest>> {
    conn.query_row(
        &format!("{SELECT_REQUEST} WHERE device_id = ?1"),
        params![device_id],
        request_row,
    )
    .optional()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(sha: char, version: &str, at: i64) -> FirmwareImage {
        FirmwareImage {
            sha256: sha.to_string().repeat(64),
            version: version.into(),
            project: "genba-fw-esp32c3".into(),
            size: 675_472,
            added_at_ms: at,
            board_size: None,
        }
    }

    #[test]
    fn an_image_added_again_as_a_board_image_gains_it_and_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::open(&dir.path().join("db")).unwrap();
        assert!(add(&conn, &image('a', "1.0.0", 1)).unwrap());
        assert_eq!(list(&conn).unwrap()[0].board_size, None);
        let board = FirmwareImage {
            board_size: Some(4 << 20),
            ..image('a', "1.0.0", 2)
        };
        assert!(!add(&conn, &board).unwrap(), "the same app");
        assert_eq!(list(&conn).unwrap()[0].board_size, Some(4 << 20));
        assert!(!add(&conn, &image('a', "1.0.0", 3)).unwrap());
        assert_eq!(list(&conn).unwrap()[0].board_size, Some(4 << 20));
        assert_eq!(
            board_download_path(&board.sha256),
            format!("/firmware/{}-board.bin", board.sha256)
        );
    }

    #[test]
    fn images_are_kept_once_listed_newest_first_and_found_by_hash_or_version() {
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::open(&dir.path().join("db")).unwrap();
        assert!(add(&conn, &image('a', "1.0.0", 1)).unwrap());
        assert!(add(&conn, &image('b', "1.1.0", 2)).unwrap());
        assert!(add(&conn, &image('c', "1.1.0", 3)).unwrap());
        assert!(
            !add(&conn, &image('a', "9.9.9", 4)).unwrap(),
            "the same file twice"
        );
        let versions: Vec<String> = list(&conn)
            .unwrap()
            .into_iter()
            .map(|i| i.version)
            .collect();
        assert_eq!(versions, ["1.1.0", "1.1.0", "1.0.0"]);
        assert_eq!(
            find(&conn, "1.1.0").unwrap().unwrap().sha256,
            "c".repeat(64)
        );
        assert_eq!(
            find(&conn, &"b".repeat(64)).unwrap().unwrap().version,
            "1.1.0"
        );
        assert_eq!(find(&conn, "2.0.0").unwrap(), None);
        assert!(remove(&conn, &"c".repeat(64)).unwrap());
        assert!(!remove(&conn, &"c".repeat(64)).unwrap());
        assert_eq!(
            find(&conn, "1.1.0").unwrap().unwrap().sha256,
            "b".repeat(64)
        );
        assert!(is_sha256(&"0f".repeat(32)));
        assert!(!is_sha256(&"0F".repeat(32)));
        assert!(!is_sha256("../../etc/passwd"));
    }

    #[test]
    fn the_last_update_asked_of_a_device_is_kept_and_judged_by_what_it_reported_since() {
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::open(&dir.path().join("db")).unwrap();
        let change = crate::devices::DeviceChange::default();
        crate::devices::add(&conn, "fridge-1", &change).unwrap();
        let ask = |version: &str, at: i64| UpdateRequest {
            device_id: "fridge-1".into(),
            version: version.into(),
            sha256: "a".repeat(64),
            requested_at_ms: at,
            requested_by: "console:admin".into(),
        };
        record_request(&conn, &ask("1.1.0", 1_000)).unwrap();
        record_request(&conn, &ask("1.2.0", 2_000)).unwrap();
        let kept = requests(&conn).unwrap();
        assert_eq!(kept, [ask("1.2.0", 2_000)], "only the last one");
        assert_eq!(
            request_of(&conn, "fridge-1").unwrap(),
            Some(ask("1.2.0", 2_000))
        );
        assert_eq!(request_of(&conn, "fridge-2").unwrap(), None);

        let mut device = crate::devices::get(&conn, "fridge-1").unwrap().unwrap();
        assert_eq!(kept[0].state(&device), UpdateState::Waiting);
        device.firmware = Some("1.1.0".into());
        device.last_seen_at_ms = Some(1_500);
        assert_eq!(
            kept[0].state(&device),
            UpdateState::Waiting,
            "reported before"
        );
        device.last_seen_at_ms = Some(2_500);
        assert_eq!(kept[0].state(&device), UpdateState::NotTaken);
        device.firmware = Some("1.2.0".into());
        assert_eq!(kept[0].state(&device), UpdateState::Running);

        // The request goes with its device.
        conn.execute("DELETE FROM devices WHERE id = 'fridge-1'", [])
            .unwrap();
        assert!(requests(&conn).unwrap().is_empty());
    }
}
