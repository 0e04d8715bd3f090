"""Atomic writes, the safetensors codec, permissions, special files, write errors and the folder lock."""

from __future__ import annotations

import errno
import os
import stat

import pytest
import torch

from vaelab import VaelabError
from vaelab.core.store import FolderLock, atomic_write_bytes, load_tree, read_safetensors, safetensors_bytes, save_tree


def test_our_safetensors_files_match_the_reference_library(tmp_path):
    st = pytest.importorskip("safetensors.torch")
    tensors = {
        "a": torch.randn(3, 4),
        "b": torch.arange(5, dtype=torch.int64),
        "c": torch.tensor(2.5, dtype=torch.float64),
        "d": torch.randint(0, 255, (7,), dtype=torch.uint8),
        "e": torch.randn(2, 2).to(torch.bfloat16),
        "f": torch.tensor([True, False]),
        "g": torch.zeros(0, 3),
    }
    (tmp_path / "ours.safetensors").write_bytes(safetensors_bytes(tensors, {"k": "v"}))
    theirs = st.load_file(str(tmp_path / "ours.safetensors"))  # the reference reader accepts our file
    assert set(theirs) == set(tensors) and all(torch.equal(theirs[k], tensors[k]) for k in tensors)
    st.save_file(tensors, str(tmp_path / "theirs.safetensors"), metadata={"k": "v"})
    back, meta = read_safetensors(tmp_path / "theirs.safetensors")  # and we read theirs
    assert meta == {"k": "v"} and all(
        torch.equal(back[k], tensors[k]) and back[k].dtype == tensors[k].dtype for k in tensors
    )


def test_tree_round_trip_keeps_structure_and_key_types(tmp_path):
    tree = {
        "model": {"w": torch.randn(2, 3)},
        "state": {0: {"step": torch.tensor(3.0)}, 1: {}},
        "groups": [{"betas": (0.9, 0.999), "lr": 1e-3, "params": [0, 1]}],
        "none": None,
        "name": "x",
        "history": [{"epoch": 1, "loss": float("nan")}],
    }
    save_tree(tmp_path / "t.safetensors", tree)
    back = load_tree(tmp_path / "t.safetensors")
    assert torch.equal(back["model"]["w"], tree["model"]["w"])
    assert set(back["state"]) == {0, 1} and float(back["state"][0]["step"]) == 3.0
    assert back["groups"][0]["betas"] == [0.9, 0.999] and back["none"] is None and back["name"] == "x"
    assert back["history"][0]["loss"] != back["history"][0]["loss"]  # NaN survives


def _file(header: bytes, body: bytes = b"") -> bytes:
    return len(header).to_bytes(8, "little") + header + body


@pytest.mark.parametrize(
    "blob,msg",
    [
        (b"\x01\x02", "truncated"),
        ((10**9).to_bytes(8, "little") + b"{}", "header length"),
        ((4).to_bytes(8, "little") + b"nope", "not JSON"),
        ((2).to_bytes(8, "little") + b"[]", "not a mapping"),
        (_file(b'{"x":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}', b"\0" * 8), "byte range"),
        (_file(b'{"x":{"dtype":"OBJ","shape":[],"data_offsets":[0,0]}}'), "bad entry"),
    ],
)
def test_malformed_safetensors_are_one_line_errors(tmp_path, blob, msg):
    (tmp_path / "f").write_bytes(blob)
    with pytest.raises(VaelabError, match=msg):
        read_safetensors(tmp_path / "f")


def test_written_files_get_the_usual_permissions(tmp_path):
    mask = os.umask(0o022)
    os.umask(mask)
    atomic_write_bytes(tmp_path / "f.json", b"{}")
    assert stat.S_IMODE((tmp_path / "f.json").stat().st_mode) == 0o666 & ~mask  # not mkstemp's 0600


def test_special_files_and_symlinks_are_never_replaced(tmp_path):
    target = tmp_path / "precious"
    target.write_text("keep")
    (tmp_path / "link.png").symlink_to(target)
    os.mkfifo(tmp_path / "fifo.png")
    (tmp_path / "dir.png").mkdir()
    for name, kind in (("link.png", "symlink"), ("fifo.png", "special file"), ("dir.png", "folder")):
        with pytest.raises(VaelabError, match=kind):
            atomic_write_bytes(tmp_path / name, b"x")
    assert (tmp_path / "link.png").is_symlink() and target.read_text() == "keep"
    assert stat.S_ISFIFO(os.lstat(tmp_path / "fifo.png").st_mode)


def test_disk_full_is_one_line_and_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.safetensors"
    save_tree(path, {"w": torch.ones(3)})
    before = path.read_bytes()
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(VaelabError, match=r"checkpoint.safetensors: cannot write \(disk full\); the previous file"):
        save_tree(path, {"w": torch.zeros(1000)})
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert path.read_bytes() == before and not list(tmp_path.glob(".*.tmp"))


def test_a_real_file_size_limit_is_reported_the_same_way(tmp_path):
    """RLIMIT_FSIZE makes the kernel refuse the write (EFBIG) as a full disk would; run in a child process."""
    import subprocess
    import sys

    code = (
        "import resource, signal, torch\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "from vaelab.core.store import save_tree\n"
        f"save_tree(r'{tmp_path}/c.safetensors', {{'w': torch.ones(4)}})\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
        "from vaelab import VaelabError\n"
        "try:\n"
        f"    save_tree(r'{tmp_path}/c.safetensors', {{'w': torch.zeros(100000)}})\n"
        "except VaelabError as e:\n    print('ERR', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "ERR" in out.stdout and "cannot write" in out.stdout, out.stderr
    assert load_tree(tmp_path / "c.safetensors")["w"].numel() == 4


def test_folder_lock_admits_one_holder(tmp_path):
    with FolderLock(tmp_path, "this study"):
        with pytest.raises(VaelabError, match=f"in use by another vaelab process \\(pid {os.getpid()}\\)"):
            with FolderLock(tmp_path, "this study"):
                pass
    with FolderLock(tmp_path, "this study"):  # released on exit
        pass
