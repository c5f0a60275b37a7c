"""Read helm's release records (``sh.helm.release.v1.<name>.v<N>``) through the Kubernetes API.

Helm 3 and helm 4 store one Secret per revision (``HELM_DRIVER=secret``, the default) labelled
``name=<release>, owner=helm, status=<status>, version=<N>``; ``data.release`` holds
base64(base64(gzip(JSON release))) as the JSON API shows it. The ConfigMap driver stores
base64(gzip(JSON)) in ``data.release`` of ConfigMaps with the same labels. Both are read here with
one LIST request, without any helm process.

The decoded release carries ``config`` (the user's values: passwords, tokens) and the chart's own
files. Only the fields of :class:`StoredRelease` are kept; everything else is dropped as soon as
it is parsed.
"""

from __future__ import annotations

import base64
import binascii
import collections
import gzip
import json
import zlib
from dataclasses import dataclass
from typing import Any

from activities import errors
from activities.helm_cli import release_text_fields
from activities.kubeapi import KubeApiBase, KubeNotFound

DRIVERS = ("secret", "configmap")
_GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class StoredRelease:
    """One revision of a release, as helm stored it. Never holds the user's values (``config``)."""

    name: str
    namespace: str
    version: int
    status: str
    description: str = ""
    chart_name: str = ""
    chart_version: str = ""
    app_version: str = ""
    first_deployed: str = ""
    last_deployed: str = ""
    notes: str = ""
    #: The rendered manifest (YAML stream). May contain Secret objects: never write it anywhere.
    manifest: str = ""
    #: helm 4 only: "ssa" or "csa"; "" for helm 3 releases.
    apply_method: str = ""

    @property
    def chart(self) -> str:
        """``"<name>-<version>"`` as ``helm list`` prints it."""
        return f"{self.chart_name}-{self.chart_version}" if self.chart_name else ""


def _corrupt(what: str) -> errors.KduflowError:
    # Retrying cannot repair a corrupt record, so not retryable.
    return errors.InvalidResource(f"helm release record {what} cannot be decoded")


def decode_release_data(data: str, driver: str = "secret") -> dict[str, Any]:
    """Decode ``data.release`` of a storage object into the release JSON (gzip optional).

    Raises errors.InvalidResource (not retryable) for a corrupt record.
    """
    try:
        raw = base64.b64decode(data)
        if driver == "secret":
            raw = base64.b64decode(raw)
        if raw[:2] == _GZIP_MAGIC:
            raw = gzip.decompress(raw)
        doc = json.loads(raw)
    except (binascii.Error, ValueError, OSError, EOFError, zlib.error):
        raise _corrupt("data") from None
    if not isinstance(doc, dict):
        raise _corrupt("data")
    return doc


def encode_release_data(doc: dict[str, Any], driver: str = "secret") -> str:
    """The inverse of :func:`decode_release_data`: ``data.release`` as the API takes it back."""
    raw = base64.b64encode(gzip.compress(json.dumps(doc, separators=(",", ":")).encode(), mtime=0))
    if driver == "secret":
        raw = base64.b64encode(raw)
    return raw.decode()


def mark_record_failed(record: dict[str, Any], driver: str, description: str, now: float) -> dict[str, Any]:
    """A copy of a storage object (as the API returned it) whose release is ``failed``.

    What Flux's helm-controller calls unlocking: a ``pending-*`` revision whose helm is gone stays
    pending in the history for ever, since helm's rollback leaves the revision it rolls back from
    untouched. The release JSON gets ``info.status = failed`` and ``description``; the ``status``
    label (what helm selects on) and ``modifiedAt`` (helm 3.13+) follow. The ``resourceVersion``
    is kept, so a replace fails with a conflict if anyone changed the object meanwhile.
    """
    data = (record.get("data") or {}).get("release")
    if not isinstance(data, str) or not data:
        raise _corrupt("data")
    doc = decode_release_data(data, driver)
    info = doc.get("info")
    if not isinstance(info, dict):
        raise _corrupt("info")
    info["status"] = "failed"
    info["description"] = description
    updated = dict(record)
    updated["data"] = {**record["data"], "release": encode_release_data(doc, driver)}
    metadata = dict(record.get("metadata") or {})
    labels = dict(metadata.get("labels") or {})
    labels["status"] = "failed"
    if "modifiedAt" in labels:
        labels["modifiedAt"] = str(int(now))
    metadata["labels"] = labels
    metadata.pop("managedFields", None)
    updated["metadata"] = metadata
    return updated


def record_name(release: str, revision: int) -> str:
    """The storage object of one revision, the same name for both drivers."""
    return f"sh.helm.release.v1.{release}.v{revision}"


def parse_release(doc: dict[str, Any]) -> StoredRelease:
    """The metadata of a decoded release JSON; ``config``, hooks and chart files are not copied."""
    info = doc.get("info") or {}
    return StoredRelease(
        **release_text_fields(doc),
        version=_int(doc.get("version")),
        status=str(info.get("status") or "unknown"),
        first_deployed=str(info.get("first_deployed") or ""),
        manifest=str(doc.get("manifest") or ""),
    )


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


class ReleaseCache:
    """Small LRU of decoded revisions keyed by the stored data, so an unchanged record polled every
    few seconds is not base64-decoded, gunzipped and JSON-parsed again."""

    def __init__(self, size: int = 64) -> None:
        self._size = size
        self._entries: collections.OrderedDict[tuple[str, str, int, int], StoredRelease] = (
            collections.OrderedDict()
        )
        self.hits = 0

    def get_or_decode(self, namespace: str, obj_name: str, data: str, driver: str) -> StoredRelease:
        key = (namespace, obj_name, len(data), hash(data))
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
            self.hits += 1
            return found
        release = parse_release(decode_release_data(data, driver))
        self._entries[key] = release
        if len(self._entries) > self._size:
            self._entries.popitem(last=False)
        return release


class ReleaseStorage:
    """Reads a release's revisions from helm's storage through a :class:`KubeApiBase`."""

    def __init__(self, api: KubeApiBase, driver: str = "secret", cache: ReleaseCache | None = None) -> None:
        if driver not in DRIVERS:
            raise errors.InvalidInput(f"HELM_DRIVER {driver!r} is not supported (secret, configmap)")
        self.api = api
        self.driver = driver
        self.cache = cache if cache is not None else ReleaseCache()

    async def _records(self, name: str, namespace: str | None) -> list[dict[str, Any]]:
        """Storage objects of release ``name`` in ``namespace`` (None: every namespace)."""
        plural = "secrets" if self.driver == "secret" else "configmaps"
        try:
            return await self.api.list("v1", plural, namespace, label_selector=f"name={name},owner=helm")
        except KubeNotFound:
            # The namespace itself is gone: the release cannot exist.
            return []

    async def everywhere(self, name: str) -> list[StoredRelease]:
        """The latest revision of every release called ``name``, one per namespace (``helm list -A
        -a`` for one name), in one API request."""
        latest: dict[str, StoredRelease] = {}
        for rec in await self._records(name, None):
            namespace = str((rec.get("metadata") or {}).get("namespace") or "")
            release = self._decode(rec, namespace)
            if release is not None and (
                namespace not in latest or release.version > latest[namespace].version
            ):
                latest[namespace] = release
        return [latest[ns] for ns in sorted(latest)]

    def _decode(self, record: dict[str, Any], namespace: str) -> StoredRelease | None:
        data = (record.get("data") or {}).get("release")
        if not isinstance(data, str) or not data:
            return None
        obj_name = str((record.get("metadata") or {}).get("name") or "")
        return self.cache.get_or_decode(namespace, obj_name, data, self.driver)

    async def labelled_history(self, name: str, namespace: str) -> list[tuple[StoredRelease, dict[str, str]]]:
        """Every stored revision with the labels of its storage object, oldest first.

        The labels are helm's own (``name``, ``owner``, ``status``, ``version``, ...) plus those given
        with ``--labels``, which helm keeps only there: ``helm list --selector`` matches them.
        """
        pairs = []
        for rec in await self._records(name, namespace):
            release = self._decode(rec, namespace)
            if release is not None:
                labels = (rec.get("metadata") or {}).get("labels") or {}
                pairs.append((release, {str(k): str(v) for k, v in labels.items()}))
        return sorted(pairs, key=lambda pair: pair[0].version)

    async def history(self, name: str, namespace: str) -> list[StoredRelease]:
        """Every stored revision, oldest first; ``[]`` when the release does not exist.

        Errors: those of :mod:`activities.kubeapi` (ClusterUnreachable, ...), and
        errors.InvalidResource for a corrupt record.
        """
        records = await self._records(name, namespace)
        releases = [r for r in (self._decode(rec, namespace) for rec in records) if r is not None]
        return sorted(releases, key=lambda r: r.version)

    async def latest(self, name: str, namespace: str) -> StoredRelease | None:
        """The newest revision (what ``helm status`` shows), or None when the release is absent.

        Only that revision's record is decoded: the ``version`` label picks it.
        """
        records = await self._records(name, namespace)
        if not records:
            return None

        def label_version(rec: dict[str, Any]) -> int:
            return _int(((rec.get("metadata") or {}).get("labels") or {}).get("version"))

        for rec in sorted(records, key=label_version, reverse=True):
            release = self._decode(rec, namespace)
            if release is not None:
                if release.version >= label_version(rec):
                    return release
                # Labels disagree with the payload (hand-edited storage): trust payloads, decode all.
                break
        releases = [r for r in (self._decode(rec, namespace) for rec in records) if r is not None]
        return max(releases, key=lambda r: r.version) if releases else None
