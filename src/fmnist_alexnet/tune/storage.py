"""Where a study lives, shared by every worker given the same ``--storage`` and ``--study``.

- a database URL (``sqlite:///...``, ``postgresql://...``, ``mysql://...``): Optuna's
  RDBStorage, with a heartbeat: a worker that dies mid-trial (killed, its machine lost)
  leaves a RUNNING trial whose heartbeat stops; once it is ``3 x --heartbeat`` seconds old
  another worker marks it failed and enqueues its parameters again
  (``RetryHeartbeatStaleTrialCallback``), so the study still gets its trials;
- ``journal:PATH``: Optuna's journal file, for a file system the workers share and no
  database server. Optuna gives it no heartbeat: a killed worker's trial stays RUNNING and
  is not retried (docs/distributed.md).
"""

from __future__ import annotations

import time
from pathlib import Path
from types import ModuleType
from typing import Any

from fmnist_alexnet.errors import FmnistError

JOURNAL = "journal:"
RETRIES = 2  # times one trial's parameters are run again after their worker died
OPEN_ATTEMPTS = 5


def default_storage(out: Path) -> str:
    return f"sqlite:///{(out / 'study.db').resolve()}"


def open_storage(optuna: ModuleType, url: str, heartbeat: int) -> Any:
    """The storage ``url`` names (see the module's docstring); one error line when it cannot
    be opened."""
    if url.startswith(JOURNAL):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = Path(url[len(JOURNAL) :])
        if not path.name:
            raise FmnistError(f"--storage {url}: name the journal file, e.g. journal:study.log")
        try:
            return JournalStorage(JournalFileBackend(str(path)))
        except OSError as exc:
            raise FmnistError(f"--storage {url}: {exc.strerror or exc}") from None
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    for attempt in range(OPEN_ATTEMPTS):
        try:
            return RDBStorage(
                url,
                heartbeat_interval=heartbeat,
                grace_period=3 * heartbeat,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=RETRIES),
            )
        except (ImportError, ValueError) as exc:  # a bad URL, a database driver not installed
            raise FmnistError(f"--storage {url}: {_first_line(exc)}{_driver_hint(exc)}") from None
        except Exception as exc:  # SQLAlchemy's errors: no server there, a bad login...
            # ...or, on a new database, another worker creating Optuna's tables this very
            # moment (PostgreSQL: a unique violation in its catalogue, or a table that already
            # exists): they exist once it is done, so open again
            racing = any(sign in str(exc) for sign in ("UniqueViolation", "already exists"))
            if not racing or attempt == OPEN_ATTEMPTS - 1:
                raise FmnistError(f"--storage {url}: cannot open it ({_first_line(exc)})") from None
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _driver_hint(exc: BaseException) -> str:
    if isinstance(exc, ImportError) and "psycopg" in str(exc):
        return " (pip install 'fmnist-alexnet[tune-db]')"
    return ""
