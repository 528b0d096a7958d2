"""No network at run time: the one place that turns off every library's telemetry, hub lookups and update checks.

`go_offline()` runs when `anon_core` is imported (so before any of its modules imports onnxruntime, whose
telemetry reads its switch once, at import) and again in each entry point. It only sets what the environment does
not already say (`setdefault`): an operator who deliberately sets a variable keeps it. `offline_env()` is the
same set for child processes and Ray workers (`runtime_env`). What each library does without these, checked on
the versions pinned in pyproject.toml (tests/test_no_network.py runs image, video and audio anonymization under
`strace -f -e trace=connect` and fails on any connect outside loopback):

- onnxruntime >= 1.29 (1DS): queues process and session events (model names, a device id) in
  ~/.cache/Microsoft/DeveloperTools/.onnxruntime/onnxruntime.db and resolves mobile.events.data.microsoft.com.
  Only ORT_DISABLE_TELEMETRY=1 set before `import onnxruntime` stops it; `disable_telemetry_events()` after the
  import still writes the database and resolves the host (measured), so it is only a fallback here.
- MLflow: usage telemetry (MLFLOW_DISABLE_TELEMETRY; DO_NOT_TRACK is honoured too).
- Ray: usage stats (RAY_USAGE_STATS_ENABLED=0).
- ultralytics: connectivity probe, settings sync/events, pip auto-install (YOLO_OFFLINE, YOLO_AUTOINSTALL; the
  yolo detector also turns off its tracker integrations).
- huggingface_hub / transformers (pyannote speakers): hub lookups and telemetry (HF_HUB_OFFLINE & co.).
- botocore (s3fs): the EC2 instance-metadata endpoint when no credentials are configured
  (AWS_EC2_METADATA_DISABLED); google-auth (gcsfs): the GCE metadata server (NO_GCE_CHECK).
- OpenVINO: `import openvino` imports its model converter (`openvino.tools.ovc`), which sends a Google Analytics
  event from a forked child at import unless a consent file in ~/intel says no (measured: a DNS query for
  www.google-analytics.com). anon never converts models at run time, so `import_openvino()` imports the runtime
  with the converter held back; every OpenVINO import in anon goes through it.
- torch: no hub access anywhere in anon (weights come from packages or paths).
"""

from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger("anon.offline")

OFFLINE_ENV: dict[str, str] = {
    "ORT_DISABLE_TELEMETRY": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "YOLO_OFFLINE": "1",
    "YOLO_AUTOINSTALL": "0",
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "NO_GCE_CHECK": "true",
}

_late_warned = False


def offline_env() -> dict[str, str]:
    """The offline variables as this process has them (an operator's explicit value wins): for child processes
    and Ray `runtime_env`s."""
    return {k: os.environ.get(k, v) for k, v in OFFLINE_ENV.items()}


def go_offline() -> None:
    """Set every offline variable the environment does not set already. Idempotent and cheap."""
    global _late_warned
    ort_switch_preset = "ORT_DISABLE_TELEMETRY" in os.environ
    for k, v in OFFLINE_ENV.items():
        os.environ.setdefault(k, v)
    if "onnxruntime" in sys.modules and not _late_warned:
        # Imported before us: its telemetry switch was read already. Turn off what still can be turned off.
        _late_warned = True
        try:
            sys.modules["onnxruntime"].disable_telemetry_events()
        except Exception:  # an onnxruntime without the call, or a stub module: nothing more we can do
            pass
        if not ort_switch_preset:
            log.warning("onnxruntime was imported before anon_core: its telemetry is only partly off; set "
                        "ORT_DISABLE_TELEMETRY=1 in the environment (or import anon_core first)")


def import_openvino():
    """`import openvino` without the converter's import-time telemetry (see above); ImportError if not installed.

    openvino's `__init__` tolerates an ImportError for `openvino.tools.ovc`: a None entry in sys.modules makes that
    import fail for the moment of our import, then the entry is removed, so an explicit import later still works."""
    if "openvino" in sys.modules and sys.modules["openvino"] is not None:
        return sys.modules["openvino"]
    go_offline()
    held_back = "openvino.tools.ovc" not in sys.modules
    if held_back:
        sys.modules["openvino.tools.ovc"] = None  # type: ignore[assignment]
    try:
        import openvino
    finally:
        if held_back and sys.modules.get("openvino.tools.ovc", 0) is None:
            del sys.modules["openvino.tools.ovc"]
    return openvino


__all__ = ["OFFLINE_ENV", "go_offline", "import_openvino", "offline_env"]
