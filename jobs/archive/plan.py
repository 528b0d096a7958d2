"""`job.plan_only=true`: what a run would do, from the listing joined with the earlier manifests.

Nothing is processed and nothing is written; per-block counts come back to the driver as a few rows each, so
its memory does not grow with the archive.
"""

from __future__ import annotations

from jobs.archive.resume import CATEGORIES, summarise


def plan_summary(assets, settings, run_id: str) -> dict:
    """Counts and bytes per category and media type; `to_process` is everything but `done` (all of it with
    resume off)."""
    counts: dict[tuple[str, str], list[int]] = {}
    for b in assets.map_batches(summarise, batch_format="pyarrow", num_cpus=0.25).iter_batches(
            batch_size=None, batch_format="pyarrow"):
        for cat, media, n, size in zip(*(b.column(c).to_pylist() for c in ("category", "media_type", "size_count",
                                                                           "size_sum"))):
            c = counts.setdefault((cat, media), [0, 0])
            c[0] += int(n)
            c[1] += int(size or 0)

    def total(pred) -> dict:
        n = sum(v[0] for k, v in counts.items() if pred(*k))
        return {"assets": n, "bytes": sum(v[1] for k, v in counts.items() if pred(*k))}

    process = (lambda cat: True) if not settings.resume else (lambda cat: cat != "done")
    media_types = sorted({m for _, m in counts})
    out = {
        "plan_only": True,
        "run_id": run_id,
        "input": settings.listing or settings.input,
        "manifest": settings.manifest_root,
        "resume": settings.resume,
        "listed": total(lambda c, m: True),
        "to_process": total(lambda c, m: process(c)),
        **{cat: total(lambda c, m, cat=cat: c == cat) for cat in CATEGORIES},
        "by_media_type": {
            m: {"listed": total(lambda c, mm, m=m: mm == m),
                "to_process": total(lambda c, mm, m=m: mm == m and process(c)),
                **{cat: total(lambda c, mm, m=m, cat=cat: mm == m and c == cat) for cat in CATEGORIES}}
            for m in media_types},
    }
    return out
