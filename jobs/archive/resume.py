"""Resume as distributed data: earlier manifests read by Ray tasks, reduced to the latest ok row per key by a
hash-shuffle aggregate, and joined with the listing by `Dataset.join`. The driver holds neither.

The latest ok row of a key is the max of a packed string whose prefix is the row's finish time in a fixed-width
UTC form, so one vectorised Max aggregate picks the whole latest row (an arg-max without a second join).

Every listed asset is classified:
- new: no ok row for its key;
- changed: its latest ok row has another input size, or the object was modified after that row was written;
- config_changed: same input, but the latest ok row was made with another config hash;
- done: same size, not modified since, same config hash. The actor still checks the input's sha256 and the
  output's size before it records `skipped` (the listing's size and date are a prediction, the hash is proof).
"""

from __future__ import annotations

import json
import math
import posixpath

import pyarrow as pa
import pyarrow.compute as pc

from anon_core.audit import SCHEMA
from anon_core.manifests import is_part, iter_parts
from anon_core.storage import filesystem

# The manifest columns resume needs; every manifest written with anon_core.audit.SCHEMA has them.
NEEDED = ["relative_path", "status", "input_sha256", "input_size", "config_hash", "output_uri", "output_sha256",
          "output_size", "finished_at", "run_id"]
PACKED_FIELDS = ["config_hash", "input_sha256", "input_size", "output_size", "output_sha256", "output_uri",
                 "run_id"]
SEP = "\x1f"  # unit separator: never in hashes, sizes, URIs or run ids
LATEST = pa.schema([("relative_path", pa.string()), ("packed", pa.string())])
CATEGORIES = ("new", "changed", "config_changed", "done")
# A key no listing can produce (relative paths never hold NUL): one such row on each side of the join, so
# neither side is ever empty (a join over an input without rows has no columns to join on).
SENTINEL = "\x00"


def list_parts(batch: pa.Table, uri: str, storage_options: dict) -> pa.Table:
    """Ray Data task: the manifest part files under each prefix of the batch."""
    fs, root = filesystem(uri, **storage_options)
    out = []
    for prefix in batch.column("prefix").to_pylist():
        out += sorted(p for p in fs.find(prefix) if is_part(p, root))
    return pa.table({"file": pa.array(out, pa.string())})


def read_parts(batch: pa.Table, uri: str, storage_options: dict) -> pa.Table:
    """Ray Data task: ok rows of each part as (relative_path, packed). A damaged part is logged and skipped:
    it costs only a re-run of its assets."""
    fs, root = filesystem(uri, **storage_options)
    out = [LATEST.empty_table()]
    # the one manifest reader: older parts without a column read it as nulls, damaged parts are skipped with a
    # warning (their assets are processed again), the run_id folder fills an empty run_id
    for _, t in iter_parts(fs, root, NEEDED, SCHEMA, paths=batch.column("file").to_pylist()):
        keep = pc.and_(pc.equal(t["status"], "ok"), pc.is_valid(t["input_sha256"]))
        t = t.filter(keep)
        if not t.num_rows:
            continue
        # finish time first (fixed width, UTC, %S carries the microseconds), so the max packed text is the latest
        ts = pc.cast(t["finished_at"], pa.timestamp("us", tz="UTC"))
        cols = [pc.strftime(ts, format="%Y-%m-%dT%H:%M:%S", locale="C")]
        cols += [pc.cast(t[f], pa.string()) for f in PACKED_FIELDS]
        packed = pc.binary_join_element_wise(*cols, SEP, null_handling="replace", null_replacement="")
        out.append(pa.table({"relative_path": t["relative_path"], "packed": packed}, schema=LATEST))
    return pa.concat_tables(out)


def unpack(packed: str | None) -> dict | None:
    if not packed:
        return None
    parts = packed.split(SEP)
    row = {"finished_at": f"{parts[0]}+00:00"}
    for name, v in zip(PACKED_FIELDS, parts[1:]):
        row[name] = (int(v) if v else None) if name in ("input_size", "output_size") else (v or None)
    return row


def manifest_source(uri: str, storage_options: dict):
    """Ok rows of every earlier manifest under `uri` as (relative_path, packed), or None when there are none.
    The driver lists one level (the run partitions); each partition is listed and read by tasks."""
    import ray

    fs, root = filesystem(uri, **storage_options)
    if not fs.exists(root):
        return None
    top = fs.ls(root, detail=True)
    files = [e["name"] for e in top if e.get("type") != "directory" and is_part(e["name"], root)]
    dirs = sorted(e["name"] for e in top if e.get("type") == "directory"
                  and not posixpath.basename(e["name"].rstrip("/")).startswith(("_", ".")))
    if not files and not dirs:
        return None
    parts = []
    if files:
        parts.append(ray.data.from_arrow(pa.table({"file": pa.array(files, pa.string())})))
    if dirs:
        ds = ray.data.from_arrow(pa.table({"prefix": dirs})).repartition(len(dirs))
        parts.append(ds.map_batches(list_parts, fn_args=(uri, storage_options), batch_size=1,
                                    batch_format="pyarrow", num_cpus=0.25))
    files_ds = parts[0] if len(parts) == 1 else parts[0].union(parts[1])
    # Parts are small (one batch of assets each): read them in groups, many tasks in parallel.
    rows = files_ds.map_batches(read_parts, fn_args=(uri, storage_options), batch_size=64, batch_format="pyarrow",
                                num_cpus=0.25)
    return rows.union(ray.data.from_arrow(pa.table({"relative_path": [SENTINEL], "packed": [None]},
                                                   schema=LATEST)))


def latest_rows(manifests, partitions: int):
    """Latest ok row per key (hash-shuffle aggregate over the packed rows)."""
    from ray.data.aggregate import Max

    return manifests.groupby("relative_path", num_partitions=partitions).aggregate(Max("packed",
                                                                                       alias_name="packed"))


def classify(batch: pa.Table, config_hash: str, resume: bool) -> pa.Table:
    """Ray Data task: category and (for `done` candidates with resume on) the previous row, per listed asset."""
    batch = batch.filter(pc.not_equal(batch["rel"], SENTINEL))
    n = batch.num_rows
    packed = batch.column("packed").to_pylist() if "packed" in batch.column_names else [None] * n
    sizes = batch.column("size").to_pylist()
    mtimes = batch.column("mtime").to_pylist()
    cats, prevs = [], []
    for p, size, mtime in zip(packed, sizes, mtimes):
        row = unpack(p)
        cat = "new"
        if row is not None:
            from datetime import datetime

            when = datetime.fromisoformat(row["finished_at"]).timestamp()
            modified = mtime is not None and not math.isnan(mtime) and mtime > when
            if (size >= 0 and row["input_size"] is not None and size != row["input_size"]) or modified:
                cat = "changed"
            elif row["config_hash"] != config_hash:
                cat = "config_changed"
            else:
                cat = "done"
        cats.append(cat)
        prevs.append(json.dumps(row) if cat == "done" and resume else "")
    keep = [c for c in ("path", "rel", "size", "mtime", "etag", "media_type") if c in batch.column_names]
    t = batch.select(keep)
    return t.append_column("category", pa.array(cats, pa.string())).append_column("prev", pa.array(prevs,
                                                                                                    pa.string()))


def planned(settings, config_hash: str, partitions: int):
    """The listing joined with the earlier manifests: every asset with its category (and prev row)."""
    from jobs.archive.listing import source

    assets = source(settings)
    manifests = manifest_source(settings.manifest_root, settings.storage_options)
    if manifests is not None:
        import ray

        from jobs.archive.listing import COLUMNS

        sentinel = {n: [None] for n in COLUMNS.names} | {"rel": [SENTINEL], "size": [0], "media_type": ["unknown"]}
        assets = assets.union(ray.data.from_arrow(pa.table(sentinel, schema=COLUMNS)))
        latest = latest_rows(manifests, partitions)
        assets = assets.join(latest, join_type="left_outer", num_partitions=partitions, on=("rel",),
                             right_on=("relative_path",))
    return assets.map_batches(classify, fn_args=(config_hash, settings.resume), batch_format="pyarrow",
                              num_cpus=0.25)


def summarise(batch: pa.Table) -> pa.Table:
    """Ray Data task: counts and bytes per (category, media type) of a block; the driver adds them up."""
    t = batch.select(["category", "media_type", "size"])
    t = t.set_column(2, "size", pc.max_element_wise(t["size"], 0))
    return t.group_by(["category", "media_type"]).aggregate([("size", "count"), ("size", "sum")])
