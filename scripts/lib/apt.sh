# Shared by scripts/install-*.sh (sourced, not run): apt_install WHO PACKAGE... installs
# Debian packages as root, through sudo when not root, or fails with a clear message.
# PRE_INSTALL, when set, is run (with $SUDO available) after apt-get update.
apt_install() {
  local who=$1; shift
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
      echo "$who: need root (or sudo) to apt-get install $*" >&2
      return 1
    fi
  fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  SUDO=$sudo
  if [ -n "${PRE_INSTALL:-}" ]; then eval "$PRE_INSTALL"; fi
  $sudo apt-get install -y -qq "$@" >/dev/null
}
