"""The contract package stands alone: no activity, workflow, worker or sandbox code comes with it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import activities.errors as activity_errors
from contract import errors

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = ("activities", "workflows", "kduflow", "sandbox", "pymongo", "montydb", "yaml")


def _modules_after(statement: str) -> list[str]:
    code = f"import sys, json\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT, env=env
    )
    return json.loads(out.stdout)


def test_contract_imports_no_project_package() -> None:
    loaded = _modules_after(
        "import contract, contract.models, contract.cluster, contract.validation, contract.errors"
    )
    assert "contract.validation" in loaded
    offending = [m for m in loaded if m.split(".")[0] in FORBIDDEN]
    assert offending == []


def test_contract_does_no_io_at_import() -> None:
    # Importing the contract opens no file beyond Python's own modules: audit hooks see every open.
    code = (
        "import sys\nopened = []\n"
        "sys.addaudithook(lambda ev, args: opened.append(str(args[0])) if ev == 'open' else None)\n"
        "import contract.models, contract.cluster, contract.validation, contract.errors\n"
        "print('\\n'.join(p for p in opened if not p.endswith(('.py', '.pyc')) and '__pycache__' not in p"
        " and not p.endswith('/')))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    # Directory listings by the import system show up as paths too; only files would be I/O.
    files = [p for p in out.stdout.splitlines() if p and Path(p).is_file()]
    assert files == []


def test_error_classes_carry_the_contract_names() -> None:
    for name in errors.NON_RETRYABLE_TYPES:
        cls = getattr(activity_errors, name)
        assert issubclass(cls, activity_errors.KduflowError) and cls.retryable is False, name
    for name in errors.RETRYABLE_TYPES:
        assert getattr(activity_errors, name).retryable is True, name
    for child, parent in errors.PARENT_TYPES.items():
        assert getattr(activity_errors, child).__mro__[1] is getattr(activity_errors, parent)
    leaves = {
        cls.__name__
        for cls in vars(activity_errors).values()
        if isinstance(cls, type)
        and issubclass(cls, activity_errors.KduflowError)
        and cls not in (activity_errors.KduflowError, activity_errors.PermanentError)
        and cls is not activity_errors.RetryableError
    }
    assert leaves == set(errors.ERROR_TYPES)
