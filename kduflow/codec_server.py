"""kduflow codec server: Temporal's remote codec protocol over kduflow's payload codec.

With ``KDUFLOW_SECRET_KEY`` set, every payload in kduflow's histories is AES-256-GCM ciphertext
(:mod:`kduflow.codec`), so the ``temporal`` CLI and the Web UI show ciphertext. This server gives
them the workers' codec over HTTP: ``POST .../encode`` and ``POST .../decode`` take and return a
``temporal.api.common.v1.Payloads`` message in its proto3 JSON form
(``{"payloads": [{"metadata": {"encoding": "<base64>"}, "data": "<base64>"}]}``); only the last
path segment selects the operation, so the endpoints may be mounted under any prefix.

Whoever can call it can decrypt histories, so every request needs a credential: a bearer token
(``KDUFLOW_CODEC_TOKEN``, for ``temporal --codec-auth``) or a client certificate signed by
``KDUFLOW_CODEC_CLIENT_CA`` (mTLS, e.g. a browser certificate for the Web UI). Without either the
server refuses to start, except with ``KDUFLOW_CODEC_INSECURE_NO_AUTH=true`` on a loopback address.
Cross-origin requests (the Web UI) are answered only for the origins in
``KDUFLOW_CODEC_CORS_ORIGINS``. Payload contents and the token are never logged or echoed.

Run it as ``kduflow-codec-server`` or ``python -m kduflow.codec_server`` (see ``--help`` and
``docs/CODEC_SERVER.md``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import http.server
import ipaddress
import json
import logging
import os
import signal
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from google.protobuf import json_format
from temporalio.api.common.v1 import Payloads
from temporalio.converter import PayloadCodec

from activities.secretbox import SecretBox, parse_key_setting
from kduflow.codec import data_converter
from kduflow.config import (
    SECRET_KEY_FILE_ENV,
    ConfigError,
    _read_key_file,
    _split_list,
    _validate_bool,
    _validate_secret_key,
)

log = logging.getLogger("kduflow.codec_server")

DEFAULT_BIND = "127.0.0.1:8888"
DEFAULT_MAX_BODY = 8 * 1024 * 1024
MAX_BODY_MIN = 1024
MAX_BODY_MAX = 256 * 1024 * 1024
TOKEN_MIN_CHARS = 16
#: Connections served at once; further connections are closed at once instead of queueing threads.
MAX_CONNECTIONS = 64
#: Seconds a connection may stay silent (TLS handshake, request, keep-alive) before it is closed.
IO_TIMEOUT = 30.0
#: What the Web UI and the CLI send: the namespace, the JSON content type, the access token.
CORS_ALLOW_HEADERS = "X-Namespace, Content-Type, Authorization"
TOKEN_FILE_ENV = "KDUFLOW_CODEC_TOKEN_FILE"


@dataclass(frozen=True, repr=False)
class CodecServerSettings:
    """Codec server configuration. Build it with :meth:`from_env` / :meth:`from_args` to get validation.

    ``repr`` shows key ids and whether a token is set, never the keys or the token.
    """

    secret_key: str
    token: str = ""
    host: str = "127.0.0.1"
    port: int = 8888
    #: Origins (``scheme://host[:port]``) whose cross-origin requests are answered, e.g. the Web UI's.
    cors_origins: tuple[str, ...] = ()
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: CA whose client certificates authorise a request (mTLS); needs ``tls_cert``.
    client_ca: Path | None = None
    max_body: int = DEFAULT_MAX_BODY
    #: No credential at all; only accepted for a loopback ``host``.
    insecure_no_auth: bool = False
    #: Variable or flag each value came from, for error messages found after validation (TLS files).
    labels: Mapping[str, str] = field(default_factory=dict, compare=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ, **overrides: Any) -> CodecServerSettings:
        """Settings from ``environ``; keyword ``overrides`` (field names) win over the variables.

        Raises:
            ConfigError: naming the variable and the bad value (never a key's or the token's value).
        """
        return _build(environ, overrides, {name: name for name in overrides})

    @classmethod
    def from_args(
        cls, namespace: argparse.Namespace, environ: Mapping[str, str] = os.environ
    ) -> CodecServerSettings:
        """Settings from the flags of :func:`add_arguments` (a flag given wins over its variable).

        Raises:
            ConfigError: naming the flag or variable and the bad value.
        """
        overrides: dict[str, Any] = {}
        labels: dict[str, str] = {}
        for spec in _SPECS:
            value = getattr(namespace, spec.name, None) if spec.flag else None
            if value is not None:
                overrides[spec.name] = value
                labels[spec.name] = spec.flag or spec.name
        for name, dest, flag in (("secret_key", "secret_key_file", "--secret-key-file"),
                                 ("token", "token_file", "--token-file")):
            path = getattr(namespace, dest, None)
            if path is not None:
                overrides[name] = _read_key_file(path, flag)
                labels[name] = flag
        return _build(environ, overrides, labels)

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    def __repr__(self) -> str:
        shown = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "labels"}
        shown["secret_key"] = "<redacted>"
        shown["token"] = "<redacted>" if self.token else ""
        return f"CodecServerSettings({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    def describe(self) -> str:
        """One line for the startup log: key ids and which credentials are accepted, no secret."""
        key_ids = ",".join(key_id for key_id, _ in parse_key_setting(self.secret_key))
        auth = [name for name, on in (("bearer-token", bool(self.token)),
                                      ("client-certificate", self.client_ca is not None)) if on]
        return " ".join([
            f"keys[{key_ids}]",
            f"auth={'+'.join(auth) if auth else 'NONE (insecure, loopback only)'}",
            f"tls={'on' if self.tls else 'off'}",
            f"cors_origins={','.join(self.cors_origins) or '-'}",
            f"max_body={self.max_body}",
        ])


# ---------------------------------------------------------------------------------------------
# Settings: variables, flags, validation (conventions of kduflow.config).
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Spec:
    name: str  # CodecServerSettings field ("bind" sets host and port)
    env: str
    flag: str | None  # None: no value flag (secrets must not go on argv)
    help: str


_SPECS: tuple[_Spec, ...] = (
    _Spec("secret_key", "KDUFLOW_SECRET_KEY", None,
          "the workers' AES-256-GCM keys '<key-id>:<base64 32 bytes>[,...]' (required; or "
          f"{SECRET_KEY_FILE_ENV} / --secret-key-file)"),
    _Spec("token", "KDUFLOW_CODEC_TOKEN", None,
          f"bearer token every request must carry (Authorization: Bearer <token>), at least "
          f"{TOKEN_MIN_CHARS} characters (or {TOKEN_FILE_ENV} / --token-file)"),
    _Spec("bind", "KDUFLOW_CODEC_BIND", "--bind", f"host:port to listen on (default {DEFAULT_BIND})"),
    _Spec("cors_origins", "KDUFLOW_CODEC_CORS_ORIGINS", "--cors-origins",
          "comma-separated origins allowed to call from a browser, e.g. the Web UI's "
          "http://localhost:8233 (default: none)"),
    _Spec("tls_cert", "KDUFLOW_CODEC_TLS_CERT", "--tls-cert",
          "server certificate (PEM, chain allowed): serve HTTPS (default: plain HTTP)"),
    _Spec("tls_key", "KDUFLOW_CODEC_TLS_KEY", "--tls-key", "private key of the server certificate (PEM)"),
    _Spec("client_ca", "KDUFLOW_CODEC_CLIENT_CA", "--client-ca",
          "CA certificates (PEM): a client certificate they signed authorises a request (mTLS)"),
    _Spec("max_body", "KDUFLOW_CODEC_MAX_BODY", "--max-body",
          f"largest request body in bytes [{MAX_BODY_MIN}, {MAX_BODY_MAX}] (default {DEFAULT_MAX_BODY})"),
    _Spec("insecure_no_auth", "KDUFLOW_CODEC_INSECURE_NO_AUTH", "--insecure-no-auth",
          "true to serve without any credential; only on a loopback address, for development"),
)
_SPEC_BY_NAME = {spec.name: spec for spec in _SPECS}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per setting (defaults ``None`` so an absent flag falls back to the variable)."""
    group = parser.add_argument_group("codec server settings (each flag overrides its environment variable)")
    for spec in _SPECS:
        if spec.flag is not None:
            group.add_argument(spec.flag, dest=spec.name, default=None, help=f"{spec.help} [env {spec.env}]")
    group.add_argument("--secret-key-file", dest="secret_key_file", default=None,
                       help=f"file holding the KDUFLOW_SECRET_KEY value [env {SECRET_KEY_FILE_ENV}]")
    group.add_argument("--token-file", dest="token_file", default=None,
                       help=f"file holding the KDUFLOW_CODEC_TOKEN value [env {TOKEN_FILE_ENV}]")


def _build(
    environ: Mapping[str, str], overrides: Mapping[str, Any], labels: Mapping[str, str]
) -> CodecServerSettings:
    unknown = set(overrides) - set(_SPEC_BY_NAME)
    if unknown:
        raise TypeError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    values: dict[str, Any] = {}
    used: dict[str, str] = {}
    file_envs = {"secret_key": SECRET_KEY_FILE_ENV, "token": TOKEN_FILE_ENV}
    for spec in _SPECS:
        if spec.name in overrides:
            raw: Any = overrides[spec.name]
            label = labels.get(spec.name, spec.name)
        elif spec.env in environ:
            raw, label = environ[spec.env], spec.env
        elif spec.name in file_envs and environ.get(file_envs[spec.name]):
            label = file_envs[spec.name]
            raw = _read_key_file(environ[label], label)
        else:
            continue
        used[spec.name] = label
        values.update(_VALIDATORS[spec.name](raw, label))
    if "bind" not in used:
        values.update(_validate_bind(DEFAULT_BIND, "KDUFLOW_CODEC_BIND (default)"))
        used["bind"] = "KDUFLOW_CODEC_BIND"

    def name(setting: str) -> str:
        return used.get(setting, _SPEC_BY_NAME[setting].env)

    if not values.get("secret_key"):
        raise ConfigError(
            f"{name('secret_key')} is not set: the codec server has no key to encode or decode with; give "
            f"it the workers' KDUFLOW_SECRET_KEY value (or {SECRET_KEY_FILE_ENV})"
        )
    if (values.get("tls_cert") is None) != (values.get("tls_key") is None):
        raise ConfigError(f"{name('tls_cert')} and {name('tls_key')} must be given together")
    if values.get("client_ca") is not None and values.get("tls_cert") is None:
        raise ConfigError(f"{name('client_ca')} needs {name('tls_cert')} and {name('tls_key')}: "
                          "client certificates are checked in the TLS handshake")
    has_credential = bool(values.get("token")) or values.get("client_ca") is not None
    if values.get("insecure_no_auth"):
        if has_credential:
            raise ConfigError(f"{name('insecure_no_auth')}=true contradicts {name('token')} / "
                              f"{name('client_ca')}: unset one or the other")
        if not _is_loopback(values["host"]):
            raise ConfigError(f"{name('insecure_no_auth')}=true is only accepted with a loopback "
                              f"{name('bind')} (got host {values['host']!r}): anyone who reaches the "
                              "server can decrypt histories")
    elif not has_credential:
        raise ConfigError(
            f"no credential configured: set {name('token')} (or {TOKEN_FILE_ENV}) or {name('client_ca')} "
            "(mTLS), since anyone who reaches the codec server can decrypt histories; for local "
            "development only, KDUFLOW_CODEC_INSECURE_NO_AUTH=true on a loopback bind address"
        )
    settings = CodecServerSettings(**values, labels={**used})
    server_ssl_context(settings)  # a certificate that does not load stops the start, naming its variable
    return settings


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _validate_secret(raw: Any, label: str) -> dict[str, Any]:
    return {"secret_key": _validate_secret_key(raw, label, {})}


def _validate_token(raw: Any, label: str) -> dict[str, Any]:
    value = str(raw).strip()
    if not value:
        return {"token": ""}
    if len(value) < TOKEN_MIN_CHARS or len(value) > 4096:
        raise ConfigError(
            f"{label}=<redacted>: a token needs {TOKEN_MIN_CHARS} to 4096 characters (got {len(value)}); "
            "e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    if not all(33 <= ord(ch) <= 126 for ch in value):
        raise ConfigError(f"{label}=<redacted>: a token must be printable ASCII without spaces "
                          "(it travels in an HTTP header)")
    return {"token": value}


def _validate_bind(raw: Any, label: str) -> dict[str, Any]:
    value = str(raw).strip()
    host, sep, port_text = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ConfigError(f"{label}={value!r}: write an IPv6 address in brackets, e.g. [::1]:8888")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"{label}={value!r}: expected host:port with a port from 0 to 65535 "
                          f"(default {DEFAULT_BIND})")
    return {"host": host, "port": int(port_text)}


def _normalise_origin(value: str) -> str | None:
    """``scheme://host[:port]`` in the form browsers send in ``Origin`` (lower case, no default port)."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc:
        return None
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return None
    host = parts.hostname.lower()
    host = f"[{host}]" if ":" in host else host
    if port is None or (scheme, port) in (("http", 80), ("https", 443)):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def _validate_origins(raw: Any, label: str) -> dict[str, Any]:
    out: list[str] = []
    for item in _split_list(raw):
        if item == "*":
            raise ConfigError(f"{label}: '*' is not accepted; list each origin (a wildcard would let any "
                              "web page a logged-in user opens decrypt histories)")
        origin = _normalise_origin(item)
        if origin is None:
            raise ConfigError(f"{label}: {item!r} is not an origin 'http(s)://host[:port]' (no path, "
                              "query or credentials)")
        out.append(origin)
    return {"cors_origins": tuple(dict.fromkeys(out))}


def _file_validator(name: str) -> Callable[[Any, str], dict[str, Any]]:
    def validate(raw: Any, label: str) -> dict[str, Any]:
        value = str(raw).strip()
        if not value:
            return {name: None}
        path = Path(os.path.abspath(os.path.expanduser(value)))
        if not path.is_file() or not os.access(path, os.R_OK):
            raise ConfigError(f"{label}={value!r}: not a readable file")
        return {name: path}

    return validate


def _validate_max_body(raw: Any, label: str) -> dict[str, Any]:
    text = str(raw).strip()
    if isinstance(raw, bool) or not text.isdigit() or not MAX_BODY_MIN <= int(text) <= MAX_BODY_MAX:
        raise ConfigError(
            f"{label}={raw!r}: a whole number of bytes between {MAX_BODY_MIN} and {MAX_BODY_MAX}"
        )
    return {"max_body": int(text)}


def _validate_no_auth(raw: Any, label: str) -> dict[str, Any]:
    return {"insecure_no_auth": _validate_bool(raw, label, {})}


_VALIDATORS: dict[str, Callable[[Any, str], dict[str, Any]]] = {
    "secret_key": _validate_secret,
    "token": _validate_token,
    "bind": _validate_bind,
    "cors_origins": _validate_origins,
    "tls_cert": _file_validator("tls_cert"),
    "tls_key": _file_validator("tls_key"),
    "client_ca": _file_validator("client_ca"),
    "max_body": _validate_max_body,
    "insecure_no_auth": _validate_no_auth,
}


def server_ssl_context(settings: CodecServerSettings) -> ssl.SSLContext | None:
    """The TLS context for ``settings`` (``None`` without a certificate).

    With a client CA the handshake *asks* for a client certificate and rejects one the CA did not
    sign; a connection without one is still accepted, so a browser's CORS preflight (sent without
    credentials) gets through, and its requests are refused at the HTTP layer unless they carry
    the token.

    Raises:
        ConfigError: a certificate, key or CA file does not load; names its variable or flag.
    """
    if settings.tls_cert is None or settings.tls_key is None:
        return None

    def label(name: str) -> str:
        return settings.labels.get(name, _SPEC_BY_NAME[name].env)

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])  # Go clients would otherwise offer HTTP/2 first
    try:
        ctx.load_cert_chain(settings.tls_cert, settings.tls_key)
    except (ssl.SSLError, OSError) as err:
        raise ConfigError(f"{label('tls_cert')}={str(settings.tls_cert)!r} / {label('tls_key')}="
                          f"{str(settings.tls_key)!r}: cannot load the certificate and key "
                          f"({getattr(err, 'reason', None) or type(err).__name__})") from None
    if settings.client_ca is not None:
        try:
            ctx.load_verify_locations(cafile=str(settings.client_ca))
        except (ssl.SSLError, OSError) as err:
            reason = getattr(err, "reason", None) or type(err).__name__
            raise ConfigError(
                f"{label('client_ca')}={str(settings.client_ca)!r}: cannot load the CA certificates "
                f"({reason})"
            ) from None
        ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


# ---------------------------------------------------------------------------------------------
# HTTP server.
# ---------------------------------------------------------------------------------------------


class _HttpError(Exception):
    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


def _token_digest(value: str) -> bytes:
    # Digests of equal length: the comparison below takes the same time whatever the length sent.
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).digest()


class CodecServer(http.server.ThreadingHTTPServer):
    """A threaded HTTP(S) server applying kduflow's payload codec; see the module docstring."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, settings: CodecServerSettings) -> None:
        self.settings = settings
        box = SecretBox.from_setting(settings.secret_key)
        if box is None:
            raise ConfigError("KDUFLOW_SECRET_KEY is not set: the codec server has no key")
        # Exactly the codec the workers install (kduflow.codec.data_converter with their key).
        installed = data_converter(box).payload_codec
        assert installed is not None
        self.codec: PayloadCodec = installed
        self.ssl_context = server_ssl_context(settings)
        self._token_digest = _token_digest(settings.token) if settings.token else None
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
        self.address_family = family
        super().__init__((settings.host, settings.port), _Handler)

    @property
    def url(self) -> str:
        host = str(self.server_address[0])
        host = f"[{host}]" if ":" in host else host
        return f"{'https' if self.ssl_context else 'http'}://{host}:{self.server_address[1]}"

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            log.warning("refusing a connection from %s: %d connections already open",
                        client_address[0], MAX_CONNECTIONS)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def finish_request(self, request: Any, client_address: Any) -> None:
        # Runs on the connection's own thread, so a slow TLS handshake holds up no other client.
        request.settimeout(IO_TIMEOUT)
        if self.ssl_context is None:
            _Handler(request, client_address, self)
            return
        try:
            tls = self.ssl_context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as err:
            log.info("TLS handshake with %s failed: %s", client_address[0],
                     getattr(err, "reason", None) or type(err).__name__)
            return
        try:
            _Handler(tls, client_address, self)
        finally:
            tls.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # The default prints a traceback to stderr; one line, without request contents, is enough.
        err = sys.exc_info()[1]
        log.warning("connection from %s ended with %s", client_address[0], type(err).__name__)

    def authorized(self, authorization: str | None, peer_cert: Any) -> bool:
        if self.settings.client_ca is not None and peer_cert:
            return True  # the handshake verified it against the client CA
        if self._token_digest is not None and authorization:
            scheme, _, value = authorization.strip().partition(" ")
            if scheme.lower() == "bearer":
                return hmac.compare_digest(_token_digest(value.strip()), self._token_digest)
            return False
        no_credential = self._token_digest is None and self.settings.client_ca is None
        return self.settings.insecure_no_auth and no_credential


class _Handler(http.server.BaseHTTPRequestHandler):
    server: CodecServer
    protocol_version = "HTTP/1.1"
    server_version = "kduflow-codec-server"
    sys_version = ""
    timeout = IO_TIMEOUT

    def version_string(self) -> str:
        return self.server_version

    # -- dispatch ---------------------------------------------------------------------------

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self._respond(self._post)

    def do_OPTIONS(self) -> None:  # noqa: N802
        self._respond(self._preflight)

    def _not_allowed(self) -> None:
        def refuse() -> tuple[int, dict[str, str], bytes]:
            raise _HttpError(405, f"method {self.command} not allowed; use POST",
                             {"Allow": "POST, OPTIONS"})

        self._respond(refuse)

    do_GET = do_PUT = do_DELETE = do_PATCH = do_HEAD = _not_allowed  # noqa: N815

    def _operation(self) -> str:
        path = urlsplit(self.path).path.rstrip("/")
        operation = path.rpartition("/")[2]
        if operation not in ("encode", "decode"):
            raise _HttpError(404, "not found: the endpoints are .../encode and .../decode")
        return operation

    def _allowed_origin(self) -> str | None:
        origin = self.headers.get("Origin")
        if not origin:
            return None
        normalised = _normalise_origin(origin)
        return normalised if normalised in self.server.settings.cors_origins else None

    def _respond(self, handler: Callable[[], tuple[int, dict[str, str], bytes]]) -> None:
        self._body_read, self._count = False, "-"  # per request: a connection carries several
        try:
            status, headers, body = handler()
        except _HttpError as err:
            status, headers = err.status, err.headers
            body = json.dumps({"error": err.message}).encode()
        except Exception as err:  # noqa: BLE001 - a bug must not leak a traceback with payloads
            log.error("internal error handling %s: %s", self.command, type(err).__name__)
            status, headers, body = 500, {}, json.dumps({"error": "internal error"}).encode()
        origin = self._allowed_origin()
        if origin is not None:
            headers.setdefault("Access-Control-Allow-Origin", origin)
            headers.setdefault("Access-Control-Allow-Credentials", "true")
        unread = self._skip_body() if not self._body_read else False
        if unread:
            # The request body is still on the wire: the connection cannot carry another request.
            headers["Connection"] = "close"
            self.close_connection = True
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Vary", "Origin")
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        if unread:
            self._linger()

    def _skip_body(self) -> bool:
        """Read and drop a refused request's body when it is within the limit; True if it is left unread.

        A socket closed with unread input is reset, and the reset can destroy the response before
        the client reads it; a body within the limit is cheap to drop and keeps the connection.
        """
        if self.headers.get("Transfer-Encoding"):
            return True
        length_text = self.headers.get("Content-Length", "0")
        if not length_text.isdigit():
            return True
        left = int(length_text)
        if left > self.server.settings.max_body:
            return True
        while left > 0:
            chunk = self.rfile.read(min(left, 65536))
            if not chunk:
                return True
            left -= len(chunk)
        return False

    def _linger(self) -> None:
        """Drain what the client still sends (at most 1 MiB, 2 s) so that closing does not reset the reply."""
        self.wfile.flush()
        deadline = time.monotonic() + 2.0
        drained = 0
        with contextlib.suppress(OSError, ValueError):
            while drained < 1024 * 1024 and time.monotonic() < deadline:
                self.connection.settimeout(max(0.05, deadline - time.monotonic()))
                chunk = self.rfile.read1(65536)
                if not chunk:
                    break
                drained += len(chunk)

    # -- handlers ---------------------------------------------------------------------------

    def _preflight(self) -> tuple[int, dict[str, str], bytes]:
        self._operation()
        if self._allowed_origin() is None:
            raise _HttpError(403, "origin not allowed (KDUFLOW_CODEC_CORS_ORIGINS)")
        return 200, {
            "Access-Control-Allow-Methods": "POST, OPTIONS",
            "Access-Control-Allow-Headers": CORS_ALLOW_HEADERS,
            "Access-Control-Max-Age": "600",
        }, b"{}"

    def _post(self) -> tuple[int, dict[str, str], bytes]:
        operation = self._operation()
        peer_cert = self.connection.getpeercert() if isinstance(self.connection, ssl.SSLSocket) else None
        if not self.server.authorized(self.headers.get("Authorization"), peer_cert):
            raise _HttpError(401, "unauthorized: send Authorization: Bearer <token> or a client certificate",
                             {"WWW-Authenticate": 'Bearer realm="kduflow-codec-server"'})
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise _HttpError(415, "Content-Type must be application/json")
        if self.headers.get("Transfer-Encoding"):
            raise _HttpError(411, "send the body with a Content-Length, not chunked")
        length_text = self.headers.get("Content-Length", "")
        if not length_text.isdigit():
            raise _HttpError(411, "Content-Length required")
        length = int(length_text)
        if length > self.server.settings.max_body:
            raise _HttpError(413, f"body larger than {self.server.settings.max_body} bytes "
                                  "(KDUFLOW_CODEC_MAX_BODY)")
        body = self.rfile.read(length)
        self._body_read = len(body) == length
        if not self._body_read:
            raise _HttpError(400, "body shorter than its Content-Length")
        try:
            payloads = json_format.Parse(body, Payloads())
        except (json_format.ParseError, ValueError, RecursionError, TypeError):
            # The parser's message can quote the body: say only what was expected.
            raise _HttpError(400, "body is not a temporal.api.common.v1.Payloads message in proto3 JSON "
                                  '({"payloads": [{"metadata": {...}, "data": "<base64>"}]})') from None
        codec = self.server.codec
        function = codec.encode if operation == "encode" else codec.decode
        try:
            converted = asyncio.run(function(list(payloads.payloads)))
        except ValueError as err:
            # kduflow.codec's errors name key ids only (unknown key, tampered data), never content.
            raise _HttpError(400, f"{operation} failed: {err}") from None
        except Exception as err:  # noqa: BLE001 - e.g. decrypted bytes that are not a Payload
            raise _HttpError(400, f"{operation} failed ({type(err).__name__})") from None
        # Only fields that are set: clients with an older Payloads message reject unknown fields.
        out = json_format.MessageToJson(Payloads(payloads=converted), indent=None)
        self._count = str(len(converted))
        return 200, {}, out.encode()

    # -- logging ----------------------------------------------------------------------------

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # Method, last path segment and status only: never headers (the token) or bodies.
        operation = urlsplit(self.path).path.rstrip("/").rpartition("/")[2][:16] if self.path else "-"
        headers = getattr(self, "headers", None)
        namespace = (headers.get("X-Namespace") or "-")[:64] if headers else "-"
        log.info("%s %s %s /%s namespace=%r payloads=%s", self.client_address[0], self.command, code,
                 operation, namespace, getattr(self, "_count", "-"))

    def log_error(self, format: str, *args: Any) -> None:  # noqa: A002 - base class signature
        # http.server reports malformed requests here (quoting at most the request line).
        log.info("%s: %s", self.client_address[0], format % args)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("%s: %s", self.client_address[0], format % args)


def build_server(settings: CodecServerSettings) -> CodecServer:
    """A bound, not yet serving, codec server (``serve_forever`` it; ``shutdown`` stops it).

    Raises:
        ConfigError: the bind address cannot be used or a TLS file does not load.
    """
    try:
        return CodecServer(settings)
    except OSError as err:
        label = settings.labels.get("bind", "KDUFLOW_CODEC_BIND")
        raise ConfigError(
            f"{label}={settings.host}:{settings.port}: cannot listen ({err.strerror or err})"
        ) from None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="kduflow-codec-server",
        description="Serve Temporal's remote codec protocol (/encode, /decode) with kduflow's payload "
        "codec, for `temporal --codec-endpoint` and the Temporal Web UI.",
    )
    add_arguments(parser)
    parser.add_argument("--log-level", default=os.environ.get("KDUFLOW_LOG_LEVEL", "INFO"),
                        help="logging level (env KDUFLOW_LOG_LEVEL, default %(default)s)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the codec server until SIGINT/SIGTERM; returns the process exit code (2: bad settings)."""
    args = parse_args(argv)
    level = str(args.log_level).strip().upper()
    if not isinstance(logging.getLevelName(level), int):
        label = "--log-level" if argv is not None and any(a.startswith("--log-level") for a in argv) \
            else "KDUFLOW_LOG_LEVEL"
        print(f"kduflow-codec-server: {label}={args.log_level!r}: not a logging level "
              "(DEBUG, INFO, WARNING, ERROR, CRITICAL)", file=sys.stderr)
        return 2
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = CodecServerSettings.from_args(args, os.environ)
        server = build_server(settings)
    except ConfigError as err:
        print(f"kduflow-codec-server: {err}", file=sys.stderr)
        return 2

    def stop(signum: int, frame: Any) -> None:
        # shutdown() waits for serve_forever() to return, so it cannot run on serve_forever's thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    if settings.insecure_no_auth:
        log.warning("serving WITHOUT any credential (KDUFLOW_CODEC_INSECURE_NO_AUTH): every local "
                    "process can decrypt histories")
    log.info("kduflow codec server listening on %s; %s", server.url, settings.describe())
    try:
        server.serve_forever()
    finally:
        server.server_close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("kduflow codec server stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
