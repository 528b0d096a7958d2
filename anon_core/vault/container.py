"""The vault object: AES-256-GCM chunks of the recorded pixels, bound to one output by its header.

Layout: `ANONVAULT1\n`, a 4-byte header length, the header (canonical JSON), then per chunk a 4-byte
length and the ciphertext+tag. Every chunk's associated data is sha256(header) + chunk index + chunk
count, so the header (key id, asset id, output sha256, ...) cannot be edited, chunks cannot be dropped,
reordered or moved to another vault, and a vault is refused next to any output but the one it sealed.
Nonces are chunk counters: each vault has its own fresh data key, so a (key, nonce) pair never repeats.
"""

from __future__ import annotations

import json
import struct
from hashlib import sha256

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from anon_core.vault.errors import VaultError
from anon_core.vault.keys import Keyring

MAGIC = b"ANONVAULT1\n"
FORMAT = "anon-vault/1"
CHUNK = 4 << 20
MAX_HEADER = 1 << 16
_U32 = struct.Struct("<I")


def _aad(header: bytes, index: int, count: int) -> bytes:
    return sha256(header).digest() + _U32.pack(index) + _U32.pack(count)


def _nonce(index: int) -> bytes:
    return index.to_bytes(12, "big")


def seal(payload: bytes, dek: bytes, header: dict) -> bytes:
    """Encrypt `payload` under the data key; `header` must already name the key ids and the output."""
    pieces = [payload[i:i + CHUNK] for i in range(0, len(payload), CHUNK)] or [b""]
    head = json.dumps({**header, "format": FORMAT, "cipher": "AES-256-GCM", "chunks": len(pieces)},
                      sort_keys=True, separators=(",", ":")).encode()
    gcm = AESGCM(dek)
    out = [MAGIC, _U32.pack(len(head)), head]
    for i, p in enumerate(pieces):
        ct = gcm.encrypt(_nonce(i), p, _aad(head, i, len(pieces)))
        out += [_U32.pack(len(ct)), ct]
    return b"".join(out)


def read_header(blob: bytes) -> tuple[dict, bytes, int]:
    """(header, header bytes, offset of the first chunk); the header is authenticated only by `open_vault`."""
    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + 4:
        raise VaultError("not a vault object (bad magic): damaged or tampered")
    off = len(MAGIC)
    (n,) = _U32.unpack_from(blob, off)
    off += 4
    if n > MAX_HEADER or off + n > len(blob):
        raise VaultError("vault header is damaged or tampered")
    head = blob[off:off + n]
    try:
        header = json.loads(head)
    except ValueError as exc:
        raise VaultError("vault header is damaged or tampered") from exc
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise VaultError("vault header is damaged or tampered (unknown format)")
    return header, head, off + n


def open_vault(blob: bytes, kek: bytes, keyring: Keyring, output_sha256: str) -> tuple[dict, bytes]:
    """Check the binding to the output, unwrap the data key, decrypt and authenticate every chunk."""
    header, head, off = read_header(blob)
    if header.get("output_sha256") != output_sha256:
        raise VaultError("vault does not belong to this output (output sha256 differs): swapped or output edited")
    dek = keyring.data_key(kek, str(header.get("key_id")), str(header.get("data_key_id")))
    count = header.get("chunks")
    if not isinstance(count, int) or count < 1:
        raise VaultError("vault header is damaged or tampered")
    gcm = AESGCM(dek)
    parts = []
    for i in range(count):
        if off + 4 > len(blob):
            raise VaultError("vault is truncated or tampered")
        (n,) = _U32.unpack_from(blob, off)
        off += 4
        ct = blob[off:off + n]
        off += n
        if len(ct) != n:
            raise VaultError("vault is truncated or tampered")
        try:
            parts.append(gcm.decrypt(_nonce(i), ct, _aad(head, i, count)))
        except InvalidTag as exc:
            raise VaultError("vault is tampered or damaged (authentication failed)") from exc
    if off != len(blob):
        raise VaultError("vault has trailing data: tampered")
    return header, b"".join(parts)
