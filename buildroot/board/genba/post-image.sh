#!/usr/bin/env bash
# Buildroot post-image: the data partition (image/genba-layer.sh ext4, files owned by root as
# in the Debian image; tmpfiles gives genba/ to the genba user at boot), then the SD-card image
# from genimage.cfg: boot FAT (RASPIFIRM), read-only root (GENBAROOT), data (GENBADATA).
set -euo pipefail
BOARD_DIR="$(dirname "$0")"
export PATH="$HOST_DIR/sbin:$HOST_DIR/bin:$PATH"
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(date +%s)}"
LAYER="$BR2_EXTERNAL_GENBA_PATH/../image/genba-layer.sh"
"$LAYER" ext4 GENBADATA 6e3b1a52-8f0d-4c2a-9b7e-2d41c0a9e002 "$BINARIES_DIR/genba-data" \
  "$BINARIES_DIR/data.ext4" 64 root-owned
install -m 644 "$BR2_EXTERNAL_GENBA_PATH/../image/genba-settings.example.toml" \
  "$BINARIES_DIR/genba-settings.example.toml"
# The boot partition: the kernel, every device tree, and rpi-firmware/ (start*.elf, fixup*.dat,
# config.txt, cmdline.txt, overlays/: whichever the board's firmware package installed).
FILES=""
for f in "$BINARIES_DIR"/Image "$BINARIES_DIR"/*.dtb "$BINARIES_DIR"/rpi-firmware/* \
         "$BINARIES_DIR"/genba-settings.example.toml; do
  if [ -e "$f" ]; then FILES="$FILES \"${f#"$BINARIES_DIR"/}\","; fi
done
sed "s|@BOOT_FILES@|${FILES%,}|" "$BOARD_DIR/genimage.cfg.in" > "$BINARIES_DIR/genimage.cfg"
GENIMAGE_TMP="${BUILD_DIR}/genimage.tmp"
rm -rf "$GENIMAGE_TMP"
genimage --rootpath "${TARGET_DIR}" --tmppath "$GENIMAGE_TMP" \
  --inputpath "${BINARIES_DIR}" --outputpath "${BINARIES_DIR}" --config "$BINARIES_DIR/genimage.cfg"
