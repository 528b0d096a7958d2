"""Wrapping key (held by the user) and the keyring of wrapped per-asset data keys (held by the project).

Crypto-shredding: a vault's data key exists only in the keyring, wrapped (AES key wrap, RFC 3394) by the
user's key. `shred` deletes every wrapped data key of one key id, so the vaults written under it can no
longer be opened even by someone who still has the user's key. Deleting is best effort on the storage
level (files are overwritten before unlinking; copy-on-write file systems and SSDs may keep old blocks):
the keyring belongs on storage the operator controls and does not back up beyond the retention period.
"""

from __future__ import annotations

import json
import os
import platform
import re
import secrets
from datetime import UTC, datetime
from hashlib import sha256
from pathlib import Path

from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from anon_core.vault.errors import VaultError

KEY_ID_RE = re.compile(r"^kek-[0-9a-f]{24}$")
DEK_ID_RE = re.compile(r"^[0-9a-f]{32}$")


def parse_key(text: str | None, env: str = "ANON_VAULT_KEY") -> bytes:
    if not text:
        raise VaultError(f"no vault key: set {env} to 64 hex characters (a 256-bit key)")
    text = text.strip()
    if not re.fullmatch(r"[0-9a-fA-F]{64}", text):
        raise VaultError(f"{env} must be 64 hex characters (a 256-bit key)")
    return bytes.fromhex(text)


def load_key(env: str = "ANON_VAULT_KEY") -> bytes:
    return parse_key(os.environ.get(env), env)


def key_id(key: bytes) -> str:
    """Public fingerprint of a wrapping key: a domain-separated hash, safe in audit rows (the key is random)."""
    return "kek-" + sha256(b"anon-vault-key-id\x00" + key).hexdigest()[:24]


def default_keyring() -> str:
    if os.environ.get("ANON_VAULT_KEYRING"):
        return os.environ["ANON_VAULT_KEYRING"]
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "anon", "keyring")


class Keyring:
    """`<root>/<key id>/<data key id>.json`: one wrapped data key per vault; `<root>/shred_log.jsonl`."""

    def __init__(self, root: str | None = None) -> None:
        self.root = Path(root or default_keyring()).expanduser().resolve()

    def _dir(self, kid: str) -> Path:
        if not KEY_ID_RE.match(kid):
            raise VaultError(f"not a vault key id: {kid!r} (expected kek- and 24 hex characters)")
        return self.root / kid

    def _entry(self, kid: str, dek_id: str) -> Path:
        if not DEK_ID_RE.match(dek_id):
            raise VaultError("vault header names a malformed data key id")
        return self._dir(kid) / f"{dek_id}.json"

    def new_data_key(self, kek: bytes, asset_id: str) -> tuple[str, str, bytes]:
        """(key id, data key id, data key): a fresh random data key, stored wrapped before it is used."""
        kid, dek_id, dek = key_id(kek), secrets.token_hex(16), secrets.token_bytes(32)
        d = self._dir(kid)
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        entry = {"key_id": kid, "data_key_id": dek_id, "wrapped": aes_key_wrap(kek, dek).hex(),
                 "asset_id": asset_id, "created": _now()}
        path = self._entry(kid, dek_id)
        tmp = path.with_suffix(".partial")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(entry, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        return kid, dek_id, dek

    def data_key(self, kek: bytes, kid: str, dek_id: str) -> bytes:
        if key_id(kek) != kid:
            raise VaultError(f"wrong key: the vault was sealed under {kid}, the key given is {key_id(kek)}")
        path = self._entry(kid, dek_id)
        if not path.is_file():
            if self.shredded(kid, dek_id):
                raise VaultError(f"the key material of this vault ({kid}) was shredded: it can no longer be opened")
            raise VaultError(f"no key material for {kid} in the keyring {self.root} (shredded or another keyring)")
        try:
            entry = json.loads(path.read_text())
            return aes_key_unwrap(kek, bytes.fromhex(entry["wrapped"]))
        except InvalidUnwrap as exc:
            raise VaultError(f"wrong key: the data key of {kid} does not unwrap with it") from exc
        except (ValueError, KeyError) as exc:
            raise VaultError(f"damaged keyring entry {path.name}") from exc

    def shred(self, kid: str, dek_id: str | None = None) -> int:
        """Destroy the wrapped data keys of `kid` (or only one of them); logged. Returns how many went."""
        d = self._dir(kid)
        paths = [self._entry(kid, dek_id)] if dek_id else sorted(d.glob("*.json")) if d.is_dir() else []
        paths = [p for p in paths if p.is_file()]
        if not paths:
            raise VaultError(f"no key material for {kid} in the keyring {self.root}")
        for p in paths:
            _overwrite_unlink(p)
        if not dek_id:
            try:
                d.rmdir()
            except OSError:
                pass  # a vault sealed while shredding: left for the next shred
        self._log({"event": "shred", "key_id": kid, "data_key_id": dek_id, "data_keys_destroyed": len(paths)})
        return len(paths)

    def shredded(self, kid: str, dek_id: str | None = None) -> bool:
        """Whether the shred log records destroying `kid` (or, with dek_id, that one data key)."""
        log = self.root / "shred_log.jsonl"
        if not log.is_file():
            return False
        events = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        return any(e.get("key_id") == kid and e.get("data_key_id") in (None, dek_id) for e in events)

    def _log(self, event: dict) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        event = {"time": _now(), "host": platform.node(), **event}
        fd = os.open(self.root / "shred_log.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a") as fh:
            fh.write(json.dumps(event, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


def _overwrite_unlink(path: Path) -> None:
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.write(secrets.token_bytes(size))
        fh.flush()
        os.fsync(fh.fileno())
    path.unlink()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
