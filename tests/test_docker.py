"""docker/: the compose files parse and name real images and paths, the image's configuration agrees
with the compose site, and the entrypoint runs outside Docker (the Docker engine does not run here)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from dicomnode.config import load_config
from tests.peers import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
COMPOSE_FILES = sorted(DOCKER.glob("compose*.yaml"))
# name[:tag] as `docker pull` takes it: lowercase path components, a tag that is not "latest"
IMAGE = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*(?:\.[a-z0-9-]+)*(?::\d+)?(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*"
                   r":(?!latest$)[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def compose(name: str) -> dict:
    return yaml.safe_load((DOCKER / name).read_text())


def all_services() -> dict[str, dict]:
    """Services of every compose file merged as `docker compose -f a -f b` merges them (by name)."""
    merged: dict[str, dict] = {}
    for path in COMPOSE_FILES:
        for name, service in yaml.safe_load(path.read_text())["services"].items():
            merged.setdefault(name, {}).update(service)
    return merged


def dockerfile_args() -> dict[str, str | None]:
    args = {}
    for line in (DOCKER / "Dockerfile").read_text().splitlines():
        if match := re.match(r"^ARG (\w+)(?:=(\S+))?$", line):
            args[match[1]] = match[2]
    return args


def test_compose_files_parse_and_name_real_images_and_paths():
    assert {p.name for p in COMPOSE_FILES} >= {"compose.yaml", "compose.postgres.yaml", "compose.gpu.yaml"}
    services = all_services()
    assert {"node", "orthanc", "postgres", "worker"} <= set(services)
    declared_volumes = set()
    for path in COMPOSE_FILES:
        declared_volumes |= set(yaml.safe_load(path.read_text()).get("volumes") or {})
    for path in COMPOSE_FILES:
        for name, service in yaml.safe_load(path.read_text())["services"].items():
            where = f"{path.name}: {name}"
            if "image" in service:
                assert IMAGE.match(service["image"]), f"{where}: image {service['image']!r} needs a name and a tag"
            if "build" in service:
                context = (DOCKER / service["build"]["context"]).resolve()
                assert context == ROOT, where
                assert (context / service["build"]["dockerfile"]).is_file(), where
                assert set(service["build"].get("args") or {}) <= set(dockerfile_args()), where
            for volume in service.get("volumes") or []:
                source = volume.split(":")[0]
                if source.startswith((".", "/")):
                    assert (DOCKER / source).resolve().exists(), f"{where}: bind mount {source} does not exist"
                else:
                    assert source in declared_volumes, f"{where}: volume {source} is not declared"
            for dependency in service.get("depends_on") or []:
                assert dependency in services, f"{where}: depends on unknown service {dependency}"
    assert services["node"]["image"] == services["worker"]["image"] == f"dicomnode:{VERSION}"
    assert services["orthanc"]["image"].startswith("orthancteam/orthanc:")
    assert services["postgres"]["image"].startswith("postgres:")
    for service in ("node", "worker"):  # state on volumes: the spool is shared, the node keeps SQLite
        assert "spool:/var/lib/dicomnode/spool" in services[service]["volumes"]
    assert "database:/var/lib/dicomnode/db" in compose("compose.yaml")["services"]["node"]["volumes"]


def test_node_config_of_the_site_agrees_with_compose(monkeypatch):
    for key in [k for k in os.environ if k.startswith("DICOMNODE_")]:
        monkeypatch.delenv(key)
    config = load_config(DOCKER / "node.toml")
    site = compose("compose.yaml")["services"]
    orthanc = site["orthanc"]["environment"]
    (destination,) = config.destinations
    assert destination.host == "orthanc"
    assert destination.port == int(orthanc["ORTHANC__DICOM_PORT"])
    assert destination.ae_title == orthanc["ORTHANC__DICOM_AET"]
    modalities = json.loads(orthanc["ORTHANC__DICOM_MODALITIES"])
    assert modalities["dicomnode"] == [config.node.ae_title, "node", config.node.port]
    published = {int(port.rsplit(":", 1)[1]) for port in site["node"]["ports"]}
    assert published == {config.node.port, config.http.port}
    assert config.model.weights == "default" and config.logging.json_lines and not config.logging.include_patient_data
    volumes = {v.split(":")[1] for v in site["node"]["volumes"]}
    assert str(config.storage.spool_path) in volumes
    assert config.database_url == "sqlite:////var/lib/dicomnode/db/dicomnode.db"
    assert "/var/lib/dicomnode/db" in volumes

    # The scale-out file's database URL is a valid configuration once the password is filled in.
    scale = compose("compose.postgres.yaml")["services"]
    url = scale["worker"]["environment"]["DICOMNODE_DATABASE__URL"].replace("${POSTGRES_PASSWORD}", "secret")
    assert url == scale["node"]["environment"]["DICOMNODE_DATABASE__URL"].replace("${POSTGRES_PASSWORD}", "secret")
    monkeypatch.setenv("DICOMNODE_DATABASE__URL", url)
    assert load_config(DOCKER / "node.toml").database_url.startswith("postgresql+psycopg://dicomnode:secret@postgres/")


def test_dockerfile_copies_real_paths_runs_as_a_user_and_checks_health():
    text = (DOCKER / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    for line in lines:
        if line.startswith("COPY ") and "--from=" not in line:
            *sources, _ = line.split()[1:]
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: not in the build context"
    args = dockerfile_args()
    assert args["BASE_IMAGE"].startswith("nvidia/cuda:") and "runtime" in args["BASE_IMAGE"]
    assert IMAGE.match(args["BASE_IMAGE"]) and IMAGE.match(args["UV_IMAGE"])
    assert args["TORCH_INDEX"].startswith("https://download.pytorch.org/whl/")
    assert "whl/cpu" in text  # how to choose the CPU build is written down
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert any(line.startswith("HEALTHCHECK ") and "healthcheck" in line for line in lines)
    config = tomllib.loads((DOCKER / "node.toml").read_text())
    exposed = {int(p) for line in lines if line.startswith("EXPOSE ") for p in line.split()[1:]}
    assert exposed == {config["node"]["port"], config["http"]["port"]}
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
    assert "!docker/entrypoint.sh" in ignore and "!dicomnode/**" in ignore


# -- the entrypoint, outside Docker -----------------------------------------------------------------


def entrypoint_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    """The site's node.toml, with state and ports moved where a test may write and listen."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("DICOMNODE_")}
    binary = shutil.which("dicomnode")
    assert binary, "the dicomnode command is not installed (pip install -e .)"
    env.update({
        "DICOMNODE_PYTHON": sys.executable, "DICOMNODE_BIN": binary,
        "DICOMNODE_CONFIG": str(DOCKER / "node.toml"),
        "DICOMNODE_STORAGE__VAR_DIR": str(tmp_path / "var"),
        "DICOMNODE_STORAGE__SPOOL_DIR": str(tmp_path / "var" / "spool"),
        "DICOMNODE_STORAGE__MIN_FREE_BYTES": "0",
        "DICOMNODE_DATABASE__URL": f"sqlite:///{tmp_path / 'var' / 'db' / 'node.db'}",
        **overrides,
    })
    return env


def entrypoint(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([str(DOCKER / "entrypoint.sh"), *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_entrypoint_help_dry_run_and_refusals(tmp_path):
    env = entrypoint_env(tmp_path)
    shown = entrypoint("--help", env=env)
    assert shown.returncode == 0 and "serve" in shown.stdout and "worker" in shown.stdout

    dry = entrypoint(env={**env, "DICOMNODE_DRY_RUN": "1"})
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.strip() == f"dry run: would exec {env['DICOMNODE_BIN']} serve"
    assert "destinations ['orthanc']" in dry.stderr and "health/metrics port 8080" in dry.stderr
    assert (tmp_path / "var" / "spool").is_dir() and (tmp_path / "var" / "db").is_dir()

    bad = entrypoint("worker", env={**env, "DICOMNODE_NODE__AE_TITLE": "A\\B"})
    assert bad.returncode == 2 and "node.ae_title" in bad.stderr

    (tmp_path / "file").write_text("not a folder")
    blocked = entrypoint(env={**env, "DICOMNODE_STORAGE__SPOOL_DIR": str(tmp_path / "file" / "spool")})
    assert blocked.returncode == 2 and "is not writable" in blocked.stderr

    nobody = f"postgresql+psycopg://dicomnode:pw@127.0.0.1:{free_port()}/dicomnode"
    down = entrypoint("worker", env={**env, "DICOMNODE_DATABASE__URL": nobody, "DICOMNODE_DB_WAIT": "0"})
    assert down.returncode == 2 and "does not answer" in down.stderr and "pw@" not in down.stderr

    assert entrypoint("healthcheck", env={**env, "DICOMNODE_HTTP__PORT": str(free_port())}).returncode == 1


@pytest.mark.postgres
def test_entrypoint_waits_for_a_postgresql_database_that_answers(tmp_path, postgres_url):
    env = entrypoint_env(tmp_path, DICOMNODE_DATABASE__URL=postgres_url, DICOMNODE_DRY_RUN="1")
    ready = entrypoint("worker", env=env)
    assert ready.returncode == 0, ready.stderr
    assert ready.stdout.strip().endswith("worker")


@pytest.mark.network
def test_entrypoint_serves_answers_health_and_echo_and_stops_on_sigterm(tmp_path):
    port, http_port = free_port(), free_port()
    env = entrypoint_env(tmp_path, DICOMNODE_NODE__HOST="127.0.0.1", DICOMNODE_NODE__PORT=str(port),
                         DICOMNODE_HTTP__HOST="127.0.0.1", DICOMNODE_HTTP__PORT=str(http_port),
                         DICOMNODE_MODEL__WEIGHTS="threshold", DICOMNODE_MODEL__DEVICE="cpu",
                         DICOMNODE_DESTINATIONS="[]", OMP_NUM_THREADS="1")
    with (tmp_path / "node.log").open("wb") as log:
        node = subprocess.Popen([str(DOCKER / "entrypoint.sh")], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(http_port, timeout=90, process=node)
        health = entrypoint("healthcheck", env=env)
        assert health.returncode == 0, health.stderr
        assert json.loads(health.stdout)["status"] == "ok"
        echo = entrypoint("echo", "--to", f"127.0.0.1:{port}:DICOMNODE", env=env)
        assert echo.returncode == 0 and echo.stdout.startswith("ok"), echo.stdout + echo.stderr
        node.send_signal(signal.SIGTERM)
        assert node.wait(60) == 0
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()
    assert entrypoint("healthcheck", env=env).returncode == 1
    lines = [json.loads(line) for line in (tmp_path / "node.log").read_text().splitlines() if line.startswith("{")]
    assert any(entry["message"] == "node stopped" for entry in lines)  # the site's JSON-lines logging
