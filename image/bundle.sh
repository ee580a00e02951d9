#!/usr/bin/env bash
# Makes a signed RAUC update bundle of the Genba image (docs/image.md, "Updates"): the root file
# system image for the slot, and the slot's boot files (kernel, initrd, device trees) that RAUC's
# post-install handler on the Pi copies to the boot partition. verity format (RAUC checks every
# block as it reads), squashfs with zstd.
#
#   image/bundle.sh ROOT_EXT4 BOOT_FILES_DIR VERSION BUILD KEYS_DIR OUT.raucb
#
# KEYS_DIR holds signing.cert.pem, signing.key.pem and ca.cert.pem (image/bundle.sh keys makes
# them when missing):
#   image/bundle.sh keys KEYS_DIR
# BUNDLE_ZSTD_LEVEL: mksquashfs's zstd level (default 15; the boot test's own bundles use 3,
# faster to make and about as fast to install).
set -euo pipefail

make_keys() {
  local keys=$1
  [ -f "$keys/signing.key.pem" ] && [ -f "$keys/ca.cert.pem" ] && return 0
  install -d -m 700 "$keys"
  local subject
  subject="Genba update CA $(hostname) $(date -u +%FT%TZ)"
  echo "making a new update signing key in $keys (keep it: bundles signed with another key are refused)" >&2
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 36500 \
    -keyout "$keys/ca.key.pem" -out "$keys/ca.cert.pem" -subj "/O=Genba/CN=$subject" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$keys/signing.key.pem" -out "$keys/signing.csr" -subj "/O=Genba/CN=Genba update signing" 2>/dev/null
  openssl x509 -req -in "$keys/signing.csr" -CA "$keys/ca.cert.pem" -CAkey "$keys/ca.key.pem" \
    -set_serial 2 -days 36500 -out "$keys/signing.cert.pem" \
    -extfile <(printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n') 2>/dev/null
  rm -f "$keys/signing.csr"
  chmod 600 "$keys"/*.key.pem
}

if [ "${1:-}" = keys ]; then
  make_keys "${2:?usage: bundle.sh keys KEYS_DIR}"
  exit 0
fi
[ $# -eq 6 ] || { sed -n '2,14p' "$0" >&2; exit 2; }
root=$1 boot=$2 version=$3 build=$4 keys=$5 out=$6
make_keys "$keys"
{ test -f "$boot/vmlinuz" && test -f "$boot/initrd.img"; } || { echo "no vmlinuz and initrd.img in $boot" >&2; exit 1; }
content=$(mktemp -d "${TMPDIR:-/var/tmp}/genba-bundle.XXXXXX")
trap 'rm -rf "$content"' EXIT
mkdir "$content/boot"
cp "$boot"/vmlinuz "$boot"/initrd.img "$boot"/*.dtb "$content/boot/"
cp --sparse=always "$root" "$content/rootfs.ext4"
cat > "$content/manifest.raucm" <<MANIFEST
[update]
compatible=genba-rpi-arm64
version=$version
build=$build

[bundle]
format=verity

[image.rootfs]
filename=rootfs.ext4
MANIFEST
rm -f "$out"
rauc bundle --cert="$keys/signing.cert.pem" --key="$keys/signing.key.pem" --keyring="$keys/ca.cert.pem" \
  --mksquashfs-args="-comp zstd -Xcompression-level ${BUNDLE_ZSTD_LEVEL:-15}" "$content" "$out" >/dev/null
