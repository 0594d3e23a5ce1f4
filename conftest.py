"""Shared pytest configuration: Hypothesis profiles for the spec.

Profiles:
- ``dev`` (default on a workstation): quick, random, enough to run before every change.
- ``ci``: Hypothesis' own profile, which it loads by itself when ``CI=true``.
- ``thorough``: thousands of examples per property, for a deep check before a release.
- ``mutation``: derandomized and without the shrink phase, for mutmut.

Choose one with ``--hypothesis-profile NAME`` or ``HYPOTHESIS_PROFILE=NAME``.
"""

import os

from hypothesis import HealthCheck, Phase, settings

# Torch calls are slow the first time and vary with machine load: no deadlines anywhere.
settings.register_profile("dev", max_examples=25, deadline=None)
settings.register_profile(
    "thorough",
    max_examples=2000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "mutation",
    max_examples=20,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)

_requested = os.environ.get("HYPOTHESIS_PROFILE")
if _requested:
    settings.load_profile(_requested)
elif os.environ.get("CI", "").lower() not in ("1", "true"):
    settings.load_profile("dev")
