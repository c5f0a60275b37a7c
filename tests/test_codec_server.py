"""The codec server: Temporal's remote codec protocol over the workers' payload codec.

Protocol and settings tests run the server in a thread and talk HTTP(S) to it; the end-to-end test
runs ``python -m kduflow.codec_server`` and the real ``temporal`` CLI against a dev server and a
worker with ``KduflowPlugin`` and a secret key.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import http.client
import json
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.client import Client
from temporalio.worker import Worker

from activities.secretbox import SecretBox
from kduflow.codec import ENCODING, KEY_ID, EncryptionCodec, data_converter
from kduflow.codec_server import (
    CORS_ALLOW_HEADERS,
    CodecServer,
    CodecServerSettings,
    add_arguments,
    build_server,
    main,
)
from kduflow.config import ConfigError, Settings
from kduflow.plugin import KduflowPlugin
from sandbox.tls import CertificateAuthority
from tests.conftest import ROOT, helm_tools, temporal_cli
from tests.support.charts import CHARTS_DIR
from tests.support.status import make_pki

TOKEN = "codec-token-" + "7f3a9c1e5b2d4680"
UI_ORIGIN = "http://localhost:8233"


def key(key_id: str) -> str:
    return f"{key_id}:{base64.b64encode(os.urandom(32)).decode()}"


def env(**extra: str) -> dict[str, str]:
    """A codec server environment: a key, the token, an ephemeral loopback port."""
    return {"KDUFLOW_SECRET_KEY": key("k1"), "KDUFLOW_CODEC_TOKEN": TOKEN,
            "KDUFLOW_CODEC_BIND": "127.0.0.1:0", **extra}


@contextlib.contextmanager
def serving(settings: CodecServerSettings) -> Iterator[CodecServer]:
    server = build_server(settings)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def payloads_json(*payloads: Payload) -> bytes:
    return json_format.MessageToJson(Payloads(payloads=payloads)).encode()


def parse_payloads(body: bytes) -> list[Payload]:
    return list(json_format.Parse(body, Payloads()).payloads)


def call(
    server: CodecServer,
    path: str,
    body: bytes | None = None,
    *,
    method: str = "POST",
    headers: dict[str, str] | None = None,
    token: str | None = TOKEN,
    context: ssl.SSLContext | None = None,
    conn: http.client.HTTPConnection | None = None,
) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One request; ``token=None`` sends no Authorization header."""
    host, port = server.server_address[:2]
    if conn is None:
        conn = (http.client.HTTPSConnection(str(host), port, context=context, timeout=10) if context
                else http.client.HTTPConnection(str(host), port, timeout=10))
    sent = {"Content-Type": "application/json", "X-Namespace": "default", **(headers or {})}
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    conn.request(method, path, body=body, headers=sent)
    response = conn.getresponse()
    return response.status, response.headers, response.read()


def plain(text: str) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=json.dumps(text).encode())


# ---------------------------------------------------------------------------------------------
# Protocol.
# ---------------------------------------------------------------------------------------------


async def test_encode_decode_round_trip_with_the_workers_codec():
    settings = CodecServerSettings.from_env(env())
    box = SecretBox.from_setting(settings.secret_key)
    assert box is not None
    workers = data_converter(box).payload_codec  # what KduflowPlugin installs with that key
    assert isinstance(workers, EncryptionCodec)
    marker = f"marker-{uuid.uuid4().hex}"
    with serving(settings) as server:
        status, headers, body = call(server, "/encode", payloads_json(plain(marker), plain("second")))
        assert status == 200
        assert headers["Content-Type"] == "application/json" and headers["Cache-Control"] == "no-store"
        encoded = parse_payloads(body)
        assert [p.metadata["encoding"] for p in encoded] == [ENCODING, ENCODING]
        assert [p.metadata[KEY_ID] for p in encoded] == [b"k1", b"k1"]
        assert marker.encode() not in body and base64.b64encode(marker.encode()) not in body
        # The workers decrypt what the server encrypted...
        assert await workers.decode(encoded) == [plain(marker), plain("second")]
        # ...and the server decrypts what the workers encrypted, under any path prefix.
        by_worker = await workers.encode([plain(marker)])
        for path in ("/decode", "/default/decode", "/codec/decode/"):
            status, _, body = call(server, path, payloads_json(*by_worker))
            assert (status, parse_payloads(body)) == (200, [plain(marker)]), path
        # Unencrypted payloads (a CLI's --input to a worker without the codec) pass through decode.
        status, _, body = call(server, "/decode", payloads_json(plain("clear")))
        assert (status, parse_payloads(body)) == (200, [plain("clear")])
        status, _, body = call(server, "/decode", b"{}")
        assert (status, parse_payloads(body)) == (200, [])


async def test_rotation_old_key_decodes_new_key_encodes_unknown_key_is_400():
    old = key("old")
    (by_old,) = await EncryptionCodec(SecretBox.from_setting(old)).encode([plain("rotated")])  # type: ignore[arg-type]
    rotated = CodecServerSettings.from_env(env(KDUFLOW_SECRET_KEY=f"{key('new')},{old}"))
    with serving(rotated) as server:
        status, _, body = call(server, "/decode", payloads_json(by_old))
        assert (status, parse_payloads(body)) == (200, [plain("rotated")])
        status, _, body = call(server, "/encode", payloads_json(plain("x")))
        assert parse_payloads(body)[0].metadata[KEY_ID] == b"new"  # the first key encrypts
    with serving(CodecServerSettings.from_env(env(KDUFLOW_SECRET_KEY=key("other")))) as server:
        status, _, body = call(server, "/decode", payloads_json(by_old))
        assert status == 400
        assert "key id 'old'" in json.loads(body)["error"]
        assert base64.b64encode(by_old.data).decode() not in body.decode()
        tampered = Payload(metadata=dict(by_old.metadata), data=by_old.data[:-1] + b"\0")
    with serving(rotated) as server:
        status, _, body = call(server, "/decode", payloads_json(tampered))
        assert status == 400 and "tampered" in json.loads(body)["error"]


def test_token_required_and_compared(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.DEBUG)
    body = payloads_json(plain("x"))
    with serving(CodecServerSettings.from_env(env())) as server:
        for token in (None, "", "wrong-token-0123456789", TOKEN + "x", TOKEN[:-1]):
            status, headers, reply = call(server, "/decode", body, token=token)
            assert status == 401, token
            assert headers["WWW-Authenticate"].startswith("Bearer")
            assert "unauthorized" in json.loads(reply)["error"]
        for header in (f"Basic {TOKEN}", TOKEN):
            status, _, _ = call(server, "/decode", body, token=None, headers={"Authorization": header})
            assert status == 401, header
        loose = {"Authorization": f"bearer  {TOKEN} "}  # scheme case and spaces do not matter
        assert call(server, "/decode", body, token=None, headers=loose)[0] == 200
        assert call(server, "/encode", body)[0] == 200
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "POST 401 /decode" in logged and "POST 200 /encode" in logged  # the access log is there
    assert TOKEN not in logged and TOKEN[:-1] not in logged


def test_cors_only_for_listed_origins():
    settings = CodecServerSettings.from_env(
        env(KDUFLOW_CODEC_CORS_ORIGINS="HTTP://LOCALHOST:8233/, https://ui.example.com:443")
    )
    assert settings.cors_origins == (UI_ORIGIN, "https://ui.example.com")
    preflight = {"Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type,x-namespace,authorization"}
    with serving(settings) as server:
        for origin in (UI_ORIGIN, "https://ui.example.com"):
            # A preflight carries no credentials; it is answered without them.
            status, headers, _ = call(server, "/decode", method="OPTIONS", token=None,
                                      headers={"Origin": origin, **preflight})
            assert status == 200
            assert headers["Access-Control-Allow-Origin"] == origin
            assert headers["Access-Control-Allow-Credentials"] == "true"
            assert headers["Access-Control-Allow-Headers"] == CORS_ALLOW_HEADERS
            assert "POST" in headers["Access-Control-Allow-Methods"]
            assert headers["Vary"] == "Origin"
            status, headers, _ = call(server, "/decode", payloads_json(plain("x")),
                                      headers={"Origin": origin})
            assert status == 200 and headers["Access-Control-Allow-Origin"] == origin
            # Errors carry the CORS headers too, so the UI can tell a bad token from a dead server.
            status, headers, _ = call(server, "/decode", b"{}", token="wrong-token-0123456789",
                                      headers={"Origin": origin})
            assert status == 401 and headers["Access-Control-Allow-Origin"] == origin
        for origin in ("http://localhost:8080", "http://evil.example", "null", "http://localhost:8233.evil"):
            status, headers, _ = call(server, "/decode", method="OPTIONS", token=None,
                                      headers={"Origin": origin, **preflight})
            assert status == 403, origin
            assert "Access-Control-Allow-Origin" not in headers
            status, headers, _ = call(server, "/decode", payloads_json(plain("x")),
                                      headers={"Origin": origin})
            assert "Access-Control-Allow-Origin" not in headers
            assert "Access-Control-Allow-Credentials" not in headers
    with serving(CodecServerSettings.from_env(env())) as server:  # default: no origin at all
        status, headers, _ = call(server, "/decode", method="OPTIONS", token=None,
                                  headers={"Origin": UI_ORIGIN, **preflight})
        assert status == 403 and "Access-Control-Allow-Origin" not in headers


def test_limits_methods_and_errors_never_echo_the_body():
    marker = f"secret-{uuid.uuid4().hex}"
    with serving(CodecServerSettings.from_env(env(KDUFLOW_CODEC_MAX_BODY="1024"))) as server:
        status, headers, reply = call(server, "/decode", payloads_json(plain(marker + "x" * 1100)))
        assert status == 413 and headers["Connection"] == "close"
        assert "KDUFLOW_CODEC_MAX_BODY" in json.loads(reply)["error"]
        assert call(server, "/decode", payloads_json(plain("y" * 500)))[0] == 200  # under the limit
        for bad in (b"not json " + marker.encode(), b'{"payloads": [{"metadata": "%s"}]}' % marker.encode(),
                    b'{"payloads": "%s"}' % marker.encode(), b'{"unknown": "%s"}' % marker.encode(),
                    b"[" * 480 + b"]" * 480, b'{"payloads": [{"data": "\xff\xfe"}]}'):
            status, headers, reply = call(server, "/decode", bad)
            assert status == 400, bad[:40]
            assert marker not in reply.decode() and "error" in json.loads(reply)
        status, _, reply = call(server, "/decode", payloads_json(plain("x")),
                                headers={"Content-Type": "text/plain"})
        assert status == 415
        for method in ("GET", "PUT", "DELETE", "PATCH"):
            status, headers, reply = call(server, "/decode", method=method)
            assert status == 405 and headers["Allow"] == "POST, OPTIONS", method
        status, headers, _ = call(server, "/decode", method="HEAD")
        assert status == 405
        assert call(server, "/other", payloads_json(plain("x")))[0] == 404
        assert call(server, "/encode/x", payloads_json(plain("x")))[0] == 404
        # One connection carries several requests (the CLI and the UI keep connections alive).
        host, port = server.server_address[:2]
        conn = http.client.HTTPConnection(str(host), port, timeout=10)
        for _ in range(3):
            assert call(server, "/decode", payloads_json(plain("x")), conn=conn)[0] == 200
        assert call(server, "/decode", b"nope", conn=conn)[0] == 400
        assert call(server, "/decode", payloads_json(plain("x")), conn=conn)[0] == 200
        conn.close()


def test_idle_connections_time_out_and_connections_are_capped(monkeypatch: pytest.MonkeyPatch):
    import kduflow.codec_server as module

    # The I/O timeout is long enough that "refused at once" and "closed by the timeout" stay
    # apart on a loaded machine.
    monkeypatch.setattr(module, "IO_TIMEOUT", 1.5)
    monkeypatch.setattr(module._Handler, "timeout", 1.5)
    monkeypatch.setattr(module, "MAX_CONNECTIONS", 2)
    with serving(CodecServerSettings.from_env(env())) as server:
        address = server.server_address[:2]
        with socket.create_connection(address, timeout=8) as idle:
            started = time.monotonic()
            assert idle.recv(1) == b""  # closed by the server, not by this 8 s timeout
            assert time.monotonic() - started < 5
        first, second = socket.create_connection(address), socket.create_connection(address)
        time.sleep(0.1)
        with socket.create_connection(address, timeout=8) as third:
            started = time.monotonic()
            assert third.recv(1) == b""  # refused at once while two connections are open
            assert time.monotonic() - started < 1.0
        first.close()
        second.close()
        time.sleep(1.8)  # both slots free again after the timeout
        assert call(server, "/decode", payloads_json(plain("x")))[0] == 200


def test_insecure_no_auth_only_on_loopback():
    settings = CodecServerSettings.from_env(
        env(KDUFLOW_CODEC_TOKEN="", KDUFLOW_CODEC_INSECURE_NO_AUTH="true")
    )
    with serving(settings) as server:
        assert call(server, "/decode", payloads_json(plain("x")), token=None)[0] == 200
    for bind in ("0.0.0.0:8888", "10.1.2.3:8888", "example.com:8888"):
        only_loopback = r"KDUFLOW_CODEC_INSECURE_NO_AUTH=true is only accepted with a loopback"
        with pytest.raises(ConfigError, match=only_loopback):
            CodecServerSettings.from_env(
                env(KDUFLOW_CODEC_TOKEN="", KDUFLOW_CODEC_INSECURE_NO_AUTH="1", KDUFLOW_CODEC_BIND=bind)
            )
    with pytest.raises(ConfigError, match="contradicts KDUFLOW_CODEC_TOKEN"):
        CodecServerSettings.from_env(env(KDUFLOW_CODEC_INSECURE_NO_AUTH="true"))


# ---------------------------------------------------------------------------------------------
# TLS and mTLS.
# ---------------------------------------------------------------------------------------------


def client_context(ca_pem: bytes, cert: tuple[bytes, bytes] | None, tmp_path: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=ca_pem.decode())
    if cert is not None:
        name = uuid.uuid4().hex
        (tmp_path / f"{name}.crt").write_bytes(cert[0])
        (tmp_path / f"{name}.key").write_bytes(cert[1])
        ctx.load_cert_chain(tmp_path / f"{name}.crt", tmp_path / f"{name}.key")
    return ctx


def test_mtls_client_certificate_authorises(tmp_path: Path):
    pki = make_pki(tmp_path)
    (tmp_path / "ca.crt").write_bytes(pki.ca_pem)
    tls = {"KDUFLOW_CODEC_TLS_CERT": str(pki.server_cert), "KDUFLOW_CODEC_TLS_KEY": str(pki.server_key),
           "KDUFLOW_CODEC_CLIENT_CA": str(tmp_path / "ca.crt")}
    body = payloads_json(plain("x"))
    with_cert = client_context(pki.ca_pem, (pki.client_cert_pem, pki.client_key_pem), tmp_path)
    without_cert = client_context(pki.ca_pem, None, tmp_path)
    stranger = CertificateAuthority("other-ca").issue("intruder", client=True)
    foreign_cert = client_context(pki.ca_pem, stranger, tmp_path)
    # mTLS only: the certificate is the credential.
    with serving(CodecServerSettings.from_env(env(KDUFLOW_CODEC_TOKEN="", **tls))) as server:
        assert server.url.startswith("https://127.0.0.1:")
        assert call(server, "/decode", body, token=None, context=with_cert)[0] == 200
        assert call(server, "/decode", body, token=None, context=without_cert)[0] == 401
        assert call(server, "/decode", body, token=TOKEN, context=without_cert)[0] == 401  # no token set
        with pytest.raises((ssl.SSLError, ConnectionError)):
            call(server, "/decode", body, token=None, context=foreign_cert)
        # A browser preflight comes without a certificate and still gets its answer.
        assert call(server, "/decode", method="OPTIONS", token=None, context=without_cert)[0] == 403
        with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
            call(server, "/decode", body, token=None)  # plain HTTP to the TLS port
    # Token and client CA: either credential is enough.
    with serving(CodecServerSettings.from_env(env(**tls))) as server:
        assert call(server, "/decode", body, token=None, context=with_cert)[0] == 200
        assert call(server, "/decode", body, token=TOKEN, context=without_cert)[0] == 200
        assert call(server, "/decode", body, token=None, context=without_cert)[0] == 401
    # TLS without a client CA: the token is the credential; a client certificate is not asked for.
    server_only = {k: v for k, v in tls.items() if k != "KDUFLOW_CODEC_CLIENT_CA"}
    with serving(CodecServerSettings.from_env(env(**server_only))) as server:
        assert call(server, "/decode", body, token=TOKEN, context=without_cert)[0] == 200
        assert call(server, "/decode", body, token=None, context=with_cert)[0] == 401


# ---------------------------------------------------------------------------------------------
# Settings.
# ---------------------------------------------------------------------------------------------


def test_refuses_to_start_without_a_key_or_a_credential(capsys: pytest.CaptureFixture[str], monkeypatch):
    with pytest.raises(ConfigError, match="KDUFLOW_SECRET_KEY is not set"):
        CodecServerSettings.from_env({"KDUFLOW_CODEC_TOKEN": TOKEN})
    with pytest.raises(ConfigError, match="KDUFLOW_SECRET_KEY=<redacted>: entry 1"):
        CodecServerSettings.from_env(env(KDUFLOW_SECRET_KEY="not-a-key"))
    with pytest.raises(ConfigError, match="no credential configured: set KDUFLOW_CODEC_TOKEN"):
        CodecServerSettings.from_env(env(KDUFLOW_CODEC_TOKEN=""))
    for name in [n for n in os.environ if n.startswith(("KDUFLOW_", "TEMPORAL_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("KDUFLOW_CODEC_TOKEN", TOKEN)
    assert main([]) == 2
    assert "kduflow-codec-server: KDUFLOW_SECRET_KEY is not set" in capsys.readouterr().err


@pytest.mark.parametrize(
    "variable, value, message",
    [
        ("KDUFLOW_CODEC_BIND", "8888", "KDUFLOW_CODEC_BIND='8888': expected host:port"),
        ("KDUFLOW_CODEC_BIND", "127.0.0.1:70000", "expected host:port with a port from 0 to 65535"),
        ("KDUFLOW_CODEC_BIND", "::1:8888", "IPv6 address in brackets"),
        ("KDUFLOW_CODEC_TOKEN", "short", "KDUFLOW_CODEC_TOKEN=<redacted>: a token needs 16"),
        ("KDUFLOW_CODEC_TOKEN", "spaces in the token value", "printable ASCII without spaces"),
        ("KDUFLOW_CODEC_CORS_ORIGINS", "*", "KDUFLOW_CODEC_CORS_ORIGINS: '\\*' is not accepted"),
        ("KDUFLOW_CODEC_CORS_ORIGINS", "http://localhost:8233/ui", "is not an origin"),
        ("KDUFLOW_CODEC_CORS_ORIGINS", "localhost:8233", "is not an origin"),
        ("KDUFLOW_CODEC_MAX_BODY", "10", "KDUFLOW_CODEC_MAX_BODY='10': a whole number of bytes"),
        ("KDUFLOW_CODEC_MAX_BODY", "1e6", "KDUFLOW_CODEC_MAX_BODY='1e6'"),
        ("KDUFLOW_CODEC_INSECURE_NO_AUTH", "maybe", "KDUFLOW_CODEC_INSECURE_NO_AUTH='maybe': must be true"),
        ("KDUFLOW_CODEC_TLS_CERT", "/nonexistent/cert.pem", "KDUFLOW_CODEC_TLS_CERT='/nonexistent/cert.pem'"),
        ("KDUFLOW_CODEC_CLIENT_CA", "/nonexistent/ca.pem", "KDUFLOW_CODEC_CLIENT_CA='/nonexistent/ca.pem'"),
    ],
)
def test_bad_values_name_the_variable(variable: str, value: str, message: str):
    with pytest.raises(ConfigError, match=message) as caught:
        CodecServerSettings.from_env(env(**{variable: value}))
    if variable == "KDUFLOW_CODEC_TOKEN":
        assert value not in str(caught.value)


def test_tls_files_are_checked_at_start(tmp_path: Path):
    pki = make_pki(tmp_path)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    cert, key_file = str(pki.server_cert), str(pki.server_key)
    with pytest.raises(ConfigError, match="KDUFLOW_CODEC_TLS_CERT and KDUFLOW_CODEC_TLS_KEY must be given"):
        CodecServerSettings.from_env(env(KDUFLOW_CODEC_TLS_CERT=cert))
    with pytest.raises(ConfigError, match="KDUFLOW_CODEC_CLIENT_CA needs KDUFLOW_CODEC_TLS_CERT"):
        CodecServerSettings.from_env(env(KDUFLOW_CODEC_CLIENT_CA=cert))
    with pytest.raises(ConfigError, match="KDUFLOW_CODEC_TLS_CERT=.*cannot load the certificate and key"):
        CodecServerSettings.from_env(env(KDUFLOW_CODEC_TLS_CERT=str(garbage), KDUFLOW_CODEC_TLS_KEY=key_file))
    with pytest.raises(ConfigError, match="KDUFLOW_CODEC_CLIENT_CA=.*cannot load the CA certificates"):
        CodecServerSettings.from_env(
            env(KDUFLOW_CODEC_TLS_CERT=cert, KDUFLOW_CODEC_TLS_KEY=key_file,
                KDUFLOW_CODEC_CLIENT_CA=str(garbage))
        )


def test_flags_mirror_variables_and_files_hold_secrets(tmp_path: Path):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    secret = key("fromfile")
    (tmp_path / "key").write_text(secret + "\n")
    (tmp_path / "token").write_text("token-from-a-file-0123\n")
    args = parser.parse_args(["--bind", "127.0.0.1:0", "--cors-origins", "http://a.example:9000",
                              "--max-body", "2048", "--secret-key-file", str(tmp_path / "key"),
                              "--token-file", str(tmp_path / "token")])
    settings = CodecServerSettings.from_args(args, env(KDUFLOW_CODEC_BIND="bad", KDUFLOW_CODEC_MAX_BODY="x"))
    assert (settings.host, settings.port, settings.max_body) == ("127.0.0.1", 0, 2048)
    assert settings.cors_origins == ("http://a.example:9000",)
    assert (settings.secret_key, settings.token) == (secret, "token-from-a-file-0123")
    with pytest.raises(ConfigError, match="--bind='nope'"):
        CodecServerSettings.from_args(parser.parse_args(["--bind", "nope"]), env())
    with pytest.raises(ConfigError, match="--token-file=.*cannot read"):
        CodecServerSettings.from_args(parser.parse_args(["--token-file", str(tmp_path / "missing")]), env())
    # The _FILE variables, and no flag carries a secret's value.
    by_files = CodecServerSettings.from_env({"KDUFLOW_SECRET_KEY_FILE": str(tmp_path / "key"),
                                             "KDUFLOW_CODEC_TOKEN_FILE": str(tmp_path / "token")})
    assert (by_files.secret_key, by_files.token) == (secret, "token-from-a-file-0123")
    assert (by_files.host, by_files.port) == ("127.0.0.1", 8888)  # the default bind
    options = {option for action in parser._actions for option in action.option_strings}
    assert not options & {"--token", "--secret-key"}
    shown = repr(settings) + settings.describe()
    assert secret.split(":")[1] not in shown and "token-from-a-file" not in shown
    assert "keys[fromfile]" in settings.describe() and "auth=bearer-token" in settings.describe()


def test_bind_takes_effect_and_a_busy_port_names_the_variable():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match=f"KDUFLOW_CODEC_BIND=127.0.0.1:{port}: cannot listen"):
            build_server(CodecServerSettings.from_env(env(KDUFLOW_CODEC_BIND=f"127.0.0.1:{port}")))
    with serving(CodecServerSettings.from_env(env(KDUFLOW_CODEC_BIND="[::1]:0"))) as server:
        assert server.url.startswith("http://[::1]:")
        assert call(server, "/decode", payloads_json(plain("x")))[0] == 200


# ---------------------------------------------------------------------------------------------
# End to end: the entry point and the real temporal CLI.
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def codec_server_process(environ: dict[str, str]) -> Iterator[tuple[str, list[str]]]:
    """``python -m kduflow.codec_server`` with ``environ``; yields its URL and its log lines so far,
    stops it with SIGTERM."""
    full = {"PATH": os.environ.get("PATH", os.defpath), "PYTHONPATH": str(ROOT), **environ}
    proc = subprocess.Popen([sys.executable, "-m", "kduflow.codec_server"], env=full,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            lines.append(line)
            if "listening on " in line:
                url = line.split("listening on ", 1)[1].split(";", 1)[0]
                break
            if not line and proc.poll() is not None:
                pytest.fail(f"the codec server exited: {''.join(lines)}")
        else:
            pytest.fail(f"the codec server did not start: {''.join(lines)}")
        drain = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)  # type: ignore[arg-type]
        drain.start()
        yield url, lines
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(15)
    drain.join(5)
    logged = "".join(lines)
    assert code == 0, logged
    assert "codec server stopped" in logged
    for name in ("KDUFLOW_CODEC_TOKEN", "KDUFLOW_SECRET_KEY"):
        if environ.get(name):
            assert environ[name].split(":")[-1] not in logged, f"{name} in the log"


async def temporal(
    args: list[str], address: str, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run the temporal CLI off the event loop (the worker under test runs on it)."""
    # The token goes in TEMPORAL_CODEC_AUTH, never on argv.
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TEMPORAL_")}
    environ.update(TEMPORAL_ADDRESS=address, **(extra_env or {}))
    return await asyncio.to_thread(
        subprocess.run, [temporal_cli(), *args], env=environ, capture_output=True, text=True, timeout=120
    )


def shown_payloads(output: str) -> tuple[str, set[bytes]]:
    """The text of every payload in ``temporal workflow show -o json`` output (base64 ``data`` decoded)
    and the set of their encodings."""
    texts: list[str] = []
    encodings: set[bytes] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("metadata"), dict) and "encoding" in node["metadata"]:
                encodings.add(base64.b64decode(node["metadata"]["encoding"]))
                texts.append(base64.b64decode(node.get("data", "")).decode("utf-8", "replace"))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(output))
    return "\n".join(texts), encodings


@pytest.mark.e2e
async def test_temporal_cli_encodes_and_decodes_through_the_codec_server(local_env, tmp_path: Path):
    tools = helm_tools("helm4")
    secret_key = key("e2e")
    tag = uuid.uuid4().hex[:12]
    chart = f"codecmark{tag}"  # the workflow input names it: a marker for the input
    value_marker = f"value-marker-{tag}"  # in the chart's values: a marker for the result
    charts = tmp_path / "charts"
    shutil.copytree(CHARTS_DIR / "webapp", charts / chart)
    with (charts / chart / "values.yaml").open("a") as values:
        values.write(f"\ncodecMarker: {value_marker}\n")
    settings = Settings.from_env({}, helm=str(tools.helm), kubectl=str(tools.kubectl),
                                 state_dir=tmp_path / "state", charts_dir=charts, secret_key=secret_key)
    plugin = KduflowPlugin(settings=settings)
    client = Client(**{**local_env.client.config(), "plugins": [plugin]})
    raw = local_env.client  # no codec: histories as the server stores them
    address = local_env.client.service_client.config.target_host
    task_queue = f"codec-{tag}"
    workflow_id = f"codec-inspect-{tag}"
    pki = make_pki(tmp_path)
    (tmp_path / "ca.crt").write_bytes(pki.ca_pem)

    async def stored(wid: str) -> bytes:
        history = await raw.get_workflow_handle(wid).fetch_history()
        return b"".join(event.SerializeToString() for event in history.events)

    async with Worker(client, task_queue=task_queue):
        with codec_server_process({"KDUFLOW_SECRET_KEY": secret_key, "KDUFLOW_CODEC_TOKEN": TOKEN,
                                   "KDUFLOW_CODEC_BIND": "127.0.0.1:0"}) as (url, logged):
            codec = {"TEMPORAL_CODEC_ENDPOINT": url, "TEMPORAL_CODEC_AUTH": f"Bearer {TOKEN}"}
            # The CLI encodes its --input through /encode; the worker decrypts it and runs helm.
            run = await temporal(["workflow", "execute", "--type", "InspectKdu", "--task-queue", task_queue,
                            "--workflow-id", workflow_id, "--input", json.dumps({"kdu_model": chart}),
                            "-o", "json"], address, codec)
            assert run.returncode == 0, run.stderr + run.stdout
            assert value_marker in run.stdout  # the result, decoded through /decode
            history = await stored(workflow_id)
            assert chart.encode() not in history and value_marker.encode() not in history
            assert ENCODING in history
            # The worker's own client reads the same history: the server encrypted with the workers' key.
            assert (await client.get_workflow_handle(workflow_id).result())["kdu_model"] == chart

            # workflow show: input and result decoded with the codec server, ciphertext without it.
            show = ["workflow", "show", "--workflow-id", workflow_id, "-o", "json"]
            shown = await temporal(show, address, codec)
            assert shown.returncode == 0, shown.stderr
            texts, encodings = shown_payloads(shown.stdout)
            assert chart in texts and value_marker in texts
            assert ENCODING not in encodings and b"json/plain" in encodings
            bare = await temporal(show, address)
            assert bare.returncode == 0, bare.stderr
            texts, encodings = shown_payloads(bare.stdout)
            assert encodings == {ENCODING}  # every payload, as stored
            assert chart not in texts + bare.stdout and value_marker not in texts + bare.stdout
            # The endpoint as a flag, with a wrong token: the CLI fails, nothing is decoded.
            wrong = await temporal([*show, "--codec-endpoint", url], address,
                                   {"TEMPORAL_CODEC_AUTH": "Bearer wrong-token-0123456789"})
            assert wrong.returncode != 0 and chart not in wrong.stdout
            assert any("POST 401 /decode" in line for line in logged)  # the CLI only says it gave up

            # A failed workflow: its message is an encoded failure attribute, decoded the same way.
            failed_id = f"codec-invalid-{tag}"
            bad_input = {"cluster_uuid": "c1", "kdu_model": chart, "kdu_instanse": "x"}
            execute = ["workflow", "execute", "--type", "InstallKdu", "--task-queue", task_queue]
            failing = await temporal([*execute, "--workflow-id", failed_id, "--input", json.dumps(bad_input)],
                                     address, codec)
            # The CLI's text output prints the failure's placeholder message; -o json shows the attributes.
            assert failing.returncode != 0 and "FAILED" in failing.stdout
            assert b"kdu_instanse" not in await stored(failed_id)
            show_failed = ["workflow", "show", "--workflow-id", failed_id, "-o", "json"]
            shown = await temporal(show_failed, address, codec)
            texts, _ = shown_payloads(shown.stdout)
            # The message is only in the failure's encoded attributes (the input holds just the field).
            assert "unknown field (did you mean 'kdu_instance'?)" in texts
            bare = await temporal(show_failed, address)
            texts, _ = shown_payloads(bare.stdout)
            assert "Encoded failure" in bare.stdout  # the placeholder message; the real one is encrypted
            assert "kdu_instanse" not in texts + bare.stdout and "did you mean" not in texts + bare.stdout

        # HTTPS with the token: the CLI trusts the throwaway CA through SSL_CERT_FILE.
        tls = {"KDUFLOW_CODEC_TLS_CERT": str(pki.server_cert), "KDUFLOW_CODEC_TLS_KEY": str(pki.server_key)}
        with codec_server_process({"KDUFLOW_SECRET_KEY": secret_key, "KDUFLOW_CODEC_TOKEN": TOKEN,
                                   "KDUFLOW_CODEC_BIND": "127.0.0.1:0", **tls}) as (url, _):
            assert url.startswith("https://")
            shown = await temporal(show, address, {"TEMPORAL_CODEC_ENDPOINT": url,
                                                   "TEMPORAL_CODEC_AUTH": f"Bearer {TOKEN}",
                                                   "SSL_CERT_FILE": str(tmp_path / "ca.crt")})
            assert shown.returncode == 0, shown.stderr
            texts, _ = shown_payloads(shown.stdout)
            assert chart in texts and value_marker in texts


def test_log_level_is_validated(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    monkeypatch.setenv("KDUFLOW_LOG_LEVEL", "chatty")
    assert main([]) == 2
    assert "KDUFLOW_LOG_LEVEL='chatty': not a logging level" in capsys.readouterr().err
    assert main(["--log-level", "loud"]) == 2
    assert "--log-level='loud': not a logging level" in capsys.readouterr().err


def test_entry_point_refuses_a_bad_setting():
    full = {"PATH": os.environ.get("PATH", os.defpath), "PYTHONPATH": str(ROOT),
            "KDUFLOW_SECRET_KEY": key("k1"), "KDUFLOW_CODEC_TOKEN": TOKEN, "KDUFLOW_CODEC_BIND": "nowhere"}
    run = subprocess.run([sys.executable, "-m", "kduflow.codec_server"], env=full, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 2
    assert "kduflow-codec-server: KDUFLOW_CODEC_BIND='nowhere'" in run.stderr
    assert TOKEN not in run.stderr

