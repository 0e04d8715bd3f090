"""Users' own images as `npz:PATH` and `folder:PATH` datasets: validated, split deterministically, trained like any."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import tiny_config
from vaelab import VaelabError
from vaelab import data as vdata
from vaelab.app.cli import main


def _write(path, **arrays):
    np.savez(path, **arrays)
    return f"npz:{path}"


def test_an_npz_of_grey_images_with_labels_loads_and_carves_a_fixed_test_split(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (50, 12, 12), dtype=np.uint8)
    y = np.arange(50) % 3
    name = _write(tmp_path / "mine.npz", x=x, y=y, classes=np.array(["a", "b", "c"]))
    spec = vdata.spec(name)
    assert spec.shape == (1, 12, 12) and spec.classes == ("a", "b", "c") and spec.chance == pytest.approx(1 / 3)
    ds = vdata.load(name)
    assert (len(ds.x_train), len(ds.x_test)) == (45, 5) and ds.x_train.shape[1:] == (1, 12, 12)
    assert ds.name == name and ds.classes == ("a", "b", "c")
    again = vdata.load(name)
    assert np.array_equal(again.x_test, ds.x_test)  # the carved split never moves
    seen = np.concatenate([ds.x_train, ds.x_test])[:, 0]  # every image lands in exactly one split, with its label
    assert sorted(map(bytes, seen)) == sorted(map(bytes, x))
    for xs, ys in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
        for img, lab in zip(xs[:, 0], ys):
            assert lab == y[next(i for i in range(50) if np.array_equal(x[i], img))]


def test_colour_npz_with_its_own_test_split_and_no_labels(tmp_path):
    rng = np.random.default_rng(1)
    name = _write(
        tmp_path / "c.npz",
        x=rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8),
        x_test=rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8),
    )
    ds = vdata.load(name)
    assert ds.shape == (3, 8, 8) and len(ds.x_test) == 4 and set(ds.y_train) == {0} and ds.classes == ("0",)


@pytest.mark.parametrize(
    "arrays,msg",
    [
        (dict(images=np.zeros((4, 8, 8), np.uint8)), "no array 'x'"),
        (dict(x=np.zeros((4, 8, 8), np.float32)), "expected uint8 images"),
        (dict(x=np.zeros((4, 8, 8, 2), np.uint8)), "C = 1 or 3"),
        (dict(x=np.zeros((4, 8, 8), np.uint8), y=np.array([0, 1, -1, 0])), "non-negative integer labels"),
        (dict(x=np.zeros((4, 8, 8), np.uint8), y=np.array([0, 1])), "4 non-negative integer labels"),
        (dict(x=np.zeros((4, 8, 8), np.uint8), x_test=np.zeros((2, 4, 4), np.uint8)), "x_test images are"),
        (dict(x=np.zeros((1, 8, 8), np.uint8)), "need at least 2"),
    ],
)
def test_bad_npz_files_get_one_clear_error(tmp_path, arrays, msg):
    name = _write(tmp_path / "bad.npz", **arrays)
    with pytest.raises(VaelabError, match=msg):
        vdata.load(name)


def test_a_missing_or_foreign_file_and_the_cli(tmp_path, capsys):
    with pytest.raises(VaelabError, match="is not a file"):
        vdata.spec(f"npz:{tmp_path / 'nope.npz'}")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(VaelabError, match="not a readable .npz"):
        vdata.load(f"npz:{tmp_path / 'text.npz'}")
    assert main(["train", "--out", str(tmp_path / "r"), "--dataset", f"npz:{tmp_path / 'nope.npz'}"]) == 2
    assert "is not a file" in capsys.readouterr().err


def test_a_vae_trains_and_evaluates_on_an_npz_dataset(tmp_path):
    rng = np.random.default_rng(2)
    x = (rng.random((120, 16, 16)) < 0.3).astype(np.uint8) * 255
    name = _write(tmp_path / "blobs.npz", x=x, y=np.arange(120) % 2)
    from vaelab.evaluation.evaluate import evaluate
    from vaelab.training.loop import train

    train(tiny_config(dataset=name, epochs=1, val_size=20), tmp_path / "r")
    ev = evaluate(tmp_path / "r", iwae_samples=2)
    assert ev["n_dims"] == 256 and ev["dataset"] == name and np.isfinite(ev["iwae_nll"])
    assert main(["sample", str(tmp_path / "r"), "--n", "4", "--png", str(tmp_path / "s.png")]) == 0


def test_images_the_conv_net_cannot_halve_twice_get_a_clear_error(tmp_path, capsys):
    name = _write(tmp_path / "odd.npz", x=np.zeros((30, 10, 10), np.uint8))
    assert main(["train", "--out", str(tmp_path / "r"), "--dataset", name, "--epochs", "1", "--val-size", "5"]) == 2
    assert "divisible by 4, got 10x10" in capsys.readouterr().err and not (tmp_path / "r").exists()
    assert (
        main(
            [
                "train",
                "--out",
                str(tmp_path / "m"),
                "--dataset",
                name,
                "--arch",
                "mlp",
                "--epochs",
                "1",
                "--val-size",
                "5",
                "--iwae-samples",
                "2",
                "--no-eval",
            ]
        )
        == 0
    )


def test_a_study_on_an_npz_reports_from_its_run_directories_after_the_file_is_gone(tmp_path):
    """Reports read run directories: moving the user's data file away must not break the report or its findings."""
    from vaelab import study
    from vaelab.app.commands import report

    rng = np.random.default_rng(3)
    name = _write(
        tmp_path / "blobs.npz", x=((rng.random((80, 8, 8)) < 0.3) * 255).astype(np.uint8), y=np.arange(80) % 2
    )
    spec = study.parse_spec(
        {
            "name": "npz",
            "base": {"dataset": name, "epochs": 1, "val_size": 10, "iwae_samples": 2, "batch_size": 20, "net": "mlp"},
            "grid": {"latent_dim": [2, 4], "seed": [0]},
        }
    )
    assert study.run(spec, tmp_path / "S") == {"done": 2}
    (tmp_path / "blobs.npz").rename(tmp_path / "moved.npz")
    html = report(tmp_path / "S", classifier=False).read_text()
    assert "data not available here" in html and "Latent dimensionality" in html


# ---------------------------------------------------------------- folder:PATH


def _image_folder(root, classes=("cats", "dogs"), n=6, size=(20, 14), mode="RGB", seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    made = {}
    for k, c in enumerate(classes):
        d = root / c if c else root
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
            arr = rng.integers(0, 256, shape, dtype=np.uint8)
            arr[..., : size[1] // 2] = 40 + 150 * k  # the class shows in the picture
            Image.fromarray(arr, mode).save(d / f"img{i}.{'png' if i % 2 else 'jpg'}")
            made[d / f"img{i}.{'png' if i % 2 else 'jpg'}"] = k
    return made


def test_a_class_folder_loads_resized_with_labels_and_a_fixed_split(tmp_path):
    made = _image_folder(tmp_path / "pets")
    (tmp_path / "pets" / "cats" / "notes.txt").write_text("not an image, ignored")
    name = f"folder:{tmp_path / 'pets'}"
    spec = vdata.spec(name)
    # median shorter side 14 -> rounded to a multiple of 4: 16; colour detected
    assert spec.shape == (3, 16, 16) and spec.classes == ("cats", "dogs")
    ds = vdata.load(name)
    assert len(ds.x_train) + len(ds.x_test) == len(made) and len(ds.x_test) == 1
    assert ds.x_train.shape[1:] == (3, 16, 16) and sorted(set(ds.y_train) | set(ds.y_test)) == [0, 1]
    assert np.array_equal(vdata.load(name).x_test, ds.x_test)  # from the cache, the same split
    small = vdata.load(f"folder:{tmp_path / 'pets'}?size=8&mode=grey")
    assert small.x_train.shape[1:] == (1, 8, 8)
    # the left half of a dog is brighter than a cat's: the labels follow the images
    left = small.x_train[:, 0, :, :4].mean((1, 2))
    assert left[small.y_train == 1].min() > left[small.y_train == 0].max()


def test_a_flat_folder_is_unlabelled_grey_and_a_changed_folder_is_decoded_again(tmp_path):
    _image_folder(tmp_path / "flat", classes=("",), n=5, size=(12, 12), mode="L")
    name = f"folder:{tmp_path / 'flat'}"
    ds = vdata.load(name)
    assert ds.classes == ("all",) and ds.shape == (1, 12, 12) and set(ds.y_train) == {0}
    _image_folder(tmp_path / "flat", classes=("",), n=9, size=(12, 12), mode="L", seed=5)  # 4 more images
    assert len(vdata.load(name).x_train) + len(vdata.load(name).x_test) == 9


def test_broken_images_name_the_file_unless_skipped(tmp_path, capsys):
    _image_folder(tmp_path / "pets")
    bad = tmp_path / "pets" / "dogs" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(VaelabError, match="broken.png: not a readable image"):
        vdata.load(f"folder:{tmp_path / 'pets'}")
    ds = vdata.load(f"folder:{tmp_path / 'pets'}?skip_bad=1")
    assert len(ds.x_train) + len(ds.x_test) == 12
    # a truncated JPEG: its header reads, its pixels do not
    good = next((tmp_path / "pets" / "cats").glob("*.jpg"))
    (tmp_path / "pets" / "cats" / "cut.jpg").write_bytes(good.read_bytes()[:200])
    with pytest.raises(VaelabError, match="cut.jpg: not a readable image"):
        vdata.load(f"folder:{tmp_path / 'pets'}?skip_bad=0")
    out = tmp_path / "r"
    argv = [
        "train",
        "--dataset",
        f"folder:{tmp_path / 'pets'}",
        "--out",
        str(out),
        "--epochs",
        "1",
        "--val-size",
        "2",
        "--batch-size",
        "4",
        "--latent-dim",
        "2",
        "--iwae-samples",
        "2",
        "--device",
        "cpu",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cut.jpg: not a readable image" in err and "--skip-bad-images" in err
    assert main(argv + ["--skip-bad-images", "--image-size", "8"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["dataset"] == f"folder:{tmp_path / 'pets'}?size=8&skip_bad=1"  # the options travel with the run
    assert json.loads((out / "eval.json").read_text())["n_dims"] == 3 * 8 * 8


@pytest.mark.parametrize(
    "name, msg",
    [
        ("folder:", "give the folder"),
        ("folder:{tmp}/nowhere", "not a folder"),
        ("folder:{tmp}/empty", "no image files"),
        ("folder:{tmp}/mixed", "mixes 1 images at its top level"),
        ("folder:{tmp}/pets?size=10", "size must be a multiple of 4"),
        ("folder:{tmp}/pets?mode=cmyk", "mode must be one of"),
        ("folder:{tmp}/pets?colour=1", "unknown option"),
    ],
)
def test_bad_folders_and_options_get_one_clear_error(tmp_path, name, msg):
    _image_folder(tmp_path / "pets", n=2)
    (tmp_path / "empty").mkdir()
    _image_folder(tmp_path / "mixed", classes=("a",), n=2)
    (tmp_path / "mixed" / "stray.png").write_bytes((tmp_path / "mixed" / "a" / "img1.png").read_bytes())
    with pytest.raises(VaelabError, match=msg):
        vdata.load(name.format(tmp=tmp_path))


def test_a_study_trains_on_an_image_folder(tmp_path):
    from vaelab import study

    _image_folder(tmp_path / "pets", n=10)
    spec = study.parse_spec(
        {
            "name": "f",
            "base": {
                "dataset": f"folder:{tmp_path / 'pets'}?size=8",
                "epochs": 1,
                "val_size": 2,
                "batch_size": 4,
                "iwae_samples": 2,
                "device": "cpu",
            },
            "grid": {"latent_dim": [2, 3]},
        },
        "t",
    )
    assert study.run(spec, tmp_path / "S") == {"done": 2}
