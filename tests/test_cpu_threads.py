"""The runtime's default torch threads per worker: one CPU worker uses every core it may
run on, several share them; ENGINE_CPU_THREADS fixes the count; the count is pinned for the
run and reported in the stats (float results on CPU depend on it)."""

import numpy as np
import pytest

import engine
from engine.runtime import CPU_THREADS_ENV, available_cores, default_cpu_threads

SMALL = dict(num_frames=5, height=32, width=32, progress=False, seed=0, prompt="x")


def test_default_is_a_share_of_the_cores(monkeypatch):
    monkeypatch.delenv(CPU_THREADS_ENV, raising=False)
    monkeypatch.setattr("engine.runtime.available_cores", lambda: 8)
    assert default_cpu_threads(["cpu"]) == 8
    assert default_cpu_threads(["cpu", "cpu"]) == 4
    assert default_cpu_threads(["cpu", "cpu", "cpu"]) == 2
    assert default_cpu_threads(["cpu"] * 16) == 1
    assert default_cpu_threads(["cuda:0", "cpu"]) == 8  # only CPU workers share the cores
    monkeypatch.setenv(CPU_THREADS_ENV, "3")
    assert default_cpu_threads(["cpu", "cpu"]) == 3
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv(CPU_THREADS_ENV, bad)
        with pytest.raises(ValueError, match=CPU_THREADS_ENV):
            default_cpu_threads(["cpu"])


def test_generate_uses_and_reports_the_default(monkeypatch):
    """Without cpu_threads a run is pinned to the default count (reported in the stats) and
    makes the video that count gives when asked for explicitly."""
    monkeypatch.delenv(CPU_THREADS_ENV, raising=False)
    auto = engine.generate("tiny-random", **SMALL)
    n = available_cores()
    assert auto.stats.runtime.cpu_threads == n
    given = engine.generate("tiny-random", cpu_threads=n, **SMALL)
    assert given.stats.runtime.cpu_threads == n
    np.testing.assert_array_equal(auto.frames, given.frames)
    two = engine.generate("tiny-random", devices=["cpu", "cpu"], **SMALL)
    assert two.stats.runtime.cpu_threads == max(1, n // 2)
