#!/usr/bin/env bash
# Stage 1 of the image: the Debian bookworm arm64 base tree as a tarball, built by mmdebstrap with
# qemu-user through binfmt. Nothing of Genba is in it (stage 2, scripts/build-image, adds that), so
# this slow stage is rebuilt only when its inputs change.
#
#   image/rootfs.sh OUTPUT.tar        env: MIRROR SUITE SOURCE_DATE_EPOCH
set -euo pipefail
OUT=${1:?usage: rootfs.sh OUTPUT.tar}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
: "${MIRROR:?}" "${SUITE:?}" "${SOURCE_DATE_EPOCH:?}"
export SOURCE_DATE_EPOCH
PKGS=$(grep -v '^#' "$HERE/packages.list" | grep . | paste -sd, -)

# mkinitramfs under qemu-user takes minutes and would run twice (kernel postinst, then trigger):
# it is diverted while packages install and run once at the end, which also lets raspi-firmware's
# hook fill /boot/firmware. /etc/default/raspi-firmware is edited only after the package is
# configured (editing it before causes a conffile prompt that fails the install).
DIVERT='chroot "$1" dpkg-divert --local --rename --add /usr/sbin/update-initramfs && printf "#!/bin/sh\nexit 0\n" > "$1/usr/sbin/update-initramfs" && chmod 755 "$1/usr/sbin/update-initramfs"'
UNDIVERT='rm "$1/usr/sbin/update-initramfs" && chroot "$1" dpkg-divert --local --rename --remove /usr/sbin/update-initramfs'
RASPI='sed -i -e "s|^#\?ROOTPART=.*|ROOTPART=LABEL=GENBAROOT|" -e "s|^#\?CONSOLES=.*|CONSOLES=\"ttyS1,115200 tty0\"|" "$1/etc/default/raspi-firmware"; grep -q ^ROOTPART= "$1/etc/default/raspi-firmware" || echo ROOTPART=LABEL=GENBAROOT >> "$1/etc/default/raspi-firmware"'
INITRAMFS='echo "I: building the initramfs (update-initramfs under qemu-user: 5-8 minutes)" && chroot "$1" sh -c "for v in \$(ls /lib/modules); do update-initramfs -c -k \$v; done"'
# The host's hostname and resolv.conf leak into the tree: replace them.
NAMES='echo genba > "$1/etc/hostname" && chmod 644 "$1/etc/hostname" && printf "127.0.0.1\tlocalhost\n127.0.1.1\tgenba\n::1\tlocalhost ip6-localhost ip6-loopback\n" > "$1/etc/hosts" && ln -sf ../run/systemd/resolve/stub-resolv.conf "$1/etc/resolv.conf"'
# The Pi boots the kernel and initrd raspi-firmware's hooks copied to /boot/firmware (the boot
# partition): the root's copies in /boot go once they are byte-identical (docs/image.md, "What is
# left out", says why this is not a dpkg path filter).
BOOTCOPIES='for f in "$1"/boot/vmlinuz-* "$1"/boot/initrd.img-*; do cmp "$f" "$1/boot/firmware/${f##*/}" || exit 1; rm "$f"; done'
# Package state the appliance never needs at run time (apt lists and caches, logs of the build).
# Documentation, device trees and modules of other hardware: left out by dpkg-path-filters.
TRIM='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin "$1"/var/cache/debconf/*-old "$1"/var/log/*'

# merged-usr hook: /bin, /sbin, /lib as links into /usr and the usr-is-merged package, instead of
# the usrmerge package, which would convert the tree at install time and pulls in perl (45 MB).
mmdebstrap --mode=root --variant=minbase --arch=arm64 \
  --components=main,non-free-firmware \
  --include="$PKGS" \
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
  --dpkgopt=force-unsafe-io \
  --dpkgopt="$HERE/dpkg-path-filters" \
  --essential-hook="$DIVERT" \
  --customize-hook="$RASPI" \
  --customize-hook="$NAMES" \
  --customize-hook="$UNDIVERT" \
  --customize-hook="$INITRAMFS" \
  --customize-hook="$HERE/check-modules.sh" \
  --customize-hook="$BOOTCOPIES" \
  --customize-hook='chroot "$1" dpkg-query -W -f="\${Package} \${Version} \${Architecture}\n" > "$1/usr/share/genba-packages.txt"' \
  --customize-hook="$TRIM" \
  --customize-hook='ls -la "$1/boot/firmware"; cat "$1/boot/firmware/cmdline.txt"' \
  "$SUITE" "$OUT" "$MIRROR"
