# Shared by scripts/install-*.sh (sourced, not run).
#   apt_root WHO       sets SUDO ("" as root, "sudo" otherwise) or fails with a clear message
#   apt_install PKG... apt-get update + install, quietly, as root
apt_root() {
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
      echo "$1: need root (or sudo) to apt-get install packages" >&2
      return 1
    fi
  fi
}
apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq "$@" >/dev/null
}
