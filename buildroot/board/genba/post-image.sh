#!/bin/sh
# Buildroot post-image: the SD-card image from genimage.cfg (boot FAT, root, data).
set -eu
BOARD_DIR="$(dirname "$0")"
GENIMAGE_TMP="${BUILD_DIR}/genimage.tmp"
rm -rf "$GENIMAGE_TMP"
# The data partition starts empty; systemd-growfs fills the card on first boot.
mkdir -p "${BINARIES_DIR}/data-empty"
genimage --rootpath "${TARGET_DIR}" --tmppath "$GENIMAGE_TMP" \
  --inputpath "${BINARIES_DIR}" --outputpath "${BINARIES_DIR}" --config "${BOARD_DIR}/genimage.cfg"
