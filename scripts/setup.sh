#!/usr/bin/env bash
# Installs what dicomnode's demo and tests need on a Debian/Ubuntu machine: the one home of every
# install step (the Makefile's `make demo` and `make test` call it; .ci/run calls `make test`).
#
#   scripts/setup.sh system demo|test   Debian packages (and, for test, npm packages); only the
#                                       missing ones are installed (root, or sudo)
#   scripts/setup.sh missing demo|test  print the Debian packages of that list not installed here
#   scripts/setup.sh postgres           start the machine's PostgreSQL cluster and give the current
#                                       user a role that connects over the local socket
#   scripts/setup.sh python demo|test   the virtualenv $VENV (or $PYTHON itself when VENV is empty),
#                                       PyTorch ($TORCH, build $TORCH_BUILD), then the project
#                                       (editable; with the test extras for `test`, and the build
#                                       backend's wheels in $WHEELHOUSE for the README test)
#
# Environment (the Makefile passes its variables): PYTHON (default python3), VENV (default .venv;
# empty: install into $PYTHON's environment), TORCH (default torch==2.13.0), TORCH_BUILD
# (auto | cpu | cuda; auto is cpu unless `nvidia-smi -L` lists a GPU), TORCH_INDEX (a package index
# for torch that overrides TORCH_BUILD's), SETUP_STARTED (epoch seconds the step times count from).
set -euo pipefail
cd "$(dirname "$0")/.."

# --- the parts, by name: add a package to the list of the command that needs it -----------------
# Debian packages the demo needs: a Python (>= 3.11) that makes virtualenvs, and dcmtk's storescp
# as the demo's PACS (without dcmtk the demo falls back to a pynetdicom Storage SCP).
DEMO_APT_PACKAGES=(python3 python3-venv dcmtk)
# Debian packages the tests need: the demo's, plus the real peers the tests talk to: Orthanc (a
# PACS with a REST API) and PostgreSQL (started by `scripts/setup.sh postgres`).
# The browser test (tests/test_viewer_ohif.py) adds Orthanc's DICOMweb plugin and headless Chromium.
TEST_APT_PACKAGES=("${DEMO_APT_PACKAGES[@]}" orthanc postgresql orthanc-dicomweb chromium)
# npm packages the tests need, as their published tarballs unpacked under $NPM_PREFIX/<name>/ (no
# dependency install: OHIF's @ohif/app ships its prebuilt viewer in dist/, which is all the browser
# test serves; tests/browser.py looks for it there). npm itself comes from Debian.
TEST_NPM_PACKAGES=("@ohif/app@3.13.2")
NPM_PREFIX="${NPM_PREFIX:-build/npm}"
# The build backend's wheels (pyproject.toml [build-system] requires), downloaded by `python test`
# for the README test, whose fresh clone installs offline (tests/test_readme.py).
WHEELHOUSE="${WHEELHOUSE:-build/wheelhouse}"
# The PyTorch build indexes (https://pytorch.org/get-started/locally/). PyPI's own Linux wheels
# are CUDA builds (about 3 GB with their nvidia packages); the CPU index has CPU-only wheels.
TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
# -------------------------------------------------------------------------------------------------

PYTHON="${PYTHON:-python3}"
VENV="${VENV-.venv}"
TORCH="${TORCH:-torch==2.13.0}"
TORCH_BUILD="${TORCH_BUILD:-auto}"
TORCH_INDEX="${TORCH_INDEX:-}"
started="${SETUP_STARTED:-$(date +%s)}"

step() { printf '\n== %s (%ds)\n' "$1" "$(( $(date +%s) - started ))"; }
die() { printf 'setup: %s\n' "$1" >&2; exit 1; }

# Run a command as root: directly when we are root, through sudo otherwise.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else die "needs root for: $* (run as root, or install sudo)"
  fi
}

# Run a command as the postgres user.
as_postgres() {
  if [ "$(id -u)" -eq 0 ]; then su postgres -c "$(printf '%q ' "$@")"
  else sudo -u postgres "$@"
  fi
}

# The packages among "$@" that dpkg does not list as installed, one a line.
apt_missing() {
  local package
  for package in "$@"; do
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null)" = installed ] || echo "$package"
  done
}

apt_install() {
  local missing
  mapfile -t missing < <(apt_missing "$@")
  if [ ${#missing[@]} -eq 0 ]; then
    echo "already installed: $*"
    return
  fi
  command -v apt-get >/dev/null || die "not a Debian/Ubuntu machine (no apt-get): install ${missing[*]} yourself"
  echo "installing: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# The folder a package spec unpacks into: "@ohif/app@3.13.2" -> $NPM_PREFIX/ohif-app-3.13.2.
npm_folder() {
  local name="${1#@}"
  echo "$NPM_PREFIX/${name//[\/@]/-}"
}

npm_install() {
  local spec folder tarball
  if [ ${#TEST_NPM_PACKAGES[@]} -eq 0 ]; then
    echo "no npm packages to install"
    return
  fi
  command -v npm >/dev/null || apt_install npm  # a Node.js from elsewhere brings its own npm
  for spec in "${TEST_NPM_PACKAGES[@]}"; do
    folder=$(npm_folder "$spec")
    if [ -f "$folder/package/package.json" ]; then
      echo "already unpacked: $spec ($folder)"
      continue
    fi
    mkdir -p "$folder"
    tarball=$(cd "$folder" && npm pack --silent "$spec")
    tar -xzf "$folder/$tarball" -C "$folder" && rm "$folder/$tarball"
    echo "unpacked: $spec ($folder)"
  done
}

cmd_system() {
  case "${1:-}" in
    demo)
      step "Debian packages for the demo: Python with venv, dcmtk (the demo's PACS)"
      apt_install "${DEMO_APT_PACKAGES[@]}" ;;
    test)
      step "Debian packages for the tests: dcmtk (storescu/storescp), Orthanc (a real PACS) and its DICOMweb plugin, PostgreSQL, Chromium"
      apt_install "${TEST_APT_PACKAGES[@]}"
      step "npm packages for the tests"
      npm_install ;;
    *) die "usage: scripts/setup.sh system demo|test" ;;
  esac
}

cmd_missing() {
  case "${1:-}" in
    demo) apt_missing "${DEMO_APT_PACKAGES[@]}" ;;
    test) apt_missing "${TEST_APT_PACKAGES[@]}" ;;
    *) die "usage: scripts/setup.sh missing demo|test" ;;
  esac
}

cmd_postgres() {
  step "PostgreSQL: start the machine's cluster, let this user connect over the local socket"
  if ! pg_isready -q 2>/dev/null; then
    local pg_version pg_cluster
    read -r pg_version pg_cluster _ < <(pg_lsclusters -h | head -n 1)
    [ -n "${pg_cluster:-}" ] || die "no PostgreSQL cluster on this machine (apt-get install postgresql creates one)"
    as_root pg_ctlcluster --skip-systemctl-redirect "$pg_version" "$pg_cluster" start || true
    for _ in $(seq 1 30); do pg_isready -q && break; sleep 1; done
  fi
  pg_isready
  local me
  me=$(id -un)
  # A user who already connects and may create databases (each test makes its own) needs nothing,
  # and no root; else the role of that name becomes a superuser, or is created as one.
  if ! psql -d postgres -tAc "SELECT rolsuper OR rolcreatedb FROM pg_roles WHERE rolname = current_user" 2>/dev/null | grep -q t; then
    if as_postgres psql -tAc "SELECT 1 FROM pg_roles WHERE rolname = '$me'" | grep -q 1; then
      as_postgres psql -qc "ALTER ROLE \"$me\" SUPERUSER"
    else
      as_postgres createuser --superuser "$me"
    fi
  fi
  echo "role $me: ready"
}

# The torch index for TORCH_BUILD, empty for PyPI's default (a CUDA build on Linux).
torch_index() {
  if [ -n "$TORCH_INDEX" ]; then echo "$TORCH_INDEX"; return; fi
  local build="$TORCH_BUILD"
  if [ "$build" = auto ]; then
    if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then build=cuda; else build=cpu; fi
  fi
  case "$build" in
    cpu) echo "$TORCH_CPU_INDEX" ;;
    cuda) echo "" ;;
    *) die "TORCH_BUILD=$TORCH_BUILD: use auto, cpu or cuda" ;;
  esac
}

install_torch() {
  local py="$1" installed index
  # A torch that already satisfies $TORCH stays (pip would keep it too), and nothing is fetched.
  installed=$("$py" - "$TORCH" <<'PY' || true
import sys
from importlib.metadata import PackageNotFoundError, version

from pip._vendor.packaging.requirements import Requirement

wanted = Requirement(sys.argv[1])
try:
    have = version(wanted.name)
except PackageNotFoundError:
    sys.exit(0)
if wanted.specifier.contains(have, prereleases=True):
    import torch
    print(have, "CUDA" if torch.version.cuda else "CPU")
PY
)
  if [ -n "$installed" ]; then
    echo "torch ${installed% *} already installed (${installed#* } build); to change it see README.md, \"Two commands\""
    return
  fi
  index=$(torch_index)
  if [ -z "$index" ]; then
    echo "installing $TORCH: PyPI's build (CUDA on Linux)"
    "$py" -m pip install -q "$TORCH"
  elif "$py" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=15)" "$index/torch/" 2>/dev/null; then
    echo "installing $TORCH from $index (no GPU asked for; for CUDA: make ... TORCH_BUILD=cuda)"
    "$py" -m pip install -q "$TORCH" --extra-index-url "$index"
  else
    echo "$index does not answer: installing $TORCH from pip's configured sources"
    "$py" -m pip install -q "$TORCH"
  fi
}

cmd_python() {
  local extras
  case "${1:-}" in
    demo) extras="" ;;
    test) extras="[test]" ;;
    *) die "usage: scripts/setup.sh python demo|test" ;;
  esac
  local py="$PYTHON"
  if [ -n "$VENV" ]; then
    step "Python: the virtualenv $VENV"
    # --system-site-packages: what the machine's Python already has (a CPU torch, say) is reused.
    if [ ! -x "$VENV/bin/python" ]; then
      "$PYTHON" -m venv --system-site-packages "$VENV"
      echo "made with $PYTHON -m venv --system-site-packages"
    fi
    py="$(cd "$VENV" && pwd)/bin/python"
  fi
  "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "$("$py" -V) is too old: dicomnode needs Python 3.11 or newer (PYTHON=python3.12 make ...)"
  step "PyTorch: $TORCH"
  install_torch "$py"
  step "dicomnode: pip install -e \".$extras\""
  # The build backend (pyproject.toml [build-system] requires) goes into the environment first and
  # the project is built there, so an environment that has everything installs without the network.
  local requires
  requires=$("$py" -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['build-system']['requires']))")
  mapfile -t requires <<<"$requires"
  "$py" -m pip install -q "${requires[@]}"
  "$py" -m pip install -q --no-build-isolation -e ".$extras"
  if [ "$1" = test ]; then
    step "the build backend's wheels for the README test's offline install: $WHEELHOUSE"
    "$py" -m pip download -q --no-deps --only-binary :all: --dest "$WHEELHOUSE" "${requires[@]}"
    ls "$WHEELHOUSE"
  fi
  # From / so that the current folder cannot stand in for the installed package.
  (cd / && "$py" -c "import dicomnode, torch; print('dicomnode from', dicomnode.__path__[0], '- torch', torch.__version__)")
}

case "${1:-}" in
  system) shift; cmd_system "$@" ;;
  missing) shift; cmd_missing "$@" ;;
  postgres) shift; cmd_postgres "$@" ;;
  python) shift; cmd_python "$@" ;;
  *) die "usage: scripts/setup.sh system demo|test | missing demo|test | postgres | python demo|test" ;;
esac
