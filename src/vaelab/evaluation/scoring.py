"""Generation scored by the reference classifier: conditional accuracy, class histograms of unconditional samples,
and a Fréchet distance in the classifier's features (not Inception FID), merged into the run's eval.json."""

from __future__ import annotations

import torch

from vaelab import data as vdata
from vaelab.core.store import atomic_write_json, read_json
from vaelab.evaluation.generate import Sampler
from vaelab.runs.run import Run
from vaelab.training.classifier import frechet_distance, predict, reference_classifier


def generation_scores(run_dir, data_dir=None, n: int = 2000, seed: int = 0) -> dict:
    """Score a run's samples with the reference classifier: conditional accuracy, class histogram, Fréchet distance."""
    cfg, model, ckpt = Run(run_dir).load()
    ds = vdata.load(cfg.dataset, data_dir)
    clf, info = reference_classifier(cfg.dataset, data_dir, ds=ds)  # trains (with gradients) on first use
    with torch.no_grad():
        return _scores(model, clf, info, ds, ckpt, run_dir, data_dir, n, seed)


GENERATION_KEYS = ("conditional_accuracy", "fd_prior", "fd_gmm", "class_histogram_prior", "class_histogram_gmm")
SCORE_KEYS = ("classifier_test_accuracy", "n_samples", *GENERATION_KEYS)


def score_run(run_dir, data_dir=None, n: int = 2000, reuse: bool = True) -> dict:
    """generation_scores, merged into the run's eval.json so that study results carry them; with reuse, scores
    already there (from the same number of samples) are returned without recomputing."""
    path = Run(run_dir).eval_path()
    ev = read_json(path) if path.is_file() else None
    if reuse and ev is not None and ev.get("n_samples") == n and all(k in ev for k in GENERATION_KEYS):
        return {k: ev[k] for k in SCORE_KEYS}
    scores = generation_scores(run_dir, data_dir, n)
    if ev is not None:  # the generation scores join the run's other test-set measures
        atomic_write_json(path, {**ev, **scores})
    return scores


def _scores(model, clf, info, ds, ckpt, run_dir, data_dir, n, seed) -> dict:
    te = vdata.test_indices(len(ds.x_test), min(n, len(ds.x_test)))
    _, f_test = predict(clf, vdata.to_float(torch.from_numpy(ds.x_test[te])))
    n_classes = len(ckpt["classes"])
    out: dict = {"classifier_test_accuracy": info["test_accuracy"], "n_samples": n}
    gen = Sampler.for_run(run_dir, model, data_dir, dataset=ds)
    for sampler in ("prior", "gmm"):
        logits, feats = predict(clf, gen.images(n, sampler, seed=seed))
        hist = torch.bincount(logits.argmax(1), minlength=n_classes).float() / n
        out[f"fd_{sampler}"] = frechet_distance(feats.double().numpy(), f_test.double().numpy())
        out[f"class_histogram_{sampler}"] = hist.tolist()
    per_class = n // n_classes
    hits = 0
    for k in range(n_classes):  # class-conditional: the CVAE's decoder, or per-class Gaussians on the codes
        sampler = "prior" if model.num_classes else "class-gaussian"
        logits, _ = predict(clf, gen.images(per_class, sampler, k, seed + k))
        hits += int((logits.argmax(1) == k).sum())
    out["conditional_accuracy"] = hits / (per_class * n_classes)
    return out
