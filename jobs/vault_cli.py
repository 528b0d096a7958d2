"""`anon restore` and `anon shred`: reverse vault-sealed masks, destroy the key material of a key id.

Both print one line on stderr and exit 2 on any vault error (wrong key, tampered, missing vault,
shredded key); restore writes nothing unless every asset restores.
"""

from __future__ import annotations

import argparse
import json
import sys


def add_restore_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("output", help="an anonymized output folder/file (vaults under its _vault/)")
    p.add_argument("-o", "--restored", required=True, help="local folder for the restored assets")
    p.add_argument("--vault", help="the vault object of a single output file (default: <dir>/_vault/<name>.vault)")
    p.add_argument("--keyring", default="", help="keyring folder (default: $ANON_VAULT_KEYRING or ~/.local/share)")
    p.add_argument("--key-env", default="ANON_VAULT_KEY", help="environment variable holding the key")


def add_shred_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("key_id", help="key id as recorded in the audit row (extra_json.vault.key_id)")
    p.add_argument("--data-key", default=None, help="shred only this data key id (one asset's vault)")
    p.add_argument("--keyring", default="", help="keyring folder (default: $ANON_VAULT_KEYRING or ~/.local/share)")


def cmd_restore(args: argparse.Namespace) -> int:
    from anon_core.vault import Keyring, VaultError, load_key
    from anon_core.vault.restore import restore_tree

    try:
        kek = load_key(args.key_env)
        done = restore_tree(args.output, args.restored, kek, Keyring(args.keyring or None), vault=args.vault)
    except VaultError as exc:
        print(f"anon restore: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"anon restore: storage error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"restored": len(done), "output": args.restored,
                      "files": [{"from": r.relative_path, "to": r.restored_path, "regions": r.regions}
                                for r in done]}))
    return 0


def cmd_shred(args: argparse.Namespace) -> int:
    from anon_core.vault import Keyring, VaultError

    ring = Keyring(args.keyring or None)
    try:
        n = ring.shred(args.key_id, args.data_key)
    except VaultError as exc:
        print(f"anon shred: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"key_id": args.key_id, "data_keys_destroyed": n, "log": str(ring.root / "shred_log.jsonl")}))
    return 0
