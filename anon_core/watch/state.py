"""A watcher's state is its manifest: the latest row per key says what was done with which version."""

from __future__ import annotations

import json
from dataclasses import dataclass

import fsspec

from anon_core.manifests import iter_rows

ROW_COLUMNS = ["run_id", "relative_path", "status", "input_uri", "input_sha256", "input_size", "output_uri",
               "output_sha256", "output_size", "finished_at", "extra_json"]
PUBLISHED = ("ok", "skipped")  # statuses whose row names an output this watcher put at OUT/<key>


@dataclass
class Done:
    status: str  # ok | skipped | failed | erased
    version: str | None
    row: dict

    @property
    def published(self) -> bool:
        return self.status in PUBLISHED and bool(self.row.get("output_uri"))


def read_rows(fs: fsspec.AbstractFileSystem, root: str) -> list[dict]:
    """Every row of every readable manifest part under root, each with an `_order` key (finished_at, part, row)."""
    rows: list[dict] = []
    for path, i, row in iter_rows(fs, root, ROW_COLUMNS):
        row["_order"] = (row["finished_at"], path, i)
        rows.append(row)
    return rows


def load_state(rows: list[dict]) -> dict[str, Done]:
    """Latest row per key: that row's status and the version it was about."""
    state: dict[str, Done] = {}
    for row in sorted(rows, key=lambda r: r["_order"]):
        extra = json.loads(row["extra_json"]) if row.get("extra_json") else {}
        watch = extra.get("watch") or {}
        state[row["relative_path"]] = Done(row["status"], watch.get("version"), row)
    return state


__all__ = ["PUBLISHED", "ROW_COLUMNS", "Done", "load_state", "read_rows"]
