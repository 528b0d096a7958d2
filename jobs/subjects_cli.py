"""`anon find-subject --ref REF.jpg [--ref ...] INPUT`: assets and frames where a person appears (JSON lines)."""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="file, folder or fsspec URL to search")
    p.add_argument("--ref", action="append", required=True, help="reference photo of the person (repeatable)")
    p.add_argument("--every-s", type=float, default=0.5, help="video: check one frame per this many seconds (0: all)")
    p.add_argument("--threshold", type=float, default=None, help="match distance (default: subjects.threshold)")
    p.add_argument("--all", action="store_true", help="also list assets without a match")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (detectors)")


def cmd_find_subject(args: argparse.Namespace) -> int:
    from anon_core.subjects.filter import SubjectError
    from anon_core.subjects.find import find_subject
    from jobs.config import load_config

    try:
        config = load_config(["policy=faces", *args.set])
        found = 0
        for app in find_subject(args.input, args.ref, config, args.every_s, args.threshold):
            if app.frames or args.all or app.error:
                print(json.dumps(app.to_dict()), flush=True)
            found += bool(app.frames)
    except (SubjectError, ValueError, RuntimeError) as exc:
        print(f"anon find-subject: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"assets_with_subject": found}), file=sys.stderr)
    return 0
