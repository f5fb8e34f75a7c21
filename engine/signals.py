"""Stop requests from the outside (SIGINT, SIGTERM, SIGHUP) during a run.

SLURM, Kubernetes, ``timeout`` and ``docker stop`` send SIGTERM; a terminal's Ctrl-C is
SIGINT; a closed terminal SIGHUP. :class:`StopRequests` (a context manager, effective in
the main thread only) turns the first one into a request that the generating loop honours
at the next chunk boundary -- the frames emitted so far are kept and the output file is
finalised -- and a second one into :class:`Interrupted` raised at once (the file is still
closed by the caller's cleanup).
"""

from __future__ import annotations

import signal
import threading

HANDLED = tuple(s for s in (getattr(signal, n, None) for n in ("SIGINT", "SIGTERM", "SIGHUP")) if s is not None)


class Interrupted(Exception):
    """A stop signal arrived; ``signum`` is its number (exit status 128 + signum)."""

    def __init__(self, signum: int, message: str | None = None):
        self.signum = int(signum)
        super().__init__(message or f"interrupted by {signal_name(signum)}")


def signal_name(signum: int) -> str:
    """'SIGTERM' for 15, etc."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class StopRequests:
    """Within ``with StopRequests() as stop:``, SIGINT/SIGTERM/SIGHUP set ``stop.signum``
    (the first) or raise :class:`Interrupted` (the second). Outside the main thread it
    installs nothing and ``signum`` stays None. The previous handlers come back on exit."""

    def __init__(self):
        self.signum: int | None = None
        self._old: dict[int, object] = {}

    def _handle(self, signum, frame):  # noqa: ARG002 -- signal handler signature
        if self.signum is not None:
            raise Interrupted(signum, f"{signal_name(signum)} again: aborting at once")
        self.signum = signum

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():
            for s in HANDLED:
                try:
                    self._old[s] = signal.signal(s, self._handle)
                except (ValueError, OSError):  # not settable here (embedded interpreter, ...)
                    pass
        return self

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old.clear()

    @property
    def requested(self) -> bool:
        return self.signum is not None
