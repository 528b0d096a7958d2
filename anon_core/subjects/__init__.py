"""Subject-level redaction (`subjects.redact_only` / `subjects.keep`) and `anon find-subject`."""

from anon_core.subjects.settings import SubjectSettings

__all__ = ["SubjectSettings"]
