"""Assets as a Ray Data source, never a Python list on the driver.

Two sources, both producing rows (path, rel, size, mtime, etag, media_type):

- prefix partitions: the driver lists one level under the input (`ls`, one call), and each sub-prefix is
  listed recursively by a Ray task (`find` with sizes and dates: what object stores return with the keys);
- a listing file (`job.listing`): Parquet as object stores' inventories produce it, with the columns
  key, size, last_modified (and e_tag/etag when present), keys relative to the bucket (or, for local paths,
  to "/"). Its row groups are read by parallel tasks; the driver reads the Parquet footers only.

A flat bucket (millions of keys with no "/" under the input) lists in one task: give it a listing file.
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
from datetime import datetime
from typing import Any

import pyarrow as pa

from anon_core.media.probe import AUDIO_EXTENSIONS, IMAGE_EXTENSIONS, MEDIA_EXTENSIONS, VIDEO_EXTENSIONS
from anon_core.storage import filesystem, is_local

COLUMNS = pa.schema([("path", pa.string()), ("rel", pa.string()), ("size", pa.int64()), ("mtime", pa.float64()),
                     ("etag", pa.string()), ("media_type", pa.string())])
EXCLUDE_DIRS = ("_manifests",)


def media_type(rel: str) -> str:
    ext = posixpath.splitext(rel)[1].lower()
    if ext in IMAGE_EXTENSIONS:
        return "image"
    if ext in VIDEO_EXTENSIONS:
        return "video"
    return "audio" if ext in AUDIO_EXTENSIONS else "unknown"


def _hit(rel: str, globs: list[str]) -> bool:
    # "**/x" also matches "x" at the top level, as users expect from shells.
    return any(fnmatch.fnmatchcase(rel, g) or (g.startswith("**/") and fnmatch.fnmatchcase(rel, g[3:]))
               for g in globs)


def select(items: list[tuple[str, str]], include: list[str], exclude: list[str]) -> list[tuple[str, str]]:
    """Keep (path, rel) pairs whose relative path matches an include glob (all when none) and no exclude glob."""
    return [(p, r) for p, r in items if (not include or _hit(r, include)) and not _hit(r, exclude)]


def wanted(rel: str, include: list[str], exclude: list[str]) -> bool:
    parts = rel.split("/")
    if any(p in EXCLUDE_DIRS or p.startswith(".") for p in parts):
        return False
    if posixpath.splitext(rel)[1].lower() not in MEDIA_EXTENSIONS:
        return False
    return (not include or _hit(rel, include)) and not _hit(rel, exclude)


def _epoch(v: Any) -> float:
    """mtime / LastModified / last_modified as float seconds (NaN when unknown)."""
    if v is None:
        return float("nan")
    if isinstance(v, datetime):
        return v.timestamp()
    if isinstance(v, int | float):
        return float(v)
    try:
        return datetime.fromisoformat(str(v).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return float("nan")


def _etag(info: dict) -> str:
    v = info.get("ETag") or info.get("etag") or info.get("e_tag") or ""
    return str(v).strip('"')


def _rows(entries: list[tuple[str, dict]], root: str, local: bool, include, exclude) -> pa.Table:
    cols: dict[str, list] = {n: [] for n in COLUMNS.names}
    for path, info in entries:
        rel = os.path.relpath(path, root) if local else posixpath.relpath(path, root)
        rel = rel.replace(os.sep, "/")
        if not wanted(rel, include, exclude):
            continue
        cols["path"].append(path)
        cols["rel"].append(rel)
        cols["size"].append(int(info.get("size") if info.get("size") is not None else -1))
        cols["mtime"].append(_epoch(info.get("mtime", info.get("LastModified", info.get("last_modified")))))
        cols["etag"].append(_etag(info))
        cols["media_type"].append(media_type(rel))
    return pa.Table.from_pydict(cols, schema=COLUMNS)


def list_prefixes(batch: pa.Table, uri: str, storage_options: dict, include: list[str],
                  exclude: list[str]) -> pa.Table:
    """Ray Data task: recursive listing (with sizes and dates) of the prefixes in a batch."""
    fs, root = filesystem(uri, **storage_options)
    root = root.rstrip("/") or "/"
    out = [COLUMNS.empty_table()]
    for prefix in batch.column("prefix").to_pylist():
        found = fs.find(prefix, detail=True)
        out.append(_rows(sorted(found.items()), root, is_local(fs), include, exclude))
    return pa.concat_tables(out)


def prefix_source(uri: str, storage_options: dict, include: list[str], exclude: list[str]):
    """A Ray Dataset of the media files under `uri`: one driver `ls`, then one listing task per sub-prefix."""
    import ray

    fs, root = filesystem(uri, **storage_options)
    root = root.rstrip("/") or "/"
    local = is_local(fs)
    if fs.isfile(root):
        info = fs.info(root)
        name = posixpath.basename(root)
        t = _rows([(root, info)], posixpath.dirname(root) or "/", local, [], [])
        return ray.data.from_arrow(t.set_column(1, "rel", pa.array([name] * t.num_rows, pa.string())))
    top = fs.ls(root, detail=True)
    files = [(e["name"], e) for e in top if e.get("type") != "directory"]
    dirs = sorted(e["name"] for e in top if e.get("type") == "directory"
                  and posixpath.basename(e["name"].rstrip("/")) not in EXCLUDE_DIRS
                  and not posixpath.basename(e["name"].rstrip("/")).startswith("."))
    parts = [ray.data.from_arrow(_rows(sorted(files), root, local, include, exclude))] if files else []
    if dirs:
        ds = ray.data.from_arrow(pa.table({"prefix": dirs}))
        ds = ds.repartition(len(dirs))  # one listing task per prefix, in parallel
        parts.append(ds.map_batches(list_prefixes, fn_args=(uri, storage_options, include, exclude),
                                    batch_size=1, batch_format="pyarrow", num_cpus=0.25))
    if not parts:
        return ray.data.from_arrow(COLUMNS.empty_table())
    return parts[0] if len(parts) == 1 else parts[0].union(*parts[1:])


# -- a listing (inventory) file

def _inventory_base(fs, root: str) -> tuple[str, str]:
    """(bucket or "" for local paths, key prefix of the input inside it)."""
    if is_local(fs):
        return "", root.strip("/")
    bucket, _, prefix = root.strip("/").partition("/")
    return bucket, prefix


def read_listing(batch: pa.Table, listing: str, uri: str, storage_options: dict, include: list[str],
                 exclude: list[str]) -> pa.Table:
    """Ray Data task: rows of (file, row group) units of a listing file, mapped to the input's paths."""
    import pyarrow.parquet as pq

    lfs, _ = filesystem(listing, **storage_options)
    fs, root = filesystem(uri, **storage_options)
    bucket, prefix = _inventory_base(fs, root)
    local = is_local(fs)
    out = [COLUMNS.empty_table()]
    for file, group in zip(batch.column("file").to_pylist(), batch.column("row_group").to_pylist()):
        with lfs.open(file, "rb") as fh:
            pf = pq.ParquetFile(fh)
            names = set(pf.schema_arrow.names)
            cols = ["key", "size"] + [c for c in ("last_modified", "last_modified_date", "e_tag", "etag")
                                      if c in names]
            t = pf.read_row_group(group, columns=cols)
        keys = t.column("key").to_pylist()
        sizes = t.column("size").to_pylist()
        dates = next((t.column(c).to_pylist() for c in ("last_modified", "last_modified_date")
                      if c in t.column_names), [None] * len(keys))
        tags = next((t.column(c).to_pylist() for c in ("e_tag", "etag") if c in t.column_names),
                    [None] * len(keys))
        lead = prefix + "/" if prefix else ""
        entries = []
        for k, s, d, e in zip(keys, sizes, dates, tags):
            if not k.startswith(lead) or k.endswith("/"):
                continue
            path = ("/" + k) if local else f"{bucket}/{k}"
            entries.append((path, {"size": s, "last_modified": d, "etag": e}))
        out.append(_rows(entries, root.rstrip("/") or "/", local, include, exclude))
    return pa.concat_tables(out)


def listing_source(listing: str, uri: str, storage_options: dict, include: list[str], exclude: list[str]):
    """A Ray Dataset from a listing file or folder of them: one task per Parquet row group."""
    import pyarrow.parquet as pq
    import ray

    lfs, lroot = filesystem(listing, **storage_options)
    files = sorted(p for p in lfs.find(lroot) if p.endswith(".parquet")) if lfs.isdir(lroot) else [lroot]
    units = {"file": [], "row_group": []}
    for f in files:  # footers only
        with lfs.open(f, "rb") as fh:
            n = pq.ParquetFile(fh).metadata.num_row_groups
        units["file"] += [f] * n
        units["row_group"] += list(range(n))
    if not units["file"]:
        return ray.data.from_arrow(COLUMNS.empty_table())
    ds = ray.data.from_arrow(pa.table(units)).repartition(len(units["file"]))
    return ds.map_batches(read_listing, fn_args=(listing, uri, storage_options, include, exclude),
                          batch_size=1, batch_format="pyarrow", num_cpus=0.25)


def source(settings) -> Any:
    """The job's assets as a Ray Dataset (listing file when `job.listing` is set, else prefix partitions)."""
    if settings.listing:
        return listing_source(settings.listing, settings.input, settings.storage_options, settings.include,
                              settings.exclude)
    return prefix_source(settings.input, settings.storage_options, settings.include, settings.exclude)
