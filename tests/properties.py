"""Property-based tests (hypothesis) with a bounded budget in the default suite and a larger one under ``slow``.

Use ``@pytest.mark.parametrize("examples", EXAMPLES)`` and run the property with ``check(examples)``::

    @pytest.mark.parametrize("examples", EXAMPLES)
    def test_x(examples):
        @check(examples)
        @given(st.binary())
        def prop(data): ...

Examples are derandomized (the same every run: tests are deterministic) and no example database is written.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

DEFAULT_EXAMPLES = 40
SLOW_EXAMPLES = 1500
EXAMPLES = [DEFAULT_EXAMPLES, pytest.param(SLOW_EXAMPLES, marks=pytest.mark.slow, id="slow")]


def check(examples: int) -> Callable[[Callable[..., Any]], None]:
    """Run the decorated ``@given`` property now, with ``examples`` examples."""

    def run(prop: Callable[..., Any]) -> None:
        settings(
            max_examples=examples,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        )(prop)()

    return run
