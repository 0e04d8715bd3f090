"""`vaelab serve`: the explorer's answers (known codes, orders, interpolation ends, arithmetic), its refusals (400
with one line), 50 concurrent clients, the CLI on a run and on an exported file, and the page in headless Chromium."""

from __future__ import annotations

import io
import json
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import headless_chromium, tiny_config
from vaelab import VaelabError
from vaelab import data as vdata
from vaelab.app.cli import main
from vaelab.exploration.explorer import MAX_BATCH, BadRequest, Explorer
from vaelab.exploration.latent import class_centroids
from vaelab.runs.run import Run
from vaelab.training.loop import train

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
from vaelab.app import serve  # noqa: E402  (after the skip: starlette and uvicorn are optional)


@pytest.fixture(scope="module")
def run(tiny_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("serve") / "run"
    train(tiny_config(epochs=1, train_size=64, latent_dim=6), out, data_dir=tiny_root)
    return out


@pytest.fixture(scope="module")
def explorer(run, tiny_root):
    return Explorer.for_run(run, tiny_root)


def test_the_explorer_answers_with_the_models_own_codes_and_images(explorer, run, tiny_root):
    cfg, model, _ = Run(run).load()
    info = explorer.info()
    kl = [d["kl"] for d in info["dims"]]
    assert sorted(d["index"] for d in info["dims"]) == list(range(6)) and kl == sorted(kl, reverse=True)
    assert info["n_test"] == len(info["map"]) == len(vdata.load("fashion-mnist", tiny_root).x_test)
    assert all(d["lo"] <= -3 and d["hi"] >= 3 for d in info["dims"]) and info["classes"][0] == "T-shirt/top"
    with torch.no_grad():
        mu = model.encode(torch.from_numpy(explorer.x_test[3:4].copy()))[0][0]
    assert np.allclose(explorer.code(3), mu.numpy(), atol=1e-5)
    img = explorer.decode([explorer.code(3), [0.0] * 6])
    assert img.shape == (2, 28, 28, 1) and img.dtype == np.uint8 and not np.array_equal(img[0], img[1])
    for mode in ("linear", "spherical"):  # the path's ends are the two test codes
        assert np.allclose(explorer.interpolate(2, 5, 0.0, mode), explorer.code(2), atol=1e-5)
        assert np.allclose(explorer.interpolate(2, 5, 1.0, mode), explorer.code(5), atol=1e-5)
    mid = explorer.interpolate(2, 5, 0.5, "linear")
    assert np.allclose(mid, (np.array(explorer.code(2)) + explorer.code(5)) / 2, atol=1e-5)
    c = class_centroids(explorer.mu, explorer.y_test, 10)
    assert np.allclose(explorer.arithmetic("Sneaker", "Bag", 0), c[7] + c[8] - c[0], atol=1e-5)
    strip = explorer.traverse(explorer.code(0), 4, [-2.0, 0.0, 2.0])
    assert [s[4] for s in strip] == [-2.0, 0.0, 2.0] and all(s[:4] == strip[0][:4] for s in strip)
    assert explorer.random("prior", 7) == explorer.random("prior", 7) != explorer.random("prior", 8)
    assert len(explorer.random("gmm", 1)) == 6 and len(explorer.random("class", 1, "Bag")) == 6


@pytest.mark.parametrize(
    "path, body, words",
    [
        ("/api/traverse", {"z": [0.0] * 6, "dim": 6, "values": [1.0]}, "dimension 6 is out of range"),
        ("/api/decode", {"z": [0.0] * 5 + [float("nan")]}, "z[5] must be a finite number"),
        ("/api/decode", {"z": [[0.0] * 6] * (MAX_BATCH + 1)}, f"at most {MAX_BATCH} codes"),
        ("/api/decode", {"z": [0.0] * 5}, "needs 6 numbers"),
        ("/api/decode", {"z": [1e9] * 6}, "must be in [-100, 100]"),
        ("/api/decode", {"z": [0.0] * 6, "temperature": "hot"}, "temperature must be a finite number"),
        ("/api/code", {"index": 10**6}, "test image 1000000 is out of range"),
        ("/api/code", {"index": "3"}, "test image must be an integer"),
        ("/api/random", {"source": "class", "class": "Dragon"}, "unknown class 'Dragon'"),
        ("/api/random", {"source": "posterior"}, "source must be prior, gmm or class"),
        ("/api/interpolate", {"a": 0, "b": 1, "t": 2}, "t must be in [0, 1]"),
        ("/api/arithmetic", {"a": "Bag", "b": "Bag", "c": 99}, "class 99 is out of range"),
    ],
)
def test_every_bad_request_is_a_400_with_one_line_and_the_next_request_works(explorer, path, body, words):
    from starlette.testclient import TestClient

    client = TestClient(serve.app(explorer))
    r = client.post(path, content=json.dumps(body))  # json.dumps writes NaN as the JSON extension browsers send
    assert r.status_code == 400 and words in r.json()["error"] and "\n" not in r.json()["error"]
    for raw in (b"{not json", b"[1, 2]", b"x" * (serve.MAX_BODY + 1)):
        r = client.post("/api/decode", content=raw)
        assert r.status_code == (413 if len(raw) > serve.MAX_BODY else 400) and r.json()["error"]
    assert client.get("/api/test", params={"index": "x"}).status_code == 400
    ok = client.post("/api/decode", json={"z": [0.5] * 6})
    assert ok.status_code == 200 and ok.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(ok.content)).size == (28, 28)


@contextmanager
def running(explorer):
    """The explorer on a real uvicorn server on a free port, in a thread; stopped on exit."""
    sock = serve.bind("127.0.0.1", 0)
    server = serve.server(explorer, sock)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield serve.address(sock)
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
    assert not thread.is_alive()


def _post(url: str, body: dict) -> tuple[int, bytes]:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_fifty_concurrent_clients_are_served_without_an_error_or_a_leak(explorer):
    with running(explorer) as url:
        _post(url + "api/decode", {"z": [0.0] * 6})  # warm: the first request starts the worker threads

        def client(i: int, out: list) -> None:
            for j in range(4):  # a bounded loop: 50 clients x 4 requests, one of them bad each
                body = {"z": [[0.1 * i] * 6, [0.01 * j] * 6]} if j else {"z": [0.0] * 7}
                out.append(_post(url + "api/decode", body))

        def round_of_clients() -> list:
            results: list = []
            threads = [threading.Thread(target=client, args=(i, results)) for i in range(50)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            return results

        first = round_of_clients()
        threads_after_first, rss_after_first = threading.active_count(), _rss()
        second = round_of_clients()
        rss_growth = _rss() - rss_after_first
    for results in (first, second):
        assert len(results) == 200
        assert sorted({s for s, _ in results}) == [200, 400]
        assert sum(s == 400 for s, _ in results) == 50
        assert all(Image.open(io.BytesIO(b)).size == (56, 28) for s, b in results if s == 200)
    assert threading.active_count() <= threads_after_first  # a second round leaves no more threads behind
    assert rss_growth < 50 * 2**20  # nor memory: 200 more requests hold on to less than 50 MB


def _rss() -> int:
    """This process's resident memory in bytes (Linux)."""
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_serve_on_an_exported_file_and_its_refusals(run, tiny_root, tmp_path, capsys, monkeypatch):
    assert main(["export", str(run), str(tmp_path / "m.safetensors")]) == 0
    capsys.readouterr()
    seen = {}

    class Stub:  # the server's run() would serve until Ctrl-C: record what it would serve instead
        def __init__(self, explorer, sock, title):
            seen.update(explorer=explorer, title=title)

        def run(self, sockets):
            seen["sockets"] = sockets

    monkeypatch.setattr(serve, "server", Stub)
    assert main(["serve", str(tmp_path / "m.safetensors"), "--port", "0", "--data-dir", str(tiny_root)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("vaelab serve: http://127.0.0.1:") and "Ctrl-C" in out
    assert seen["explorer"].mu is not None and seen["title"].endswith("m.safetensors")
    assert main(["serve", str(tmp_path / "m.safetensors"), "--port", "0", "--data-dir", str(tmp_path)]) == 0
    assert "test images, the map, the GMM and arithmetic are off" in capsys.readouterr().err
    without = seen["explorer"]
    assert without.mu is None and without.decode([0.0] * 6).shape == (1, 28, 28, 1)
    with pytest.raises(BadRequest, match="no test images"):
        without.code(0)
    assert main(["serve", str(tmp_path / "nothing")]) == 2
    with serve.bind("127.0.0.1", 0) as taken:
        port = taken.getsockname()[1]
        taken.listen()
        assert main(["serve", str(run), "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
    with pytest.raises(VaelabError):
        serve.bind("no-such-host.invalid", 0)


@pytest.mark.parametrize(
    "fields, check",
    [
        (dict(dataset="shapes2d-32", net="conv4", likelihood="bernoulli", val_size=16), "labels"),
        (dict(model="hierarchical", width=4, depth=1, latent_groups=1), "temperature"),
        (dict(conditional=True), "class"),
    ],
)
def test_factor_labels_temperature_and_classes(tiny_root, tmp_path, fields, check):
    train(tiny_config(epochs=1, train_size=64, **fields), tmp_path / "r", data_dir=tiny_root)
    ex = Explorer.for_run(tmp_path / "r", tiny_root)
    z = [0.3] * ex.latent_dim
    if check == "labels":  # every slider is named after a factor, or left unnamed when it tells about none
        labels = [d["label"] for d in ex.info()["dims"]]
        assert set(labels) <= {"", "shape", "scale", "orientation", "pos_x", "pos_y"}
        assert ex.decode(z).shape == (1, 32, 32, 1)
    elif check == "temperature":  # lower groups at their means are deterministic; drawn, they follow the seed
        assert ex.info()["hierarchical"]
        assert np.array_equal(ex.decode(z, temperature=0.0, seed=1), ex.decode(z, temperature=0.0, seed=2))
        assert np.array_equal(ex.decode(z, temperature=1.0, seed=1), ex.decode(z, temperature=1.0, seed=1))
        assert not np.array_equal(ex.decode(z, temperature=1.0, seed=1), ex.decode(z, temperature=1.0, seed=2))
    else:  # a conditional decoder draws the class it is given from the same code
        assert ex.info()["conditional"]
        assert not np.array_equal(ex.decode(z, "Bag"), ex.decode(z, "Sneaker"))


PIXELS = """const img = document.getElementById(arguments[0]);
const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
c.getContext('2d').drawImage(img, 0, 0); return [img.dataset.n, c.toDataURL()];"""


def test_the_page_in_headless_chromium(explorer, tmp_path):
    from selenium.webdriver.support.ui import WebDriverWait

    browser = headless_chromium(tmp_path, "1280,1000")
    try:
        with running(explorer) as url:
            browser.get(url)
            wait = WebDriverWait(browser, 30)

            def settled(img_id: str, after: int) -> str:
                """The image's pixels once it has loaded more than `after` times and stopped changing."""
                wait.until(lambda b: int(b.execute_script(PIXELS, img_id)[0]) > after)
                time.sleep(0.3)
                return browser.execute_script(PIXELS, img_id)

            n, before = settled("image", 0)
            dim = explorer.info()["dims"][0]["index"]
            browser.execute_script(  # drag the first slider (the dimension with the most KL) to its end
                "const s = document.getElementById(arguments[0]); s.value = s.max;s.dispatchEvent(new Event('input'));",
                f"dim-{dim}",
            )
            n2, after = settled("image", int(n))
            assert after != before  # the slider moved the image
            frames = []
            for t in ("0", "1"):
                k = int(browser.execute_script(PIXELS, "interp-image")[0])
                browser.execute_script(
                    "const s = document.getElementById('interp-t'); s.value = arguments[0];"
                    "s.dispatchEvent(new Event('input'));",
                    t,
                )
                frames.append(settled("interp-image", k)[1])
            assert frames[0] != frames[1]  # the two ends of the interpolation differ
            browser.execute_script("document.getElementById('test-index').value = 99999;")
            browser.find_element("id", "reset").click()
            wait.until(lambda b: "out of range" in b.find_element("id", "error").text)
            browser.execute_script(  # the page keeps working: the next slider move decodes and clears the error
                "const s = document.getElementById(arguments[0]); s.value = s.min;s.dispatchEvent(new Event('input'));",
                f"dim-{dim}",
            )
            _, last = settled("image", int(n2))
            assert last != after and browser.find_element("id", "error").text == ""
            severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE" and "400" not in e["message"]]
            assert severe == [], severe
    finally:
        browser.quit()


# ---------------------------------------------------------------- hostile requests: never a 500, never a whole huge body

_ANY_JSON = None


def _any_json():
    """Every kind of JSON value, huge integers and non-finite numbers (as browsers and json.dumps send them) included."""
    from hypothesis import strategies as st

    global _ANY_JSON
    if _ANY_JSON is None:
        scalars = st.one_of(
            st.none(),
            st.booleans(),
            st.integers(),
            st.integers(min_value=10**300, max_value=10**400),
            st.floats(allow_nan=True, allow_infinity=True),
            st.text(max_size=20),
            st.sampled_from(["Sneaker", "prior", "gmm", "class", "linear", "spherical", "T-shirt/top"]),
        )
        _ANY_JSON = st.recursive(
            scalars,
            lambda inner: st.lists(inner, max_size=8) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
            max_leaves=30,
        )
    return _ANY_JSON


_FIELDS = ["z", "class", "temperature", "seed", "index", "source", "a", "b", "c", "t", "mode", "dim", "values"]


@pytest.mark.parametrize("path, method", [(p, m) for p, m, _ in serve.ENDPOINTS])
def test_no_request_to_any_endpoint_gets_a_500(explorer, path, method):
    """Property-based: any JSON object over the fields the endpoints read (and codes of the right length with any
    numbers in them) is answered 200 or 400 with one line, never 500."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from starlette.testclient import TestClient

    client = TestClient(serve.app(explorer), raise_server_exceptions=False)
    number = st.one_of(st.integers(), st.integers(min_value=-(10**400), max_value=10**400), st.floats())
    fields = st.fixed_dictionaries(
        {},
        optional={k: _any_json() for k in _FIELDS}
        | {"z": st.one_of(_any_json(), st.lists(number, min_size=6, max_size=6))},
    )

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(fields)
    def check(data):
        if method == "POST":
            r = client.post(path, content=json.dumps(data).encode())
        else:
            r = client.get(path, params={k: json.dumps(v)[:200] for k, v in data.items()})
        assert r.status_code in (200, 400), (r.status_code, r.text[:200])
        if r.status_code == 400:
            assert "\n" not in r.json()["error"]

    check()


@pytest.mark.parametrize(
    "raw, words",
    [
        (b'{"z": [1' + b"0" * 400 + b", 0, 0, 0, 0, 0]}", "z[0] must be in [-100, 100], got an integer of 401 digits"),
        (b'{"z": [0, 0, 0, 0, 0, 0], "temperature": 1' + b"0" * 400 + b"}", "temperature must be in [0, 2]"),
        (b'{"a": 0, "b": 1, "t": 1' + b"0" * 400 + b"}", "t must be in [0, 1]"),
        (b'{"z": [0, 0, 0, 0, 0, 0], "dim": 0, "values": [-1' + b"0" * 400 + b"]}", "value must be in"),
        (b"[" * 100000 + b"]" * 100000, "nested too deeply"),
        (b'{"z": [0, 0, 0, 0, 0, 0], "class": "Bag"}', "this model is unconditional"),
    ],
)
def test_huge_integers_deep_nesting_and_a_class_for_an_unconditional_model_are_400(explorer, raw, words):
    from starlette.testclient import TestClient

    client = TestClient(serve.app(explorer), raise_server_exceptions=False)
    path = "/api/interpolate" if b'"t"' in raw else "/api/traverse" if b'"dim"' in raw else "/api/decode"
    r = client.post(path, content=raw)
    assert r.status_code == 400 and words in r.json()["error"], r.text[:300]


def test_unknown_paths_and_methods_answer_json_and_oversized_bodies_413(explorer):
    from starlette.testclient import TestClient

    client = TestClient(serve.app(explorer), raise_server_exceptions=False)
    r = client.get("/api/nothing")
    assert r.status_code == 404 and "/api/nothing" in r.json()["error"]
    r = client.get("/api/decode")
    assert r.status_code == 405 and r.json()["error"]
    r = client.post("/api/decode", content=b"x" * (serve.MAX_BODY + 1))
    assert r.status_code == 413 and "over" in r.json()["error"]

    def chunks():  # a chunked body (no Content-Length) that never ends on its own: cut at the limit
        for _ in range(64):
            yield b" " * 65536

    r = client.post("/api/decode", content=chunks())
    assert r.status_code == 413


def _send_huge(url: str, chunked: bool, total: int = 300 * 2**20) -> bytes:
    """POST a body of `total` bytes over a raw socket, writing until the server answers or closes; the answer."""
    import socket
    from urllib.parse import urlparse

    u = urlparse(url)
    s = socket.create_connection((u.hostname, u.port), timeout=30)
    head = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {total}"
    s.sendall(f"POST /api/decode HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{head}\r\n\r\n".encode())
    block, sent = b"1" * (1 << 20), 0
    try:
        while sent < total:  # bounded: at most `total` bytes
            s.sendall((b"100000\r\n" + block + b"\r\n") if chunked else block)
            sent += len(block)
    except OSError:
        pass  # the server answered and closed: the rest is not read
    try:
        return s.recv(4096)
    except OSError:
        return b""
    finally:
        s.close()


def test_a_300_mib_body_is_refused_without_being_held_in_memory(explorer):
    import resource

    with running(explorer) as url:
        _post(url + "api/decode", {"z": [0.0] * 6})
        before = _rss()
        peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        answers = [_send_huge(url, chunked) for chunked in (False, True)]
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        after = _rss()
        assert _post(url + "api/decode", {"z": [0.0] * 6})[0] == 200  # still serving
    for a in answers:
        assert a == b"" or a.startswith(b"HTTP/1.1 413"), a[:80]
    assert after - before < 64 * 2**20  # the bound docs/reliability.md states
    assert peak - max(peak_before, before) < 64 * 2**20


def test_port_range_and_a_warning_for_an_address_beyond_this_machine(run, tiny_root, capsys, monkeypatch):
    assert main(["serve", str(run), "--port", "70000"]) == 2
    assert "--port must be in 0..65535" in capsys.readouterr().err

    class Stub:
        def __init__(self, explorer, sock, title):
            pass

        def run(self, sockets):
            pass

    monkeypatch.setattr(serve, "server", Stub)
    assert main(["serve", str(run), "--port", "0", "--data-dir", str(tiny_root)]) == 0
    assert "warning" not in capsys.readouterr().err
    assert main(["serve", str(run), "--host", "0.0.0.0", "--port", "0", "--data-dir", str(tiny_root)]) == 0
    err = capsys.readouterr().err
    assert "warning: listening on 0.0.0.0" in err and "no authentication" in err
