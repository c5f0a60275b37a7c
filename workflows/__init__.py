"""kduflow workflows. ``KDU_WORKFLOWS`` lists the release workflows for worker registration."""

from workflows.kdu import InstallKdu, RollbackKdu, ScaleKdu, UninstallKdu, UpgradeKdu
from workflows.readonly import InspectKdu, KduInstances, KduServices, KduStatus, KduValues

#: Every KDU release workflow; their Temporal type names are the class names.
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
]

__all__ = [
    "KDU_WORKFLOWS",
    "InspectKdu",
    "InstallKdu",
    "KduInstances",
    "KduServices",
    "KduStatus",
    "KduValues",
    "RollbackKdu",
    "ScaleKdu",
    "UninstallKdu",
    "UpgradeKdu",
]
