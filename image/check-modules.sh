#!/bin/sh
# mmdebstrap customize hook of image/rootfs.sh (run on the build host, the tree's root as $1):
# checks the kernel modules image/dpkg-path-filters left in the tree.
#  1. The modules a Pi 3/4/Zero 2 W needs are there (or built into the kernel): those of the
#     boards' device trees, the on-board and common USB network, Wi-Fi and Bluetooth, USB
#     storage, ext4 and vfat, netfilter, and the USB serial ports thermometers are written
#     through (`genba devices provision --write`: the ESP32-C3's own, CP210x and CH34x bridges).
#  2. No module kept needs a symbol only an excluded module exported: `depmod -e` against the
#     kernel's Module.symvers, from the linux-headers package of the same kernel (downloaded
#     with the tree's apt configuration for this check only, not installed).
# Environment: MMDEBSTRAP_APT_CONFIG (set by mmdebstrap for its hooks).
set -eu
root=${1:?usage: check-modules ROOT}
: "${MMDEBSTRAP_APT_CONFIG:?run as an mmdebstrap hook}"
# Found once by matching the compatibles of the bcm2711/bcm2837 device trees against
# modules.alias, then the boards' USB and SDIO devices and what the image mounts and filters.
need="bcm2711_thermal bcm2835 bcm2835_rng bcm2835_thermal dwc2 genet hci_uart i2c_bcm2835
  iproc_rng200 mdio_bcm_unimac pwm_bcm2835 reset_raspberrypi sdhci_iproc snd_soc_bcm2835_i2s
  spi_bcm2835 spi_bcm2835aux v3d vc4 vchiq xhci_pci smsc95xx lan78xx brcmfmac btbcm btusb
  cdc_ether r8152 ax88179_178a rtl8xxxu rt2800usb mt76x0u ath9k_htc usb_storage uas ext4 vfat
  nls_cp437 nls_ascii nf_tables nf_conntrack squashfs loop dm_mod dm_verity
  cdc_acm cp210x ch341"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
found=0
for dir in "$root"/usr/lib/modules/*/; do
  [ -d "$dir" ] || continue
  ver=$(basename "$dir")
  found=1
  missing=""
  for m in $need; do
    file=$(modinfo -b "$root" -k "$ver" -F filename "$m" 2>/dev/null) || file=""
    [ "$file" = "(builtin)" ] || [ -f "$file" ] || missing="$missing $m"
  done
  if [ -n "$missing" ]; then
    echo "check-modules: $ver lacks modules a Pi needs:$missing" >&2
    exit 1
  fi
  version=$(chroot "$root" dpkg-query -W -f '${Version}' "linux-image-$ver")
  ( cd "$tmp" && APT_CONFIG=$MMDEBSTRAP_APT_CONFIG apt-get download -q -q -o APT::Sandbox::User=root \
      "linux-headers-$ver=$version" )
  dpkg-deb --fsys-tarfile "$tmp/linux-headers-${ver}_"*.deb | tar -x -C "$tmp" --wildcards '*/Module.symvers'
  symvers=$(find "$tmp" -name Module.symvers | head -1)
  # -n: the module index goes to stdout (dropped), the tree is not touched; warnings to stderr.
  unknown=$(depmod -n -e -E "$symvers" -b "$root" "$ver" 2>&1 >/dev/null)
  if [ -n "$unknown" ]; then
    echo "check-modules: modules kept that need a symbol of an excluded module:" >&2
    echo "$unknown" >&2
    exit 1
  fi
  echo "check-modules: $ver: $(grep -c . "$dir/modules.dep") modules, every one's symbols resolve; the Pi's $(echo "$need" | wc -w) are there"
  rm -rf "${tmp:?}"/*
done
[ "$found" -eq 1 ] || { echo "check-modules: no kernel modules in $root" >&2; exit 1; }
