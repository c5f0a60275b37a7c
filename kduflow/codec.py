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
from typing import Any

import temporalio.converter
from temporalio.api.common.v1 import Payload
from temporalio.exceptions import ApplicationError, FailureError

from kduflow.secretbox import SecretBox, SecretBoxError

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


class InputPayloadConverter(temporalio.converter.DefaultPayloadConverter):
    """The SDK's default payload converter, except that a payload it cannot decode fails the workflow.

    Workflow arguments are decoded before workflow code runs. When that raises (JSON nested deeper
    than the decoder's recursion limit, bytes that are not UTF-8 or not JSON, an unknown encoding),
    the SDK fails the workflow *task*, which is retried for ever while the workflow stays RUNNING.
    An ``ApplicationError`` raised here fails the workflow instead (the SDK re-raises failure
    errors from argument decoding unwrapped): non-retryable ``InvalidInput`` naming no content.
    """

    def from_payloads(self, payloads: Sequence[Payload], type_hints: list[type] | None = None) -> list[Any]:
        try:
            return super().from_payloads(payloads, type_hints)
        except FailureError:
            raise
        except Exception as err:  # noqa: BLE001 - every decoding failure is the caller's input
            raise ApplicationError(
                f"invalid input: a payload could not be decoded ({type(err).__name__})",
                {"field": "input"},
                type="InvalidInput",
                non_retryable=True,
            ) from None


def data_converter(
    box: SecretBox | None, base: temporalio.converter.DataConverter | None = None
) -> temporalio.converter.DataConverter:
    """kduflow's data converter: strict input decoding, and with ``box`` encryption of everything.

    With a box, payloads go through :class:`EncryptionCodec` and failures through the SDK's
    ``DefaultFailureConverterWithEncodedAttributes``: the default failure converter keeps failure
    messages and stack traces in clear, and helm's error text can quote a caller's values, so
    those move into an encoded payload that the codec encrypts.
    """
    converter = dataclasses.replace(
        base or temporalio.converter.default(), payload_converter_class=InputPayloadConverter
    )
    if box is None:
        return converter
    return dataclasses.replace(
        converter,
        payload_codec=EncryptionCodec(box),
        failure_converter_class=temporalio.converter.DefaultFailureConverterWithEncodedAttributes,
    )


def payload_converter(box: SecretBox) -> temporalio.converter.DataConverter:
    """The data converter a client needs to talk to encrypting kduflow workers (:func:`data_converter`)."""
    return data_converter(box)


def encrypts(converter: temporalio.converter.DataConverter) -> bool:
    """True when ``converter`` encrypts payloads with kduflow's codec and encodes failure attributes."""
    return isinstance(converter.payload_codec, EncryptionCodec) and issubclass(
        converter.failure_converter_class, temporalio.converter.DefaultFailureConverterWithEncodedAttributes
    )
