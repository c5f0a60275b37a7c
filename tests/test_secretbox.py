"""SecretBox: AES-GCM envelopes with key ids, rotation, and document binding."""

from __future__ import annotations

import base64
import json
import os

import pytest

from activities.secretbox import (
    ENVELOPE_KEY,
    SecretBox,
    SecretBoxError,
    aad_for,
    is_envelope,
    parse_key_setting,
)

KEY1 = os.urandom(32)
KEY2 = os.urandom(32)


def setting(*pairs: tuple[str, bytes]) -> str:
    return ",".join(f"{key_id}:{base64.b64encode(key).decode()}" for key_id, key in pairs)


KUBECONFIG = {"apiVersion": "v1", "clusters": [{"name": "c", "cluster": {"server": "https://10.0.0.1:6443"}}]}
AAD = aad_for("k8sclusters", "c1", "credentials")


def test_round_trip_and_envelope_shape() -> None:
    box = SecretBox.from_setting(setting(("k1", KEY1)))
    assert box is not None
    envelope = box.encrypt_json(KUBECONFIG, AAD)
    assert is_envelope(envelope)
    body = envelope[ENVELOPE_KEY]
    assert set(body) == {"v", "key_id", "nonce", "ciphertext"}
    assert body["v"] == 1 and body["key_id"] == "k1"
    assert len(base64.b64decode(body["nonce"])) == 12
    # Nothing of the plaintext is visible in the stored document.
    assert "10.0.0.1" not in json.dumps(envelope)
    assert box.decrypt_json(envelope, AAD) == KUBECONFIG


def test_nonce_is_fresh_per_encryption() -> None:
    box = SecretBox.from_setting(setting(("k1", KEY1)))
    assert box is not None
    one, two = box.encrypt_json("same", AAD), box.encrypt_json("same", AAD)
    assert one[ENVELOPE_KEY]["nonce"] != two[ENVELOPE_KEY]["nonce"]
    assert one[ENVELOPE_KEY]["ciphertext"] != two[ENVELOPE_KEY]["ciphertext"]


def test_empty_setting_means_no_box() -> None:
    assert SecretBox.from_setting("") is None
    assert SecretBox.from_setting("  ") is None


def test_rotation_first_key_encrypts_all_decrypt() -> None:
    old = SecretBox.from_setting(setting(("k1", KEY1)))
    rotated = SecretBox.from_setting(setting(("k2", KEY2), ("k1", KEY1)))
    assert old is not None and rotated is not None
    legacy = old.encrypt_json({"password": "s3cret"}, AAD)
    assert rotated.decrypt_json(legacy, AAD) == {"password": "s3cret"}
    fresh = rotated.encrypt_json({"password": "s3cret"}, AAD)
    assert fresh[ENVELOPE_KEY]["key_id"] == "k2"
    with pytest.raises(SecretBoxError, match="'k2'.*not configured"):
        old.decrypt_json(fresh, AAD)


def test_wrong_key_under_same_id_names_the_id_not_the_key() -> None:
    writer = SecretBox.from_setting(setting(("k1", KEY1)))
    reader = SecretBox.from_setting(setting(("k1", KEY2)))
    assert writer is not None and reader is not None
    envelope = writer.encrypt_json(KUBECONFIG, AAD)
    with pytest.raises(SecretBoxError) as err:
        reader.decrypt_json(envelope, AAD)
    assert "'k1'" in str(err.value)
    for key in (KEY1, KEY2):
        assert base64.b64encode(key).decode() not in str(err.value)


def test_tampered_ciphertext_is_rejected() -> None:
    box = SecretBox.from_setting(setting(("k1", KEY1)))
    assert box is not None
    envelope = box.encrypt_json(KUBECONFIG, AAD)
    raw = bytearray(base64.b64decode(envelope[ENVELOPE_KEY]["ciphertext"]))
    raw[0] ^= 0x01
    envelope[ENVELOPE_KEY]["ciphertext"] = base64.b64encode(bytes(raw)).decode()
    with pytest.raises(SecretBoxError, match="cannot decrypt with key id 'k1'"):
        box.decrypt_json(envelope, AAD)


def test_envelope_swapped_to_another_document_does_not_decrypt() -> None:
    box = SecretBox.from_setting(setting(("k1", KEY1)))
    assert box is not None
    envelope = box.encrypt_json(KUBECONFIG, aad_for("k8sclusters", "c1", "credentials"))
    with pytest.raises(SecretBoxError, match="another document"):
        box.decrypt_json(envelope, aad_for("k8sclusters", "c2", "credentials"))
    with pytest.raises(SecretBoxError):
        box.decrypt_json(envelope, aad_for("k8srepos", "c1", "password"))


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda body: body.update(v=2), "version 2"),
        (lambda body: body.update(nonce="%%%"), "malformed base64"),
        (lambda body: body.update(nonce=base64.b64encode(b"short").decode()), "5-byte nonce"),
        (lambda body: body.pop("key_id"), "None, which is not configured"),
    ],
)
def test_malformed_envelopes(mutate, message: str) -> None:
    box = SecretBox.from_setting(setting(("k1", KEY1)))
    assert box is not None
    envelope = box.encrypt_json("x", AAD)
    mutate(envelope[ENVELOPE_KEY])
    with pytest.raises(SecretBoxError, match=message):
        box.decrypt_json(envelope, AAD)


def test_is_envelope() -> None:
    assert is_envelope({ENVELOPE_KEY: {}})
    assert not is_envelope({ENVELOPE_KEY: {}, "other": 1})
    assert not is_envelope({"clusters": []})
    assert not is_envelope("kduflow_encrypted")
    assert not is_envelope({ENVELOPE_KEY: "x"})


@pytest.mark.parametrize(
    "value, message",
    [
        ("", "no key given"),
        ("k1", "entry 1 is not"),
        (f"k1:{base64.b64encode(b'x' * 16).decode()}", "16 bytes, expected 32"),
        ("k1:not base64!", "not valid base64"),
        (f"bad id:{base64.b64encode(KEY1).decode()}", "key id 'bad id'"),
        (setting(("k1", KEY1), ("k1", KEY2)), "listed twice"),
        (setting(("k1", KEY1)) + ",", "entry 2"),
    ],
)
def test_parse_key_setting_errors(value: str, message: str) -> None:
    with pytest.raises(SecretBoxError, match=message) as err:
        parse_key_setting(value)
    assert base64.b64encode(KEY1).decode() not in str(err.value)


def test_repr_hides_keys() -> None:
    box = SecretBox.from_setting(setting(("k1", KEY1)))
    assert repr(box) == "SecretBox(key_ids=('k1',))"


def test_unserialisable_value() -> None:
    box = SecretBox.from_setting(setting(("k1", KEY1)))
    assert box is not None
    with pytest.raises(SecretBoxError, match="JSON"):
        box.encrypt_json({"x": object()}, AAD)
