"""`anon` command line: anonymize (files, folders, fsspec URLs); later: validate, serve, watch, report."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys


def cmd_anonymize(args: argparse.Namespace) -> int:
    from anon_core.runner import run
    from jobs.config import load_config

    try:
        config = load_config(args.set)
        if config.vault.enabled:  # no output may be written that its vault could not reverse
            from anon_core.vault import load_key

            load_key(config.vault.key_env)
    except Exception as exc:
        print(f"anon: bad configuration: {exc}", file=sys.stderr)
        return 2
    try:
        summary = run(args.input, args.output, config, progress=None if not args.no_progress else False)
    except ValueError as exc:  # a detector or mask that rejects its parameters when the pipeline is built
        print(f"anon: bad configuration: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
              file=sys.stderr)
        return 2
    for r in summary.records:
        if r.status == "failed":
            print(f"FAILED {r.relative_path}: {r.error}", file=sys.stderr)
    result = {"run_id": summary.run_id, "assets": len(summary.records), "ok": summary.ok, "failed": summary.failed,
              "seconds": round(summary.seconds, 2), "output": summary.output, "manifest": summary.manifest}
    print(json.dumps(result))
    return 1 if summary.failed else 0


def cmd_config(args: argparse.Namespace) -> int:
    """The whole configuration after conf/ and the --set items, as YAML (the schema's defaults are in code)."""
    import yaml

    from anon_core.schema import to_data
    from jobs.config import load_config

    try:
        config = load_config(args.set)
    except Exception as exc:
        print(f"anon: bad configuration: {exc}", file=sys.stderr)
        return 2
    print(f"# config hash {config.hash()}")
    print(yaml.safe_dump(to_data(config), sort_keys=False), end="")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from jobs.validate import cmd_validate as run_validate

    return run_validate(args)


def _validate_arguments(p: argparse.ArgumentParser) -> None:
    from jobs.validate import add_arguments  # light: MLflow is imported only when a run is logged

    add_arguments(p)


def cmd_serve(args: argparse.Namespace) -> int:
    from jobs.serve import cmd_serve as run_serve

    return run_serve(args)


def _serve_arguments(p: argparse.ArgumentParser) -> None:
    from jobs.serve import add_arguments  # light: FastAPI/uvicorn are imported only when serving

    add_arguments(p)


def cmd_watch(args: argparse.Namespace) -> int:
    from jobs.watch import cmd_watch as run_watch

    return run_watch(args)


def _watch_arguments(p: argparse.ArgumentParser) -> None:
    from jobs.watch import add_arguments  # light: the pipeline is imported only when watching

    add_arguments(p)


def cmd_report(args: argparse.Namespace) -> int:
    from jobs.report import cmd_report as run_report

    return run_report(args)


def _report_arguments(p: argparse.ArgumentParser) -> None:
    from jobs.report import add_arguments  # light: pyarrow/MLflow are imported only when a report is built

    add_arguments(p)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="anon", description="Anonymize images, video, audio and metadata.")
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("anonymize", help="anonymize a file, a folder (recursive) or an fsspec URL")
    a.add_argument("input")
    a.add_argument("-o", "--output", required=True)
    a.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (see conf/)")
    a.add_argument("--no-progress", action="store_true")
    a.set_defaults(func=cmd_anonymize)
    c = sub.add_parser("config", help="print the configuration (defaults + conf/ + --set) as YAML")
    c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (see conf/)")
    c.set_defaults(func=cmd_config)
    v = sub.add_parser("validate", help="measure AP, recall, FPR and leak rate on annotated data (MLflow run)")
    v.set_defaults(func=cmd_validate)
    _validate_arguments(v)
    sv = sub.add_parser("serve", help="REST + WebSocket service (API keys from ANON_API_KEYS)")
    sv.set_defaults(func=cmd_serve)
    _serve_arguments(sv)
    w = sub.add_parser("watch", help="continuous mode: anonymize new assets under a prefix exactly once; erasure")
    w.set_defaults(func=cmd_watch)
    _watch_arguments(w)
    r = sub.add_parser("report", help="DPIA / Art. 30 processing report from manifests; --lookup for data-subject "
                                      "requests")
    r.set_defaults(func=cmd_report)
    _report_arguments(r)
    from jobs import vault_cli  # light: cryptography is imported only when a command runs

    rs = sub.add_parser("restore", help="reverse vault-sealed masks (key in ANON_VAULT_KEY)")
    rs.set_defaults(func=vault_cli.cmd_restore)
    vault_cli.add_restore_arguments(rs)
    sh = sub.add_parser("shred", help="destroy the key material of a vault key id (crypto-shredding)")
    sh.set_defaults(func=vault_cli.cmd_shred)
    vault_cli.add_shred_arguments(sh)
    from jobs import subjects_cli

    fs_ = sub.add_parser("find-subject", help="list assets/frames where the person in --ref photos appears")
    fs_.set_defaults(func=subjects_cli.cmd_find_subject)
    subjects_cli.add_arguments(fs_)
    return p


def main(argv: list[str] | None = None) -> int:
    from anon_core.offline import go_offline

    go_offline()  # nothing phones home: telemetry off for every library we may load (before any of them loads)
    logging.basicConfig(level=os.environ.get("ANON_LOG_LEVEL", "WARNING"), format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
