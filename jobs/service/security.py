"""API keys (kept only as hashes), URI allow-listing for jobs (no SSRF, no server files), webhook hosts."""

from __future__ import annotations

import hashlib
import hmac
import os
import posixpath
import re
from collections.abc import Iterable
from urllib.parse import urlsplit


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class KeyStore:
    """Holds sha256 digests of the API keys; the plain keys are dropped once hashed."""

    def __init__(self, keys: Iterable[str] = (), hashes: Iterable[str] = ()) -> None:
        self._hashes = [hash_key(k) for k in keys if k.strip()] + [h.lower() for h in hashes]

    @classmethod
    def from_sources(cls, env_value: str | None, files: Iterable[str] = ()) -> KeyStore:
        keys = [k.strip() for k in (env_value or "").split(",") if k.strip()]
        hashes: list[str] = []
        for path in files:
            with open(path, encoding="utf-8") as fh:
                for line in fh:
                    line = line.strip()
                    if not line or line.startswith("#"):
                        continue
                    # `sha256:<hex>` lines let operators keep only digests on disk
                    if line.startswith("sha256:"):
                        hashes.append(line[7:])
                    else:
                        keys.append(line)
        return cls(keys, hashes)

    def __len__(self) -> int:
        return len(self._hashes)

    def check(self, presented: str | None) -> str | None:
        """The matching key's digest (used as the caller's identity), or None.

        Every stored digest is compared with compare_digest, so timing does not reveal which key or how
        much of it matched.
        """
        if not presented:
            return None
        digest = hash_key(presented)
        found = None
        for h in self._hashes:
            if hmac.compare_digest(digest, h):
                found = h
        return found


def bearer_token(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


# Storage schemes a job may use. http(s) and fsspec chaining (`a::b`) are never accepted: they would let a
# caller make the server fetch arbitrary URLs.
STORAGE_SCHEMES = {"file", "s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "hdfs", "memory"}
# Conservative charset: it keeps URIs safe to pass on as Hydra overrides to the Ray job and rules out
# percent-encoding tricks, query strings, fragments and backslashes.
_SAFE_URI = re.compile(r"^[\w.~/:+,= -]+$")


class UriRefused(ValueError):
    pass


def normalize_uri(uri: str) -> tuple[str, str]:
    """(scheme, normalized location) or UriRefused. Local paths must be absolute; `..` is never accepted."""
    if not uri or len(uri) > 2048 or not _SAFE_URI.match(uri):
        raise UriRefused("URI has characters outside the allowed set")
    if "::" in uri:
        raise UriRefused("chained fsspec URLs are not accepted")
    if "://" in uri:
        parts = urlsplit(uri)
        scheme = parts.scheme.lower()
        if scheme not in STORAGE_SCHEMES:
            raise UriRefused(f"scheme {scheme!r} is not a storage scheme")
        if scheme == "file":
            if parts.netloc not in ("", "localhost"):
                raise UriRefused("file URIs must not name a host")
            path = parts.path
        else:
            if not parts.netloc:
                raise UriRefused("URI has no bucket/host")
            path = parts.netloc + parts.path
    else:
        scheme, path = "file", uri
    segments = path.split("/")
    if any(s in ("..", ".") for s in segments):
        raise UriRefused("relative path segments ('.', '..') are not accepted")
    if scheme == "file":
        if not path.startswith("/"):
            raise UriRefused("local paths must be absolute")
        # realpath: a symlink inside an allowed root must not lead outside it
        return scheme, os.path.realpath(path)
    return scheme, posixpath.normpath(path)


def overlaps(a: str, b: str) -> bool:
    """Whether one URI lies inside the other, compared after normalizing (`in//j2/o` is inside `in`)."""
    (sa, la), (sb, lb) = normalize_uri(a), normalize_uri(b)
    if sa != sb and {sa, sb} != {"s3", "s3a"}:
        return False
    la, lb = la.rstrip("/") + "/", lb.rstrip("/") + "/"
    return la.startswith(lb) or lb.startswith(la)


class UriPolicy:
    """Allowed URI prefixes, e.g. `s3://archive/in/`, `file:///srv/media/`. Nothing is allowed by default."""

    def __init__(self, prefixes: Iterable[str]) -> None:
        self.prefixes: list[tuple[str, str]] = []
        for p in prefixes:
            p = p.strip()
            if p:
                self.prefixes.append(normalize_uri(p))

    def check(self, uri: str) -> str:
        """The URI as given when it lies inside an allowed prefix; UriRefused otherwise."""
        if self.root_of(uri) is None:
            raise UriRefused("URI is outside the allowed prefixes")
        return uri

    def root_of(self, uri: str) -> str | None:
        """The normalized location of the prefix `uri` lies under (None: under none of them)."""
        scheme, loc = normalize_uri(uri)
        for pscheme, ploc in self.prefixes:
            if scheme != pscheme and {scheme, pscheme} != {"s3", "s3a"}:
                continue
            if loc == ploc or loc.startswith(ploc.rstrip("/") + "/"):
                return ploc
        return None

    def local_roots(self) -> list[str]:
        return [loc for scheme, loc in self.prefixes if scheme == "file"]


class JobUris:
    """Read prefixes (job inputs) and write prefixes (job outputs), which must not overlap: a job can then never
    write into a folder it or another job reads from, so originals are never overwritten."""

    def __init__(self, read: Iterable[str], write: Iterable[str]) -> None:
        self.read, self.write = UriPolicy(read), UriPolicy(write)
        for rs, rl in self.read.prefixes:
            for ws, wl in self.write.prefixes:
                same = rs == ws or {rs, ws} == {"s3", "s3a"}
                r, w = rl.rstrip("/") + "/", wl.rstrip("/") + "/"
                if same and (r.startswith(w) or w.startswith(r)):
                    raise ValueError(f"read prefix {rs}://{rl} and write prefix {ws}://{wl} overlap: "
                                     "outputs could overwrite originals")

    def check(self, input_uri: str, output_uri: str) -> None:
        """UriRefused unless input is under a read prefix and output under a write prefix."""
        normalize_uri(input_uri)
        normalize_uri(output_uri)
        if self.read.root_of(input_uri) is None:
            raise UriRefused("input is outside the read prefixes")
        if self.write.root_of(output_uri) is None:
            raise UriRefused("output is outside the write prefixes (inputs are never written)")
        for scheme, loc in self.read.prefixes:  # belt and braces: an output never lands under any read prefix
            if overlaps(output_uri, f"{scheme}://{loc}" if scheme != "file" else loc):
                raise UriRefused("output lies under a read prefix")


def check_webhook(url: str, allowed_hosts: Iterable[str]) -> str:
    """A callback URL is accepted only for an allowed host (`host` or `host:port`), over http(s), no userinfo."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc:
        raise UriRefused("callback must be an http(s) URL without credentials")
    host = parts.hostname.lower()
    try:
        port = parts.port
    except ValueError as exc:
        raise UriRefused("callback URL has a bad port") from exc
    for entry in allowed_hosts:
        entry = entry.strip().lower()
        if not entry:
            continue
        ehost, _, eport = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
        if ehost == host and (not eport or (port is not None and str(port) == eport)):
            return url
    raise UriRefused("callback host is not allowed")
