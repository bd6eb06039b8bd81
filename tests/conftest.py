"""Hypothesis profiles and the ``backend`` fixture over {torch, jax}.

Profiles (``HYPOTHESIS_PROFILE``): ``dev`` (few examples, random) for the edit-test loop and
``ci`` (more examples, derandomized so a CI run is reproducible); ``ci`` is the default when the
``CI`` environment variable is set.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

from tests.backends import BACKENDS, MODULES, available

settings.register_profile(
    "dev", max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "ci",
    max_examples=75,
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


@pytest.fixture(scope="session", params=sorted(BACKENDS))
def backend(request):
    """One framework; tests that need float64 wrap their body in ``with backend.x64():``."""
    if not available(MODULES[request.param]):
        pytest.skip(f"{request.param} is not installed")
    return BACKENDS[request.param]()
