"""plan_only at archive scale: counts are right and the driver's memory does not grow with the archive.

    .venv/bin/python benchmarks/plan_only.py --sizes 10000 200000 [--workdir /tmp/plan_bench]

For each size N it writes a listing file (S3-Inventory-like columns key, size, last_modified, e_tag; 90 % images,
8 % videos, 2 % audio) and an earlier manifest of N/2 rows (anon_core.audit.SCHEMA, 1000 rows per part, in
run_id=... partitions) in which known subsets have another input size (changed), another config hash
(config_changed) or were modified after the row was written (changed), then runs `job.plan_only=true` in a
fresh process and records the driver's peak RSS (ru_maxrss of that process: Ray's own processes are
separate) and the plan's counts, which must equal the ones the benchmark built.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's packages, not whichever one the environment points at
EXTS = ["jpg"] * 90 + ["mp4"] * 8 + ["wav"] * 2
CHILD = """
import json, resource, sys
sys.path.insert(0, {root!r})
from jobs.config import compose_dict
from jobs.anonymize import run_job
cfg = compose_dict({overrides!r}, config_name="job")
s = run_job(cfg)
s["driver_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(s))
"""


def build(work: Path, n: int, config_hash: str) -> tuple[str, dict]:
    """Listing + earlier manifest for n objects; returns the listing path and the expected counts."""
    from anon_core.audit import SCHEMA

    inp = work / "in"
    inp.mkdir(parents=True, exist_ok=True)
    base = str(inp).strip("/")
    t_list = datetime(2026, 1, 1, tzinfo=UTC)
    keys, sizes, media = [], [], []
    for i in range(n):
        ext = EXTS[i % len(EXTS)]
        keys.append(f"{base}/p{i % 97:02d}/obj{i:09d}.{ext}")
        sizes.append(1000 + i)
        media.append({"jpg": "image", "mp4": "video", "wav": "audio"}[ext])
    modified = [t_list] * n
    expect = {c: {"assets": 0, "bytes": 0} for c in ("new", "changed", "config_changed", "done")}
    by_media: dict[str, dict] = {}
    rows = []
    m = n // 2
    done_at = t_list + timedelta(days=1)
    for i in range(n):
        cat = "new"
        if i < m:
            size, cfg = sizes[i], config_hash
            cat = "done"
            if i % 10 == 1:
                size, cat = sizes[i] + 1, "changed"  # the object was replaced by one of another size
            elif i % 10 == 2:
                cfg, cat = "0" * 16, "config_changed"
            elif i % 10 == 3:
                modified[i], cat = done_at + timedelta(hours=1), "changed"  # rewritten after it was processed
            rows.append({"run_id": f"r{i % 3}", "relative_path": keys[i][len(base) + 1:], "status": "ok",
                         "input_sha256": f"{i:064x}", "input_size": size, "config_hash": cfg,
                         "output_uri": f"/out/{i}", "output_sha256": f"{i:064x}", "output_size": size,
                         "media_type": media[i], "finished_at": done_at, "started_at": done_at})
            if i % 10 == 4:  # an older failed row and an older ok row of another config: the latest ok one counts
                rows.append({**rows[-1], "status": "failed", "finished_at": done_at + timedelta(hours=2)})
                rows.append({**rows[-2], "config_hash": "1" * 16, "finished_at": done_at - timedelta(hours=2)})
        expect[cat]["assets"] += 1
        expect[cat]["bytes"] += sizes[i]
        bm = by_media.setdefault(media[i], {c: 0 for c in expect})
        bm[cat] += 1
    listing = work / "listing"
    listing.mkdir(exist_ok=True)
    t = pa.table({"bucket": [""] * n, "key": keys, "size": pa.array(sizes, pa.int64()),
                  "last_modified": pa.array(modified, pa.timestamp("us", tz="UTC")),
                  "e_tag": [f"{i:032x}" for i in range(n)]})
    pq.write_table(t, listing / "inventory.parquet", row_group_size=25_000)
    man = work / "out" / "_manifests"
    for j in range(0, len(rows), 1000):
        part = rows[j:j + 1000]
        d = man / f"run_id={part[0]['run_id']}"
        d.mkdir(parents=True, exist_ok=True)
        full = [{name: r.get(name) for name in SCHEMA.names} for r in part]
        pq.write_table(pa.Table.from_pylist(full, schema=SCHEMA), d / f"part-{j:08d}.parquet")
    return str(listing), {"expect": expect, "by_media": by_media, "manifest_rows": len(rows)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 200_000])
    ap.add_argument("--workdir", default="/tmp/anon_plan_bench")
    args = ap.parse_args()
    from jobs.anonymize import JOB_KEYS
    from jobs.config import anon_config, compose_dict

    d = compose_dict(["input=a", "output=b", "policy=faces"], config_name="job")
    config_hash = anon_config(d, extra_keys=JOB_KEYS).hash()
    results = []
    for n in args.sizes:
        work = Path(args.workdir) / f"n{n}"
        subprocess.run(["rm", "-rf", str(work)], check=True)
        t0 = time.perf_counter()
        listing, exp = build(work, n, config_hash)
        built = time.perf_counter() - t0
        overrides = [f"input={work / 'in'}", f"output={work / 'out'}", "policy=faces", "job.plan_only=true",
                     f"job.listing={listing}", "job.progress=false", "job.num_cpus_local=2"]
        t0 = time.perf_counter()
        res = subprocess.run([sys.executable, "-c", CHILD.format(root=str(ROOT), overrides=overrides)], cwd=ROOT,
                             capture_output=True, text=True, env=dict(os.environ, RAY_USAGE_STATS_ENABLED="0"))
        wall = time.perf_counter() - t0
        if res.returncode:
            sys.exit(res.stderr[-4000:])
        s = json.loads(res.stdout.strip().splitlines()[-1])
        got = {c: s[c] for c in exp["expect"]}
        got_media = {mt: {c: v[c]["assets"] for c in exp["expect"]} for mt, v in s["by_media_type"].items()}
        ok = got == exp["expect"] and got_media == exp["by_media"] and s["listed"]["assets"] == n
        results.append({"objects": n, "manifest_rows": exp["manifest_rows"], "counts_right": ok,
                        "driver_peak_rss_mb": round(s["driver_peak_rss_mb"], 1), "plan_s": s["seconds"],
                        "process_wall_s": round(wall, 1), "build_s": round(built, 1),
                        "to_process": s["to_process"], **{c: s[c]["assets"] for c in exp["expect"]}})
        print(json.dumps(results[-1]), flush=True)
        if not ok:
            print("expected", json.dumps(exp), "\ngot", json.dumps(s), file=sys.stderr)
    if len(results) > 1:
        ratio = results[-1]["driver_peak_rss_mb"] / results[0]["driver_peak_rss_mb"]
        print(json.dumps({"rss_ratio_largest_vs_smallest": round(ratio, 3), "within_1.3x": ratio <= 1.3,
                          "all_counts_right": all(r["counts_right"] for r in results)}))


if __name__ == "__main__":
    main()
