"""Airflow DAG: plan, then (if there is work) anonymize the archive on a Ray cluster, then check the summary.

1. `plan`: `python jobs/anonymize.py ... job.plan_only=true` (lists, joins with earlier manifests, writes nothing);
   its last log line is the plan as JSON (assets and bytes to process, done, changed since, by media type).
2. `has_work`: short-circuits the run when nothing is to be processed, and fails when the plan exceeds the
   bytes a night may process (`anon_max_bytes_per_run`), so an accidental re-processing (a changed config hash
   over the whole archive) waits for a person instead of running for weeks.
3. `anonymize`: the run itself, with a run id per logical date (re-runs of a day resume, never duplicate).

Needs `apache-airflow` (>= 2.7) on the Airflow side only; it talks to Ray through the job submission HTTP API
(`ray.job_submission.JobSubmissionClient`), so Airflow workers need `ray[default]` but no models.
Connection values come from Airflow Variables, not from this file.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta

from airflow import DAG
from airflow.operators.python import PythonOperator, ShortCircuitOperator

RAY_DASHBOARD = "{{ var.value.get('anon_ray_address', 'http://ray-head:8265') }}"
COMMON = {
    "ray_address": RAY_DASHBOARD,
    "input_uri": "{{ var.value.anon_input_uri }}",
    "output_uri": "{{ var.value.anon_output_uri }}",
    "listing": "{{ var.value.get('anon_listing_uri', '') }}",
    "ds": "{{ ds }}",
}


def submit_and_wait(ray_address: str, input_uri: str, output_uri: str, ds: str, listing: str = "",
                    plan_only: bool = False, timeout_s: int = 20 * 3600) -> dict:
    """Submit `python jobs/anonymize.py` (a plan or a run) and return the summary it prints as its last line."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(ray_address)  # the token comes from RAY_AUTH_TOKEN in the worker's environment
    run_id = f"airflow-{ds}"
    args = [f"input={input_uri}", f"output={output_uri}", f"job.run_id={run_id}", "job.progress=false",
            "job.segment_s=300"]
    if listing:
        args.append(f"job.listing={listing}")
    if plan_only:
        args.append("job.plan_only=true")
    job_id = client.submit_job(
        entrypoint="python jobs/anonymize.py " + " ".join(args),
        runtime_env={"working_dir": "/opt/anon", "env_vars": {"RAY_USAGE_STATS_ENABLED": "0"}},
        submission_id=f"anon-{'plan' if plan_only else 'run'}-{ds}-{int(time.time())}",
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


def has_work(ti, max_bytes: str = "") -> bool:
    """False (skip the run) when the plan has nothing to process; an error when it is over the nightly cap."""
    plan = ti.xcom_pull(task_ids="plan")
    todo = plan["to_process"]
    print(f"plan: {todo['assets']} assets / {todo['bytes']} bytes to process; new {plan['new']['assets']}, "
          f"changed {plan['changed']['assets']}, config changed {plan['config_changed']['assets']}, "
          f"done {plan['done']['assets']}")
    if max_bytes and todo["bytes"] > int(max_bytes):
        raise RuntimeError(f"plan exceeds anon_max_bytes_per_run ({todo['bytes']} > {max_bytes}): run it by hand")
    return todo["assets"] > 0


with DAG(
    dag_id="anon_archive_nightly",
    start_date=datetime(2026, 1, 1),
    schedule="@daily",
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 1, "retry_delay": timedelta(minutes=10)},
    tags=["anon", "gdpr"],
) as dag:
    plan = PythonOperator(task_id="plan", python_callable=submit_and_wait,
                          op_kwargs={**COMMON, "plan_only": True, "timeout_s": 3 * 3600},
                          execution_timeout=timedelta(hours=4))
    gate = ShortCircuitOperator(task_id="has_work", python_callable=has_work,
                                op_kwargs={"max_bytes": "{{ var.value.get('anon_max_bytes_per_run', '') }}"})
    run = PythonOperator(task_id="anonymize_archive", python_callable=submit_and_wait, op_kwargs=COMMON,
                         execution_timeout=timedelta(hours=21))
    plan >> gate >> run
