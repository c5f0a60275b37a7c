"""Encryption at rest for secrets kduflow keeps in MongoDB (kubeconfigs, repository passwords).

OSM stores cluster kubeconfigs and repository passwords in clear text, both in MongoDB and in
GridFS. kduflow encrypts them with AES-256-GCM when ``KDUFLOW_SECRET_KEY`` is set.
An encrypted value is stored as an envelope::

    {"kduflow_encrypted": {"v": 1, "key_id": "k1", "nonce": "<b64>", "ciphertext": "<b64>"}}

The key id beside the ciphertext makes key rotation possible: the setting lists several keys
(``"k2:<b64>,k1:<b64>"``), the first one encrypts, every one of them decrypts. The associated data
binds a ciphertext to the document and field it belongs to (see :func:`aad_for`), so an envelope
copied into another document does not decrypt there.

Errors never contain key material: only key ids.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

#: Top-level key of an encrypted value.
ENVELOPE_KEY = "kduflow_encrypted"
ENVELOPE_VERSION = 1
KEY_BYTES = 32
NONCE_BYTES = 12
_KEY_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class SecretBoxError(Exception):
    """A key setting is malformed, or a value cannot be encrypted or decrypted.

    The message names key ids and never contains key material or plaintext.
    """


def parse_key_setting(setting: str) -> list[tuple[str, bytes]]:
    """Parse ``"<key-id>:<base64 of 32 bytes>[,<key-id>:<base64>...]"`` into ``[(key_id, key), ...]``.

    Raises:
        SecretBoxError: empty setting, malformed entry, key not 32 bytes, or duplicate key id. The
            message says which entry (by position and key id) is wrong, never the key itself.
    """
    entries = [part.strip() for part in setting.split(",")]
    if not setting.strip():
        raise SecretBoxError("no key given")
    keys: list[tuple[str, bytes]] = []
    for position, entry in enumerate(entries, start=1):
        key_id, sep, encoded = entry.partition(":")
        key_id = key_id.strip()
        if not sep or not key_id:
            raise SecretBoxError(f"entry {position} is not '<key-id>:<base64 key>'")
        if not _KEY_ID.match(key_id):
            raise SecretBoxError(
                f"entry {position}: key id {key_id!r} must be 1-64 characters of A-Z a-z 0-9 . _ -"
            )
        try:
            key = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise SecretBoxError(f"key {key_id!r} is not valid base64") from None
        if len(key) != KEY_BYTES:
            raise SecretBoxError(f"key {key_id!r} decodes to {len(key)} bytes, expected {KEY_BYTES}")
        if any(existing == key_id for existing, _ in keys):
            raise SecretBoxError(f"key id {key_id!r} is listed twice")
        keys.append((key_id, key))
    return keys


def aad_for(collection: str, doc_id: str, field: str) -> bytes:
    """Associated data binding a ciphertext to one field of one document.

    ``aad_for("k8sclusters", uuid, "credentials")`` is what ``ClusterEnvs`` uses for kubeconfigs;
    repository passwords use ``aad_for("k8srepos", repo_id, "password")``.
    """
    return f"{collection}:{doc_id}:{field}".encode()


def is_envelope(value: Any) -> bool:
    """True when ``value`` is shaped like an envelope: a dict whose only key is ``kduflow_encrypted``."""
    return isinstance(value, dict) and set(value) == {ENVELOPE_KEY} and isinstance(value[ENVELOPE_KEY], dict)


@dataclass(frozen=True, repr=False)
class SecretBox:
    """AES-256-GCM with a list of keys: ``keys[0]`` encrypts, any listed key decrypts.

    ``repr`` shows key ids only, so a SecretBox in a log line or traceback leaks nothing.
    """

    keys: tuple[tuple[str, bytes], ...]

    def __post_init__(self) -> None:
        if not self.keys:
            raise SecretBoxError("a SecretBox needs at least one key")

    def __repr__(self) -> str:
        return f"SecretBox(key_ids={self.key_ids!r})"

    @classmethod
    def from_setting(cls, secret_key_setting: str) -> SecretBox | None:
        """The box for a ``KDUFLOW_SECRET_KEY`` value, or ``None`` when the setting is empty.

        Raises:
            SecretBoxError: the setting is malformed (see :func:`parse_key_setting`).
        """
        if not secret_key_setting.strip():
            return None
        return cls(tuple(parse_key_setting(secret_key_setting)))

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(key_id for key_id, _ in self.keys)

    def encrypt_bytes(self, plaintext: bytes, aad: bytes = b"") -> tuple[str, bytes, bytes]:
        """Encrypt with the first key and a fresh random 96-bit nonce; returns (key_id, nonce, ciphertext)."""
        key_id, key = self.keys[0]
        nonce = os.urandom(NONCE_BYTES)
        return key_id, nonce, AESGCM(key).encrypt(nonce, plaintext, aad)

    def decrypt_bytes(self, key_id: Any, nonce: bytes, ciphertext: bytes, aad: bytes = b"") -> bytes:
        """Decrypt what :meth:`encrypt_bytes` made with the key ``key_id`` and the same ``aad``.

        Raises:
            SecretBoxError: unknown key id, bad nonce, or authentication failure (wrong key for that
                id, tampered data, or data bound to other associated data). Names the key id only.
        """
        key = dict(self.keys).get(key_id) if isinstance(key_id, str) else None
        if key is None:
            raise SecretBoxError(
                f"data was encrypted with key id {key_id!r}, which is not configured "
                f"(configured: {', '.join(self.key_ids)})"
            )
        if len(nonce) != NONCE_BYTES:
            raise SecretBoxError(f"data for key id {key_id!r} has a {len(nonce)}-byte nonce")
        try:
            return AESGCM(key).decrypt(nonce, ciphertext, aad)
        except InvalidTag:
            raise SecretBoxError(
                f"cannot decrypt with key id {key_id!r}: wrong key for that id, tampered data, "
                "or data that belongs to another document"
            ) from None

    def encrypt_json(self, obj: Any, aad: bytes = b"") -> dict[str, Any]:
        """Encrypt a JSON-serialisable value with the first key and a fresh random 96-bit nonce.

        Args:
            obj: Any JSON-serialisable value (a kubeconfig dict, a YAML string, a password).
            aad: Associated data (see :func:`aad_for`); the same bytes are needed to decrypt.

        Returns:
            The envelope ``{"kduflow_encrypted": {"v", "key_id", "nonce", "ciphertext"}}``.

        Raises:
            SecretBoxError: ``obj`` is not JSON-serialisable.
        """
        try:
            plaintext = json.dumps(obj, separators=(",", ":"), sort_keys=True, allow_nan=False).encode()
        except (TypeError, ValueError) as err:
            raise SecretBoxError(f"value to encrypt is not JSON-serialisable: {type(err).__name__}") from None
        key_id, nonce, ciphertext = self.encrypt_bytes(plaintext, aad)
        return {
            ENVELOPE_KEY: {
                "v": ENVELOPE_VERSION,
                "key_id": key_id,
                "nonce": base64.b64encode(nonce).decode("ascii"),
                "ciphertext": base64.b64encode(ciphertext).decode("ascii"),
            }
        }

    def decrypt_json(self, envelope: Any, aad: bytes = b"") -> Any:
        """Decrypt an envelope made by :meth:`encrypt_json` with the same ``aad``.

        Raises:
            SecretBoxError: not an envelope, unsupported version, unknown key id, or authentication
                failure (wrong key for that id, tampered data, or an envelope moved from another
                document). The message names the key id.
        """
        if not is_envelope(envelope):
            raise SecretBoxError(f"not an encrypted envelope (expected a dict with only {ENVELOPE_KEY!r})")
        body = envelope[ENVELOPE_KEY]
        key_id = body.get("key_id")
        if body.get("v") != ENVELOPE_VERSION:
            raise SecretBoxError(f"envelope version {body.get('v')!r} is not supported (key id {key_id!r})")
        try:
            nonce = base64.b64decode(body.get("nonce", ""), validate=True)
            ciphertext = base64.b64decode(body.get("ciphertext", ""), validate=True)
        except (binascii.Error, ValueError, TypeError):
            raise SecretBoxError(f"envelope for key id {key_id!r} has malformed base64") from None
        return json.loads(self.decrypt_bytes(key_id, nonce, ciphertext, aad))

__all__ = [
    "ENVELOPE_KEY",
    "ENVELOPE_VERSION",
    "KEY_BYTES",
    "NONCE_BYTES",
    "SecretBox",
    "SecretBoxError",
    "aad_for",
    "is_envelope",
    "parse_key_setting",
]
