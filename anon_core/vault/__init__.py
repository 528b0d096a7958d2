"""Reversible, encrypted redaction (vault.enabled) and crypto-shredding.

While masking, a `MaskRecorder` keeps the original pixels of every masked region (per frame for video).
Once the output exists they are encrypted (AES-256-GCM) under a fresh per-asset data key into
`<output root>/_vault/<relative path>.vault`, bound to the output's sha256. The data key is wrapped
(AES key wrap) by the user's key (env ANON_VAULT_KEY, 64 hex chars) and kept only in the keyring, so
`anon shred KEY_ID` makes every vault of that key unreadable. `anon restore` reverses the masks.
"""

from anon_core.vault.errors import VaultError
from anon_core.vault.keys import Keyring, key_id, load_key
from anon_core.vault.recorder import MaskRecorder
from anon_core.vault.session import VaultSession, vault_path
from anon_core.vault.settings import VaultSettings

__all__ = ["Keyring", "MaskRecorder", "VaultError", "VaultSession", "VaultSettings", "key_id", "load_key",
           "vault_path"]
