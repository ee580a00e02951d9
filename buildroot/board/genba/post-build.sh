#!/usr/bin/env bash
# Buildroot post-build: the Genba layer shared with the Debian image (image/genba-layer.sh):
# image/overlay (fstab with the read-only root and the data partition, grow-data, firstboot,
# ready banner, networkd, avahi), the enabled units, and the data partition's first contents in
# $BINARIES_DIR/genba-data (post-image.sh makes data.ext4 of it). $1 is the target directory.
set -euo pipefail
TARGET_DIR="$1"
SYSTEMCTL="$HOST_DIR/bin/systemctl" \
  "$BR2_EXTERNAL_GENBA_PATH/../image/genba-layer.sh" root "$TARGET_DIR" "$BINARIES_DIR/genba-data"
