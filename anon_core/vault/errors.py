"""The one error type of the vault: its message is the one line the CLI prints."""

from __future__ import annotations


class VaultError(Exception):
    pass
