"""Client-facing error text: one line, without the server's paths, hosts or storage endpoints.

The full message stays in the server log and in the audit manifest an operator reads; what a client sees is
the same sentence with every URL, absolute path and address replaced by a placeholder.
"""

from __future__ import annotations

import re

_URL = re.compile(r"""\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'"<>)\]]*""")
_PATH = re.compile(r"""(?<![\w.])/(?:[^\s'":,()\[\]<>]+/)*[^\s'":,()\[\]<>/]+""")
_ADDR = re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}(?::\d+)?\b")
_TMP = re.compile(r"anon-(?:svc|)[-\w]*")


def public_message(text: str | None, limit: int = 300) -> str:
    """`text`'s first line with URLs, absolute paths, IP addresses and temp-dir names masked."""
    line = (text or "").splitlines()[0] if text else ""
    line = _URL.sub("<url>", line)
    line = _PATH.sub("<path>", line)
    line = _ADDR.sub("<address>", line)
    line = _TMP.sub("<tmp>", line)
    return line[:limit]


def public_audit(audit: dict | None) -> dict | None:
    """The compact audit with its error sanitized (the rest holds no server detail)."""
    if audit is None:
        return None
    if audit.get("error"):
        audit = {**audit, "error": public_message(audit["error"])}
    return audit
