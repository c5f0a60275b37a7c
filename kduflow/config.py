"""Worker settings: read once at start from the environment (and flags that mirror it), validated.

Every setting has an environment variable; ``worker.py`` adds command-line flags that mirror them
(a flag wins over its variable). A bad value raises :class:`ConfigError` naming the variable (or the
flag) and the bad value, so the worker stops at start instead of failing on the first activity.
Secret values (the encryption key, passwords inside URIs) are never echoed.

The Temporal connection is deliberately *not* part of :class:`Settings`: it comes from the SDK's
own environment configuration (``TEMPORAL_ADDRESS``, ``TEMPORAL_NAMESPACE``, ``TEMPORAL_API_KEY``,
``TEMPORAL_TLS_*``, ``TEMPORAL_PROFILE``), see :func:`temporal_connect_config`.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit, urlunsplit

from kduflow.secretbox import SecretBoxError, parse_key_setting

DEFAULT_TEMPORAL_ADDRESS = "localhost:7233"
POLL_INTERVAL_MIN = 0.5
POLL_INTERVAL_MAX = 3600.0
HEALTH_INTERVAL_MIN = 1.0
HEALTH_INTERVAL_MAX = 300.0


class ConfigError(ValueError):
    """A setting is invalid; the message names the variable (or flag) and the bad value."""


def default_state_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """``$XDG_STATE_HOME/kduflow``, else ``~/.local/state/kduflow`` (XDG base directory spec)."""
    xdg = environ.get("XDG_STATE_HOME", "")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "kduflow"
    home = environ.get("HOME") or os.path.expanduser("~")
    return Path(home) / ".local" / "state" / "kduflow"


@dataclass(frozen=True, repr=False)
class Settings:
    """Worker configuration. Build it with :meth:`from_env` / :meth:`from_args` to get validation.

    ``repr`` redacts the Mongo password and the secret keys, like :meth:`describe`.
    """

    helm: str = "helm"
    kubectl: str = "kubectl"
    state_dir: Path = field(default_factory=default_state_dir)
    charts_dir: Path | None = None
    mongo_uri: str = ""
    mongo_db: str = "osm"
    task_queue: str = "kduflow"
    #: Task queue of the per-release lock workflows, shared by every kduflow worker of a namespace
    #: whatever queue its operations use: a lock must stay reachable after any one queue loses
    #: its workers.
    lock_task_queue: str = "kduflow-locks"
    secret_key: str = ""
    poll_interval: float = 5.0
    stable_repo_url: str = ""
    #: Commands a kubeconfig's ``exec`` credential plugin may name (bare names or absolute paths).
    exec_plugins: tuple[str, ...] = ()
    #: Whether a kubeconfig may route the cluster's traffic through its ``proxy-url``.
    kubeconfig_proxy: bool = False
    #: Collections a workflow's ``db_dict`` may write status into.
    status_collections: tuple[str, ...] = ("nsrs",)
    #: URLs, hosts and host globs workflow input may name besides the registered repositories.
    url_allowlist: tuple[str, ...] = ()
    #: Networks (CIDR) that URLs from workflow input may resolve into although they are internal.
    private_networks: tuple[str, ...] = ()
    #: Seconds after which a pending-* revision that no known helm process is writing counts as
    #: stuck and is recovered (its own helm timeout is unknown to kduflow).
    pending_stuck_after: int = 1800
    #: Seconds running activities get to finish when the worker stops; then they are cancelled as a
    #: worker shutdown, which leaves helm running for the next attempt to adopt.
    graceful_shutdown: float = 30.0
    #: ``address:port`` of the Prometheus endpoint (``/metrics``) of the SDK runtime; "" serves none.
    metrics_bind: str = ""
    #: Trace workflows and activities with OpenTelemetry (the ``otel`` extra must be installed).
    otel: bool = False
    #: File the worker rewrites with the outcome of its health checks (``kduflow.health``); None: none.
    health_file: Path | None = None
    #: Seconds between two health checks (and writes of ``health_file``).
    health_interval: float = 10.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ, **overrides: Any) -> Settings:
        """Settings from ``environ``; keyword ``overrides`` (field names) win over the variables.

        ``helm``/``kubectl`` are resolved to absolute paths (bare names through ``environ["PATH"]``),
        ``state_dir`` is created (mode 0700) when missing.

        Raises:
            ConfigError: naming the variable and the bad value (never a secret's value).
        """
        return _build(environ, overrides, {name: name for name in overrides})

    @classmethod
    def from_args(cls, namespace: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> Settings:
        """Settings from the flags of :func:`add_arguments` (a flag given wins over its variable).

        Raises:
            ConfigError: naming the flag or variable and the bad value.
        """
        overrides: dict[str, Any] = {}
        labels: dict[str, str] = {}
        for spec in _SPECS:
            if spec.flag is None:
                continue
            value = getattr(namespace, spec.name, None)
            if value is not None:
                overrides[spec.name] = value
                labels[spec.name] = spec.flag
        key_file = getattr(namespace, "secret_key_file", None)
        if key_file is not None:
            overrides["secret_key"] = _read_key_file(key_file, "--secret-key-file")
            labels["secret_key"] = "--secret-key-file"
        return _build(environ, overrides, labels)

    def __post_init__(self) -> None:
        # Direct construction (tests, embedding) may pass strings; keep the declared types.
        if not isinstance(self.state_dir, Path):
            object.__setattr__(self, "state_dir", Path(self.state_dir))
        if self.charts_dir is not None and not isinstance(self.charts_dir, Path):
            object.__setattr__(self, "charts_dir", Path(self.charts_dir))
        if self.health_file is not None and not isinstance(self.health_file, Path):
            object.__setattr__(self, "health_file", Path(self.health_file))
        object.__setattr__(self, "health_interval", float(self.health_interval))
        object.__setattr__(self, "poll_interval", float(self.poll_interval))
        object.__setattr__(self, "graceful_shutdown", float(self.graceful_shutdown))
        for name in ("exec_plugins", "status_collections", "url_allowlist", "private_networks"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    def __repr__(self) -> str:
        shown = {f.name: getattr(self, f.name) for f in fields(self)}
        shown["mongo_uri"] = redact_uri(self.mongo_uri)
        shown["stable_repo_url"] = redact_uri(self.stable_repo_url)
        shown["secret_key"] = "<redacted>" if self.secret_key else ""
        return f"Settings({', '.join(f'{name}={value!r}' for name, value in shown.items())})"

    def describe(self) -> str:
        """One line for the startup log; the Mongo password and the secret keys are redacted."""
        if self.secret_key:
            try:
                key_ids = ",".join(key_id for key_id, _ in parse_key_setting(self.secret_key))
                secret = f"keys[{key_ids}]"
            except SecretBoxError:
                secret = "invalid"
        else:
            secret = "off"
        store = redact_uri(self.mongo_uri) if self.mongo_uri else f"embedded:{self.state_dir / 'store'}"
        parts = [
            f"helm={self.helm}",
            f"kubectl={self.kubectl}",
            f"state_dir={self.state_dir}",
            f"charts_dir={self.charts_dir or '-'}",
            f"store={store}",
            f"mongo_db={self.mongo_db}",
            f"task_queue={self.task_queue}",
            f"lock_task_queue={self.lock_task_queue}",
            f"encryption={secret}",
            f"poll_interval={self.poll_interval:g}s",
            f"stable_repo_url={redact_uri(self.stable_repo_url) if self.stable_repo_url else '-'}",
            f"exec_plugins={','.join(self.exec_plugins) or '-'}",
            f"kubeconfig_proxy={'allowed' if self.kubeconfig_proxy else 'refused'}",
            f"status_collections={','.join(self.status_collections)}",
            f"url_allowlist={','.join(self.url_allowlist) or '-'}",
            f"private_networks={','.join(self.private_networks) or '-'}",
            f"pending_stuck_after={self.pending_stuck_after}s",
            f"graceful_shutdown={self.graceful_shutdown:g}s",
            f"metrics={'http://' + self.metrics_bind + '/metrics' if self.metrics_bind else 'off'}",
            f"otel={'on' if self.otel else 'off'}",
            f"health={f'{self.health_file} every {self.health_interval:g}s' if self.health_file else 'off'}",
        ]
        return " ".join(parts)


def redact_uri(uri: str) -> str:
    """``scheme://user:***@host/...``: the password of a URI's userinfo replaced by ``***``."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "<unparseable URI>"
    if parts.password is None:
        return uri
    userinfo = f"{parts.username or ''}:***"
    host = parts.netloc.rpartition("@")[2]
    redacted = SplitResult(parts.scheme, f"{userinfo}@{host}", parts.path, parts.query, parts.fragment)
    return urlunsplit(redacted)


# ---------------------------------------------------------------------------------------------
# Specification of every setting: variable, flag, parser/validator.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Spec:
    name: str  # Settings field
    env: str
    flag: str | None  # None: no flag (secrets must not go on argv)
    help: str
    secret: bool = False


_SPECS: tuple[_Spec, ...] = (
    _Spec("helm", "KDUFLOW_HELM", "--helm", "helm binary: path, or name looked up on PATH"),
    _Spec("kubectl", "KDUFLOW_KUBECTL", "--kubectl", "kubectl binary: path, or name looked up on PATH"),
    _Spec("state_dir", "KDUFLOW_STATE_DIR", "--state-dir",
          "local state: per-cluster helm homes, embedded store (default $XDG_STATE_HOME/kduflow)"),
    _Spec("charts_dir", "KDUFLOW_CHARTS_DIR", "--charts-dir",
          "directory of local charts for kdu_model names"),
    _Spec("mongo_uri", "MONGO_URI", "--mongo-uri",
          "MongoDB URI (mongodb:// or mongodb+srv://); empty: embedded store under the state dir. "
          "A URI with a password belongs in MONGO_URI, not on the command line"),
    _Spec("mongo_db", "KDUFLOW_MONGO_DB", "--mongo-db", "MongoDB database name (default osm)"),
    _Spec("task_queue", "KDUFLOW_TASK_QUEUE", "--task-queue", "Temporal task queue (default kduflow)"),
    _Spec("lock_task_queue", "KDUFLOW_LOCK_TASK_QUEUE", "--lock-task-queue",
          "task queue of the per-release lock workflows; every kduflow worker of the Temporal "
          "namespace also polls it, whatever its own task queue (default kduflow-locks)"),
    _Spec("secret_key", "KDUFLOW_SECRET_KEY", None,
          "AES-256-GCM keys '<key-id>:<base64 32 bytes>[,...]'; first encrypts, all decrypt", secret=True),
    _Spec("poll_interval", "KDUFLOW_POLL_INTERVAL", "--poll-interval",
          f"status poll interval in seconds [{POLL_INTERVAL_MIN:g}, {POLL_INTERVAL_MAX:g}] (default 5)"),
    _Spec("stable_repo_url", "KDUFLOW_STABLE_REPO_URL", "--stable-repo-url",
          "URL of the 'stable' chart repository added to every cluster (empty: none)"),
    _Spec("exec_plugins", "KDUFLOW_EXEC_PLUGINS", "--exec-plugins",
          "comma-separated commands a kubeconfig's exec credential plugin may run, as bare names on "
          "PATH or absolute paths (e.g. aws,kubelogin); shells and interpreters are refused (default: none)"),
    _Spec("kubeconfig_proxy", "KDUFLOW_ALLOW_KUBECONFIG_PROXY", "--allow-kubeconfig-proxy",
          "true to let kubeconfigs use a cluster proxy-url (default false)"),
    _Spec("status_collections", "KDUFLOW_STATUS_COLLECTIONS", "--status-collections",
          "comma-separated MongoDB collections db_dict may write status into (default nsrs)"),
    _Spec("url_allowlist", "KDUFLOW_URL_ALLOWLIST", "--url-allowlist",
          "comma-separated URL prefixes (https://host[:port]/path, oci://host[:port]/path), hosts or "
          "*.domain globs that workflow input may name besides registered repositories (default: none)"),
    _Spec("pending_stuck_after", "KDUFLOW_PENDING_STUCK_AFTER", "--pending-stuck-after",
          "seconds after which a pending-* release revision that no known helm process is writing "
          "counts as stuck and is recovered, plus a 120 s margin (default 1800)"),
    _Spec("graceful_shutdown", "KDUFLOW_GRACEFUL_SHUTDOWN", "--graceful-shutdown",
          "seconds running activities get to finish when the worker stops (default 30); helm "
          "processes still running then are left to finish and their outcome is adopted by a retry"),
    _Spec("private_networks", "KDUFLOW_ALLOW_PRIVATE_NETWORKS", "--allow-private-networks",
          "comma-separated CIDRs (e.g. 10.20.0.0/16) that allowlisted URLs may resolve into although "
          "they are loopback, link-local, private or unspecified (default: none)"),
    _Spec("metrics_bind", "KDUFLOW_METRICS_BIND", "--metrics-bind",
          "IP address and port on which the worker serves Prometheus metrics at /metrics, e.g. 0.0.0.0:9464 "
          "(default: none served)"),
    _Spec("otel", "KDUFLOW_OTEL", "--otel",
          "true to trace workflows and activities with OpenTelemetry (needs the kduflow[otel] extra; "
          "spans go to the OTLP exporter configured by the standard OTEL_EXPORTER_OTLP_* variables) "
          "(default false)"),
    _Spec("health_file", "KDUFLOW_HEALTH_FILE", "--health-file",
          "absolute path of a file the worker rewrites with the outcome of its health checks (worker "
          "running, Temporal and the store answering); `python -m kduflow.health` reads it (default: none)"),
    _Spec("health_interval", "KDUFLOW_HEALTH_INTERVAL", "--health-interval",
          f"seconds between health checks [{HEALTH_INTERVAL_MIN:g}, {HEALTH_INTERVAL_MAX:g}] (default 10); "
          "the file counts as stale after three intervals"),
)
_SPEC_BY_NAME = {spec.name: spec for spec in _SPECS}
SECRET_KEY_FILE_ENV = "KDUFLOW_SECRET_KEY_FILE"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per setting (defaults ``None`` so an absent flag falls back to the variable).

    The secret key has no value flag (argv is visible in ``ps``): only ``--secret-key-file``.
    """
    group = parser.add_argument_group("kduflow settings (each flag overrides its environment variable)")
    for spec in _SPECS:
        if spec.flag is None:
            continue
        kwargs: dict[str, Any] = {"dest": spec.name, "default": None, "help": f"{spec.help} [env {spec.env}]"}
        if spec.name in ("poll_interval", "graceful_shutdown", "pending_stuck_after", "health_interval"):
            kwargs["type"] = str  # validated by _build so the error names the flag and the value
        group.add_argument(spec.flag, **kwargs)
    group.add_argument("--secret-key-file", dest="secret_key_file", default=None,
                       help=f"file holding the KDUFLOW_SECRET_KEY value [env {SECRET_KEY_FILE_ENV}]")


def temporal_connect_config(
    environ: Mapping[str, str] = os.environ, profile: str | None = None
) -> dict[str, Any]:
    """Keyword arguments for ``temporalio.client.Client.connect`` from Temporal's own variables.

    Wraps ``temporalio.envconfig.ClientConfig.load_client_connect_config`` (TEMPORAL_ADDRESS,
    TEMPORAL_NAMESPACE, TEMPORAL_API_KEY, TEMPORAL_TLS_*, TEMPORAL_PROFILE, TEMPORAL_CONFIG_FILE),
    reading ``environ`` instead of the process environment; ``target_host`` defaults to
    ``localhost:7233``.

    Raises:
        ConfigError: the Temporal configuration (variables or config file) is invalid.
    """
    from temporalio.envconfig import ClientConfig

    try:
        config: dict[str, Any] = dict(
            ClientConfig.load_client_connect_config(profile=profile, override_env_vars=dict(environ))
        )
    except Exception as err:  # the SDK raises RuntimeError/ValueError/TOML errors from its Rust core
        raise ConfigError(f"Temporal client configuration (TEMPORAL_* / config file): {err}") from None
    config.setdefault("target_host", DEFAULT_TEMPORAL_ADDRESS)
    return config


# ---------------------------------------------------------------------------------------------
# Validation.
# ---------------------------------------------------------------------------------------------


def _build(environ: Mapping[str, str], overrides: Mapping[str, Any], labels: Mapping[str, str]) -> Settings:
    unknown = set(overrides) - set(_SPEC_BY_NAME)
    if unknown:
        raise TypeError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    values: dict[str, Any] = {}
    for spec in _SPECS:
        if spec.name in overrides:
            raw: Any = overrides[spec.name]
            label = labels.get(spec.name, spec.name)
        elif spec.env in environ:
            raw = environ[spec.env]
            label = spec.env
        elif spec.name == "secret_key" and environ.get(SECRET_KEY_FILE_ENV):
            raw = _read_key_file(environ[SECRET_KEY_FILE_ENV], SECRET_KEY_FILE_ENV)
            label = SECRET_KEY_FILE_ENV
        else:
            continue
        values[spec.name] = _VALIDATORS[spec.name](raw, label, environ)
    if "state_dir" not in values:
        default_dir = default_state_dir(environ)
        values["state_dir"] = _validate_state_dir(default_dir, "KDUFLOW_STATE_DIR (default)", environ)
    for name in ("helm", "kubectl"):
        if name not in values:
            default = next(f.default for f in fields(Settings) if f.name == name)
            values[name] = _VALIDATORS[name](default, f"{_SPEC_BY_NAME[name].env} (default)", environ)
    return Settings(**values)


def _read_key_file(path: str, label: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{label}={path!r}: cannot read the key file ({err.__class__.__name__})") from None


def resolve_executable(raw: Any, label: str, environ: Mapping[str, str]) -> str:
    """The absolute path of an executable given as a path (``~`` expanded) or a name on
    ``environ["PATH"]``.

    Raises:
        ConfigError: naming ``label`` and the value.
    """
    value = str(raw).strip()
    if not value:
        raise ConfigError(f"{label}: empty; give a path or a name on PATH")
    if os.sep in value:
        path = os.path.abspath(os.path.expanduser(value))
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            raise ConfigError(f"{label}={value!r}: not an executable file")
        return path
    found = shutil.which(value, path=environ.get("PATH", os.defpath))
    if found is None:
        raise ConfigError(f"{label}={value!r}: no executable of that name on PATH")
    return os.path.abspath(found)


def _validate_state_dir(raw: Any, label: str, environ: Mapping[str, str]) -> Path:
    value = str(raw).strip()
    if not value:
        raise ConfigError(f"{label}: empty; give a directory path")
    path = Path(os.path.abspath(os.path.expanduser(value)))
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"{label}={value!r}: cannot create the directory ({err.strerror})") from None
    if not path.is_dir():
        raise ConfigError(f"{label}={value!r}: not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"{label}={value!r}: directory is not writable")
    return path


def _validate_charts_dir(raw: Any, label: str, environ: Mapping[str, str]) -> Path | None:
    if raw is None or str(raw).strip() == "":
        return None
    value = str(raw).strip()
    path = Path(os.path.abspath(os.path.expanduser(value)))
    if not path.is_dir():
        raise ConfigError(f"{label}={value!r}: not an existing directory")
    return path


def _validate_mongo_uri(raw: Any, label: str, environ: Mapping[str, str]) -> str:
    value = str(raw).strip()
    if not value:
        return ""
    if not value.startswith(("mongodb://", "mongodb+srv://")):
        raise ConfigError(f"{label}={redact_uri(value)!r}: must start with mongodb:// or mongodb+srv://")
    try:
        parts = urlsplit(value)
    except ValueError as err:
        raise ConfigError(f"{label}={redact_uri(value)!r}: malformed URI ({err})") from None
    if not parts.netloc.rpartition("@")[2]:
        raise ConfigError(f"{label}={redact_uri(value)!r}: no host")
    if label.startswith("--") and parts.password is not None:
        # argv is readable by every local user (ps, /proc); N2VC put repository passwords there.
        raise ConfigError(f"{label}={redact_uri(value)!r}: a password must not be given on the command line; "
                          "set MONGO_URI in the environment instead")
    return value


_BAD_DB_CHARS = re.compile(r'[/\\. "$\x00]')


def _validate_mongo_db(raw: Any, label: str, environ: Mapping[str, str]) -> str:
    value = str(raw).strip()
    if not value or len(value) > 63 or _BAD_DB_CHARS.search(value):
        raise ConfigError(f"{label}={value!r}: not a valid MongoDB database name "
                          "(1-63 characters, none of / \\ . space \" $)")
    return value


def _validate_task_queue(raw: Any, label: str, environ: Mapping[str, str]) -> str:
    value = str(raw)
    if not value or any(ch.isspace() for ch in value):
        raise ConfigError(f"{label}={value!r}: must be non-empty and contain no whitespace")
    return value


def _validate_secret_key(raw: Any, label: str, environ: Mapping[str, str]) -> str:
    value = str(raw).strip()
    if not value:
        return ""
    try:
        parse_key_setting(value)
    except SecretBoxError as err:
        # SecretBoxError messages carry key ids only, never key material.
        raise ConfigError(
            f"{label}=<redacted>: {err}; expected '<key-id>:<base64 of 32 bytes>[,...]'"
        ) from None
    return value


def _seconds_between(low: float, high: float) -> Callable[[Any, str, Mapping[str, str]], float]:
    """A validator of a number of seconds in ``[low, high]``."""

    def validate(raw: Any, label: str, environ: Mapping[str, str]) -> float:
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{label}={raw!r}: not a number of seconds") from None
        if isinstance(raw, bool) or not math.isfinite(value) or not low <= value <= high:
            raise ConfigError(f"{label}={raw!r}: must be between {low:g} and {high:g} seconds")
        return value

    return validate


def _validate_url(raw: Any, label: str, environ: Mapping[str, str]) -> str:
    value = str(raw).strip()
    if not value:
        return ""
    try:
        parts = urlsplit(value)
    except ValueError:
        raise ConfigError(f"{label}={redact_uri(value)!r}: malformed URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{label}={redact_uri(value)!r}: must be an http:// or https:// URL with a host")
    return value


#: Commands that would hand a kubeconfig author a general-purpose interpreter.
_INTERPRETERS = frozenset({
    "sh", "bash", "dash", "zsh", "ksh", "mksh", "csh", "tcsh", "fish", "ash", "busybox", "env",
    "python", "python3", "perl", "ruby", "node", "nodejs", "php", "lua", "tclsh", "awk", "gawk",
    "xargs", "sudo", "su", "nohup", "timeout", "nice", "script", "expect", "osascript", "pwsh",
})  # fmt: skip
_COMMAND_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
_HOST_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?"
_ALLOW_HOST = re.compile(rf"(\*\.)?{_HOST_LABEL}(\.{_HOST_LABEL})*")


def _split_list(raw: Any) -> list[str]:
    if isinstance(raw, str):
        return [item.strip() for item in raw.split(",") if item.strip()]
    return [str(item).strip() for item in raw if str(item).strip()]


def _validate_exec_plugins(raw: Any, label: str, environ: Mapping[str, str]) -> tuple[str, ...]:
    out: list[str] = []
    for item in _split_list(raw):
        base = os.path.basename(item)
        if os.sep in item:
            if not os.path.isabs(item) or os.path.normpath(item) != item:
                raise ConfigError(f"{label}: {item!r} must be an absolute, normalised path or a bare name")
        elif not _COMMAND_NAME.fullmatch(item):
            raise ConfigError(f"{label}: {item!r} is not a command name")
        stem = re.sub(r"[0-9.]+$", "", base)
        if base in _INTERPRETERS or stem in _INTERPRETERS:
            raise ConfigError(f"{label}: {item!r} is a shell or interpreter; allow the plugin binary itself")
        out.append(item)
    return tuple(dict.fromkeys(out))


def _validate_bool(raw: Any, label: str, environ: Mapping[str, str]) -> bool:
    if isinstance(raw, bool):
        return raw
    value = str(raw).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise ConfigError(f"{label}={raw!r}: must be true or false")


def _validate_collections(raw: Any, label: str, environ: Mapping[str, str]) -> tuple[str, ...]:
    items = _split_list(raw)
    if not items:
        raise ConfigError(f"{label}: give at least one collection name")
    for item in items:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]{0,63}", item) or item.startswith("system"):
            raise ConfigError(f"{label}: {item!r} is not a plain collection name")
        if item in ("k8sclusters", "k8srepos"):
            raise ConfigError(f"{label}: {item!r} holds credentials; status must never be written there")
    return tuple(dict.fromkeys(items))


def _validate_url_allowlist(raw: Any, label: str, environ: Mapping[str, str]) -> tuple[str, ...]:
    out: list[str] = []
    for item in _split_list(raw):
        if "://" in item:
            try:
                parts = urlsplit(item)
                parts.port  # noqa: B018 - raises ValueError on a bad port
            except ValueError:
                raise ConfigError(f"{label}: {redact_uri(item)!r} is not a URL") from None
            if parts.scheme not in ("http", "https", "oci") or not parts.hostname:
                raise ConfigError(
                    f"{label}: {redact_uri(item)!r} must be an http, https or oci URL with a host"
                )
            if "@" in parts.netloc or parts.query or parts.fragment:
                raise ConfigError(
                    f"{label}: {redact_uri(item)!r} must not carry credentials, a query or a fragment"
                )
        elif not _ALLOW_HOST.fullmatch(item):
            raise ConfigError(f"{label}: {item!r} is neither a URL nor a host name or *.domain glob")
        out.append(item)
    return tuple(dict.fromkeys(out))


def _validate_networks(raw: Any, label: str, environ: Mapping[str, str]) -> tuple[str, ...]:
    import ipaddress

    out: list[str] = []
    for item in _split_list(raw):
        try:
            out.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise ConfigError(f"{label}: {item!r} is not a network in CIDR notation") from None
    return tuple(dict.fromkeys(out))


def _validate_stuck_after(raw: Any, label: str, environ: Mapping[str, str]) -> int:
    text = str(raw).strip()
    if isinstance(raw, bool) or not text.isdigit() or not 60 <= int(text) <= 86_400:
        raise ConfigError(f"{label}={raw!r}: a whole number of seconds between 60 and 86400")
    return int(text)


def _validate_graceful_shutdown(raw: Any, label: str, environ: Mapping[str, str]) -> float:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{label}={raw!r}: not a number of seconds") from None
    if isinstance(raw, bool) or not math.isfinite(value) or not 0 <= value <= 86_400:
        raise ConfigError(f"{label}={raw!r}: must be between 0 and 86400 seconds")
    return value


def _validate_bind(raw: Any, label: str, environ: Mapping[str, str]) -> str:
    """``address:port`` (``[v6]:port`` for IPv6), an IP address as the SDK's exporter binds only those."""
    import ipaddress

    value = str(raw).strip()
    if not value:
        return ""
    host, sep, port = value.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        address = ipaddress.ip_address(host[1:-1] if bracketed else host)
    except ValueError:
        address = None
    if not sep or address is None or bracketed != (address.version == 6):
        raise ConfigError(
            f"{label}={value!r}: must be an IP address and a port, e.g. 0.0.0.0:9464, 127.0.0.1:9464 "
            "or [::]:9464"
        )
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"{label}={value!r}: the port must be a number between 1 and 65535")
    return value


def _validate_health_file(raw: Any, label: str, environ: Mapping[str, str]) -> Path | None:
    value = "" if raw is None else str(raw).strip()
    if not value:
        return None
    path = Path(value)
    # Absolute: the probe (a container's health check) may run in another working directory.
    if not path.is_absolute():
        raise ConfigError(f"{label}={value!r}: must be an absolute path")
    if path.is_dir():
        raise ConfigError(f"{label}={value!r}: is a directory, not a file")
    if path.parent.exists() and not path.parent.is_dir():
        raise ConfigError(f"{label}={value!r}: {path.parent} is not a directory")
    return path


_VALIDATORS: dict[str, Callable[[Any, str, Mapping[str, str]], Any]] = {
    "helm": resolve_executable,
    "kubectl": resolve_executable,
    "state_dir": _validate_state_dir,
    "charts_dir": _validate_charts_dir,
    "mongo_uri": _validate_mongo_uri,
    "mongo_db": _validate_mongo_db,
    "task_queue": _validate_task_queue,
    "lock_task_queue": _validate_task_queue,
    "secret_key": _validate_secret_key,
    "poll_interval": _seconds_between(POLL_INTERVAL_MIN, POLL_INTERVAL_MAX),
    "stable_repo_url": _validate_url,
    "exec_plugins": _validate_exec_plugins,
    "kubeconfig_proxy": _validate_bool,
    "status_collections": _validate_collections,
    "url_allowlist": _validate_url_allowlist,
    "private_networks": _validate_networks,
    "pending_stuck_after": _validate_stuck_after,
    "graceful_shutdown": _validate_graceful_shutdown,
    "metrics_bind": _validate_bind,
    "otel": _validate_bool,
    "health_file": _validate_health_file,
    "health_interval": _seconds_between(HEALTH_INTERVAL_MIN, HEALTH_INTERVAL_MAX),
}
