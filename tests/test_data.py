"""Data loaders on tiny files in the official formats: parsing, validation, caching, location, splits."""

from __future__ import annotations

import gzip
import os
import time

import numpy as np
import pytest
import torch

from conftest import cifar_members, count, write_cifar_tar, write_fashion, write_idx
from vaelab import VaelabError
from vaelab import data as vdata


def test_idx_round_trip(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", arr)
    write_idx(tmp_path / "b", arr, compress=False)
    assert np.array_equal(vdata.read_idx(tmp_path / "a.gz", 3), arr)
    assert np.array_equal(vdata.read_idx(tmp_path / "b", 3), arr)


@pytest.mark.parametrize(
    "damage,msg",
    [
        (lambda raw: b"\x00\x00\x09\x03" + raw[4:], "bad IDX magic"),
        (lambda raw: raw[:-10], "truncated"),
        (lambda raw: raw[:6], "truncated IDX header"),
    ],
)
def test_idx_rejects_damaged_files(tmp_path, damage, msg):
    arr = np.zeros((3, 28, 28), np.uint8)
    write_idx(tmp_path / "x", arr, compress=False)
    p = tmp_path / "x.gz"
    p.write_bytes(gzip.compress(damage((tmp_path / "x").read_bytes())))
    with pytest.raises(VaelabError, match=msg) as e:
        vdata.read_idx(p, 3)
    assert str(p) in str(e.value)


def test_truncated_gzip_names_the_file(tmp_path):
    write_idx(tmp_path / "x.gz", np.zeros((50, 28, 28), np.uint8))
    raw = (tmp_path / "x.gz").read_bytes()
    (tmp_path / "x.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(VaelabError, match="x.gz"):
        vdata.read_idx(tmp_path / "x.gz", 3)


def test_fashion_loads_with_shapes_labels_and_classes(tiny_root):
    ds = vdata.load("fashion-mnist", tiny_root)
    assert ds.x_train.shape == (240, 1, 28, 28) and ds.x_train.dtype == np.uint8
    assert ds.x_test.shape == (60, 1, 28, 28)
    assert ds.y_train.dtype == np.int64 and ds.y_train.max() <= 9
    assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"


def test_fashion_label_out_of_range(tmp_path):
    write_fashion(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.full(60, 12, np.uint8))
    with pytest.raises(VaelabError, match="labels outside 0..9"):
        vdata.load_fashion(tmp_path)


def test_fashion_count_mismatch(tmp_path):
    write_fashion(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(59, np.uint8))
    with pytest.raises(VaelabError, match="60 images but 59 labels"):
        vdata.load_fashion(tmp_path)


@pytest.mark.parametrize("mode,name", [("w:gz", "cifar-10-python.tar.gz"), ("w:xz", "cifar-10-python.tar.xz")])
def test_cifar_from_any_tar_compression(tmp_path, mode, name):
    members = cifar_members()
    write_cifar_tar(tmp_path / name, members, mode)
    ds = vdata.load("cifar10", tmp_path)
    assert ds.x_train.shape == (120, 3, 32, 32) and ds.x_test.shape == (40, 3, 32, 32)
    assert ds.classes == tuple(vdata.CIFAR_CLASSES)
    # the official layout is R plane, G plane, B plane per row of 3072
    raw = __import__("pickle").loads(members["data_batch_1"])[b"data"]
    assert np.array_equal(ds.x_train[0, 1].ravel(), raw[0, 1024:2048])


def test_cifar_from_extracted_folder_matches_archive(tmp_path):
    members = cifar_members()
    folder = tmp_path / "a" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for k, v in members.items():
        (folder / k).write_bytes(v)
    (tmp_path / "b").mkdir()
    write_cifar_tar(tmp_path / "b" / "cifar-10-python.tar.gz", members)
    a, b = vdata.load("cifar10", tmp_path / "a"), vdata.load("cifar10", tmp_path / "b")
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_test, b.y_test)


def test_cifar_missing_batch_and_corrupt_pickle(tmp_path):
    members = cifar_members()
    del members["data_batch_3"]
    write_cifar_tar(tmp_path / "cifar-10-python.tar.gz", members)
    with pytest.raises(VaelabError, match="data_batch_3"):
        vdata.load("cifar10", tmp_path)
    members = cifar_members()
    members["test_batch"] = b"not a pickle at all"
    (tmp_path / "cifar-10-python.tar.gz").unlink()
    write_cifar_tar(tmp_path / "cifar-10-python.tar.gz", members)
    with pytest.raises(VaelabError, match="test_batch"):
        vdata.load("cifar10", tmp_path)


def test_truncated_archive_is_refused_not_half_loaded(tmp_path):
    write_cifar_tar(tmp_path / "cifar-10-python.tar.gz", cifar_members())
    raw = (tmp_path / "cifar-10-python.tar.gz").read_bytes()
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(raw[: len(raw) * 2 // 3])
    with pytest.raises(VaelabError, match="cifar-10-python.tar.gz"):
        vdata.load("cifar10", tmp_path)


def test_second_load_comes_from_cache_and_is_identical(tiny_root, monkeypatch):
    a = vdata.load("fashion-mnist", tiny_root)
    monkeypatch.setattr(vdata.idx, "read_idx", lambda *a: pytest.fail("re-decoded the IDX files"))
    t0 = time.perf_counter()
    b = vdata.load("fashion-mnist", tiny_root)
    assert time.perf_counter() - t0 < 1.0
    assert np.array_equal(a.x_train, b.x_train) and a.classes == b.classes
    assert list((vdata.cache_dir() / "decoded").glob("fashion-mnist-*/meta.json"))


def test_changed_source_invalidates_cache(tmp_path):
    write_fashion(tmp_path, seed=1)
    a = vdata.load("fashion-mnist", tmp_path)
    time.sleep(0.01)
    write_fashion(tmp_path, seed=2)
    b = vdata.load("fashion-mnist", tmp_path)
    assert not np.array_equal(a.x_train, b.x_train)


def test_location_order_env_then_explicit(tmp_path, monkeypatch, tiny_root):
    monkeypatch.setenv("VAELAB_DATA", str(tiny_root))
    assert vdata.locate("fashion-mnist") == tiny_root / "fashion-mnist"
    assert vdata.locate("fashion-mnist", tmp_path) is None  # an explicit folder is the only place looked


def test_offline_missing_dataset_is_one_line_naming_where(tmp_path):
    with pytest.raises(VaelabError) as e:
        vdata.load("cifar10", tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path) in msg and "cifar-10-python.tar.gz" in msg


def test_splits_are_deterministic_disjoint_and_sized(tiny_root):
    tr1, va1 = vdata.split_indices(240, 40, 100)
    tr2, va2 = vdata.split_indices(240, 40, 100)
    assert np.array_equal(tr1, tr2) and np.array_equal(va1, va2)
    assert len(tr1) == 100 and len(va1) == 40 and not set(tr1) & set(va1)
    full, va3 = vdata.split_indices(240, 40)
    assert np.array_equal(va1, va3) and set(tr1) <= set(full)  # train_size takes from the same pool
    with pytest.raises(VaelabError, match="train_size 500"):
        vdata.split_indices(240, 40, 500)
    with pytest.raises(VaelabError, match="val_size"):
        vdata.split_indices(240, 240)
    assert len(vdata.test_indices(60, 10)) == 10 and len(vdata.test_indices(60)) == 60


def test_make_splits_are_uint8_tensors(tiny_root):
    ds = vdata.load("fashion-mnist", tiny_root)
    s = vdata.make_splits(ds, 40, 0, 20)
    assert s["train"].x.dtype == torch.uint8 and s["train"].x.shape == (200, 1, 28, 28)
    assert len(s["val"]) == 40 and len(s["test"]) == 20


def test_a_split_of_a_read_only_array_is_its_own_copy_and_warns_nothing(tiny_root):
    """A dataset's arrays may be read-only (np.frombuffer of the file); a split taken whole must not share them with
    a tensor torch would let anyone write (torch warns about exactly that)."""
    import warnings

    x = np.arange(2 * 4, dtype=np.uint8).reshape(2, 1, 2, 2)
    y = np.array([0, 1])
    x.setflags(write=False)
    y.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        split = vdata.to_split(x, y, "cpu")
        whole = vdata.make_splits(vdata.load("fashion-mnist", tiny_root), 40, 0, 0)["test"]
    split.x[0, 0, 0, 0] = 99
    assert x[0, 0, 0, 0] == 0 and split.y.tolist() == [0, 1] and len(whole) == 60


def test_minibatches_cover_each_index_once():
    g = torch.Generator().manual_seed(0)
    idx = torch.cat(list(vdata.minibatches(103, 10, g)))
    assert sorted(idx.tolist()) == list(range(103))
    assert idx.tolist() != list(range(103))


def test_status_reports_found_and_missing(tiny_root):
    rows = {r["dataset"]: r for r in vdata.status(tiny_root)}
    # tiny files are no official release and ship no SHA256SUMS: found, but no hash speaks for them
    assert rows["fashion-mnist"]["status"] == "unverified" and rows["cifar10"]["status"] == "unverified"
    assert rows["cifar10-lossless"]["status"] == "missing"
    assert rows["shapes2d"]["status"] == "generated" and rows["dsprites"]["status"] == "missing"


def test_a_malicious_cifar_pickle_never_runs(tmp_path):
    """The official CIFAR-10 format is a pickle: a planted batches.meta must be refused before it runs anything."""
    import os
    import pickle

    marker = tmp_path / "PWNED"

    class Boom:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    members = cifar_members()
    members["batches.meta"] = pickle.dumps({b"label_names": Boom()})
    write_cifar_tar(tmp_path / "cifar-10-python.tar.gz", members)
    with pytest.raises(VaelabError, match="refused to load (posix|os).system"):
        vdata.load_cifar(tmp_path / "cifar-10-python.tar.gz")
    count("malicious_files_tried")
    count("malicious_files_executed", int(marker.exists()))
    assert not marker.exists()


def test_cifar_pickles_of_any_protocol_still_load(tmp_path):
    import pickle

    members = cifar_members()
    for name in list(members):
        members[name] = pickle.dumps(pickle.loads(members[name]), protocol=5)
    write_cifar_tar(tmp_path / "c.tar.gz", members)
    assert vdata.load_cifar(tmp_path / "c.tar.gz").x_train.shape == (120, 3, 32, 32)


# ---------------------------------------------------------------- integrity


def _sums(folder):
    import hashlib

    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}" for p in sorted(folder.iterdir()) if p.is_file()]
    (folder / "SHA256SUMS").write_text("\n".join(lines) + "\n")


def _flip_byte(path, at=-10):
    b = bytearray(path.read_bytes())
    b[at] ^= 0xFF
    path.write_bytes(bytes(b))


@pytest.mark.parametrize("damage", ["flip", "truncate", "shift-labels"])
def test_a_damaged_file_is_corrupt_against_sha256sums(tmp_path, damage):
    folder = tmp_path / "fashion-mnist"
    write_fashion(folder)
    _sums(folder)
    assert vdata.verify(folder)[0] == vdata.VERIFIED
    labels = folder / "train-labels-idx1-ubyte.gz"
    if damage == "flip":
        _flip_byte(folder / "train-images-idx3-ubyte.gz")
    elif damage == "truncate":
        p = folder / "t10k-images-idx3-ubyte.gz"
        p.write_bytes(p.read_bytes()[:-100])
    else:  # a well-formed, re-packed file whose labels are off by one: parses fine, is still wrong
        raw = gzip.decompress(labels.read_bytes())
        labels.write_bytes(gzip.compress(raw[:8] + bytes((b + 1) % 10 for b in raw[8:])))
    status, why = vdata.verify(folder)
    assert status == vdata.CORRUPT and "SHA256SUMS" in why
    rows = {r["dataset"]: r for r in vdata.status(tmp_path)}
    assert rows["fashion-mnist"]["status"] == "corrupt"
    with pytest.raises(VaelabError, match="corrupt"):
        vdata.load("fashion-mnist", tmp_path)


def test_official_content_hashes_catch_shifted_labels(tmp_path, monkeypatch):
    """Without SHA256SUMS the known content hash of the official files decides (here the tiny files play the
    official ones): a re-compressed copy verifies, re-packed shifted labels do not."""
    import hashlib

    folder = tmp_path / "fashion-mnist"
    write_fashion(folder)
    known = {}
    for p in folder.iterdir():
        raw = gzip.decompress(p.read_bytes())
        known[p.name] = (hashlib.sha256(raw).hexdigest(), len(raw))
        p.write_bytes(gzip.compress(raw, compresslevel=1))  # re-compressed: other .gz bytes, same content
    from vaelab.data import checksums

    monkeypatch.setattr(checksums, "FASHION_CONTENT", known)
    assert vdata.verify(folder) == (vdata.VERIFIED, "t10k-images-idx3-ubyte.gz: content matches the official release")
    labels = folder / "t10k-labels-idx1-ubyte.gz"
    raw = gzip.decompress(labels.read_bytes())
    labels.write_bytes(gzip.compress(raw[:8] + raw[9:] + raw[8:9]))  # labels rotated by one
    status, why = vdata.verify(folder)
    assert status == vdata.CORRUPT and "t10k-labels" in why and "differs from the official release" in why


def test_verification_is_cached_by_size_and_mtime(tmp_path, monkeypatch):
    folder = tmp_path / "fashion-mnist"
    write_fashion(folder)
    _sums(folder)
    calls = []
    from vaelab.data import checksums

    real = checksums.check_file
    monkeypatch.setattr(checksums, "check_file", lambda p: calls.append(p.name) or real(p))
    vdata.verify(folder)
    assert len(calls) == 4
    vdata.verify(folder)
    assert len(calls) == 4  # nothing re-hashed
    p = folder / "train-labels-idx1-ubyte.gz"
    os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 10**9))
    vdata.verify(folder)
    assert calls[4:] == ["train-labels-idx1-ubyte.gz"]


@pytest.mark.parametrize("name", ["fashion-mnist", "cifar10"])
def test_the_dataset_spec_states_the_facts_a_loaded_dataset_has(tiny_root, name):
    """Shape, classes, pixel levels and chance live in the spec; a loaded dataset agrees with its spec."""
    spec, ds = vdata.DATASETS[name], vdata.load(name, tiny_root)
    assert spec.shape == ds.shape and spec.classes == ds.classes and spec.n_dims == int(np.prod(ds.shape))
    assert spec.chance == pytest.approx(0.1) and int(ds.x_train.max()) < spec.levels == 256
    for a, b in spec.attribute_pairs:  # the pairs `explore` draws attribute vectors between are real classes
        assert a in spec.classes and b in spec.classes and a != b
