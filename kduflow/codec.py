"""Payload encryption: what kduflow puts in Temporal's histories is AES-256-GCM ciphertext.

Workflow inputs carry chart values (often passwords) and, for InitCluster, possibly a kubeconfig;
results carry release values. With ``KDUFLOW_SECRET_KEY`` set, ``KduflowPlugin`` installs this
codec on the client it is given (and so on its workers): every payload is encrypted before it
leaves the process and decrypted when it comes back, with the same keys that encrypt stored
kubeconfigs (the first key encrypts, every configured key decrypts, so keys can be rotated).

Clients that start kduflow workflows must use the same codec (``Client.connect(...,
plugins=[KduflowPlugin()])`` or ``data_converter=payload_converter(box)``) to read results. Payloads
that are not encrypted (e.g. ``temporal workflow start --input`` from the CLI) still decode, so a
CLI can start workflows; it sees results as ciphertext unless it is given a codec server.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import temporalio.converter
from temporalio.api.common.v1 import Payload

from activities.secretbox import SecretBox, SecretBoxError

#: Metadata values, as in Temporal's encryption samples, so existing codec servers recognise them.
ENCODING = b"binary/encrypted"
KEY_ID = "encryption-key-id"
#: Binds every ciphertext to its use: a blob encrypted for another purpose with the same key fails.
AAD = b"kduflow:temporal-payload:v1"


class EncryptionCodec(temporalio.converter.PayloadCodec):
    """AES-256-GCM payload codec over a :class:`SecretBox` (nonce || ciphertext in ``data``)."""

    def __init__(self, box: SecretBox) -> None:
        self.box = box

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        out = []
        for payload in payloads:
            key_id, nonce, ciphertext = self.box.encrypt_bytes(payload.SerializeToString(), AAD)
            out.append(
                Payload(metadata={"encoding": ENCODING, KEY_ID: key_id.encode()}, data=nonce + ciphertext)
            )
        return out

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        out = []
        for payload in payloads:
            if payload.metadata.get("encoding") != ENCODING:
                # Plain payloads (a CLI's --input, histories from before the key was set) pass through.
                out.append(payload)
                continue
            key_id = payload.metadata.get(KEY_ID, b"").decode()
            data = payload.data
            try:
                plaintext = self.box.decrypt_bytes(key_id, data[:12], data[12:], AAD)
            except SecretBoxError as err:
                # ValueError fails the workflow task (retried after a fix) instead of corrupting data.
                raise ValueError(f"kduflow payload codec: {err}") from None
            out.append(Payload.FromString(plaintext))
        return out


def payload_converter(box: SecretBox) -> temporalio.converter.DataConverter:
    """The default data converter with kduflow's encryption codec."""
    return dataclasses.replace(temporalio.converter.default(), payload_codec=EncryptionCodec(box))
