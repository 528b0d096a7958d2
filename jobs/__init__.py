"""Entry points that wrap anon_core: CLI, Ray Data job, validation, service."""

from jobs.mlflow_weights import register as _register_mlflow_weights

# MLflow model URIs as weights work in every entry point (and in Ray workers, which import jobs.* to unpickle
# the job's actor); MLflow itself loads only when such a URI is used.
_register_mlflow_weights()
