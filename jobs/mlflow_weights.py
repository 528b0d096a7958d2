"""MLflow model URIs as detector weights (`models:/name/version`, `runs:/<run>/path`, `mlflow-artifacts:/...`).

The core resolves only paths, package resources and fsspec URLs; this module teaches it MLflow's schemes through
`anon_core.weights.register_resolver` (done when the `jobs` package is imported). MLflow itself is imported only
when such a URI is actually loaded; its telemetry is off before that (`anon_core.offline`).
"""

from __future__ import annotations

from pathlib import Path

PREFIXES = ("models:/", "runs:/", "mlflow-artifacts:/")


def download(uri: str, dst: Path) -> Path:
    """The artifact(s) `uri` names, downloaded into the private folder `dst` (from the configured tracking
    server / registry only: MLFLOW_TRACKING_URI, MLFLOW_REGISTRY_URI)."""
    from anon_core.offline import go_offline

    go_offline()
    import mlflow

    return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))


def register() -> None:
    from anon_core.weights import register_resolver

    register_resolver(PREFIXES, download)


__all__ = ["PREFIXES", "download", "register"]
