"""`vault.*` configuration: reversible, encrypted redaction (see anon_core/vault/__init__.py)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class VaultSettings:
    """enabled: seal the original pixels of every masked region into a vault object beside the output.

    key_env: the environment variable holding the wrapping key (64 hex chars; never in the config).
    keyring: where the per-asset data keys are kept, wrapped by that key ("" = $ANON_VAULT_KEYRING, else
    $XDG_DATA_HOME/anon/keyring, else ~/.local/share/anon/keyring). `anon shred KEY_ID` deletes them.
    dir: the vault objects' folder under the output root (`<dir>/<relative path>.vault`).
    """

    enabled: bool = False
    key_env: str = "ANON_VAULT_KEY"
    keyring: str = ""
    dir: str = "_vault"

    def __post_init__(self) -> None:
        if not self.dir or "/" in self.dir or self.dir.startswith("."):
            raise ValueError(f"vault.dir must be one folder name, got {self.dir!r}")
