"""Atomic file writes, tensor files that cannot run code (safetensors), and a run directory's file names."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
import struct
import tempfile
from pathlib import Path
from typing import Any

import torch

from vaelab.core.errors import VaelabError

CONFIG = "config.json"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.safetensors"
LEGACY_CHECKPOINT = "checkpoint.pt"  # vaelab < 0.2: a pickle, refused unless converted with --trust
EVAL = "eval.json"
SNAPSHOTS = "snapshots"  # snapshots/at-0.50.safetensors: the model at half the budget; eval-at-0.50.json its scores
ERROR = "error.json"
RUNNING = "RUNNING"  # a study's cell being run: the worker's pid, host and start
LOCK = ".lock"


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would give: mkstemp's 0600 is for secrets, not results


def check_new_target(path: Path, force: bool = False) -> Path:
    """A file a command is about to create: its folder must exist (a mistyped folder is not made silently), and an
    existing file is replaced only with force; never anything but a regular file (check_regular_target)."""
    path = Path(path)
    if not path.parent.is_dir():
        raise VaelabError(f"{path.parent}: no such folder (create it first)")
    if not force and (path.exists() or path.is_symlink()):
        raise VaelabError(f"{path}: already exists; pass --force to replace it")
    return check_regular_target(path)


def check_regular_target(path: Path) -> Path:
    """Refuse to replace anything but a regular file: a symlink, a device node, a folder or a fifo."""
    path = Path(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return path
    except OSError as e:
        raise VaelabError(f"{path}: cannot write ({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = (
            "a folder"
            if stat.S_ISDIR(st.st_mode)
            else "a symlink"
            if stat.S_ISLNK(st.st_mode)
            else "a special file (device, fifo or socket)"
        )
        raise VaelabError(f"{path}: is {kind}; refusing to replace it (name a regular file)")
    return path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temp file in the same folder and rename, so readers never see half a file.

    A failed write (disk full, quota, permissions) leaves the previous file as it was and says so in one line."""
    path = check_regular_target(Path(path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise VaelabError(f"{path}: cannot write ({e.strerror or e})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        why = "disk full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
        raise VaelabError(f"{path}: cannot write ({why}); the previous file, if any, is unchanged") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


# ---------------------------------------------------------------- safetensors, without pickle
# The format (huggingface/safetensors): an 8-byte little-endian header length, a JSON header mapping each tensor's
# name to its dtype, shape and byte range (plus a "__metadata__" map of strings), then the raw little-endian bytes.
# Reading it parses JSON and copies bytes: nothing in the file can run code. Written here (70 lines) so that
# the GPU machines, which have torch but not the safetensors package, read the same files; the tests check the
# files against the reference package.

_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}
_MAX_HEADER = 100 << 20


def _dtype_code(t) -> str:
    name = str(t.dtype).removeprefix("torch.")
    for code, n in _DTYPES.items():
        if n == name:
            return code
    raise VaelabError(f"cannot store a tensor of dtype {name}")


def safetensors_bytes(tensors: dict[str, Any], metadata: dict[str, str] | None = None) -> bytes:
    """Serialise name -> tensor (any device) and a str -> str metadata map in the safetensors layout."""
    header: dict[str, Any] = {"__metadata__": dict(metadata or {})}
    chunks, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": _dtype_code(t), "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # the format pads the header to 8-byte alignment
    return struct.pack("<Q", len(head)) + head + b"".join(chunks)


def read_safetensors(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """Parse a safetensors file into (name -> CPU tensor, metadata); anything malformed is a one-line error."""
    path = Path(path)
    try:
        blob = path.read_bytes()
    except OSError as e:
        raise VaelabError(f"{path}: cannot read ({e.strerror or e})") from None
    bad = lambda why: VaelabError(f"{path}: not a valid safetensors file ({why})")  # noqa: E731
    if len(blob) < 8:
        raise bad("truncated")
    (n,) = struct.unpack("<Q", blob[:8])
    if n > min(_MAX_HEADER, len(blob) - 8):
        raise bad("header length out of range")
    try:
        header = json.loads(blob[8 : 8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise bad("header is not JSON") from None
    if not isinstance(header, dict):
        raise bad("header is not a mapping")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise bad("metadata must map strings to strings")
    body = memoryview(blob)[8 + n :]
    out = {}
    for name, info in header.items():
        try:
            dtype = getattr(torch, _DTYPES[info["dtype"]])
            shape = [int(s) for s in info["shape"]]
            start, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise bad(f"bad entry for tensor '{name}'") from None
        numel = 1
        for s in shape:
            numel *= s
        if min(shape, default=0) < 0 or not 0 <= start <= end <= len(body) or end - start != numel * dtype.itemsize:
            raise bad(f"tensor '{name}' does not match its byte range")
        if numel == 0:
            out[name] = torch.empty(shape, dtype=dtype)
        else:
            out[name] = torch.frombuffer(bytearray(body[start:end]), dtype=torch.uint8).view(dtype).reshape(shape)
    return out, meta


def flatten_tree(obj: Any, tensors: dict[str, Any], prefix: str = "t") -> Any:
    """Split a nested structure into its tensors (moved to `tensors` under path names) and a JSON skeleton."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and "__tensor__" not in obj and "__items__" not in obj:
            return {k: flatten_tree(v, tensors, f"{prefix}.{k}") for k, v in obj.items()}
        return {"__items__": [[k, flatten_tree(v, tensors, f"{prefix}.{i}")] for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, (list, tuple)):
        return [flatten_tree(v, tensors, f"{prefix}.{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise VaelabError(f"cannot store a {type(obj).__name__} in a checkpoint")


def unflatten_tree(skel: Any, tensors: dict[str, Any]) -> Any:
    if isinstance(skel, dict):
        if "__tensor__" in skel:
            try:
                return tensors[skel["__tensor__"]]
            except (KeyError, TypeError):
                raise VaelabError(f"checkpoint refers to a missing tensor {skel['__tensor__']!r}") from None
        if "__items__" in skel:
            return {
                (k if not isinstance(k, list) else tuple(k)): unflatten_tree(v, tensors) for k, v in skel["__items__"]
            }
        return {k: unflatten_tree(v, tensors) for k, v in skel.items()}
    if isinstance(skel, list):
        return [unflatten_tree(v, tensors) for v in skel]
    return skel


def save_tree(path: Path, obj: dict) -> None:
    """Atomically write a nested dict of tensors and plain values as one safetensors file."""
    tensors: dict[str, Any] = {}
    skeleton = flatten_tree(obj, tensors)
    atomic_write_bytes(path, safetensors_bytes(tensors, {"vaelab": json.dumps(skeleton, default=_json_default)}))


def load_tree(path: Path) -> dict:
    """The inverse of save_tree; only JSON and raw tensor bytes are parsed."""
    tensors, meta = read_safetensors(path)
    try:
        skeleton = json.loads(meta["vaelab"])
    except (KeyError, json.JSONDecodeError):
        raise VaelabError(f"{path}: a safetensors file, but not one vaelab wrote (no 'vaelab' metadata)") from None
    tree = unflatten_tree(skeleton, tensors)
    if not isinstance(tree, dict):
        raise VaelabError(f"{path}: a safetensors file, but not one vaelab wrote")
    return tree


def remove_stale_temps(folder: Path) -> list[Path]:
    """Delete temp files that an atomic write killed mid-way (SIGKILL, power loss) left behind in `folder`.

    Call it only where this process is the folder's one writer (a run being started or resumed)."""
    stale = [p for p in Path(folder).glob(".*.tmp") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise VaelabError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise VaelabError(f"{path}: is a folder, not a JSON file") from None
    except UnicodeDecodeError:
        raise VaelabError(f"{path}: not valid JSON (not UTF-8 text)") from None
    except json.JSONDecodeError as e:
        raise VaelabError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    except OSError as e:
        raise VaelabError(f"{path}: cannot read ({e.strerror or e})") from None


def read_json_object(path: Path, what: str = "a JSON object") -> dict:
    d = read_json(path)
    if not isinstance(d, dict):
        raise VaelabError(f"{path}: expected {what}, got a JSON {type(d).__name__}")
    return d


def read_jsonl(path: Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    try:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise VaelabError(
            f"{path}: damaged ({type(e).__name__}); the run's checkpoint holds the same history: "
            "resume the run to rewrite it"
        ) from None
    if not all(isinstance(r, dict) for r in rows):
        raise VaelabError(f"{path}: damaged (a line is not a JSON object)")
    return rows


def check_run_dir(run_dir: Path) -> Path:
    """A run directory is one that holds a config.json written by vaelab; anything else is refused."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise VaelabError(f"{run_dir}: no such run directory")
    if not (run_dir / CONFIG).is_file():
        raise VaelabError(f"{run_dir}: not a vaelab run directory (no {CONFIG})")
    return run_dir


def ensure_writable_dir(path: Path) -> Path:
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise VaelabError(f"{path}: cannot create output directory ({e.strerror})") from None
    if not os.access(path, os.W_OK):
        raise VaelabError(f"{path}: output directory is not writable")
    return path


class FolderLock:
    """An exclusive, non-blocking fcntl lock on FOLDER/.lock: one writer per run or study directory.

    The kernel drops the lock when its process dies (even by SIGKILL), so a crash never leaves a stale lock."""

    def __init__(self, folder: Path, what: str):
        self.folder, self.what, self.fd = Path(folder), what, None

    def __enter__(self) -> FolderLock:
        path = self.folder / LOCK
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT, _FILE_MODE)
        except OSError as e:
            raise VaelabError(f"{path}: cannot create lock file ({e.strerror or e})") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(self.fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(self.fd)
            self.fd = None
            raise VaelabError(
                f"{self.folder}: {self.what} is in use by another vaelab process (pid {holder}); "
                "wait for it to finish, or watch it with 'vaelab study status'"
            ) from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, str(os.getpid()).encode(), 0)
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing releases the flock
            self.fd = None


def check_can_create(path: Path) -> Path:
    """Check, without creating anything, that `path` is (or can become) a writable folder."""
    path = Path(path)
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise VaelabError(f"{path}: cannot create output directory ({probe} is not a folder)")
    try:  # os.access is blind to read-only mounts and pseudo file systems (and says yes to root): try it
        os.rmdir(tempfile.mkdtemp(dir=probe, prefix=".vaelab-probe-"))
    except OSError as e:
        raise VaelabError(f"{path}: cannot create output directory ({probe}: {e.strerror or e})") from None
    return path
