"""The kduflow Temporal plugin: every kduflow workflow and activity, registered in one place.

An orchestrator that already runs its own Temporal worker embeds kduflow with::

    client = await Client.connect("temporal:7233", plugins=[KduflowPlugin()])
    worker = Worker(client, task_queue="kduflow")

(the plugin goes on the client so the client's data converter matches the workers': with
``KDUFLOW_SECRET_KEY`` set, a plugin given only to the Worker refuses to start). ``worker.py`` does
exactly that for a standalone worker. The plugin owns the resources its activities
share (the store client and the per-cluster environments) and closes them when the worker stops.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from temporalio.client import Client
from temporalio.converter import DataConverter
from temporalio.plugin import SimplePlugin
from temporalio.worker import Worker, WorkerConfig, WorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from activities.cluster_env import ClusterEnvs
from activities.clusters import ClusterActivities
from activities.lock import LockActivities
from activities.release import ReleaseActivities
from activities.repos import RepoActivities
from activities.status import StatusActivities
from activities.store import Store
from activities.url_policy import UrlPolicy
from kduflow.codec import InputPayloadConverter, data_converter, encrypts
from kduflow.config import Settings
from kduflow.secretbox import SecretBox
from workflows import KDU_WORKFLOWS
from workflows.cluster import CLUSTER_WORKFLOWS
from workflows.lock import ReleaseLock

log = logging.getLogger(__name__)


class KduflowPlugin(SimplePlugin):
    """Registers kduflow's workflows and activities on a Temporal worker.

    Give it to ``Client.connect(..., plugins=[...])``: a client plugin propagates to the client's
    workers, and the client then encodes what it sends the way the workers expect (strict input
    decoding; with a secret key, encrypted payloads and failures). Given only to
    ``Worker(..., plugins=[...])`` it works without a secret key and refuses to start with one.

    Args:
        settings: Worker configuration; read from the environment (``Settings.from_env()``) when omitted.
        store: The MongoDB-compatible store; opened from ``settings`` when omitted. A store passed in
            is not closed by the plugin.
        encrypt_payloads: Encrypt every payload with ``kduflow.codec`` (default: when a secret key is
            configured). ``True`` without a key is an error.
    """

    def __init__(
        self,
        *,
        settings: Settings | None = None,
        store: Store | None = None,
        encrypt_payloads: bool | None = None,
    ) -> None:
        self.settings = settings or Settings.from_env()
        self._owns_store = store is None
        self.store = store or Store.open(self.settings)
        secretbox = SecretBox.from_setting(self.settings.secret_key)
        # Chart values and kubeconfigs travel in workflow inputs: with a key, histories hold only
        # ciphertext. The codec applies to the client the plugin is given (and its workers).
        self.encrypts_payloads = secretbox is not None and encrypt_payloads is not False
        if encrypt_payloads and secretbox is None:
            raise ValueError("encrypt_payloads needs KDUFLOW_SECRET_KEY (settings.secret_key)")
        self._box = secretbox if self.encrypts_payloads else None
        self.repos = RepoActivities(self.settings, None, self.store)
        self.envs = ClusterEnvs(self.settings, self.store, secretbox, on_materialise=self.repos.materialise)
        self.repos.envs = self.envs
        self.url_policy = UrlPolicy(self.settings, self.store)
        self.repos.url_policy = self.url_policy
        self.status = StatusActivities(self.settings, self.envs, self.store)
        # Release history and labels are read through the status activities' cached API clients,
        # and the helm activities report status with their observer.
        self.release = ReleaseActivities(
            self.settings,
            self.envs,
            charts=self.repos.charts,
            url_policy=self.url_policy,
            status=self.status,
        )
        self.clusters = ClusterActivities(self.settings, self.envs, self.store)
        self.lock = LockActivities(self.settings.lock_task_queue)
        super().__init__(
            "kduflow.KduflowPlugin",
            # A callable: it wraps whatever converter the client already has (see _data_converter).
            data_converter=self._data_converter,
            workflows=[*KDU_WORKFLOWS, *CLUSTER_WORKFLOWS],
            activities=[
                *activity_methods(self.release),
                *activity_methods(self.status),
                *activity_methods(self.repos),
                *activity_methods(self.clusters),
                *activity_methods(self.lock),
            ],
            run_context=self._run_context,
            workflow_runner=_with_pure_modules_passed_through,
        )

    def _data_converter(self, existing: DataConverter | None) -> DataConverter:
        return data_converter(self._box, base=existing)

    def configure_worker(self, config: WorkerConfig) -> WorkerConfig:
        """See base class.

        The data converter belongs to the client: a plugin handed only to ``Worker(...)`` cannot
        make the client that starts workflows encrypt. So with encryption on, a worker whose client
        does not encrypt with kduflow's codec is refused at construction (rather than silently
        writing chart values and kubeconfigs to histories in clear). Without encryption the worker
        gets a copy of its client with kduflow's strict input decoding.
        """
        config = super().configure_worker(config)
        client = config.get("client")
        if client is not None:
            current = client.data_converter
            if self.encrypts_payloads and not encrypts(current):
                raise ValueError(
                    "KduflowPlugin encrypts payloads (KDUFLOW_SECRET_KEY is set) but this worker's "
                    "client does not: give the plugin to the client, "
                    "Client.connect(..., plugins=[KduflowPlugin()]), not only to Worker(...)"
                )
            if not isinstance(current.payload_converter, InputPayloadConverter):
                client_config = client.config()
                client_config["data_converter"] = self._data_converter(current)
                config["client"] = Client(**client_config)
        return config

    async def run_worker(self, worker: Worker, next: Callable[[Worker], Awaitable[None]]) -> None:
        """See base class. A worker on another queue than the lock queue also polls the lock queue.

        Lock workflows run on ``settings.lock_task_queue`` whatever queue their requester used, so
        every kduflow worker serves them: the companion worker runs only the ``ReleaseLock``
        workflow and the ``lock.*`` activities, and stops with the worker it accompanies.
        """
        lock_queue = self.settings.lock_task_queue
        if worker.task_queue == lock_queue:
            await super().run_worker(worker, next)
            return
        config = worker.client.config()
        config["plugins"] = []  # the companion must not get this plugin's whole registration again
        companion = Worker(
            Client(**config),
            task_queue=lock_queue,
            workflows=[ReleaseLock],
            activities=activity_methods(self.lock),
        )
        async with companion:
            await super().run_worker(worker, next)

    @asynccontextmanager
    async def _run_context(self) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await self.status.close()
            if self._owns_store:
                await self.store.close()


#: Modules of pure data and functions (no clock, randomness or I/O) that workflow code imports. The
#: sandbox re-imports every module a workflow uses for each workflow run unless it is passed
#: through; these are shared instead, which cuts the CPU a workflow run costs the worker by about a
#: third. The modules holding workflow logic stay sandboxed, so the sandbox still refuses a clock,
#: random numbers or I/O there.
PURE_MODULES = (
    "contract",
    "activities.models",
    "workflows.cluster_models",
    "workflows.decoding",
    "workflows.naming",
    "workflows.scale",
    "workflows.validation",
    "yaml",
)


def _with_pure_modules_passed_through(existing: WorkflowRunner | None) -> WorkflowRunner:
    """The worker's sandboxed runner (the SDK default when none) with :data:`PURE_MODULES` passed
    through; any other runner the worker chose is left as it is."""
    if existing is None:
        existing = SandboxedWorkflowRunner()
    if not isinstance(existing, SandboxedWorkflowRunner):
        return existing
    restrictions = existing.restrictions.with_passthrough_modules(*PURE_MODULES)
    return dataclasses.replace(existing, restrictions=restrictions)


def activity_methods(instance: object) -> list:
    """The bound ``@activity.defn`` methods of an activities object, in definition order."""
    methods = []
    for name in dir(type(instance)):
        attr = getattr(type(instance), name)
        if callable(attr) and hasattr(attr, "__temporal_activity_definition"):
            methods.append(getattr(instance, name))
    return methods
