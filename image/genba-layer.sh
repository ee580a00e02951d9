#!/usr/bin/env bash
# The Genba layer, shared by the Debian image (scripts/build-image) and the Buildroot tree
# (buildroot/board/genba/post-build.sh and post-image.sh), so both give the same appliance:
#
#   genba-layer.sh root ROOT DATA
#       On a root file system tree that already has /usr/bin/genba, the units of systemd/ and the
#       genba user: image/overlay, the enabled units (image/overlay/.../80-genba.preset), the
#       Wi-Fi hook, /etc/genba, an empty machine id, the mount points of the read-only root; and
#       DATA, the data partition's first contents (genba.toml, network/, systemd/).
#   genba-layer.sh clamp TREE
#       Every mtime in TREE later than SOURCE_DATE_EPOCH set to it.
#   genba-layer.sh ext4 LABEL UUID TREE IMAGE SIZE_MB [root-owned]
#       A reproducible ext4 image of TREE: mtimes clamped to SOURCE_DATE_EPOCH, fixed UUID and
#       hash seed, every inode's ctime and atime reset; with root-owned, every file owned by 0:0 (for
#       trees made without root, as in Buildroot's post-image).
#
# Environment: SYSTEMCTL (default systemctl; Buildroot passes its host systemctl),
# SOURCE_DATE_EPOCH (ext4: required), HASH_SEED (ext4: ext4 directory hash seed).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
PRESET=$HERE/overlay/usr/lib/systemd/system-preset/80-genba.preset

layer_root() {
  R=$1 D=$2
  tar -C "$HERE/overlay" --sort=name --owner=0 --group=0 --numeric-owner -c . |
    tar -C "$R" -x --no-overwrite-dir
  install -D -m 644 "$HERE/genba-settings.example.toml" "$R/usr/share/genba/genba-settings.example.toml"
  install -D -m 644 "$HERE/../docs/image.md" "$R/usr/share/doc/genba/image.md"
  # shellcheck disable=SC2046 # one unit name per word
  SYSTEMCTL_SKIP_AUTO_OFFLINE=1 "${SYSTEMCTL:-systemctl}" --root="$R" enable \
    $(sed -n 's/^enable //p' "$PRESET")
  # Wi-Fi starts when wlan0 appears (and only with a network from the settings file).
  install -d "$R/etc/systemd/system/sys-subsystem-net-devices-wlan0.device.wants" "$R/etc/wpa_supplicant"
  ln -sfn /lib/systemd/system/wpa_supplicant@.service \
    "$R/etc/systemd/system/sys-subsystem-net-devices-wlan0.device.wants/wpa_supplicant@wlan0.service"
  ln -sfn /data/network/wpa_supplicant-wlan0.conf "$R/etc/wpa_supplicant/wpa_supplicant-wlan0.conf"
  # genba.toml lives on the data partition; /etc/genba (read-only) points at it.
  install -d -m 755 "$R/etc/genba"
  ln -sfn /var/lib/genba/genba.toml "$R/etc/genba/genba.toml"
  # Empty machine id: systemd makes one per boot (the root is read-only; DHCP uses the MAC).
  : > "$R/etc/machine-id"
  rm -f "$R/var/lib/dbus/machine-id"
  # Mount points on the read-only root.
  install -d "$R/data" "$R/var/lib/genba" "$R/var/lib/systemd" "$R/boot/firmware"

  # The data partition: genba's config (owned by genba at boot: usr/lib/tmpfiles.d/genba.conf),
  # the Wi-Fi network dir, systemd's state (bind-mounted on /var/lib/systemd).
  install -d -m 755 "$D"
  install -d -m 700 "$D/genba" "$D/network"
  install -m 600 "$HERE/overlay/usr/share/genba/genba.toml" "$D/genba/genba.toml"
  cp -a "$R/var/lib/systemd" "$D/systemd"
}

layer_clamp() {
  : "${SOURCE_DATE_EPOCH:?SOURCE_DATE_EPOCH must be set}"
  find "$1" -newermt "@$SOURCE_DATE_EPOCH" -print0 | xargs -0r touch -h -d "@$SOURCE_DATE_EPOCH"
}

layer_ext4() {
  label=$1 uuid=$2 tree=$3 image=$4 size_mb=$5 owner=${6:-}
  layer_clamp "$tree"
  # -T default: 4 KiB blocks even for the small data partition (it grows to the card's size).
  E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH mkfs.ext4 -q -F -T default -L "$label" -U "$uuid" \
    -E "hash_seed=${HASH_SEED:-6e3b1a52-8f0d-4c2a-9b7e-2d41c0a9e0ff},root_owner=0:0" \
    -d "$tree" "$image" "${size_mb}M"
  # mke2fs -d copies each file's ctime and atime, which are when the build extracted or read
  # it: set them all to SOURCE_DATE_EPOCH.
  cmds=$(mktemp)
  {
    for p in / /lost+found; do
      echo "sif $p ctime @$SOURCE_DATE_EPOCH"
      echo "sif $p atime @$SOURCE_DATE_EPOCH"
    done
    find "$tree" -mindepth 1 -printf '%P\n' | while IFS= read -r p; do
      echo "sif \"/$p\" ctime @$SOURCE_DATE_EPOCH"
      echo "sif \"/$p\" atime @$SOURCE_DATE_EPOCH"
      if [ "$owner" = root-owned ]; then
        echo "sif \"/$p\" uid 0"
        echo "sif \"/$p\" gid 0"
      fi
    done
  } > "$cmds"
  out=$(E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH debugfs -w -f "$cmds" "$image" 2>&1 | grep -v '^debugfs' || true)
  rm -f "$cmds"
  if [ -n "$out" ]; then
    echo "debugfs reported errors on $image:" >&2
    echo "$out" >&2
    exit 1
  fi
  e2fsck -fn "$image" >/dev/null
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
  root) [ $# -eq 2 ] || { echo "usage: $0 root ROOT DATA" >&2; exit 2; }; layer_root "$@" ;;
  clamp) [ $# -eq 1 ] || { echo "usage: $0 clamp TREE" >&2; exit 2; }; layer_clamp "$1" ;;
  ext4) [ $# -ge 5 ] || { echo "usage: $0 ext4 LABEL UUID TREE IMAGE SIZE_MB [root-owned]" >&2; exit 2; }
        layer_ext4 "$@" ;;
  *) sed -n '2,19p' "$0" >&2; exit 2 ;;
esac
