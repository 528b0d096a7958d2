"""The one reader of audit manifests: the CLI's `_manifests/<run>.parquet`, the archive job's and the watcher's
hive-partitioned parts (`<root>/run_id=<id>/part-*.parquet`), local paths or any fsspec store.

Reading goes part by part (memory follows the largest part, not the archive) through `pyarrow.dataset`; the
hive partition key of a part's folder (`run_id=<id>`) fills its `run_id` column where the part left it empty.
Parts are written atomically, so a part that cannot be read is damage, not a write in progress: it is skipped
with a warning and its assets count as not done (re-processed by whoever resumes), never a crash.
Files and folders whose names start with `_` or `.` (side files, temp names, `_state/`) are not parts, as in
Hive and Spark.
"""

from __future__ import annotations

import logging
import os
import posixpath
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

log = logging.getLogger("anon.manifests")

_PARTITION = pa.schema([pa.field("run_id", pa.string())])


def part_paths(fs: Any, root: str) -> list[str]:
    """Every manifest part under root (root itself when it is a file), sorted; [] when root does not exist."""
    if not fs.exists(root):
        return []
    if fs.isfile(root):
        return [root]
    base = root.rstrip("/")
    return [path for path in sorted(fs.find(base)) if is_part(path, base)]


def is_part(path: str, base: str) -> bool:
    """A `.parquet` file below `base` none of whose path segments (below base) starts with `_` or `.`."""
    segments = path[len(base.rstrip("/")):].replace(os.sep, "/").strip("/").split("/")
    return path.endswith(".parquet") and not any(s.startswith(("_", ".")) for s in segments)


def _schema(physical: pa.Schema, columns: list[str] | None, types: pa.Schema | None = None) -> pa.Schema:
    """The part's own columns, plus `run_id` and any asked-for column an older part lacks (read as nulls, typed
    as in `types` when it has the column)."""
    fields = list(physical)
    names = set(physical.names)
    for name in ["run_id", *(columns or [])]:
        if name not in names:
            fields.append(types.field(name) if types is not None and name in types.names
                          else pa.field(name, pa.string() if name == "run_id" else pa.null()))
            names.add(name)
    return pa.schema(fields)


def iter_parts(fs: Any, root: str, columns: list[str] | None = None, types: pa.Schema | None = None,
               paths: list[str] | None = None) -> Iterator[tuple[str, pa.Table]]:
    """(path, table) per readable part under root, in path order; damaged parts are skipped with a warning.
    `paths`: parts under root listed already (a distributed reader hands each task its own)."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    paths = part_paths(fs, root) if paths is None else sorted(paths)
    if not paths:
        return
    base = root.rstrip("/") if len(paths) > 1 or paths[0] != root else posixpath.dirname(root)
    hive = ds.partitioning(_PARTITION, flavor="hive")
    # Schema given: building the dataset opens no file, so a damaged first part cannot fail the whole read. The
    # folder's run_id fills the column only where the part left it empty (the dataset's own partition projection
    # would overwrite what the writer recorded).
    dataset = ds.dataset(paths, schema=_PARTITION, filesystem=fs, format="parquet")
    for fragment in dataset.get_fragments():
        try:
            table = fragment.to_table(schema=_schema(fragment.physical_schema, columns, types), columns=columns)
        except (OSError, pa.ArrowException) as exc:
            log.warning("manifest part %s unreadable (%s): skipped, its assets count as not done",
                        fragment.path, exc)
            continue
        run_id = ds.get_partition_keys(hive.parse(fragment.path[len(base):].lstrip("/"))).get("run_id")
        if run_id is not None and "run_id" in table.column_names:
            i = table.column_names.index("run_id")
            table = table.set_column(i, "run_id", pc.coalesce(table["run_id"], pa.scalar(run_id, pa.string())))
        yield fragment.path, table


def iter_rows(fs: Any, root: str, columns: list[str] | None = None) -> Iterator[tuple[str, int, dict]]:
    """(part path, row index in the part, row) for every row of every readable part under root."""
    for path, table in iter_parts(fs, root, columns):
        for i, row in enumerate(table.to_pylist()):
            yield path, i, row


def read_table(fs: Any, root: str, schema: pa.Schema) -> pa.Table:
    """Every readable part under root as one table in `schema` (for small manifests and tests)."""
    tables = [t.select(schema.names).cast(schema) for _, t in iter_parts(fs, root, schema.names, schema)]
    return pa.concat_tables(tables) if tables else schema.empty_table()


__all__ = ["is_part", "iter_parts", "iter_rows", "part_paths", "read_table"]
