"""kduflow's payload codec: histories hold ciphertext, clients with the key read results."""

from __future__ import annotations

import base64
import os
import uuid
from pathlib import Path

import pytest
from temporalio import workflow
from temporalio.api.common.v1 import Payload
from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from activities.secretbox import SecretBox
from kduflow.codec import (
    ENCODING,
    KEY_ID,
    EncryptionCodec,
    InputPayloadConverter,
    encrypts,
    payload_converter,
)
from kduflow.config import Settings
from kduflow.plugin import KduflowPlugin
from tests.conftest import helm_tools

SECRET = "chart-password-9f2c"


def key(key_id: str) -> str:
    return f"{key_id}:{base64.b64encode(os.urandom(32)).decode()}"


@workflow.defn
class _EchoValues:
    @workflow.run
    async def run(self, values: dict) -> dict:
        return {"echo": values}


async def test_codec_round_trip_and_plain_payloads_pass_through():
    box = SecretBox.from_setting(key("k1"))
    assert box is not None
    codec = EncryptionCodec(box)
    plain = Payload(metadata={"encoding": b"json/plain"}, data=b'{"password": "%s"}' % SECRET.encode())
    (encrypted,) = await codec.encode([plain])
    assert encrypted.metadata["encoding"] == ENCODING and encrypted.metadata[KEY_ID] == b"k1"
    assert SECRET.encode() not in encrypted.SerializeToString()
    assert await codec.decode([encrypted]) == [plain]
    assert await codec.decode([plain]) == [plain]  # e.g. a CLI's --input


async def test_codec_rotation_wrong_key_and_tampering():
    old = key("old")
    rotated = SecretBox.from_setting(f"{key('new')},{old}")
    (by_old,) = await EncryptionCodec(SecretBox.from_setting(old)).encode([Payload(data=b"x")])
    assert (await EncryptionCodec(rotated).decode([by_old]))[0].data == b"x"  # old key still decrypts
    with pytest.raises(ValueError, match="key id 'old'"):
        await EncryptionCodec(SecretBox.from_setting(key("other"))).decode([by_old])
    tampered = Payload(metadata=dict(by_old.metadata), data=by_old.data[:-1] + bytes([by_old.data[-1] ^ 1]))
    with pytest.raises(ValueError, match="tampered"):
        await EncryptionCodec(rotated).decode([tampered])


async def _stored_history(ts_env, client: Client) -> bytes:
    """Run the echo workflow through ``client``; return its history as the server stores it."""
    task_queue = f"tq-{uuid.uuid4()}"
    # The codec is under test here, not workflow determinism: no sandbox for this tiny echo workflow.
    runner = UnsandboxedWorkflowRunner()
    async with Worker(client, task_queue=task_queue, workflows=[_EchoValues], workflow_runner=runner):
        handle = await client.start_workflow(
            _EchoValues.run, {"password": SECRET}, id=f"wf-{uuid.uuid4()}", task_queue=task_queue
        )
        assert await handle.result() == {"echo": {"password": SECRET}}
    raw = await ts_env.client.get_workflow_handle(handle.id).fetch_history()  # no codec: as stored
    return b"".join(event.SerializeToString() for event in raw.events)


async def test_history_holds_only_ciphertext(ts_env):
    # Control: without the codec the value is in the history in clear, so the check below can fail.
    assert SECRET.encode() in await _stored_history(ts_env, ts_env.client)
    box = SecretBox.from_setting(key("k1"))
    assert box is not None
    encrypted = Client(**{**ts_env.client.config(), "data_converter": payload_converter(box)})
    assert SECRET.encode() not in await _stored_history(ts_env, encrypted)


def test_plugin_installs_the_codec_only_with_a_key(tmp_path: Path):
    tools = helm_tools("helm4")

    def plugin(**kw) -> KduflowPlugin:
        settings = Settings.from_env(
            {}, helm=str(tools.helm), kubectl=str(tools.kubectl), state_dir=tmp_path / "state", **kw
        )
        return KduflowPlugin(settings=settings)

    with_key = plugin(secret_key=key("k1"))
    assert with_key.encrypts_payloads
    config = with_key.configure_client({"data_converter": None})  # type: ignore[typeddict-item]
    assert isinstance(config["data_converter"].payload_codec, EncryptionCodec)
    # Failure messages and stack traces are encoded too, so the codec encrypts them.
    assert encrypts(config["data_converter"])
    without = plugin()
    assert not without.encrypts_payloads
    plain = without.configure_client({})["data_converter"]  # type: ignore[typeddict-item]
    # No codec without a key, but the strict input decoding is always there.
    assert plain.payload_codec is None and not encrypts(plain)
    assert plain.payload_converter_class is InputPayloadConverter
    with pytest.raises(ValueError, match="KDUFLOW_SECRET_KEY"):
        KduflowPlugin(settings=without.settings, encrypt_payloads=True)
