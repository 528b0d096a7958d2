"""Airflow DAG: submit the anonymization archive job to a Ray cluster every night, then check its summary.

Needs `apache-airflow` (>= 2.7) on the Airflow side only; it talks to Ray through the job submission HTTP API
(`ray.job_submission.JobSubmissionClient`), so Airflow workers need `ray[default]` but no models.
Connection values come from Airflow Variables, not from this file.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta

from airflow import DAG
from airflow.operators.python import PythonOperator

RAY_DASHBOARD = "{{ var.value.get('anon_ray_address', 'http://ray-head:8265') }}"


def submit_and_wait(ray_address: str, input_uri: str, output_uri: str, ds: str, timeout_s: int = 20 * 3600) -> dict:
    """Submit `python jobs/anonymize.py` with a run id per logical date (re-runs of a day resume, not duplicate)."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(ray_address)  # the token comes from RAY_AUTH_TOKEN in the worker's environment
    run_id = f"airflow-{ds}"
    job_id = client.submit_job(
        entrypoint=(f"python jobs/anonymize.py input={input_uri} output={output_uri} "
                    f"job.run_id={run_id} job.progress=false"),
        runtime_env={"working_dir": "/opt/anon", "env_vars": {"RAY_USAGE_STATS_ENABLED": "0"}},
        submission_id=f"anon-{ds}-{int(time.time())}",
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = client.get_job_status(job_id)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            break
        time.sleep(30)
    else:
        client.stop_job(job_id)
        raise TimeoutError(f"anonymization job {job_id} ran past {timeout_s} s")
    logs = client.get_job_logs(job_id)
    summary = json.loads(logs.strip().splitlines()[-1])  # the job prints its summary as the last line
    if status != JobStatus.SUCCEEDED:
        raise RuntimeError(f"job {job_id} {status}: {summary.get('failed')} assets failed")
    return summary


with DAG(
    dag_id="anon_archive_nightly",
    start_date=datetime(2026, 1, 1),
    schedule="@daily",
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 1, "retry_delay": timedelta(minutes=10)},
    tags=["anon", "gdpr"],
) as dag:
    PythonOperator(
        task_id="anonymize_archive",
        python_callable=submit_and_wait,
        op_kwargs={
            "ray_address": RAY_DASHBOARD,
            "input_uri": "{{ var.value.anon_input_uri }}",
            "output_uri": "{{ var.value.anon_output_uri }}",
            "ds": "{{ ds }}",
        },
        execution_timeout=timedelta(hours=21),
    )
