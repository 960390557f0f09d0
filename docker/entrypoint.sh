#!/bin/sh
# dicomnode container entrypoint (docker/Dockerfile). Runs outside Docker too.
#
#   entrypoint.sh [COMMAND [ARGS...]]   a dicomnode command; default `serve`
#   entrypoint.sh healthcheck           exit 0 when the node's GET /healthz answers 200 (HEALTHCHECK)
#   entrypoint.sh --help                dicomnode's own help
#
# Before `serve` and `worker` it checks, and exits 2 with the reason instead of crash-looping:
#   - the configuration ($DICOMNODE_CONFIG and DICOMNODE_* variables) is valid;
#   - the spool and SQLite folders are writable by this user (a volume owned by root is the usual
#     cause when they are not);
#   - a PostgreSQL database answers, waiting up to $DICOMNODE_DB_WAIT seconds (default 60) while
#     the database container starts.
# DICOMNODE_DRY_RUN=1: run those checks, print the command, and exit without running it.
# DICOMNODE_PYTHON / DICOMNODE_BIN: the Python and dicomnode programs (default: from PATH).
set -eu

PYTHON=${DICOMNODE_PYTHON:-python3}
DICOMNODE=${DICOMNODE_BIN:-dicomnode}

preflight() {
    "$PYTHON" - <<'PY'
import os
import sys
import time
from pathlib import Path

from dicomnode.config import ConfigError, load_config

try:
    config = load_config()
except ConfigError as exc:
    sys.exit(f"error: {exc}")
folders = [config.storage.spool_path]
if config.database_url.startswith("sqlite"):
    folders.append(Path(config.database_url.removeprefix("sqlite:///")).parent)
for folder in folders:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        sys.exit(f"error: {folder} is not writable by uid {os.getuid()}: {exc.strerror} "
                 f"(chown the volume to this user)")
if config.database_url.startswith("postgresql"):
    from dicomnode.store.db import connect

    database = connect(config.database_url)
    deadline = time.monotonic() + float(os.environ.get("DICOMNODE_DB_WAIT", "60"))
    while True:
        try:
            with database.engine.connect():
                break
        except Exception as exc:
            if time.monotonic() > deadline:
                sys.exit(f"error: database {database.url} does not answer: {str(exc).splitlines()[0]}")
            time.sleep(2)
    database.dispose()
where = config.database_url.split("@")[-1] if "@" in config.database_url else config.database_url
print(f"dicomnode: AE {config.node.ae_title} port {config.node.port}, database {where}, "
      f"spool {config.storage.spool_path}, destinations {[d.name for d in config.destinations]}, "
      f"health/metrics port {config.http.port}", file=sys.stderr)
PY
}

healthcheck() {
    "$PYTHON" - <<'PY'
import sys
import urllib.request

from dicomnode.config import ConfigError, load_config

try:
    http = load_config().http
except ConfigError as exc:
    sys.exit(f"unhealthy: {exc}")
if http.port is None:
    sys.exit("unhealthy: [http] port is not set, so there is no /healthz to ask")
host = "127.0.0.1" if http.host in ("0.0.0.0", "", "::") else http.host
try:
    with urllib.request.urlopen(f"http://{host}:{http.port}/healthz", timeout=5) as reply:
        print(reply.read().decode())
except Exception as exc:
    sys.exit(f"unhealthy: {exc}")
PY
}

case "${1:-}" in
    "") set -- serve ;;
    healthcheck) healthcheck; exit $? ;;
esac

case "$1" in
    serve|worker) preflight || exit 2 ;;
esac

if [ "${DICOMNODE_DRY_RUN:-0}" = "1" ]; then
    echo "dry run: would exec $DICOMNODE $*"
    exit 0
fi
exec "$DICOMNODE" "$@"
