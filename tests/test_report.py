"""Reports: findings computed from data (and contradicted when it disagrees), HTML that loads in a real browser."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from conftest import headless_chromium, quick_classifier
from test_latent import assert_real_figure
from vaelab import study
from vaelab.app.cli import main
from vaelab.app.commands import report

pytestmark = pytest.mark.slow  # a study and its report each: `make test` runs them, `make test-fast` does not

SPEC = """\
name = "mini"
[base]
epochs = 1
train_size = 80
val_size = 40
test_size = 30
iwae_samples = 2
batch_size = 50
[[sweep]]
grid = {dataset = ["fashion-mnist", "cifar10"], latent_dim = [2, 4], seed = [0, 1]}
[[sweep]]
base = {latent_dim = 4}
grid = {dataset = ["fashion-mnist"], beta = [1.0, 4.0], seed = [0]}
"""


@pytest.fixture(scope="module")
def mini_study(tiny_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("mini") / "S"
    spec_path = out.parent / "mini.toml"
    spec_path.write_text(SPEC)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VAELAB_CACHE", str(out.parent / "cache"))
        assert study.run(study.load_spec(spec_path), out, data_dir=str(tiny_root)) == {"done": 9}
    return out


@pytest.fixture(scope="module")
def mini_report(mini_study, tiny_root):
    """The study's report, rendered once for the tests that read it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VAELAB_CACHE", str(mini_study.parent / "cache"))
        before = report(mini_study, data_dir=tiny_root).read_text()  # not scored yet: the report says how
        assert re.search(r"not scored yet: run (&#x27;|&#39;|')vaelab score …/" + mini_study.name, before)
        assert str(mini_study.parent) not in before  # no machine's path in what may be published
        assert main(["score", str(mini_study), "--data-dir", str(tiny_root), "--samples", "200"]) == 0
        return report(mini_study, data_dir=tiny_root)


def _images_of(index: Path) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', index.read_text())


def test_study_report_files(mini_study, mini_report):
    index = mini_report
    assert index == mini_study / "report" / "index.html"
    text = index.read_text()
    for section in (
        "Findings",
        "Datasets",
        "Setup",
        "Latent dimensionality",
        "β-VAE",
        "Samples and reconstructions",
        "Latent-space organisation",
        "Conditional generation",
    ):
        assert f">{section}</h2>" in text
    imgs = _images_of(index)
    assert len(imgs) >= 12
    for p in imgs:
        assert_real_figure(index.parent / p)
    for name in ("latent_sweep.png", "rate_distortion.png", "dataset_comparison.png"):
        assert f"fig/{name}" in imgs
    assert any(p.endswith("class_conditional.png") for p in imgs) and "probe_accuracy" in text
    # generation scored by the reference classifier: in the page, and (via eval.json) in the results
    assert "Fréchet dist., z ~ GMM" in text and "not Inception FID" in text
    assert sum("class_histogram_" in p for p in imgs) == 2  # one scored run per dataset
    df = study.collect(mini_study)
    scored = df.dropna(subset=["fd_prior"])
    cells = df[(df["latent_dim"] == df["latent_dim"].max()) & (df["beta"] == 1.0) & (df["status"] == "done")]
    assert sorted(scored["run_id"]) == sorted(cells["run_id"])  # every seed of each dataset's generation cell
    assert {
        "dataset-cifar10__latent_dim-4__beta-1__seed-1",
        "dataset-fashion-mnist__latent_dim-4__beta-1__seed-0",
    } <= set(scored["run_id"])
    for r in scored.itertuples():  # results.csv carries exactly what the report scored into each eval.json
        ev = json.loads((mini_study / "runs" / r.run_id / "eval.json").read_text())
        assert (ev["conditional_accuracy"], ev["fd_gmm"]) == pytest.approx((r.conditional_accuracy, r.fd_gmm))
    assert "sampling a mixture fitted to the aggregate posterior" in text
    md = (mini_study / "report" / "summary.md").read_text()
    assert "## Findings" in md and "Fashion-MNIST is easier" in md


def test_partial_study_shows_pending_runs(mini_study, tmp_path, tiny_root):
    partial = tmp_path / "P"
    shutil.copytree(mini_study, partial, ignore=shutil.ignore_patterns("report"))
    gone = partial / "runs" / "dataset-cifar10__latent_dim-4__beta-1__seed-1"
    shutil.rmtree(gone)
    text = report(partial, data_dir=tiny_root).read_text()
    assert "8 done, 1 pending" in text or "1 pending, 8 done" in text
    assert "dataset-cifar10__latent_dim-4__beta-1__seed-1</td><td>pending" in text


def test_run_report_and_cli(mini_study, tiny_root, capsys):
    run = mini_study / "runs" / "dataset-fashion-mnist__latent_dim-2__beta-1__seed-0"
    eval_before = (run / "eval.json").read_text()
    assert main(["report", str(run), "--data-dir", str(tiny_root)]) == 0
    assert (run / "eval.json").read_text() == eval_before  # the report only reads
    assert "not scored yet" in (run / "report" / "index.html").read_text()
    assert main(["score", str(run), "--data-dir", str(tiny_root), "--samples", "100"]) == 0
    assert main(["report", str(run), "--data-dir", str(tiny_root)]) == 0
    index = run / "report" / "index.html"
    imgs = _images_of(index)
    names = {Path(p).name for p in imgs}
    assert {
        "reconstructions.png",
        "samples.png",
        "curves.png",
        "kl_per_dim.png",
        "latent_map.png",
        "manifold.png",
        "interpolations.png",
        "traversals.png",
        "class_conditional.png",
        "prior_vs_mixture.png",
    } <= names
    assert "Fréchet dist., z ~ p(z)" in index.read_text()
    assert main(["report", str(run), "--data-dir", str(tiny_root), "--no-classifier"]) == 0
    assert "Fréchet dist." not in index.read_text()
    assert main(["report", str(tiny_root)]) == 2
    assert "neither a study directory" in capsys.readouterr().err


def test_report_in_headless_chromium(mini_study, mini_report, tmp_path):
    index = mini_report
    browser = headless_chromium(tmp_path)
    try:
        browser.get(index.resolve().as_uri())
        n, bad = browser.execute_script(
            "const im=[...document.images];"
            "return [im.length, im.filter(i=>!(i.complete && i.naturalWidth>0)).map(i=>i.src)];"
        )
        assert n == len(_images_of(index)) and n >= 12
        assert bad == [], f"images that did not load: {bad}"
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == [], errors
        assert "Findings" in browser.find_element("tag name", "h2").text
        # the findings open with a table of verdicts, coloured, and each finding's paragraph folds under <details>
        colours, folded, opened = browser.execute_script(
            "const v=[...document.querySelectorAll('table.glance .v')];"
            "const d=[...document.querySelectorAll('details.finding')];"
            "const f=d[0]; const closed=f.getBoundingClientRect().height; f.open=true;"
            "return [v.map(e=>getComputedStyle(e).backgroundColor), d.filter(e=>!e.open).length + 1 === d.length,"
            " f.getBoundingClientRect().height > closed];"
        )
        assert colours and all(c not in ("rgba(0, 0, 0, 0)", "transparent") for c in colours), colours
        assert folded and opened
        shot = mini_study / "report" / "screenshot.png"
        assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10000
    finally:
        browser.quit()


ARCH_SPEC = """\
name = "arch-mini"
[base]
epochs = 2
train_size = 64
val_size = 32
test_size = 16
iwae_samples = 2
batch_size = 32
likelihood = "dmol"
likelihood_components = 2
latent_dim = 2
[[sweep]]
grid = {dataset = ["fashion-mnist", "cifar10"], seed = [0, 1], net = ["conv"]}
[[sweep]]
base = {model = "hierarchical", width = 8, depth = 1, latent_groups = 1}
grid = {dataset = ["fashion-mnist"], seed = [0, 1]}
[[sweep]]
base = {net = "resnet", width = 8, depth = 1}
grid = {dataset = ["fashion-mnist"], seed = [0, 1]}
"""


def test_an_architectures_study_reports_its_networks(tiny_root, tmp_path, monkeypatch):
    """Conv, resnet and hierarchical runs: the report's Architectures section has its table, bits/dim against
    time, the KL per latent group and samples/reconstructions per network, and the family findings name them. The
    latent-size plots compare the conv runs only (conv and resnet share a latent size here: mixing them broke the
    dataset comparison once)."""
    monkeypatch.setenv("VAELAB_CACHE", str(tmp_path / "cache"))
    spec_path = tmp_path / "arch.toml"
    spec_path.write_text(ARCH_SPEC)
    out = tmp_path / "A"
    assert study.run(study.load_spec(spec_path), out, data_dir=str(tiny_root)) == {"done": 8}
    quick_classifier(monkeypatch)
    assert main(["score", str(out), "--all", "--samples", "40", "--data-dir", str(tiny_root)]) == 0
    scored = [json.loads(p.read_text()) for p in (out / "runs").glob("*/eval.json")]
    assert len(scored) == 8 and all("fd_prior" in ev for ev in scored)  # every network, not only the report's
    html = report(out, data_dir=tiny_root, classifier=False).read_text()
    assert "fd_prior" in html
    assert "<h2>Architectures</h2>" in html or ">Architectures<" in html
    names = {Path(p).name for p in _images_of(out / "report" / "index.html")}
    assert {
        "bpd_time_fashion-mnist.png",
        "kl_groups_fashion-mnist.png",
        "samples_arch_fashion-mnist.png",
        "reconstructions_arch_fashion-mnist.png",
    } <= names
    for name in ("bpd_time_fashion-mnist.png", "samples_arch_fashion-mnist.png"):
        assert_real_figure(out / "report" / "fig" / name)
    assert "hierarchical VAE lowers bits/dim" in html and "residual network lowers bits/dim" in html
    assert "finest latent groups" in html
    ev = json.loads(next((out / "runs").glob("*hierarchical*seed-0")).joinpath("eval.json").read_text())
    assert len(ev["kl_per_group"]) == 3 and 0 <= ev["kl_share_finest"] <= 1 and ev["n_params"] > 0


def test_the_report_renders_without_a_model_or_data(mini_study, mini_report, monkeypatch):
    """Rendering reads report/page.json and the templates alone: with every module's forward pass, every scikit-learn
    fit and every dataset load made to fail, it writes the same page the full report wrote."""
    import torch
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.manifold import TSNE
    from sklearn.mixture import GaussianMixture

    from vaelab import data as vdata
    from vaelab.report import render

    def forbidden(*a, **k):
        raise AssertionError("the report computed something")

    md_before = (mini_study / "report" / "summary.md").read_text()
    html_before = mini_report.read_text()
    monkeypatch.setattr(torch.nn.Module, "__call__", forbidden)
    for estimator in (PCA, TSNE, LogisticRegression, GaussianMixture):
        monkeypatch.setattr(estimator, "fit", forbidden)
        monkeypatch.setattr(estimator, "fit_transform", forbidden, raising=False)
    monkeypatch.setattr(vdata, "load", forbidden)
    index = render(mini_study)
    assert (mini_study / "report" / "summary.md").read_text() == md_before
    footer = re.compile(r"made by vaelab on [0-9: -]+")
    assert footer.sub("", index.read_text()) == footer.sub("", html_before)
    assert "## Findings" in md_before and "<table>" in html_before
    with pytest.raises(AssertionError, match="computed"):  # the guard itself works
        torch.nn.Linear(2, 2)(torch.zeros(1, 2))


def test_render_without_an_analysis_says_what_to_run(tmp_path, capsys):
    (tmp_path / "study.json").write_text("{}")
    assert main(["report", str(tmp_path), "--render-only"]) == 2
    assert "run 'vaelab analyze" in capsys.readouterr().err


def test_render_escapes_html_but_not_markdown(tmp_path):
    """Run names and errors reach the page: the HTML escapes them, summary.md keeps them as written."""
    from vaelab.report import render

    page = {
        "title": "t <b>",
        "sections": [
            {
                "title": "S",
                "items": [
                    {"kind": "text", "text": "p < 0.05 <script>alert(1)</script>"},
                    {"kind": "table", "head": ["a", "b"], "rows": [["1", "<i>2</i>"]]},
                    {"kind": "finding", "claim": "c", "verdict": "holds", "evidence": "e & f"},
                    {"kind": "fig", "src": "fig/x.png", "caption": "cap"},
                    {
                        "kind": "glance",
                        "rows": [
                            {
                                "claim": "c <b>",
                                "dataset": "d",
                                "verdict": "no effect (negligible)",
                                "effect": "1 [0, 2]",
                                "p_adjusted": "0.01",
                                "stability": "stable since ½",
                                "convergence": "not converged",
                            }
                        ],
                    },
                ],
            }
        ],
    }
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "page.json").write_text(json.dumps(page))
    html = render(tmp_path).read_text()
    assert "<script>" not in html and "&lt;script&gt;" in html and "&lt;i&gt;2&lt;/i&gt;" in html
    assert '<details class="finding ok"><summary><b>c</b>' in html and 'src="fig/x.png"' in html  # folded
    assert '<span class="v v-no">no effect (negligible)</span>' in html and "c &lt;b&gt;" in html
    md = (tmp_path / "report" / "summary.md").read_text()
    assert md.startswith("# t <b>\n") and "| 1 | <i>2</i> |" in md and "- **c** — *holds*: e & f" in md
    assert "| c <b> | d | **no effect (negligible)** | 1 [0, 2] | 0.01 | stable since ½ | not converged |" in md
