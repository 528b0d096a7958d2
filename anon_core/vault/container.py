"""The vault object: AES-256-GCM chunks of the recorded pixels, bound to one output by its header.

Layout: `ANONVAULT1\n`, a 4-byte header length, the header (canonical JSON), then per chunk a 4-byte
length and the ciphertext+tag. Every chunk's associated data is sha256(header) + chunk index + chunk
count, so the header (key id, asset id, output sha256, ...) cannot be edited, chunks cannot be dropped,
reordered or moved to another vault, and a vault is refused next to any output but the one it sealed.
Nonces are chunk counters: each vault has its own fresh data key, so a (key, nonce) pair never repeats.
"""

from __future__ import annotations

import io
import json
import struct
from hashlib import sha256
from typing import BinaryIO

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


def seal_to(out: BinaryIO, src: BinaryIO, size: int, dek: bytes, header: dict) -> None:
    """Encrypt `size` bytes read from `src` under the data key into `out`, chunk by chunk (memory stays at one
    chunk); `header` must already name the key ids and the output."""
    count = max(1, -(-size // CHUNK))
    head = json.dumps({**header, "format": FORMAT, "cipher": "AES-256-GCM", "chunks": count},
                      sort_keys=True, separators=(",", ":")).encode()
    gcm = AESGCM(dek)
    out.write(MAGIC + _U32.pack(len(head)) + head)
    for i in range(count):
        piece = src.read(min(CHUNK, size - i * CHUNK)) if size else b""
        if len(piece) != min(CHUNK, size - i * CHUNK):
            raise VaultError("recorded payload shorter than announced")
        ct = gcm.encrypt(_nonce(i), piece, _aad(head, i, count))
        out.write(_U32.pack(len(ct)) + ct)


def seal(payload: bytes, dek: bytes, header: dict) -> bytes:
    buf = io.BytesIO()
    seal_to(buf, io.BytesIO(payload), len(payload), dek, header)
    return buf.getvalue()


def _read(fh: BinaryIO, n: int, what: str) -> bytes:
    b = fh.read(n)
    if len(b) != n:
        raise VaultError(what)
    return b


def read_header(fh: BinaryIO) -> tuple[dict, bytes]:
    """(header, header bytes), leaving `fh` at the first chunk; the header is authenticated by the chunks."""
    if fh.read(len(MAGIC)) != MAGIC:
        raise VaultError("not a vault object (bad magic): damaged or tampered")
    (n,) = _U32.unpack(_read(fh, 4, "vault header is damaged or tampered"))
    if n > MAX_HEADER:
        raise VaultError("vault header is damaged or tampered")
    head = _read(fh, n, "vault header is damaged or tampered")
    try:
        header = json.loads(head)
    except ValueError as exc:
        raise VaultError("vault header is damaged or tampered") from exc
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise VaultError("vault header is damaged or tampered (unknown format)")
    return header, head


def open_to(fh: BinaryIO, out: BinaryIO, kek: bytes, keyring: Keyring, output_sha256: str) -> dict:
    """Check the binding to the output, unwrap the data key, then decrypt and authenticate every chunk of the
    vault in `fh` into `out`. Raises before returning if any chunk fails: callers use `out` only afterwards."""
    header, head = read_header(fh)
    if header.get("output_sha256") != output_sha256:
        raise VaultError("vault does not belong to this output (output sha256 differs): swapped or output edited")
    dek = keyring.data_key(kek, str(header.get("key_id")), str(header.get("data_key_id")))
    count = header.get("chunks")
    if not isinstance(count, int) or count < 1:
        raise VaultError("vault header is damaged or tampered")
    gcm = AESGCM(dek)
    for i in range(count):
        (n,) = _U32.unpack(_read(fh, 4, "vault is truncated or tampered"))
        if n > CHUNK + 16:
            raise VaultError("vault chunk is oversized: tampered")
        ct = _read(fh, n, "vault is truncated or tampered")
        try:
            out.write(gcm.decrypt(_nonce(i), ct, _aad(head, i, count)))
        except InvalidTag as exc:
            raise VaultError("vault is tampered or damaged (authentication failed)") from exc
    if fh.read(1):
        raise VaultError("vault has trailing data: tampered")
    return header


def open_vault(blob: bytes, kek: bytes, keyring: Keyring, output_sha256: str) -> tuple[dict, bytes]:
    """`open_to` for a vault held in memory."""
    out = io.BytesIO()
    header = open_to(io.BytesIO(blob), out, kek, keyring, output_sha256)
    return header, out.getvalue()
