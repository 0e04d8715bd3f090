"""A trained model for runtimes other than PyTorch: its encoder and its decoder as two ONNX graphs.

`vaelab export RUN model.onnx` writes `model.encoder.onnx` (uint8 images x (B, C, H, W) -> the posterior's mean
code `mu` and the base Gaussian's `logvar`, each (B, latent_dim)) and `model.decoder.onnx` (codes z (B, latent_dim)
-> `x_mean`, the likelihood's mean image in [0, 1], (B, C, H, W)); a conditional model's graphs also take the
labels `y` (B,) int64. The batch size is free. Each file carries the run's config and the dataset's facts as JSON
in its metadata (key "vaelab"). Two files, not one: a runtime feeds every input of a graph, and decoding should not
need an image. A hierarchical model's decoder takes the top group's code and sets the lower groups to their prior
means (temperature 0), so it is deterministic.

Exported with torch.export (the `dynamo` exporter), which needs the optional packages onnx and onnxscript
(`pip install 'vaelab[onnx]'`); onnxruntime runs the files.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from vaelab.core.errors import VaelabError
from vaelab.core.store import atomic_write_bytes, check_new_target
from vaelab.exports.bundle import dataset_facts
from vaelab.runs.run import Run
from vaelab.version import __version__

FORMAT, VERSION = "vaelab-onnx", 1
MAX_BATCH = 65536  # the batch dimension's upper bound in the graphs (torch.export needs one)


class _Encoder(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, y=None):
        return self.model.encode(x, y)


class _Decoder(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, z, y=None):
        return self.model.likelihood.mean(self.model.decode(z, y).float())


def paths(path) -> tuple[Path, Path]:
    """model.onnx -> (model.encoder.onnx, model.decoder.onnx)."""
    path = Path(path)
    if path.suffix != ".onnx":
        raise VaelabError(
            f"{path}: an ONNX export is named NAME.onnx (it writes NAME.encoder.onnx and NAME.decoder.onnx)"
        )
    stem = path.with_suffix("")
    return stem.with_name(stem.name + ".encoder.onnx"), stem.with_name(stem.name + ".decoder.onnx")


def export_onnx(run_dir, path, force: bool = False) -> tuple[Path, Path]:
    """Write a run's model (what evaluation reads) as NAME.encoder.onnx and NAME.decoder.onnx; returns both paths.
    Nothing is written unless both graphs export; existing files are replaced only with `force`."""
    enc_path, dec_path = paths(path)
    for p in (enc_path, dec_path):
        check_new_target(p, force)
    try:
        import onnx  # noqa: F401  (the exporter's own dependencies: refuse early, in one line)
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise VaelabError(
            f"ONNX export needs the optional packages onnx and onnxscript ({e.name} is missing): "
            "pip install 'vaelab[onnx]'"
        ) from None
    cfg, model, ckpt = Run(run_dir).load()
    model = copy.deepcopy(model).cpu().float().eval()  # Run.load caches its model: change a copy
    if hasattr(model, "temperature"):
        model.temperature = 0.0  # a hierarchical decoder at its lower groups' prior means: deterministic
    shape = tuple(ckpt["shape"])
    n = 2
    y = torch.zeros(n, dtype=torch.long) if model.num_classes else None
    x = torch.zeros((n, *shape), dtype=torch.uint8)
    z = torch.zeros(n, model.latent_dim)
    facts = _facts(cfg, ckpt)
    blobs = [
        _graph(_Encoder(model), (x, y), ("x", "y"), ("mu", "logvar"), cfg, {**facts, "graph": "encoder"}),
        _graph(_Decoder(model), (z, y), ("z", "y"), ("x_mean",), cfg, {**facts, "graph": "decoder"}),
    ]
    for p, blob in zip((enc_path, dec_path), blobs):
        atomic_write_bytes(p, blob)
    return enc_path, dec_path


def _facts(cfg, ckpt) -> dict:
    return {
        "format": FORMAT,
        "version": VERSION,
        "config": cfg.to_dict(),
        "dataset": dataset_facts(cfg, ckpt),
        "vaelab": __version__,
        "torch": torch.__version__,
    }


@contextlib.contextmanager
def _quiet(name: str):
    """The exporter logs a warning per missing optional op library (torchvision): not the user's concern."""
    log = logging.getLogger(name)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _graph(module, args, in_names, out_names, cfg, meta) -> bytes:
    """One graph's bytes (weights inside, no external data file), with `meta` as JSON under metadata key vaelab."""
    keep = [a is not None for a in args]
    args = tuple(a for a, k in zip(args, keep) if k)
    in_names = [n for n, k in zip(in_names, keep) if k]
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    dynamic = {name: {0: batch} for name in in_names}
    try:
        with warnings.catch_warnings(), _quiet("torch.onnx"):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module,
                args,
                input_names=in_names,
                output_names=list(out_names),
                dynamic_shapes=dynamic,
                dynamo=True,
                verbose=False,
            )
        proto = program.model_proto
    except Exception as e:  # the exporter's errors have no common type; name the parts that are there
        parts = f"model {cfg.model}, net {cfg.net}, posterior {cfg.posterior}, likelihood {cfg.likelihood}"
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise VaelabError(f"the {meta['graph']} ({parts}) does not export to ONNX: {first}") from None
    entry = proto.metadata_props.add()
    entry.key, entry.value = "vaelab", json.dumps(meta)
    return proto.SerializeToString()
