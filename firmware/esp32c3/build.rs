//! Links with esp-hal's linker script. Nothing per device is built into the image: the device
//! reads its settings from the `config` flash partition at boot (see src/storage.rs).

fn main() {
    // esp-hal's linker script; it must come last
    println!("cargo:rustc-link-arg=-Tlinkall.x");
}
