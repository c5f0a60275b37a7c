"""Settings: environment variables, flags that mirror them, validation messages, redaction."""

from __future__ import annotations

import argparse
import base64
import os
from pathlib import Path

import pytest

from kduflow.config import ConfigError, Settings, add_arguments, redact_uri, temporal_connect_config

ROOT = Path(__file__).resolve().parent.parent
HELM3_DIR = ROOT / "tools" / "helm3"
KEY = base64.b64encode(os.urandom(32)).decode()


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A minimal environment: helm/kubectl found on PATH, state under a temporary XDG_STATE_HOME."""
    return {
        "PATH": f"{HELM3_DIR}:/usr/bin:/bin",
        "XDG_STATE_HOME": str(tmp_path / "xdg"),
        "HOME": str(tmp_path),
    }


def test_defaults(env: dict[str, str], tmp_path: Path) -> None:
    settings = Settings.from_env(env)
    # Bare names are resolved once, so a minimal PATH in the cluster env cannot lose them.
    assert settings.helm == str(HELM3_DIR / "helm")
    assert settings.kubectl == str(HELM3_DIR / "kubectl")
    assert settings.state_dir == tmp_path / "xdg" / "kduflow"
    assert settings.state_dir.is_dir()
    assert settings.state_dir.stat().st_mode & 0o777 == 0o700
    assert (settings.charts_dir, settings.mongo_uri, settings.mongo_db) == (None, "", "osm")
    assert (settings.task_queue, settings.secret_key, settings.poll_interval) == ("kduflow", "", 5.0)
    assert settings.stable_repo_url == ""
    assert (settings.metrics_bind, settings.otel) == ("", False)
    assert "metrics=off" in settings.describe() and "otel=off" in settings.describe()


def test_default_state_dir_without_xdg(env: dict[str, str], tmp_path: Path) -> None:
    del env["XDG_STATE_HOME"]
    assert Settings.from_env(env).state_dir == tmp_path / ".local" / "state" / "kduflow"


def test_every_variable(env: dict[str, str], tmp_path: Path) -> None:
    charts = tmp_path / "charts"
    charts.mkdir()
    env.update(
        KDUFLOW_HELM=str(ROOT / "tools" / "helm4" / "helm"),
        KDUFLOW_KUBECTL=str(ROOT / "tools" / "helm4" / "kubectl"),
        KDUFLOW_STATE_DIR=str(tmp_path / "state"),
        KDUFLOW_CHARTS_DIR=str(charts),
        MONGO_URI="mongodb://osm:pw@mongo:27017/?replicaSet=rs0",
        KDUFLOW_MONGO_DB="osm2",
        KDUFLOW_TASK_QUEUE="kdu-q",
        KDUFLOW_SECRET_KEY=f"k2:{KEY}, k1:{KEY}",
        KDUFLOW_POLL_INTERVAL="2.5",
        KDUFLOW_STABLE_REPO_URL="https://charts.example.com/stable",
        KDUFLOW_EXEC_PLUGINS="aws, /usr/local/bin/kubelogin",
        KDUFLOW_ALLOW_KUBECONFIG_PROXY="true",
        KDUFLOW_STATUS_COLLECTIONS="nsrs,vnfrs",
        KDUFLOW_URL_ALLOWLIST="https://charts.example.com/stable,oci://registry.example.com/charts,*.example.org",
        KDUFLOW_ALLOW_PRIVATE_NETWORKS="10.20.0.0/16,fd00::/8",
        KDUFLOW_PENDING_STUCK_AFTER="600",
        KDUFLOW_GRACEFUL_SHUTDOWN="300",
        KDUFLOW_METRICS_BIND="0.0.0.0:9464",
        KDUFLOW_OTEL="true",
    )
    settings = Settings.from_env(env)
    assert settings.helm == str(ROOT / "tools" / "helm4" / "helm")
    assert settings.kubectl == str(ROOT / "tools" / "helm4" / "kubectl")
    assert settings.state_dir == tmp_path / "state" and settings.state_dir.is_dir()
    assert settings.charts_dir == charts
    assert settings.mongo_uri == "mongodb://osm:pw@mongo:27017/?replicaSet=rs0"
    assert settings.mongo_db == "osm2"
    assert settings.task_queue == "kdu-q"
    assert settings.secret_key == f"k2:{KEY}, k1:{KEY}"
    assert settings.poll_interval == 2.5
    assert settings.stable_repo_url == "https://charts.example.com/stable"
    assert settings.exec_plugins == ("aws", "/usr/local/bin/kubelogin")
    assert settings.kubeconfig_proxy is True
    assert settings.status_collections == ("nsrs", "vnfrs")
    assert settings.url_allowlist == (
        "https://charts.example.com/stable", "oci://registry.example.com/charts", "*.example.org"
    )
    assert settings.private_networks == ("10.20.0.0/16", "fd00::/8")
    assert settings.pending_stuck_after == 600
    assert settings.graceful_shutdown == 300.0
    assert settings.metrics_bind == "0.0.0.0:9464"
    assert settings.otel is True
    assert "metrics=http://0.0.0.0:9464/metrics" in settings.describe() and "otel=on" in settings.describe()


def test_overrides_win_over_environment(env: dict[str, str], tmp_path: Path) -> None:
    env["KDUFLOW_TASK_QUEUE"] = "from-env"
    settings = Settings.from_env(env, task_queue="from-override", state_dir=tmp_path / "s", poll_interval=1)
    assert settings.task_queue == "from-override"
    assert settings.state_dir == tmp_path / "s"
    assert settings.poll_interval == 1.0
    with pytest.raises(ConfigError, match="^task_queue='a b'"):
        Settings.from_env(env, task_queue="a b")
    with pytest.raises(TypeError, match="nonsense"):
        Settings.from_env(env, nonsense=1)


@pytest.mark.parametrize(
    "variable, value, message",
    [
        ("KDUFLOW_HELM", "no-such-helm", "KDUFLOW_HELM='no-such-helm': no executable of that name on PATH"),
        ("KDUFLOW_HELM", "{file}", "KDUFLOW_HELM='{file}': not an executable file"),
        ("KDUFLOW_HELM", "", "KDUFLOW_HELM: empty"),
        ("KDUFLOW_KUBECTL", "/nonexistent/kc", "KDUFLOW_KUBECTL='/nonexistent/kc': not an executable"),
        ("KDUFLOW_CHARTS_DIR", "/nonexistent/ch", "KDUFLOW_CHARTS_DIR='/nonexistent/ch': not an existing"),
        ("KDUFLOW_STATE_DIR", "{file}/state", "KDUFLOW_STATE_DIR='{file}/state': cannot create"),
        ("KDUFLOW_STATE_DIR", "{file}", "KDUFLOW_STATE_DIR='{file}': cannot create|not a directory"),
        ("KDUFLOW_POLL_INTERVAL", "fast", "KDUFLOW_POLL_INTERVAL='fast': not a number"),
        ("KDUFLOW_POLL_INTERVAL", "0.1", r"KDUFLOW_POLL_INTERVAL='0.1': must be between 0.5 and 3600"),
        ("KDUFLOW_POLL_INTERVAL", "3601", "KDUFLOW_POLL_INTERVAL='3601'"),
        ("KDUFLOW_POLL_INTERVAL", "nan", "KDUFLOW_POLL_INTERVAL='nan'"),
        ("KDUFLOW_TASK_QUEUE", "", "KDUFLOW_TASK_QUEUE='': must be non-empty"),
        ("KDUFLOW_TASK_QUEUE", "kdu queue", "KDUFLOW_TASK_QUEUE='kdu queue': .*no whitespace"),
        ("MONGO_URI", "localhost:27017", "MONGO_URI='localhost:27017': must start with mongodb://"),
        ("MONGO_URI", "mongodb://", "MONGO_URI='mongodb://': no host"),
        ("KDUFLOW_MONGO_DB", "os.m", "KDUFLOW_MONGO_DB='os.m': not a valid MongoDB database name"),
        ("KDUFLOW_STABLE_REPO_URL", "ftp://x", "KDUFLOW_STABLE_REPO_URL='ftp://x': must be an http"),
        ("KDUFLOW_EXEC_PLUGINS", "sh", "KDUFLOW_EXEC_PLUGINS: 'sh' is a shell or interpreter"),
        ("KDUFLOW_EXEC_PLUGINS", "/usr/bin/python3", "KDUFLOW_EXEC_PLUGINS: '/usr/bin/python3' is a shell"),
        ("KDUFLOW_EXEC_PLUGINS", "bin/aws", "KDUFLOW_EXEC_PLUGINS: 'bin/aws' must be an absolute"),
        ("KDUFLOW_ALLOW_KUBECONFIG_PROXY", "maybe", "KDUFLOW_ALLOW_KUBECONFIG_PROXY='maybe': must be true"),
        ("KDUFLOW_STATUS_COLLECTIONS", "k8sclusters", "KDUFLOW_STATUS_COLLECTIONS: 'k8sclusters' holds"),
        ("KDUFLOW_STATUS_COLLECTIONS", "system.x", "KDUFLOW_STATUS_COLLECTIONS: 'system.x' is not a plain"),
        ("KDUFLOW_STATUS_COLLECTIONS", " , ", "KDUFLOW_STATUS_COLLECTIONS: give at least one"),
        ("KDUFLOW_URL_ALLOWLIST", "ftp://x", "KDUFLOW_URL_ALLOWLIST: 'ftp://x' must be an http, https"),
        ("KDUFLOW_URL_ALLOWLIST", "https://u:p@x", "KDUFLOW_URL_ALLOWLIST: 'https://u:\\*\\*\\*@x' must not"),
        ("KDUFLOW_URL_ALLOWLIST", "a b", "KDUFLOW_URL_ALLOWLIST: 'a b' is neither"),
        ("KDUFLOW_ALLOW_PRIVATE_NETWORKS", "10.0.0.0/33", "KDUFLOW_ALLOW_PRIVATE_NETWORKS: '10.0.0.0/33'"),
        ("KDUFLOW_PENDING_STUCK_AFTER", "5", "KDUFLOW_PENDING_STUCK_AFTER='5': a whole number"),
        ("KDUFLOW_PENDING_STUCK_AFTER", "1e9", "KDUFLOW_PENDING_STUCK_AFTER='1e9'"),
        ("KDUFLOW_GRACEFUL_SHUTDOWN", "soon", "KDUFLOW_GRACEFUL_SHUTDOWN='soon': not a number"),
        ("KDUFLOW_GRACEFUL_SHUTDOWN", "-1", "KDUFLOW_GRACEFUL_SHUTDOWN='-1': must be between 0 and 86400"),
        ("KDUFLOW_METRICS_BIND", "localhost:9464", "KDUFLOW_METRICS_BIND='localhost:9464': must be an IP"),
        ("KDUFLOW_METRICS_BIND", "9464", "KDUFLOW_METRICS_BIND='9464': must be an IP address and a port"),
        ("KDUFLOW_METRICS_BIND", "::1:9464", "KDUFLOW_METRICS_BIND='::1:9464': must be an IP"),
        ("KDUFLOW_METRICS_BIND", "127.0.0.1:0", "KDUFLOW_METRICS_BIND='127.0.0.1:0': the port must be"),
        ("KDUFLOW_METRICS_BIND", "127.0.0.1:70000", "KDUFLOW_METRICS_BIND='127.0.0.1:70000': the port"),
        ("KDUFLOW_OTEL", "sometimes", "KDUFLOW_OTEL='sometimes': must be true or false"),
    ],
)
def test_invalid_values_name_variable_and_value(
    env: dict[str, str], tmp_path: Path, variable: str, value: str, message: str
) -> None:
    # "{file}": a plain, non-executable file (neither a binary nor a directory).
    plain = tmp_path / "plain-file"
    plain.write_text("x")
    env[variable] = value.replace("{file}", str(plain))
    message = message.replace("{file}", str(plain))
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_default_helm_missing_from_path_is_reported(env: dict[str, str]) -> None:
    env["PATH"] = "/nonexistent"
    with pytest.raises(ConfigError, match=r"KDUFLOW_HELM \(default\)='helm'"):
        Settings.from_env(env)


@pytest.mark.parametrize(
    "value, message",
    [
        ("k1:" + base64.b64encode(b"x" * 16).decode(), "16 bytes"),
        (KEY, "not '<key-id>:<base64 key>'"),
        (f"k1:{KEY},k1:{KEY}", "listed twice"),
    ],
)
def test_bad_secret_key_is_never_echoed(env: dict[str, str], value: str, message: str) -> None:
    env["KDUFLOW_SECRET_KEY"] = value
    with pytest.raises(ConfigError, match=message) as err:
        Settings.from_env(env)
    assert str(err.value).startswith("KDUFLOW_SECRET_KEY=<redacted>")
    assert KEY not in str(err.value)
    assert value.rpartition(":")[2] not in str(err.value)


def test_mongo_uri_password_is_redacted_in_errors(env: dict[str, str]) -> None:
    env["MONGO_URI"] = "mongo://admin:hunter2@db"
    with pytest.raises(ConfigError) as err:
        Settings.from_env(env)
    assert "hunter2" not in str(err.value) and "admin:***@db" in str(err.value)


def test_describe_and_repr_redact_secrets(env: dict[str, str]) -> None:
    env.update(MONGO_URI="mongodb://osm:hunter2@mongo:27017/osm", KDUFLOW_SECRET_KEY=f"k1:{KEY}",
               KDUFLOW_STABLE_REPO_URL="https://bob:repopw@charts.example.com")
    settings = Settings.from_env(env)
    for text in (settings.describe(), repr(settings)):
        assert "hunter2" not in text and KEY not in text and "repopw" not in text
    assert "store=mongodb://osm:***@mongo:27017/osm" in settings.describe()
    assert "encryption=keys[k1]" in settings.describe()
    assert "encryption=off" in Settings.from_env({**env, "KDUFLOW_SECRET_KEY": ""}).describe()
    assert "store=embedded:" in Settings.from_env({**env, "MONGO_URI": ""}).describe()


def test_redact_uri() -> None:
    assert redact_uri("mongodb://u:p@h1:1,h2:2/db?x=1") == "mongodb://u:***@h1:1,h2:2/db?x=1"
    assert redact_uri("mongodb://h/db") == "mongodb://h/db"
    assert redact_uri("mongodb+srv://u@h") == "mongodb+srv://u@h"


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_flags_mirror_variables_and_win(env: dict[str, str], tmp_path: Path) -> None:
    env.update(KDUFLOW_TASK_QUEUE="env-q", KDUFLOW_POLL_INTERVAL="9", KDUFLOW_MONGO_DB="envdb")
    args = parse(["--task-queue", "flag-q", "--state-dir", str(tmp_path / "flagstate"),
                  "--helm", str(ROOT / "tools" / "helm4" / "helm"), "--poll-interval", "1.5"])
    settings = Settings.from_args(args, env)
    assert settings.task_queue == "flag-q"
    assert settings.state_dir == tmp_path / "flagstate"
    assert settings.helm == str(ROOT / "tools" / "helm4" / "helm")
    assert settings.poll_interval == 1.5
    # Not given as a flag: the variable applies.
    assert settings.mongo_db == "envdb"
    assert Settings.from_args(parse([]), env).task_queue == "env-q"


def test_metrics_bind_accepts_ipv4_and_bracketed_ipv6(env: dict[str, str]) -> None:
    assert Settings.from_env({**env, "KDUFLOW_METRICS_BIND": "[::]:9464"}).metrics_bind == "[::]:9464"
    assert Settings.from_env({**env, "KDUFLOW_METRICS_BIND": " "}).metrics_bind == ""
    args = parse(["--metrics-bind", "127.0.0.1:9100", "--otel", "true"])
    settings = Settings.from_args(args, {**env, "KDUFLOW_METRICS_BIND": "0.0.0.0:1"})
    assert (settings.metrics_bind, settings.otel) == ("127.0.0.1:9100", True)
    with pytest.raises(ConfigError, match="^--metrics-bind='host:9100': must be an IP"):
        Settings.from_args(parse(["--metrics-bind", "host:9100"]), env)


def test_flag_errors_name_the_flag(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="^--poll-interval='0': must be between"):
        Settings.from_args(parse(["--poll-interval", "0"]), env)
    with pytest.raises(ConfigError, match="^--kubectl='nope'"):
        Settings.from_args(parse(["--kubectl", "nope"]), env)


def test_no_secret_on_argv(env: dict[str, str], tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert "--secret-key" not in parser._option_string_actions
    with pytest.raises(ConfigError, match="password must not be given on the command line") as err:
        Settings.from_args(parse(["--mongo-uri", "mongodb://u:hunter2@h/"]), env)
    assert "hunter2" not in str(err.value)
    assert Settings.from_args(parse(["--mongo-uri", "mongodb://h:27017/"]), env).mongo_uri == "mongodb://h:27017/"


def test_secret_key_file(env: dict[str, str], tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(f"k9:{KEY}\n")
    assert Settings.from_args(parse(["--secret-key-file", str(key_file)]), env).secret_key == f"k9:{KEY}"
    assert Settings.from_env({**env, "KDUFLOW_SECRET_KEY_FILE": str(key_file)}).secret_key == f"k9:{KEY}"
    with pytest.raises(ConfigError, match="--secret-key-file='/nonexistent': cannot read"):
        Settings.from_args(parse(["--secret-key-file", "/nonexistent"]), env)
    key_file.write_text("k9:short")
    with pytest.raises(ConfigError, match="^--secret-key-file=<redacted>"):
        Settings.from_args(parse(["--secret-key-file", str(key_file)]), env)


def test_temporal_connect_config_defaults_and_env(tmp_path: Path) -> None:
    no_file = {"TEMPORAL_CONFIG_FILE": str(tmp_path / "absent.toml")}
    assert temporal_connect_config(no_file) == {"target_host": "localhost:7233"}
    config = temporal_connect_config(
        {**no_file, "TEMPORAL_ADDRESS": "temporal:7233", "TEMPORAL_NAMESPACE": "osm",
         "TEMPORAL_API_KEY": "tok"}
    )
    assert config["target_host"] == "temporal:7233"
    assert config["namespace"] == "osm"
    assert config["api_key"] == "tok"
    assert config["tls"] is True  # an API key implies TLS


def test_temporal_connect_config_profiles(tmp_path: Path) -> None:
    toml = tmp_path / "temporal.toml"
    toml.write_text('[profile.default]\naddress = "a:1"\nnamespace = "n1"\n[profile.prod]\naddress = "p:2"\n')
    base = {"TEMPORAL_CONFIG_FILE": str(toml)}
    assert temporal_connect_config(base) == {"target_host": "a:1", "namespace": "n1"}
    assert temporal_connect_config({**base, "TEMPORAL_PROFILE": "prod"})["target_host"] == "p:2"
    assert temporal_connect_config(base, profile="prod")["target_host"] == "p:2"
    # A variable overrides the file.
    assert temporal_connect_config({**base, "TEMPORAL_ADDRESS": "env:3"})["target_host"] == "env:3"
    with pytest.raises(ConfigError, match="Profile 'nope' not found"):
        temporal_connect_config({**base, "TEMPORAL_PROFILE": "nope"})
    toml.write_text("garbage [[[")
    with pytest.raises(ConfigError, match="TOML parse error"):
        temporal_connect_config(base)


def test_direct_construction_coerces_paths(tmp_path: Path) -> None:
    settings = Settings(state_dir=str(tmp_path), charts_dir=str(tmp_path / "c"), poll_interval=2)  # type: ignore[arg-type]
    assert settings.state_dir == tmp_path and isinstance(settings.state_dir, Path)
    assert settings.charts_dir == tmp_path / "c"
    assert settings.poll_interval == 2.0 and isinstance(settings.poll_interval, float)
