#!/bin/sh
# Buildroot post-build: read-only root with a data partition for /var/lib/genba, as in the
# Debian image. $1 is the target directory.
set -eu
TARGET_DIR="$1"
mkdir -p "$TARGET_DIR/var/lib/genba" "$TARGET_DIR/boot/firmware"
grep -q GENBADATA "$TARGET_DIR/etc/fstab" 2>/dev/null || cat >> "$TARGET_DIR/etc/fstab" <<'FSTAB'
LABEL=GENBAROOT  /                ext4  ro,noatime                       0 1
LABEL=GENBABOOT  /boot/firmware   vfat  ro,noatime,nofail                0 2
LABEL=GENBADATA  /var/lib/genba   ext4  rw,noatime,nosuid,nodev,x-systemd.growfs 0 2
FSTAB
