//! A stand-in for an ESP32-C3's ROM serial loader on a pseudo-terminal (`fake_esp_rom.py`, in
//! Python for its pty and zlib), for the tests of writing a board plugged into the appliance:
//! no board can be plugged into the machines that test Genba. It follows Espressif's documented
//! serial protocol and keeps the 4 MB flash it was sent.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The fake ROM loader on a pty: its path, and where it saves the flash.
pub struct FakeBoard {
    child: Child,
    /// The pty's path: the board's serial port.
    pub port: String,
    dump: PathBuf,
}

impl FakeBoard {
    /// Starts the loader; it saves its flash in `dir`. A `silent` one answers nothing.
    pub fn start(dir: &Path, silent: bool) -> FakeBoard {
        let dump = dir.join(if silent {
            "silent.flash"
        } else {
            "board.flash"
        });
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/fake_esp_rom.py");
        let mut cmd = Command::new("python3");
        cmd.arg(script).arg(&dump);
        if silent {
            cmd.arg("--silent");
        }
        let mut child = cmd.stdout(Stdio::piped()).spawn().expect("python3");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().to_owned();
        assert!(port.starts_with("/dev/pts/"), "{line:?}");
        FakeBoard { child, port, dump }
    }

    /// The flash as the board keeps it after its last completed write.
    pub fn flash(&self) -> Vec<u8> {
        std::fs::read(&self.dump).expect("the fake board saved its flash")
    }
}

impl Drop for FakeBoard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
