"""The soak test's short profile (benchmarks/soak.py): mixed image, video and WebSocket traffic at two
concurrency levels against a real `anon serve`; every response checked for surviving faces, RSS bounded, no temp
files left. The long profile (10 minutes) is run by hand; its figures are in benchmarks/RESULTS.md."""

from __future__ import annotations

import sys

from tests.reliability.helpers import ROOT


def test_soak_short_profile():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import soak

    res = soak.soak("short")
    assert res["ok"], res["problems"]
    assert res["checked"]["image"] > 0 and res["checked"]["video_frames"] > 0 and res["checked"]["ws_frames"] > 0
    assert res["temp_files_left"] == [] and res["failures"] == 0
