"""A typed async client for orchestrators: kduflow's operations as N2VC-shaped methods.

Needs nothing but a Temporal connection: no helm, no kubectl, no store, no activity or workflow
code (it imports only ``contract``, ``kduflow.codec`` and temporalio; a test checks that)::

    from kduflow.client import KduflowClient, ReleaseNotFound

    kdu = await KduflowClient.connect("temporal:7233", secret_key=os.environ.get("KDUFLOW_SECRET_KEY", ""))
    result = await kdu.install("cluster-1", "stable/openldap:1.2.2", "ldap-1", params={"replicaCount": 2},
                               db_dict={"collection": "nsrs", "filter": {"_id": nsr_id},
                                        "path": "_admin.deployed.K8s.0"})
    handle = await kdu.start_upgrade("cluster-1", "ldap-1", "stable/openldap:1.2.3")
    print(await handle.operation())   # phase, revision, readiness, lock holder or queue position
    await handle.result()

Methods follow OSM N2VC's ``K8sHelmBaseConnector`` names and parameters (``install``, ``upgrade``,
``rollback``, ``scale``, ``get_scale_count``, ``uninstall``, ``status``, ``services``, ``service``,
``instances``, ``values``, ``inspect``, ``init_cluster``, ``reset_cluster``, ``sync_repos``,
``repo_add``, ``repo_list``, ``repo_remove``); each runs one workflow and returns its result (the
contract's dataclasses, ``contract/models.py`` and ``contract/cluster.py``). Every ``start_<method>``
starts the same workflow and returns a :class:`KduflowHandle` (``result()``, ``operation()``,
``cancel()``). Inputs are checked with the contract's validation before anything is sent, so a bad
field fails at once with :class:`InvalidInput` naming it.

Workflow ids say what the workflow is about: ``kdu/<cluster>/<namespace>/<release>/<operation>/<suffix>``
(``-`` for a namespace or release not known yet), ``cluster/<cluster>/<operation>/<suffix>``,
``repo/<cluster>/<name>/<operation>/<suffix>``, ``chart/<kdu_model>/inspect/<suffix>`` and
``service/<cluster>/<namespace>/<name>/get/<suffix>``. The suffix is random unless the caller passes
``op_id`` (e.g. OSM's nslcmop id): the id is then deterministic and a repeated call with the same
``op_id`` attaches to the workflow already started instead of starting a second one. Searchable
attributes (``contract/search.py``: ``KduCluster``, ``KduRelease``, ``KduNamespace``,
``KduOperation``; workflows add ``KduOutcome``) are set at start; on a Temporal namespace where they
are not registered the client starts without them (once it has seen the refusal) and logs why.

Errors: a workflow that fails raises one exception class per ``ApplicationError`` type (the names
of ``contract/errors.py``), all derived from :class:`KduflowError` (``message``, ``details``,
``workflow_id``, ``run_id``; the original ``WorkflowFailureError`` is the ``__cause__``):

=====================  ==============================================================================
class                  raised when
=====================  ==============================================================================
InvalidInput           a field of the input is wrong (``field`` names it); also before starting
ChartNotFound          chart, chart version or its repository not found
RenderFailed           templates, values schema or YAML produced by them are wrong
ReleaseNotFound        no such release
InvalidResource        the API server rejected a rendered object
ReleaseNameInUse       the name belongs to a release kduflow did not create
ReleaseFailed          helm wrote a failed revision (``details``: revision, status)
UpgradeFailed          an upgrade failed and stays (atomic=false); a ReleaseFailed
UpgradeRolledBack      an upgrade failed and was rolled back (failed_revision, restored_revision)
RollbackFailed         a rollback failed (or the one after a failed upgrade); a ReleaseFailed
ReplicaKeyNotFound     scale / get_scale_count: no replica key at that place
ReplicaKeyAmbiguous    scale / get_scale_count: both replicaCount and replicas
ClusterNotFound        the cluster is not registered (or has no credentials)
CredentialsInvalid     the cluster or repository refused the credentials
RepoNotFound           a repository is not registered
UnsupportedHelm        the worker's helm cannot run the operation
UrlNotAllowed          a URL outside the worker's URL policy
ClusterExists          init_cluster would replace a registered cluster's credentials
ClusterUnreachable     the cluster could not be reached (after the workflow's retries)
ServerError            the API server kept answering 5xx
OperationInProgress    another operation holds the release (``wait_for_lock=False``) or it is pending
ProcessTimeout         helm did not finish within the timeout
HelmError              helm failed for a reason no rule recognised
OperationCancelled     the workflow was cancelled
OperationTerminated    the workflow was terminated
OperationTimedOut      the workflow ran out of its execution timeout
UnknownFailure         any other failure (another type name)
=====================  ==============================================================================
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Mapping
from typing import Any, ClassVar, Generic, TypeVar

from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
)
from temporalio.converter import DataConverter
from temporalio.exceptions import (
    CancelledError,
    TerminatedError,
    TimeoutError,
    WorkflowAlreadyStartedError,
)
from temporalio.service import RPCError, RPCStatusCode

from contract import search, validation
from contract.cluster import (
    InitClusterInput,
    InitClusterResult,
    RepoAddInput,
    RepoAddResult,
    RepoListInput,
    RepoListResult,
    RepoRemoveInput,
    RepoRemoveResult,
    ResetClusterInput,
    SyncReposInput,
    SyncReposResult,
)
from contract.errors import application_cause
from contract.models import (
    DEFAULT_TASK_QUEUE,
    DbDict,
    GetScaleCountInput,
    GetServiceInput,
    InspectKduInput,
    InspectKduResult,
    InstallKduInput,
    KduInstancesInput,
    KduInstancesResult,
    KduRefInput,
    KduResult,
    KduServicesResult,
    KduStatusResult,
    KduValuesResult,
    OperationState,
    RollbackKduInput,
    ScaleCountResult,
    ScaleKduInput,
    ServiceInfo,
    ServiceResult,
    UninstallKduInput,
    UpgradeKduInput,
)
from kduflow.codec import data_converter
from kduflow.secretbox import SecretBox

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Name of the query every mutating workflow answers with an :class:`OperationState`.
OPERATION_QUERY = "operation"
#: Workflow ids are capped by Temporal at 1000 characters; longer parts are cut.
_MAX_PART = 200


# ------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------


class KduflowError(Exception):
    """A kduflow operation failed. ``type_name`` is the ``ApplicationError.type`` it stands for."""

    type_name: ClassVar[str] = ""
    #: Whether the worker would have retried it (the workflow's retries are spent when it arrives).
    retryable: ClassVar[bool] = False

    def __init__(
        self, message: str, *, details: tuple[Any, ...] = (), workflow_id: str = "", run_id: str = ""
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.workflow_id = workflow_id
        self.run_id = run_id

    @property
    def detail(self) -> dict[str, Any]:
        """The first detail when it is an object (``failed_revision``, ``field``, ...), else {}."""
        first = self.details[0] if self.details else None
        return dict(first) if isinstance(first, Mapping) else {}


class InvalidInput(KduflowError):
    type_name = "InvalidInput"

    @property
    def field(self) -> str:
        """The input field that was refused ("input" for the whole input)."""
        return str(self.detail.get("field", ""))


class ChartNotFound(KduflowError):
    type_name = "ChartNotFound"


class RenderFailed(KduflowError):
    type_name = "RenderFailed"


class ReleaseNotFound(KduflowError):
    type_name = "ReleaseNotFound"


class InvalidResource(KduflowError):
    type_name = "InvalidResource"


class ReleaseNameInUse(KduflowError):
    type_name = "ReleaseNameInUse"


class ReleaseFailed(KduflowError):
    type_name = "ReleaseFailed"


class UpgradeFailed(ReleaseFailed):
    type_name = "UpgradeFailed"


class UpgradeRolledBack(ReleaseFailed):
    type_name = "UpgradeRolledBack"


class RollbackFailed(ReleaseFailed):
    type_name = "RollbackFailed"


class ReplicaKeyNotFound(KduflowError):
    type_name = "ReplicaKeyNotFound"


class ReplicaKeyAmbiguous(KduflowError):
    type_name = "ReplicaKeyAmbiguous"


class ClusterNotFound(KduflowError):
    type_name = "ClusterNotFound"


class CredentialsInvalid(KduflowError):
    type_name = "CredentialsInvalid"


class RepoNotFound(KduflowError):
    type_name = "RepoNotFound"


class UnsupportedHelm(KduflowError):
    type_name = "UnsupportedHelm"


class UrlNotAllowed(KduflowError):
    type_name = "UrlNotAllowed"


class ClusterExists(KduflowError):
    type_name = "ClusterExists"


class ClusterUnreachable(KduflowError):
    type_name = "ClusterUnreachable"
    retryable = True


class ServerError(KduflowError):
    type_name = "ServerError"
    retryable = True


class OperationInProgress(KduflowError):
    type_name = "OperationInProgress"
    retryable = True


class ProcessTimeout(KduflowError):
    type_name = "ProcessTimeout"
    retryable = True


class HelmError(KduflowError):
    type_name = "HelmError"
    retryable = True


class OperationCancelled(KduflowError):
    """The workflow was cancelled (``handle.cancel()``, the CLI, the Web UI)."""


class OperationTerminated(KduflowError):
    """The workflow was terminated."""


class OperationTimedOut(KduflowError):
    """The workflow ran out of its execution or run timeout."""


class UnknownFailure(KduflowError):
    """A failure with an error type this client does not know (``type_name`` is set per instance)."""


#: ``ApplicationError.type`` -> exception class, one per name of ``contract.errors.ERROR_TYPES``.
ERRORS: dict[str, type[KduflowError]] = {
    cls.type_name: cls
    for cls in (
        InvalidInput, ChartNotFound, RenderFailed, ReleaseNotFound, InvalidResource, ReleaseNameInUse,
        ReleaseFailed, UpgradeFailed, UpgradeRolledBack, RollbackFailed, ReplicaKeyNotFound,
        ReplicaKeyAmbiguous, ClusterNotFound, CredentialsInvalid, RepoNotFound, UnsupportedHelm,
        UrlNotAllowed, ClusterExists, ClusterUnreachable, ServerError, OperationInProgress,
        ProcessTimeout, HelmError,
    )
}  # fmt: skip


def translate_failure(err: WorkflowFailureError, workflow_id: str = "", run_id: str = "") -> KduflowError:
    """The :class:`KduflowError` subclass standing for a failed workflow's cause."""
    ids: dict[str, Any] = {"workflow_id": workflow_id, "run_id": run_id}
    cause = err.cause
    if isinstance(cause, CancelledError):
        return OperationCancelled(cause.message or "cancelled", details=tuple(cause.details), **ids)
    if isinstance(cause, TerminatedError):
        return OperationTerminated(cause.message or "terminated", **ids)
    if isinstance(cause, TimeoutError):
        return OperationTimedOut(cause.message or "timed out", **ids)
    app = application_cause(err)
    if app is None:
        return UnknownFailure(str(cause or err), **ids)
    cls = ERRORS.get(app.type or "")
    if cls is None:
        unknown = UnknownFailure(app.message, details=tuple(app.details), **ids)
        unknown.type_name = app.type or ""  # type: ignore[misc]
        return unknown
    return cls(app.message, details=tuple(app.details), **ids)


def _invalid(err: validation.InvalidInputError) -> InvalidInput:
    return InvalidInput(err.message, details=tuple(err.details))


# ------------------------------------------------------------------------------------------------
# Handle
# ------------------------------------------------------------------------------------------------


class KduflowHandle(Generic[T]):
    """A started kduflow workflow: its result (errors translated), its ``operation`` query, cancel."""

    def __init__(self, handle: WorkflowHandle[Any, Any], result_type: type[T]) -> None:
        self._handle = handle
        self._result_type = result_type

    @property
    def id(self) -> str:
        return self._handle.id

    @property
    def run_id(self) -> str:
        return self._handle.result_run_id or self._handle.run_id or ""

    @property
    def workflow_handle(self) -> WorkflowHandle[Any, Any]:
        """The SDK's handle, for anything this class does not wrap (describe, signal, history)."""
        return self._handle

    async def result(self) -> T:
        """Wait for the workflow; returns its result or raises a :class:`KduflowError` subclass."""
        try:
            return await self._handle.result()  # type: ignore[no-any-return]
        except WorkflowFailureError as err:
            raise translate_failure(err, self.id, self.run_id) from err

    async def operation(self) -> OperationState:
        """What the operation is doing now (mutating workflows only): phase, revision, readiness,
        last error, the lock's holder or this operation's queue position."""
        state: OperationState = await self._handle.query(OPERATION_QUERY, result_type=OperationState)
        return state

    async def cancel(self) -> None:
        """Ask the workflow to cancel: helm is stopped, the status written; ``result()`` then raises
        :class:`OperationCancelled` (or what remediation ended with)."""
        await self._handle.cancel()


# ------------------------------------------------------------------------------------------------
# Client
# ------------------------------------------------------------------------------------------------


def _part(value: str, unknown: str = "-") -> str:
    value = value or unknown
    return value if len(value) <= _MAX_PART else value[:_MAX_PART]


def _db_dict(value: DbDict | Mapping[str, Any] | None) -> DbDict | None:
    if value is None or isinstance(value, DbDict):
        return value
    try:
        checked = validation.validate_db_dict(value)
    except validation.InvalidInputError as err:
        raise _invalid(err) from None
    return checked


class KduflowClient:
    """kduflow's operations on a Temporal client (see the module docstring).

    Args:
        client: a connected Temporal client; a copy of it with kduflow's data converter (strict input
            decoding, and encryption with ``secret_key``) is used.
        task_queue: the kduflow workers' task queue (``KDUFLOW_TASK_QUEUE`` of the workers).
        secret_key: the workers' ``KDUFLOW_SECRET_KEY`` (``<key-id>:<base64>``[,...]); "" = payloads in
            clear. Required to read results of workers that encrypt.
        search_attributes: set kduflow's search attributes at start (see the module docstring).
    """

    def __init__(
        self,
        client: Client,
        *,
        task_queue: str = DEFAULT_TASK_QUEUE,
        secret_key: str = "",
        search_attributes: bool = True,
    ) -> None:
        box = SecretBox.from_setting(secret_key) if secret_key else None
        # Always kduflow's converter on a copy of the client: strict decoding, and the codec of
        # exactly this key (or none); a codec the given client had is replaced.
        config = client.config()
        config["data_converter"] = data_converter(box, base=_plain(client.data_converter))
        client = Client(**config)
        self.client = client
        self.task_queue = task_queue
        self._search_attributes = search_attributes

    @classmethod
    async def connect(
        cls,
        target_host: str = "localhost:7233",
        *,
        namespace: str = "default",
        task_queue: str = DEFAULT_TASK_QUEUE,
        secret_key: str = "",
        search_attributes: bool = True,
        **connect_options: Any,
    ) -> KduflowClient:
        """Connect to Temporal (``connect_options`` go to ``Client.connect``: ``tls``, ``api_key``...)
        with kduflow's data converter."""
        client = await Client.connect(target_host, namespace=namespace, **connect_options)
        return cls(client, task_queue=task_queue, secret_key=secret_key, search_attributes=search_attributes)

    # -- starting ------------------------------------------------------------------------------

    def _attributes(
        self, cluster: str, release: str, namespace: str, operation: str
    ) -> TypedSearchAttributes:
        return search.start_attributes(cluster, operation, release, namespace)

    async def _start(
        self,
        workflow: str,
        arg: Any,
        result_type: type[T],
        workflow_id: str,
        attributes: TypedSearchAttributes,
        op_id: str | None,
    ) -> KduflowHandle[T]:
        options: dict[str, Any] = {}
        if op_id:
            # A repeated call with the same op_id attaches to the operation already running.
            options["id_conflict_policy"] = WorkflowIDConflictPolicy.USE_EXISTING
        if self._search_attributes:
            options["search_attributes"] = attributes
        try:
            handle = await self.client.start_workflow(
                workflow, arg, id=workflow_id, task_queue=self.task_queue, result_type=result_type, **options
            )
        except WorkflowAlreadyStartedError:
            # Same op_id, and that workflow already closed: its result is this operation's result.
            handle = self.client.get_workflow_handle(workflow_id, result_type=result_type)
        except RPCError as err:
            if not (self._search_attributes and _unregistered_attributes(err)):
                raise
            log.warning(
                "kduflow search attributes are not registered in Temporal namespace %s (%s); starting "
                "without them: register them with `temporal operator search-attribute create`",
                self.client.namespace, err.message,
            )  # fmt: skip
            self._search_attributes = False
            return await self._start(workflow, arg, result_type, workflow_id, attributes, op_id)
        return KduflowHandle(handle, result_type)

    @staticmethod
    def _suffix(op_id: str | None) -> str:
        return op_id or uuid.uuid4().hex[:16]

    def _kdu_id(self, cluster: str, namespace: str, release: str, operation: str, op_id: str | None) -> str:
        parts = (_part(cluster), _part(namespace), _part(release), operation, self._suffix(op_id))
        return "kdu/" + "/".join(parts)

    async def _kdu(
        self,
        workflow: str,
        operation: str,
        inp: Any,
        result_type: type[T],
        op_id: str | None,
        *,
        release: str,
        namespace: str,
    ) -> KduflowHandle[T]:
        cluster = inp.cluster_uuid
        return await self._start(
            workflow, inp, result_type, self._kdu_id(cluster, namespace, release, operation, op_id),
            self._attributes(cluster, release, namespace, operation), op_id,
        )  # fmt: skip

    # -- release operations --------------------------------------------------------------------

    async def start_install(
        self,
        cluster_uuid: str,
        kdu_model: str,
        kdu_instance: str = "",
        atomic: bool = True,
        timeout: int = 300,
        params: Mapping[str, Any] | None = None,
        db_dict: DbDict | Mapping[str, Any] | None = None,
        kdu_name: str | None = None,
        namespace: str | None = None,
        *,
        version: str = "",
        labels: Mapping[str, str] | None = None,
        wait_for_lock: bool = True,
        op_id: str | None = None,
    ) -> KduflowHandle[KduResult]:
        inp = InstallKduInput(
            cluster_uuid, kdu_model, kdu_instance or "", namespace or "", version, atomic, timeout,
            dict(params or {}), _db_dict(db_dict), kdu_name or "", dict(labels or {}), wait_for_lock,
        )  # fmt: skip
        _check(validation.validate_install, inp)
        return await self._kdu(
            "InstallKdu", "install", inp, KduResult, op_id, release=inp.kdu_instance, namespace=inp.namespace
        )

    async def install(self, *args: Any, **kwargs: Any) -> KduResult:
        """N2VC ``install``: install ``kdu_model`` as ``kdu_instance`` ("" = a generated name, returned
        in the result); see :meth:`start_install` for the parameters."""
        return await (await self.start_install(*args, **kwargs)).result()

    async def start_upgrade(
        self,
        cluster_uuid: str,
        kdu_instance: str,
        kdu_model: str | None = None,
        atomic: bool = True,
        timeout: int = 300,
        params: Mapping[str, Any] | None = None,
        db_dict: DbDict | Mapping[str, Any] | None = None,
        namespace: str | None = None,
        reset_values: bool = False,
        reuse_values: bool = True,
        force: bool = False,
        *,
        version: str = "",
        wait_for_lock: bool = True,
        op_id: str | None = None,
    ) -> KduflowHandle[KduResult]:
        inp = UpgradeKduInput(
            cluster_uuid, kdu_instance, namespace or "", kdu_model or "", version, dict(params or {}),
            reuse_values, reset_values, force, atomic, timeout, _db_dict(db_dict), wait_for_lock,
        )  # fmt: skip
        _check(validation.validate_upgrade, inp)
        return await self._kdu(
            "UpgradeKdu", "upgrade", inp, KduResult, op_id, release=kdu_instance, namespace=inp.namespace
        )

    async def upgrade(self, *args: Any, **kwargs: Any) -> KduResult:
        """N2VC ``upgrade`` (atomic: a failure is rolled back to the last deployed revision and raises
        :class:`UpgradeRolledBack`); see :meth:`start_upgrade`."""
        return await (await self.start_upgrade(*args, **kwargs)).result()

    async def start_rollback(
        self,
        cluster_uuid: str,
        kdu_instance: str,
        revision: int = 0,
        db_dict: DbDict | Mapping[str, Any] | None = None,
        *,
        namespace: str | None = None,
        timeout: int = 300,
        wait_for_lock: bool = True,
        op_id: str | None = None,
    ) -> KduflowHandle[KduResult]:
        inp = RollbackKduInput(
            cluster_uuid, kdu_instance, namespace or "", revision, timeout, _db_dict(db_dict), wait_for_lock
        )
        _check(validation.validate_rollback, inp)
        return await self._kdu(
            "RollbackKdu", "rollback", inp, KduResult, op_id, release=kdu_instance, namespace=inp.namespace
        )

    async def rollback(self, *args: Any, **kwargs: Any) -> KduResult:
        """N2VC ``rollback`` (revision 0 = the last deployed revision before the current one)."""
        return await (await self.start_rollback(*args, **kwargs)).result()

    async def start_scale(
        self,
        kdu_instance: str,
        scale: int,
        resource_name: str = "",
        total_timeout: int = 1800,
        cluster_uuid: str | None = None,
        kdu_model: str | None = None,
        atomic: bool = True,
        db_dict: DbDict | Mapping[str, Any] | None = None,
        *,
        namespace: str | None = None,
        wait_for_lock: bool = True,
        op_id: str | None = None,
    ) -> KduflowHandle[KduResult]:
        """``kdu_model`` is accepted for N2VC's signature: the replica key is found in the release."""
        inp = ScaleKduInput(
            cluster_uuid or "", kdu_instance, namespace or "", scale=scale, resource_name=resource_name or "",
            timeout=total_timeout, atomic=atomic, db_dict=_db_dict(db_dict), wait_for_lock=wait_for_lock,
        )  # fmt: skip
        _check(validation.validate_scale_input, inp)
        return await self._kdu(
            "ScaleKdu", "scale", inp, KduResult, op_id, release=kdu_instance, namespace=inp.namespace
        )

    async def scale(self, *args: Any, **kwargs: Any) -> KduResult:
        """N2VC ``scale``: set the release's replica key (``replicaCount``/``replicas``, under
        ``resource_name``) to ``scale``; see :meth:`start_scale`."""
        return await (await self.start_scale(*args, **kwargs)).result()

    async def start_get_scale_count(
        self,
        resource_name: str,
        kdu_instance: str,
        cluster_uuid: str,
        kdu_model: str | None = None,
        *,
        namespace: str | None = None,
        op_id: str | None = None,
    ) -> KduflowHandle[ScaleCountResult]:
        inp = GetScaleCountInput(
            cluster_uuid, kdu_instance, resource_name or "", namespace or "", kdu_model or ""
        )
        _check(validation.validate_get_scale_count, inp)
        return await self._kdu(
            "GetScaleCount", "scale-count", inp, ScaleCountResult, op_id,
            release=kdu_instance, namespace=inp.namespace,
        )  # fmt: skip

    async def get_scale_count(self, *args: Any, **kwargs: Any) -> ScaleCountResult:
        """N2VC ``get_scale_count``: the replica count ``scale`` would change (``.count``)."""
        return await (await self.start_get_scale_count(*args, **kwargs)).result()

    async def start_uninstall(
        self,
        cluster_uuid: str,
        kdu_instance: str,
        *,
        namespace: str | None = None,
        timeout: int = 300,
        db_dict: DbDict | Mapping[str, Any] | None = None,
        wait_for_lock: bool = True,
        op_id: str | None = None,
    ) -> KduflowHandle[KduResult]:
        inp = UninstallKduInput(
            cluster_uuid, kdu_instance, namespace or "", timeout, _db_dict(db_dict), wait_for_lock
        )
        _check(validation.validate_uninstall, inp)
        return await self._kdu(
            "UninstallKdu", "uninstall", inp, KduResult, op_id, release=kdu_instance, namespace=inp.namespace
        )

    async def uninstall(self, *args: Any, **kwargs: Any) -> KduResult:
        """N2VC ``uninstall`` (an absent release is a success: ``status == "absent"``)."""
        return await (await self.start_uninstall(*args, **kwargs)).result()

    async def _read(
        self, workflow: str, operation: str, cluster_uuid: str, kdu_instance: str, namespace: str | None,
        result_type: type[T], op_id: str | None, all_values: bool = False,
    ) -> KduflowHandle[T]:  # fmt: skip
        inp = KduRefInput(cluster_uuid, kdu_instance, namespace or "", all_values)
        _check(validation.validate_ref, inp)
        return await self._kdu(
            workflow, operation, inp, result_type, op_id, release=kdu_instance, namespace=inp.namespace
        )

    async def start_status(
        self, cluster_uuid: str, kdu_instance: str, namespace: str | None = None, *, op_id: str | None = None
    ) -> KduflowHandle[KduStatusResult]:
        return await self._read(
            "KduStatus", "status", cluster_uuid, kdu_instance, namespace, KduStatusResult, op_id
        )

    async def status(self, *args: Any, **kwargs: Any) -> KduStatusResult:
        """N2VC ``status_kdu``: the release and the readiness of its resources (``status ==
        "absent"`` when there is no such release)."""
        return await (await self.start_status(*args, **kwargs)).result()

    async def start_services(
        self, cluster_uuid: str, kdu_instance: str, namespace: str | None = None, *, op_id: str | None = None
    ) -> KduflowHandle[KduServicesResult]:
        return await self._read(
            "KduServices", "services", cluster_uuid, kdu_instance, namespace, KduServicesResult, op_id
        )

    async def services(self, *args: Any, **kwargs: Any) -> KduServicesResult:
        """N2VC ``get_services``: the release's Services with their addresses."""
        return await (await self.start_services(*args, **kwargs)).result()

    async def start_values(
        self,
        cluster_uuid: str,
        kdu_instance: str,
        namespace: str | None = None,
        all_values: bool = False,
        *,
        op_id: str | None = None,
    ) -> KduflowHandle[KduValuesResult]:
        return await self._read(
            "KduValues", "values", cluster_uuid, kdu_instance, namespace, KduValuesResult, op_id, all_values
        )

    async def values(self, *args: Any, **kwargs: Any) -> KduValuesResult:
        """N2VC ``get_values_kdu``: the release's user-supplied values (all computed ones with
        ``all_values``)."""
        return await (await self.start_values(*args, **kwargs)).result()

    async def start_service(
        self, cluster_uuid: str, service_name: str, namespace: str, *, op_id: str | None = None
    ) -> KduflowHandle[ServiceResult]:
        inp = GetServiceInput(cluster_uuid, service_name, namespace)
        _check(validation.validate_get_service, inp)
        workflow_id = "/".join(
            (
                "service",
                _part(cluster_uuid),
                _part(namespace),
                _part(service_name),
                "get",
                self._suffix(op_id),
            )
        )
        return await self._start(
            "GetService", inp, ServiceResult, workflow_id,
            self._attributes(cluster_uuid, "", namespace, "service"), op_id,
        )  # fmt: skip

    async def service(self, *args: Any, **kwargs: Any) -> ServiceInfo | None:
        """N2VC ``get_service``: one Service by name, None when the namespace has none of that name."""
        return (await (await self.start_service(*args, **kwargs)).result()).service

    async def start_instances(
        self, cluster_uuid: str, *, op_id: str | None = None
    ) -> KduflowHandle[KduInstancesResult]:
        inp = KduInstancesInput(cluster_uuid)
        _check(validation.validate_instances, inp)
        return await self._cluster("KduInstances", "instances", inp, KduInstancesResult, op_id)

    async def instances(self, *args: Any, **kwargs: Any) -> KduInstancesResult:
        """N2VC ``instances_list``: every release of the cluster (all namespaces, all statuses)."""
        return await (await self.start_instances(*args, **kwargs)).result()

    async def start_inspect(
        self,
        kdu_model: str,
        repo_url: str | None = None,
        *,
        cluster_uuid: str = "",
        version: str = "",
        op_id: str | None = None,
    ) -> KduflowHandle[InspectKduResult]:
        inp = InspectKduInput(kdu_model, cluster_uuid, version, repo_url or "")
        _check(validation.validate_inspect, inp)
        workflow_id = f"chart/{_part(kdu_model)}/inspect/{self._suffix(op_id)}"
        attrs = (
            self._attributes(cluster_uuid, "", "", "inspect")
            if cluster_uuid
            else TypedSearchAttributes([SearchAttributePair(search.KDU_OPERATION, "inspect")])
        )
        return await self._start("InspectKdu", inp, InspectKduResult, workflow_id, attrs, op_id)

    async def inspect(self, *args: Any, **kwargs: Any) -> InspectKduResult:
        """N2VC ``inspect_kdu`` / ``values_kdu`` / ``help_kdu`` in one: Chart.yaml, values, README.
        ``repo/chart`` needs ``cluster_uuid`` (the cluster whose repositories resolve it)."""
        return await (await self.start_inspect(*args, **kwargs)).result()

    # -- clusters and repositories -------------------------------------------------------------

    async def _cluster(
        self, workflow: str, operation: str, inp: Any, result_type: type[T], op_id: str | None
    ) -> KduflowHandle[T]:
        cluster = inp.cluster_uuid
        workflow_id = f"cluster/{_part(cluster)}/{operation}/{self._suffix(op_id)}"
        return await self._start(
            workflow, inp, result_type, workflow_id, self._attributes(cluster, "", "", operation), op_id
        )

    async def start_init_cluster(
        self,
        k8s_creds: str = "",
        namespace: str = "kube-system",
        reuse_cluster_uuid: str | None = None,
        *,
        cluster_uuid: str = "",
        sync_interval_s: int = 0,
        replace_credentials: bool = False,
        op_id: str | None = None,
    ) -> KduflowHandle[InitClusterResult]:
        """``k8s_creds`` lands in workflow history (encrypted with a secret key): prefer storing the
        kubeconfig in ``k8sclusters.credentials`` and passing ``cluster_uuid`` only."""
        # The id is needed before the workflow runs: generated here, as N2VC's init_env did.
        cluster = reuse_cluster_uuid or cluster_uuid or str(uuid.uuid4())
        inp = InitClusterInput(
            cluster, k8s_creds, namespace, reuse_cluster_uuid or "", sync_interval_s, replace_credentials
        )
        try:
            validation.validate_cluster_uuid(cluster)
            validation.validate_namespace(namespace, allow_empty=False)
            validation.validate_sync_interval(sync_interval_s)
        except validation.InvalidInputError as err:
            raise _invalid(err) from None
        return await self._cluster("InitCluster", "init-cluster", inp, InitClusterResult, op_id)

    async def init_cluster(self, *args: Any, **kwargs: Any) -> InitClusterResult:
        """N2VC ``init_env``: register the cluster (``cluster_uuid`` and N2VC's ``installed_sw``)."""
        return await (await self.start_init_cluster(*args, **kwargs)).result()

    async def start_reset_cluster(
        self, cluster_uuid: str, force: bool = False, uninstall_sw: bool = False, *, op_id: str | None = None
    ) -> KduflowHandle[bool]:
        inp = ResetClusterInput(cluster_uuid, force, uninstall_sw)
        try:
            validation.validate_cluster_uuid(cluster_uuid)
            validation.validate_bool(force, "force")
            validation.validate_bool(uninstall_sw, "uninstall_sw")
        except validation.InvalidInputError as err:
            raise _invalid(err) from None
        return await self._cluster("ResetCluster", "reset-cluster", inp, bool, op_id)

    async def reset_cluster(self, *args: Any, **kwargs: Any) -> bool:
        """N2VC ``reset``: stop the repository schedule, uninstall releases (``uninstall_sw`` and
        ``force``), forget the cluster."""
        return await (await self.start_reset_cluster(*args, **kwargs)).result()

    async def start_sync_repos(
        self, cluster_uuid: str, *, op_id: str | None = None
    ) -> KduflowHandle[SyncReposResult]:
        inp = SyncReposInput(cluster_uuid)
        try:
            validation.validate_cluster_uuid(cluster_uuid)
        except validation.InvalidInputError as err:
            raise _invalid(err) from None
        return await self._cluster("SyncRepos", "sync-repos", inp, SyncReposResult, op_id)

    async def sync_repos(self, *args: Any, **kwargs: Any) -> SyncReposResult:
        """N2VC ``synchronize_repos``: make the cluster's repositories what its document lists."""
        return await (await self.start_sync_repos(*args, **kwargs)).result()

    async def _repo(
        self, workflow: str, operation: str, inp: Any, name: str, result_type: type[T], op_id: str | None
    ) -> KduflowHandle[T]:
        cluster = inp.cluster_uuid
        workflow_id = f"repo/{_part(cluster)}/{_part(name)}/{operation}/{self._suffix(op_id)}"
        return await self._start(
            workflow, inp, result_type, workflow_id, self._attributes(cluster, "", "", operation), op_id
        )

    async def start_repo_add(
        self,
        cluster_uuid: str,
        name: str,
        url: str,
        repo_type: str = "chart",
        cert: str | None = None,
        user: str | None = None,
        password: str | None = None,
        oci: bool = False,
        *,
        op_id: str | None = None,
    ) -> KduflowHandle[RepoAddResult]:
        inp = RepoAddInput(cluster_uuid, name, url, repo_type, cert or "", user or "", password or "", oci)
        _check(validation.validate_repo_add, inp)
        return await self._repo("RepoAdd", "repo-add", inp, name, RepoAddResult, op_id)

    async def repo_add(self, *args: Any, **kwargs: Any) -> RepoAddResult:
        """N2VC ``repo_add``: register the repository (k8srepos + the cluster's list) and add it."""
        return await (await self.start_repo_add(*args, **kwargs)).result()

    async def start_repo_list(
        self, cluster_uuid: str, *, op_id: str | None = None
    ) -> KduflowHandle[RepoListResult]:
        inp = RepoListInput(cluster_uuid)
        _check(validation.validate_repo_list, inp)
        return await self._repo("RepoList", "repo-list", inp, "-", RepoListResult, op_id)

    async def repo_list(self, *args: Any, **kwargs: Any) -> RepoListResult:
        """N2VC ``repo_list``: the repositories helm has for the cluster (``.repos``: id, name, url)."""
        return await (await self.start_repo_list(*args, **kwargs)).result()

    async def start_repo_remove(
        self, cluster_uuid: str, name: str, *, op_id: str | None = None
    ) -> KduflowHandle[RepoRemoveResult]:
        inp = RepoRemoveInput(cluster_uuid, name)
        _check(validation.validate_repo_remove, inp)
        return await self._repo("RepoRemove", "repo-remove", inp, name, RepoRemoveResult, op_id)

    async def repo_remove(self, *args: Any, **kwargs: Any) -> RepoRemoveResult:
        """N2VC ``repo_remove``: take the repository off the cluster (``existed`` says whether it was)."""
        return await (await self.start_repo_remove(*args, **kwargs)).result()

    # -- any operation -------------------------------------------------------------------------

    def get_handle(
        self, workflow_id: str, result_type: type[T], run_id: str | None = None
    ) -> KduflowHandle[T]:
        """A handle on a kduflow workflow started earlier (e.g. by another process)."""
        return KduflowHandle(
            self.client.get_workflow_handle(workflow_id, run_id=run_id, result_type=result_type), result_type
        )


def _check(validate: Any, inp: Any) -> None:
    try:
        validate(inp)
    except validation.InvalidInputError as err:
        raise _invalid(err) from None


def _plain(converter: DataConverter) -> DataConverter:
    """``converter`` without a payload codec of its own (kduflow's replaces it)."""
    return dataclasses.replace(converter, payload_codec=None)


def _unregistered_attributes(err: RPCError) -> bool:
    text = err.message.lower()
    return err.status == RPCStatusCode.INVALID_ARGUMENT and "search attribute" in text


__all__ = [
    "ERRORS",
    "OPERATION_QUERY",
    "ChartNotFound",
    "ClusterExists",
    "ClusterNotFound",
    "ClusterUnreachable",
    "CredentialsInvalid",
    "HelmError",
    "InvalidInput",
    "InvalidResource",
    "KduflowClient",
    "KduflowError",
    "KduflowHandle",
    "OperationCancelled",
    "OperationInProgress",
    "OperationTerminated",
    "OperationTimedOut",
    "ProcessTimeout",
    "ReleaseFailed",
    "ReleaseNameInUse",
    "ReleaseNotFound",
    "RenderFailed",
    "RepoNotFound",
    "ReplicaKeyAmbiguous",
    "ReplicaKeyNotFound",
    "RollbackFailed",
    "ServerError",
    "UnknownFailure",
    "UnsupportedHelm",
    "UpgradeFailed",
    "UpgradeRolledBack",
    "UrlNotAllowed",
    "translate_failure",
]
