"""Shared by the data tests: measure what a reader allocates on a corrupt file."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest


@pytest.fixture()
def traced_peak() -> Callable[[Callable[[], Any]], tuple[BaseException | None, float]]:
    """``traced_peak(fn)`` -> ``(exception raised or None, peak traced allocation in MB)``.

    tracemalloc sees Python objects (a ``bytes`` buffer pre-allocated for a claimed length)
    and numpy arrays, the two ways a corrupt length field turns into gigabytes. A reader
    whose memory is bounded by the file stays near zero on the tiny files of these tests.
    """

    def run(fn: Callable[[], Any]) -> tuple[BaseException | None, float]:
        error: BaseException | None = None
        tracemalloc.start()
        try:
            fn()
        except Exception as exc:  # the caller asserts on it
            error = exc
        finally:
            peak = tracemalloc.get_traced_memory()[1] / 1e6
            tracemalloc.stop()
        return error, peak

    return run
