"""infra/ is checked by parsing and validating, not by running Docker, Kubernetes or Airflow."""

from __future__ import annotations

import ast
import re
import shlex
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"


def test_rayjob_manifest():
    doc = yaml.safe_load((INFRA / "rayjob.yaml").read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayJob"
    spec = doc["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    cluster = spec["rayClusterSpec"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"] and head["resources"]["limits"]
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    gpu = [g for g in groups.values()
           if g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu")]
    assert gpu, "a GPU worker group"
    for g in groups.values():
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
        env = {e["name"]: e.get("value") for e in g["template"]["spec"]["containers"][0]["env"]}
        assert env["RAY_USAGE_STATS_ENABLED"] == "0"
    # The entrypoint is the job with overrides that Hydra accepts.
    words = shlex.split(spec["entrypoint"])
    assert words[:2] == ["python", "jobs/anonymize.py"] and (ROOT / words[1]).is_file()
    from jobs.config import compose_dict

    cfg = compose_dict(words[2:], config_name="job")
    assert cfg["input"].startswith("s3://") and cfg["job"]["num_gpus"] == 1
    assert cfg["storage_options"]["client_kwargs"]["endpoint_url"].startswith("http")


def test_airflow_dag_compiles_and_submits_the_job():
    src = (INFRA / "airflow_dag.py").read_text()
    tree = ast.parse(src)
    compile(tree, "airflow_dag.py", "exec")
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    assert {"DAG", "PythonOperator"} <= names
    assert "jobs/anonymize.py" in src and "JobSubmissionClient" in src
    funcs = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    assert "submit_and_wait" in funcs


def test_dockerfile_refers_to_things_that_exist():
    text = (INFRA / "Dockerfile").read_text()
    lines = [ln.strip() for ln in text.replace("\\\n", " ").splitlines() if ln.strip() and not ln.startswith("#")]
    instructions = {ln.split()[0] for ln in lines}
    assert instructions <= {"ARG", "FROM", "ENV", "RUN", "WORKDIR", "COPY", "USER", "ENTRYPOINT", "CMD"}
    assert lines[0].startswith("ARG BASE=") and any(ln.startswith("FROM ${BASE}") for ln in lines)
    for ln in lines:
        if ln.startswith("COPY"):
            for src in ln.split()[1:-1]:
                assert (ROOT / src).exists(), src
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    for group in re.findall(r"-e '\.\[([a-z,-]+)\]'", text):
        assert set(group.split(",")) <= extras, group
    entry = next(ln for ln in lines if ln.startswith("ENTRYPOINT"))
    assert (ROOT / "jobs/anonymize.py").is_file() and "jobs/anonymize.py" in entry
