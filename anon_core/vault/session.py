"""One pipeline's vault: a recorder per asset, then the sealed vault object published beside the output."""

from __future__ import annotations

import logging
import posixpath
import tempfile
from hashlib import sha256

from anon_core.vault.container import seal_to
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
        from anon_core.storage import put_atomic

        if not rec.output_sha256:
            raise VaultError("no output hash to bind the vault to")
        kid, dek_id, dek = self.keyring.new_data_key(self.kek, rec.input_sha256 or "")
        header = {"key_id": kid, "data_key_id": dek_id, "asset_id": rec.input_sha256 or "",
                  "relative_path": rel, "output_sha256": rec.output_sha256, "media_type": rec.media_type,
                  "media_format": rec.format, "frames_with_regions": len(recorder.frames),
                  "regions": recorder.regions}
        target = vault_path(out_root, rel, self.settings.dir)
        # sealed into a private temp file chunk by chunk: a long video's vault never sits in memory whole
        with tempfile.NamedTemporaryFile(prefix="anon-vault-", suffix=".vault") as tmp:
            seal_to(tmp, recorder.stream(), recorder.size, dek, header)
            tmp.flush()
            digest, size = _sha256_file(tmp)
            put_atomic(out_fs, tmp.name, target)
        rec.extra["vault"] = {"key_id": kid, "data_key_id": dek_id, "uri": display(target),
                              "sha256": digest, "size": size, "regions": recorder.regions,
                              "frames_with_regions": len(recorder.frames), "keyring": str(self.keyring.root)}

    def discard(self, out_fs, out_root: str, rel: str) -> None:
        """Remove a vault whose output could not be published (best effort: it is encrypted anyway)."""
        try:
            out_fs.rm_file(vault_path(out_root, rel, self.settings.dir))
        except Exception:  # noqa: BLE001 - nothing was there or the store is down; the vault stays sealed
            log.debug("no vault to discard for %s", rel)


def _sha256_file(fh) -> tuple[str, int]:
    fh.seek(0)
    h, n = sha256(), 0
    while block := fh.read(1 << 20):
        h.update(block)
        n += len(block)
    return h.hexdigest(), n
