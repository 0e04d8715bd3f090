"""Checking dataset files against every known hash (a folder's SHA256SUMS, the official downloads' MD5, the official content's SHA-256), cached by path, size and mtime."""

from __future__ import annotations

import gzip
import hashlib
import struct
import zlib
from pathlib import Path

from vaelab.core.errors import VaelabError
from vaelab.core.store import atomic_write_json, read_json
from vaelab.data.cifar import CIFAR_ARCHIVE, CIFAR_MD5, CIFAR_SIZE
from vaelab.data.idx import FASHION_CONTENT, FASHION_FILES, MNIST_CONTENT
from vaelab.data.types import CORRUPT, UNVERIFIED, VERIFIED, cache_dir


def _digest(data: bytes, algo: str) -> str:
    return hashlib.new(algo, data).hexdigest()


def _sha256sums(folder: Path) -> dict[str, str]:
    """The folder's SHA256SUMS (`<hex>  <name>` lines), if it ships one."""
    path = folder / "SHA256SUMS"
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text(errors="replace").splitlines():
        parts = line.split()
        if len(parts) == 2 and len(parts[0]) == 64:
            out[parts[1].lstrip("*")] = parts[0].lower()
    return out


def check_file(path: Path) -> tuple[str, str]:
    """(status, why) of one dataset file against every known hash: the folder's SHA256SUMS, the official MD5 of the
    download, and (Fashion-MNIST) the SHA-256 of the official decompressed content. A file that claims to be the
    official one (same name and content size) and matches none is corrupt; a file no hash speaks for (a subset,
    the CIFAR-10 stand-in) is unverified."""
    path = Path(path)
    listed = _sha256sums(path.parent).get(path.name)
    name = path.name if path.suffix == ".gz" else path.name + ".gz"
    official_md5 = FASHION_FILES.get(name) or (CIFAR_MD5 if path.name == CIFAR_ARCHIVE else None)
    if listed is None and official_md5 is None:
        return UNVERIFIED, "no known hash for this file"
    data = path.read_bytes()
    if listed is not None:
        ok = _digest(data, "sha256") == listed
        return (
            (VERIFIED, "matches SHA256SUMS") if ok else (CORRUPT, f"SHA-256 differs from {path.parent / 'SHA256SUMS'}")
        )
    if official_md5 is not None and path.name == name and _digest(data, "md5") == official_md5:
        return VERIFIED, "matches the official MD5"
    tables = [t[name] for t in (FASHION_CONTENT, MNIST_CONTENT) if name in t]
    if tables:
        try:
            content = gzip.decompress(data) if path.suffix == ".gz" else data
        except (OSError, EOFError, zlib.error) as e:
            return CORRUPT, f"cannot decompress ({e})"
        if any(_digest(content, "sha256") == want for want, _ in tables):
            return VERIFIED, "content matches the official release"
        header_n = struct.unpack(">I", content[4:8])[0] if len(content) >= 8 else -1
        official_n = 60000 if name.startswith("train") else 10000
        if any(len(content) == size for _, size in tables) or header_n == official_n:
            return CORRUPT, "content differs from the official release (a changed, truncated or re-packed file)"
        return UNVERIFIED, f"not the official file ({header_n} items); no known hash"
    if len(data) != CIFAR_SIZE:
        return UNVERIFIED, f"not the official download ({len(data):,} bytes); no known hash"
    return CORRUPT, "MD5 differs from the official download"


def _source_files(source: Path) -> list[Path]:
    return (
        sorted(p for p in source.rglob("*") if p.is_file() and p.name != "SHA256SUMS") if source.is_dir() else [source]
    )


def verify(source: Path) -> tuple[str, str]:
    """Check every file of a dataset source once; results are cached by path, size and mtime, so an unchanged
    file is never hashed twice. Returns the worst status and its reason."""
    cache_path = cache_dir() / "verified.json"
    try:
        cache = read_json(cache_path) if cache_path.is_file() else {}
        cache = cache if isinstance(cache, dict) else {}
    except VaelabError:
        cache = {}
    rank = {VERIFIED: 0, UNVERIFIED: 1, CORRUPT: 2}
    worst, why, changed = VERIFIED, "", False
    for f in _source_files(Path(source)):
        st = f.stat()
        key = str(f.resolve())
        hit = cache.get(key)
        if not (isinstance(hit, dict) and hit.get("size") == st.st_size and hit.get("mtime_ns") == st.st_mtime_ns):
            status, reason = check_file(f)
            hit = cache[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "status": status, "why": reason}
            changed = True
        if rank.get(hit["status"], 1) > rank[worst] or not why:
            worst, why = hit["status"], f"{f.name}: {hit['why']}"
    if changed:
        try:
            atomic_write_json(cache_path, cache)
        except (OSError, VaelabError):
            pass  # an unwritable cache only costs time
    return worst, why
