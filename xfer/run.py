"""A training run in a background thread: its events as an iterator, Stop, and its outcome.

``TrainingRun(job, commit=...)`` calls ``job(callback=..., cancel=...)`` (for example a
``functools.partial`` of :func:`xfer.train`) in a thread and hands its per-batch
:class:`~xfer.engine.Progress` and per-epoch :class:`~xfer.engine.EpochStats` to whoever
iterates over it, then one :class:`Done` or :class:`Failed`. ``commit(model)`` runs only when
the job returned and nobody asked to stop, so the previous model stays in use until a run
has finished.
"""

from __future__ import annotations

import logging
import queue
import threading
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Union

from .engine import EpochStats, Progress
from .errors import Cancelled

log = logging.getLogger(__name__)

STOPPED_MESSAGE = "Training was stopped; the previous model is unchanged."


@dataclass
class Done:
    """The run's last event when it succeeded: ``model`` is the job's result, already committed."""

    model: Any


@dataclass
class Failed:
    """The run's last event when it did not succeed; ``error`` is :class:`~xfer.Cancelled` after a Stop."""

    error: BaseException

    @property
    def stopped(self) -> bool:
        return isinstance(self.error, Cancelled)


Event = Union[Progress, EpochStats, Done, Failed]
Outcome = Union[Done, Failed]


class TrainingRun:
    """One training job in a thread, consumed as an iterator of typed events.

    ``job(callback=..., cancel=...)`` must report through ``callback`` and check
    ``cancel.is_set()`` between batches (as :func:`xfer.train` does). Iterating starts the
    run if :meth:`start` was not called; it yields every event and ends after the
    :class:`Done` or :class:`Failed`. Closing the iterator early (a visitor who left)
    asks the run to stop. The DataLoader workers belong to the job's frames, which are
    released when the run ends, so they end with it.
    """

    def __init__(self, job: Callable[..., Any], commit: Callable[[Any], None] | None = None,
                 name: str = "xfer-train") -> None:
        self._job, self._commit, self._name = job, commit, name
        self._cancel = threading.Event()
        self._lock = threading.Lock()  # orders a Stop against the decision to commit
        self._events: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._outcome: Outcome | None = None
        self.last_progress: Progress | None = None

    def __repr__(self) -> str:
        state = "not started" if self._thread is None else type(self._outcome).__name__ if self._outcome else "running"
        return f"TrainingRun({self._name}, {state})"

    # --- control ---------------------------------------------------------------------------

    def start(self) -> "TrainingRun":
        """Start the job in a daemon thread (once); returns self."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, daemon=True, name=self._name)
            self._thread.start()
        return self

    @property
    def running(self) -> bool:
        """Started and without an outcome yet."""
        return self._thread is not None and self._outcome is None

    @property
    def stopping(self) -> bool:
        return self._cancel.is_set()

    @property
    def progress(self) -> float:
        """The fraction of the run done, per the last :class:`Progress` (0 before any)."""
        return self.last_progress.fraction if self.last_progress else 0.0

    @property
    def outcome(self) -> Outcome | None:
        """:class:`Done` or :class:`Failed` once the run has ended; None before."""
        return self._outcome

    def stop(self, wait: bool = True, timeout: float | None = None) -> Outcome | None:
        """Ask the run to end after its current batch (nothing is committed then).

        With ``wait``, block until it ended (at most ``timeout`` seconds) and return the
        outcome: a :class:`Done` if it had already finished and committed before the Stop.
        """
        with self._lock:
            self._cancel.set()
        return self.wait(timeout) if wait else self._outcome

    def wait(self, timeout: float | None = None) -> Outcome | None:
        """Block until the run ended (or ``timeout``); returns the outcome (None if still running)."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self._outcome

    # --- events ----------------------------------------------------------------------------

    def events(self) -> Iterator[Event]:
        """Progress and EpochStats as they come, then the Done or Failed; starts the run if needed."""
        self.start()
        finished = False
        try:
            while True:
                event = self._events.get()
                if isinstance(event, Progress):
                    self.last_progress = event
                finished = isinstance(event, (Done, Failed))
                yield event
                if finished:
                    return
        finally:
            if not finished:  # the consumer went away: nobody will see this run's model
                self.stop(wait=False)

    __iter__ = events

    # --- the thread ----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            model = self._job(callback=self._events.put, cancel=self._cancel)
            with self._lock:  # a Stop from now on comes too late: the run is committed
                if self._cancel.is_set():
                    raise Cancelled(STOPPED_MESSAGE)
                if self._commit is not None:
                    self._commit(model)
            outcome: Outcome = Done(model)
        except BaseException as e:  # handed to the consumer, which decides
            if not isinstance(e, Cancelled):
                log.debug("training run failed", exc_info=e)
            # The traceback keeps the job's frames (its loaders and their worker processes, the net, cached
            # features) alive for as long as someone holds the error: let them go, keep the lines.
            traceback.clear_frames(e.__traceback__)
            outcome = Failed(e)
        self._outcome = outcome
        self._events.put(outcome)
