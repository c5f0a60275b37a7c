"""kduflow's contract: what workflows, activities and clients agree on, and nothing else.

* :mod:`contract.models`: the release workflows' inputs and results, the activities' inputs and
  results, ``ACTIVITY_NAMES``, the lock's types.
* :mod:`contract.cluster`: the cluster and repository workflows' and activities' types,
  ``CLUSTER_ACTIVITY_NAMES``.
* :mod:`contract.validation`: the pure input checks every workflow runs first (and a client may run
  before it starts one); :class:`~contract.validation.InvalidInputError`.
* :mod:`contract.errors`: the ``ApplicationError.type`` names callers see, and which are retryable.
* :mod:`contract.search`: the typed search attributes (``KduCluster``, ``KduRelease``, ...).

No I/O, and no import of ``activities``, ``workflows``, ``kduflow`` or ``sandbox`` (a test checks
both): workflows import it inside ``workflow.unsafe.imports_passed_through()``, and a client needs
nothing else to speak to kduflow. Payloads are the JSON of these dataclasses, so class names, field
names, defaults and field order are only ever extended (fields added last, with defaults).
"""
