"""kduflow workflows. ``KDU_WORKFLOWS`` lists the release workflows for worker registration."""

from workflows.kdu import InstallKdu, RollbackKdu, ScaleKdu, UninstallKdu, UpgradeKdu
from workflows.lock import ReleaseLock
from workflows.readonly import (
    GetScaleCount,
    GetService,
    InspectKdu,
    KduInstances,
    KduServices,
    KduStatus,
    KduValues,
)

#: Every KDU release workflow (and the per-release lock they take); their Temporal type names are the
#: class names.
KDU_WORKFLOWS: list[type] = [
    InstallKdu,
    UpgradeKdu,
    RollbackKdu,
    ScaleKdu,
    UninstallKdu,
    KduStatus,
    KduInstances,
    KduServices,
    KduValues,
    InspectKdu,
    GetScaleCount,
    GetService,
    ReleaseLock,
]

__all__ = [
    "KDU_WORKFLOWS",
    "GetScaleCount",
    "GetService",
    "InspectKdu",
    "InstallKdu",
    "KduInstances",
    "KduServices",
    "KduStatus",
    "KduValues",
    "ReleaseLock",
    "RollbackKdu",
    "ScaleKdu",
    "UninstallKdu",
    "UpgradeKdu",
]
