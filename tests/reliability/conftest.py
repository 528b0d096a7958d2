"""Fixtures of the reliability suite (see helpers.py)."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("websockets")
pytest.importorskip("httpx")


def make_settings(tmp, **extra):
    """ServiceSettings with the suite's keys and a private temp root; fields are set one by one so the same
    test runs against builds whose settings lack some of them (that is how each test was seen to fail first)."""
    from jobs.serve import ServiceSettings
    from tests.reliability.helpers import KEY, OTHER_KEY

    s = ServiceSettings(api_keys=[KEY, OTHER_KEY], config_sets=["policy=faces"], tmp_dir=str(tmp))
    for k, v in extra.items():
        setattr(s, k, v)
    return s
