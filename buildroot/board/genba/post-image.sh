#!/usr/bin/env bash
# Buildroot post-image: the data partition (image/genba-layer.sh ext4, files owned by root as
# in the Debian image; tmpfiles gives genba/ to the genba user at boot), then the SD-card image
# with the layout of image/sdcard.genimage.cfg: boot FAT (RASPIFIRM), read-only root slot A
# (GENBAROOT), root slot B (empty), data (GENBADATA).
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
# One genimage file: this board's boot FAT, then the card layout shared with the Debian image
# (boot, root slots A and B, data). Root slot A takes Buildroot's rootfs.ext4; B stays empty.
LAYOUT="$BR2_EXTERNAL_GENBA_PATH/../image/sdcard.genimage.cfg"
BOOT_SIZE=$(sed -n '/partition boot {/,/}/s/^ *size = \([0-9]*M\)$/\1/p' "$LAYOUT")
{
  sed -e "s|@BOOT_FILES@|${FILES%,}|" -e "s|@BOOT_SIZE@|$BOOT_SIZE|" "$BOARD_DIR/boot.genimage.cfg.in"
  cat "$LAYOUT"
} > "$BINARIES_DIR/genimage.cfg"
GENIMAGE_TMP="${BUILD_DIR}/genimage.tmp"
rm -rf "$GENIMAGE_TMP"
genimage --rootpath "${TARGET_DIR}" --tmppath "$GENIMAGE_TMP" \
  --inputpath "${BINARIES_DIR}" --outputpath "${BINARIES_DIR}" --config "$BINARIES_DIR/genimage.cfg"
