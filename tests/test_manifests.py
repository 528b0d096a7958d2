"""The one manifest reader (anon_core/manifests.py): CLI files and hive-partitioned parts, damaged parts skipped
with a warning, side files ignored, `run_id` filled from the folder only where the part left it empty."""

from __future__ import annotations

import logging

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from anon_core.audit import SCHEMA, AuditRecord, read_manifest, write_manifest
from anon_core.manifests import iter_rows, part_paths


def _write(fs, path: str, rel: str, run_id: str | None) -> None:
    write_manifest([AuditRecord(run_id=run_id, input_uri="in/" + rel, relative_path=rel, status="ok")], fs, path)


def test_parts_partitions_damage_and_side_files(tmp_path, caplog):
    fs = fsspec.filesystem("file")
    root = str(tmp_path / "_manifests")
    _write(fs, f"{root}/cli-run.parquet", "a.png", "cli-run")
    _write(fs, f"{root}/run_id=job1/part-0.parquet", "b.png", None)  # empty column: the folder says job1
    _write(fs, f"{root}/run_id=job1/part-1.parquet", "c.png", "writer")  # the writer's value is kept
    (tmp_path / "_manifests/run_id=job1/part-2.parquet").write_bytes(b"PAR1 torn")  # damage
    (tmp_path / "_manifests/run_id=job1/_summary.json").write_text("{}")
    _write(fs, f"{root}/run_id=job1/_tmp.parquet", "x.png", "x")  # side/temp names are not parts
    _write(fs, f"{root}/watch/_state/s.parquet", "y.png", "y")
    old = pa.table({"relative_path": ["d.png"], "status": ["ok"]})  # an older part without most columns
    (tmp_path / "_manifests/run_id=old").mkdir()
    pq.write_table(old, f"{root}/run_id=old/part-0.parquet")
    assert [p.rsplit("_manifests/", 1)[1] for p in part_paths(fs, root)] == [
        "cli-run.parquet", "run_id=job1/part-0.parquet", "run_id=job1/part-1.parquet", "run_id=job1/part-2.parquet",
        "run_id=old/part-0.parquet"]
    with caplog.at_level(logging.WARNING, logger="anon.manifests"):
        rows = {r["relative_path"]: r for _, _, r in iter_rows(fs, root, ["relative_path", "run_id", "input_sha256"])}
    assert {k: v["run_id"] for k, v in rows.items()} == {"a.png": "cli-run", "b.png": "job1", "c.png": "writer",
                                                         "d.png": "old"}
    assert rows["d.png"]["input_sha256"] is None
    assert any("part-2.parquet" in m and "unreadable" in m for m in caplog.messages)
    table = read_manifest(root)
    assert table.schema == SCHEMA and table.num_rows == 4
    assert read_manifest(f"{root}/cli-run.parquet").column("relative_path").to_pylist() == ["a.png"]
    assert list(iter_rows(fs, str(tmp_path / "nothing"))) == []
