"""One pipeline's vault: a recorder per asset, then the sealed vault object published beside the output."""

from __future__ import annotations

import logging
import posixpath
from hashlib import sha256

from anon_core.vault.container import seal
from anon_core.vault.errors import VaultError
from anon_core.vault.keys import Keyring, key_id, load_key
from anon_core.vault.recorder import MaskRecorder
from anon_core.vault.settings import VaultSettings

log = logging.getLogger(__name__)


def vault_path(out_root: str, rel: str, folder: str = "_vault") -> str:
    return out_root.rstrip("/") + "/" + posixpath.join(folder, rel) + ".vault"


class VaultSession:
    def __init__(self, settings: VaultSettings) -> None:
        self.settings = settings
        self.kek = load_key(settings.key_env)  # fails at start-up, before any output exists
        self.key_id = key_id(self.kek)
        self.keyring = Keyring(settings.keyring or None)

    def recorder(self) -> MaskRecorder:
        return MaskRecorder()

    def publish(self, recorder: MaskRecorder, rec, out_fs, out_root: str, rel: str, display) -> None:
        """Seal and write the vault of an asset whose output hash is known; must run before the output is
        published (an output without its vault would be unrestorable). Fills rec.extra["vault"]."""
        from anon_core.storage import write_atomic

        if not rec.output_sha256:
            raise VaultError("no output hash to bind the vault to")
        kid, dek_id, dek = self.keyring.new_data_key(self.kek, rec.input_sha256 or "")
        header = {"key_id": kid, "data_key_id": dek_id, "asset_id": rec.input_sha256 or "",
                  "relative_path": rel, "output_sha256": rec.output_sha256, "media_type": rec.media_type,
                  "media_format": rec.format, "frames_with_regions": len(recorder.frames),
                  "regions": recorder.regions}
        blob = seal(recorder.payload(), dek, header)
        target = vault_path(out_root, rel, self.settings.dir)
        write_atomic(out_fs, target, blob)
        rec.extra["vault"] = {"key_id": kid, "data_key_id": dek_id, "uri": display(target),
                              "sha256": sha256(blob).hexdigest(), "size": len(blob), "regions": recorder.regions,
                              "frames_with_regions": len(recorder.frames), "keyring": str(self.keyring.root)}

    def discard(self, out_fs, out_root: str, rel: str) -> None:
        """Remove a vault whose output could not be published (best effort: it is encrypted anyway)."""
        try:
            out_fs.rm_file(vault_path(out_root, rel, self.settings.dir))
        except Exception:  # noqa: BLE001 - nothing was there or the store is down; the vault stays sealed
            log.debug("no vault to discard for %s", rel)
