# shellcheck shell=bash
# Shared by the scripts in this folder (sourced, not run): root and Debian packages.
#   . "$ROOT/scripts/lib.sh"

# Runs a command as root: directly when root, through sudo otherwise.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else echo "error: need root to run: $*" >&2; exit 1
  fi
}

# apt_install [APT OPTIONS] PACKAGE...: installs Debian packages quietly. Waits up to 10 minutes
# for another apt or dpkg to finish (CI builds the image's base tree beside the tests).
apt_install() {
  command -v apt-get >/dev/null || { echo "error: missing $*; no apt-get here: install them by hand" >&2; exit 1; }
  local apt=(apt-get -o DPkg::Lock::Timeout=600 ${APT_SOURCEPARTS:+-o Dir::Etc::sourceparts="$APT_SOURCEPARTS"})
  as_root "${apt[@]}" update -qq
  as_root env DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y -qq "$@" >/dev/null
}
