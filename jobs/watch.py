"""`anon watch`: continuous mode for archives (the logic is in `anon_core/watch/`; this is the entry point).

    anon watch s3://archive/in -o s3://archive/out --set policy=faces --interval 5 --max-in-flight 4
    python jobs/watch.py INPUT -o OUTPUT [same options]                       # e.g. under `ray job submit`:
    ray job submit --working-dir . -- python jobs/watch.py s3://archive/in -o s3://archive/out

Runs until SIGTERM/SIGINT (finishes in-flight assets, writes their manifest rows, exits 0; a second signal
exits at once, which is safe too: the next start re-runs what has no row) or, with `--once`, until what is
there now has settled and been processed. One log line per interval (stderr) and a status JSON
(`<output>/_manifests/watch/_status.json` unless `--status-file`). Exit status: 0 after a clean stop, 2 on a
bad configuration.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:  # `python jobs/watch.py` (and ray job submit's copy) import the repo beside it
    sys.path.insert(0, str(_ROOT))

from jobs.argdefaults import Flag, defaults_formatter, given  # noqa: E402

# Flags that set WatchSettings fields (anon_core/watch/settings.py): the dataclass holds the defaults.
FLAGS = {"interval": Flag("interval_s"), "settle": Flag("settle_s"), "max_in_flight": Flag("max_in_flight"),
         "manifest": Flag("manifest"), "erasure": Flag("erasure"), "erase_guard": Flag("erase_guard"),
         "source": Flag("source"), "queue": Flag("queue"), "status_file": Flag("status_path"),
         "batch_rows": Flag("batch_rows"), "flush": Flag("flush_s"), "run_id": Flag("run_id")}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = defaults_formatter("anon_core.watch.settings:WatchSettings", FLAGS)
    p.add_argument("input", help="folder or fsspec URL prefix to watch")
    p.add_argument("-o", "--output", required=True, help="where outputs go (same relative paths)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (see conf/)")
    p.add_argument("--interval", type=float, metavar="S", help="seconds between polls")
    p.add_argument("--settle", type=float, metavar="S",
                   help="an object must also be unchanged this long before it is read (0: two equal polls)")
    p.add_argument("--max-in-flight", type=int, metavar="N", help="assets processed at once")
    p.add_argument("--once", action="store_true", help="process what is there once it settles, then exit")
    p.add_argument("--manifest", help="manifest root (default OUTPUT/_manifests/watch)")
    p.add_argument("--erasure", metavar="URI",
                   help="erasure request prefix (default INPUT/_erasure; '' disables requests)")
    p.add_argument("--no-erase-on-delete", action="store_true",
                   help="keep outputs when their source object disappears")
    p.add_argument("--erase-guard", type=float, metavar="F",
                   help="refuse to erase more than this fraction of outputs in one poll (1 disables)")
    p.add_argument("--source", choices=("poll", "queue"), help="poll the prefix, or read storage events (--queue)")
    p.add_argument("--queue", metavar="URI", help="source=queue: folder of JSONL storage events")
    p.add_argument("--status-file", metavar="URI")
    p.add_argument("--batch-rows", type=int, help="rows per manifest part at most")
    p.add_argument("--flush", type=float, metavar="S", help="rows wait at most this long")
    p.add_argument("--storage-options", default=None, metavar="JSON",
                   help='fsspec options for every URI, e.g. \'{"client_kwargs": {"endpoint_url": "http://..."}}\' '
                        "(or ANON_STORAGE_OPTIONS)")
    p.add_argument("--run-id")


def settings_from_args(args: argparse.Namespace):
    from anon_core.schema import build
    from anon_core.watch.settings import WatchSettings

    raw = args.storage_options or os.environ.get("ANON_STORAGE_OPTIONS") or "{}"
    absolute = (lambda u: u if u is None or "://" in u or u == "" else os.path.abspath(u))  # noqa: E731
    values = given(args, FLAGS)
    for key in ("manifest", "erasure", "queue", "status_path"):
        if key in values:
            values[key] = absolute(values[key])
    for key in ("max_in_flight", "batch_rows"):
        if key in values:
            values[key] = max(1, values[key])
    if args.no_erase_on_delete:
        values["erase_on_delete"] = False
    if args.once:
        values["once"] = True
    return build(WatchSettings, {"input": absolute(args.input), "output": absolute(args.output),
                                 "storage_options": json.loads(raw), **values})


def cmd_watch(args: argparse.Namespace) -> int:
    from anon_core.watch import Watcher
    from jobs.config import load_config

    logging.getLogger("anon.watch").setLevel(os.environ.get("ANON_WATCH_LOG_LEVEL", "INFO"))
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # One onnxruntime pool per worker thread sized to its share of the cores (else N workers x all cores).
    try:
        settings = settings_from_args(args)
        os.environ.setdefault("ANON_ORT_THREADS", str(max(1, (os.cpu_count() or 1) // settings.max_in_flight)))
        config = load_config(args.set)
        watcher = Watcher(settings, config)
    except Exception as exc:
        print(f"anon watch: bad configuration: {exc}", file=sys.stderr)
        return 2

    def on_signal(signum, _frame):
        if watcher.stopping.is_set():  # second signal: leave now; rows not yet written are redone on restart
            os._exit(128 + signum)
        print(f"anon watch: {signal.Signals(signum).name}: finishing in-flight assets", file=sys.stderr, flush=True)
        watcher.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    status = watcher.run()
    print(json.dumps({k: status[k] for k in ("run_id", "state", "ok", "failed", "skipped", "erased",
                                             "latency_p50_s", "latency_p95_s")}), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    from anon_core.offline import go_offline

    go_offline()
    p = argparse.ArgumentParser(prog="watch", description="Continuous mode: anonymize new assets exactly once.")
    add_arguments(p)
    return cmd_watch(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
