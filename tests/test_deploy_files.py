"""docker-compose.yml and the Dockerfile cannot run here (no Docker engine): check what can be checked."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_has_temporal_mongo_and_worker_with_health_checks():
    services = compose()["services"]
    assert set(services) == {"temporal", "mongo", "worker"}
    for name in ("temporal", "mongo"):
        assert services[name]["healthcheck"]["test"][0] == "CMD"
        assert services[name]["ports"], name
    depends = services["worker"]["depends_on"]
    assert depends == {
        "temporal": {"condition": "service_healthy"},
        "mongo": {"condition": "service_healthy"},
    }


def test_compose_images_are_pinned():
    for name, service in compose()["services"].items():
        image = service["image"]
        assert re.fullmatch(r"[\w./-]+:\d+(\.\d+)+", image), f"{name}: {image} is not pinned to a version"


def test_compose_worker_environment_uses_the_documented_variables():
    env = compose()["services"]["worker"]["environment"]
    assert env["TEMPORAL_ADDRESS"] == "temporal:7233"
    assert env["MONGO_URI"].startswith("mongodb://mongo:")
    assert {k for k in env if not k.startswith("TEMPORAL_") and k != "MONGO_URI"} <= {
        "KDUFLOW_MONGO_DB",
        "KDUFLOW_TASK_QUEUE",
        "KDUFLOW_STATE_DIR",
    }
    readme = (ROOT / "README.md").read_text()
    for key in env:
        assert key in readme, f"{key} is not documented in the README"


def test_dockerfile_pins_python_fetches_verified_tools_and_runs_unprivileged():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    assert "scripts/fetch_tools.py" in text
    assert re.search(r"^USER kduflow$", text, re.M)
    assert re.search(r'^ENTRYPOINT \["kduflow-worker"\]$', text, re.M)
    for copied in re.findall(r"^COPY (\S+)", text, re.M):
        assert (ROOT / copied).exists(), copied
