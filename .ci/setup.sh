# Shared set-up for .ci/demo and .ci/test: installs what this machine lacks, nothing more.
# Sourced, not run. Works on this project's image and on a plain Debian bookworm with python3.

_sudo() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
  echo "need root (or sudo) to install: $*" >&2; return 1; fi; }

_apt_updated=
apt_install() {
  # apt_install PKG... : install the Debian packages that are not installed yet
  local missing=()
  for p in "$@"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "== installing system packages: ${missing[*]}"
  if [ -z "$_apt_updated" ]; then _sudo apt-get update -qq; _apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive _sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

ensure_venv() {
  # ensure_venv EXTRAS : a project venv in .venv with the package installed editable
  local extras="${1:-}"
  if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then apt_install python3-venv; fi
  if [ ! -x .venv/bin/python ]; then
    echo "== creating .venv"
    python3 -m venv .venv
  fi
  local want="pyproject.toml:$(sha256sum pyproject.toml | cut -c1-16):$extras"
  if [ "$(cat .venv/.installed 2>/dev/null)" != "$want" ]; then
    echo "== installing the playbook package${extras:+ with [$extras]}"
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null
    .venv/bin/python -m pip install -q -e ".${extras:+[$extras]}"
    echo "$want" > .venv/.installed
  fi
  # byte-compile the project as a regular pip install does: an editable install does not, and
  # with PYTHONDONTWRITEBYTECODE set every run would compile ~40 modules again (~0.1 s)
  .venv/bin/python -m compileall -q engine modules >/dev/null
}
