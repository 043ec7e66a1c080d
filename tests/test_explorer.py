"""The attention explorer on tiny trained workdirs: what it explains against the model run
here without it (an unpadded pass, NumPy's equation 1, the library's decoders), explore.py's
server over real HTTP (bad requests, 50 at once, its memory), the exported page, and the page
itself in headless Chromium, whose drawn weights are read back from the DOM."""

import base64
import concurrent.futures
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import jax
import numpy as np
import pytest

from transformer import inference
from transformer.attention_readout import attention_weights
from transformer.decode import beam_search, greedy_decode, greedy_decode_lm
from transformer.evaluation import decode_length
from transformer.explorer.analysis import Explainer, word_starts

from .explorer_workdirs import train_workdirs
from .xla_flags import one_device_env

REPO = pathlib.Path(__file__).resolve().parent.parent
SENTENCES = [
    "the girl says that the doctor has gone .",
    "the women carry the lamp .",
    "brothers want to write the newspaper .",
]


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
    """The tiny trained workdirs; EXPLORER_WORKDIR puts a trained translation workdir in
    the translation one's place (the README's screenshots: EXPLORER_SCREENSHOTS=DIR)."""
    workdirs = train_workdirs(tmp_path_factory)
    if os.environ.get("EXPLORER_WORKDIR"):
        workdirs["translation"] = pathlib.Path(os.environ["EXPLORER_WORKDIR"])
    return workdirs


@pytest.fixture(scope="module")
def translation(workdirs):
    return inference.restore(str(workdirs["translation"]))


def array(encoded):
    """An array the explorer sent, decoded as the page decodes it."""
    values = np.frombuffer(base64.b64decode(encoded["data"]), "<f4")
    return values.reshape(encoded["shape"])


def until_eos(row):
    row = list(map(int, row))
    return row[: row.index(1) + 1] if 1 in row else row


jit_greedy = jax.jit(greedy_decode, static_argnums=(0, 3))
jit_beam = jax.jit(beam_search, static_argnums=(0, 3, 4, 5))


def model_attention(restored, sentence, beam_size=1):
    """The model's output ids for `sentence` and its attention weights by module, computed
    without the explorer: the library's decoder, then one unpadded, unjitted pass."""
    model, params = restored.placed.model, restored.params
    source = restored.tokenizer.encode(sentence)
    length = decode_length(restored.config, len(source))
    if beam_size == 1:
        row = jit_greedy(model, params, np.asarray([source]), length)
    else:
        row = jit_beam(model, params, np.asarray([source]), length, beam_size, 0.6)[0]
    output = until_eos(np.asarray(row)[0])
    weights = attention_weights(model, params, np.asarray([source]), np.asarray([output]))
    return source, output, weights


# ------------------------------------------------------------------- what is explained
@pytest.mark.parametrize("beam_size", [1, pytest.param(4, marks=pytest.mark.slow)])
def test_explained_output_and_weights_are_the_models(translation, beam_size):
    explained = Explainer(translation).explain(SENTENCES[0], beam_size, 0.6)
    source, output, weights = model_attention(translation, SENTENCES[0], beam_size)
    pieces = translation.tokenizer.pieces
    assert explained["tokens"]["source"] == pieces(source)
    assert explained["tokens"]["target"] == pieces(output)
    assert explained["tokens"]["target_input"] == pieces([2, *output[:-1]])
    assert explained["output"] == translation.tokenizer.decode(output)
    assert {m["name"] for m in explained["modules"]} == set(weights)
    for module in explained["modules"]:
        np.testing.assert_allclose(
            array(module["attention_weights"]), weights[module["name"]], atol=1e-6
        )


def test_queries_and_keys_give_the_weights_by_equation_1(translation):
    """softmax(q k^T / sqrt(d_k)) in NumPy, causal in decoder self-attention, from the
    vectors the explorer sends, equals the weights it sends."""
    explained = Explainer(translation).explain(SENTENCES[1])
    d_k = translation.config.model.head_dim_k
    for module in explained["modules"]:
        q, k, v = (array(module[name]) for name in ("queries", "keys", "values"))
        heads = translation.config.model.num_heads
        assert q.shape[::2] == (heads, d_k) and v.shape[:2] == k.shape[:2]
        logits = np.einsum("hqd,hkd->hqk", q.astype(np.float64), k) / np.sqrt(d_k)
        if module["name"].startswith("decoder/") and module["name"].endswith("self_attention"):
            logits = np.where(np.tril(np.ones(logits.shape[1:], bool)), logits, -np.inf)
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        np.testing.assert_allclose(probs, array(module["attention_weights"]), atol=1e-5)


@pytest.fixture(scope="module")
def recurrent_workdir(tmp_path_factory):
    """The recurrent baseline translating, trained as the translation workdir is."""
    return train_workdirs(tmp_path_factory, (("recurrent", "rnn"),))["recurrent"]


@pytest.mark.slow
def test_recurrent_model_is_explained_by_its_one_attention_head(recurrent_workdir):
    recurrent = inference.restore(str(recurrent_workdir))
    explainer = Explainer(recurrent)
    assert explainer.info()["kind"] == "rnn" and explainer.info()["heads"] == 1
    explained = explainer.explain(SENTENCES[0], 4, 0.6)
    _, output, weights = model_attention(recurrent, SENTENCES[0], beam_size=4)
    assert list(weights) == ["decoder/layer_1/cross_attention"]  # Luong's, on the top layer.
    assert explained["output"] == recurrent.tokenizer.decode(output)
    (module,) = explained["modules"]
    assert module["name"] == "decoder/layer_1/cross_attention" and module["layer"] == 1
    w = array(module["attention_weights"])
    np.testing.assert_allclose(w, weights[module["name"]], atol=1e-6)
    q, k = array(module["queries"]), array(module["keys"])  # [1, len, d_model]
    logits = np.einsum("hqd,hkd->hqk", q.astype(np.float64), k) / np.sqrt(q.shape[-1])
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    np.testing.assert_allclose(probs / probs.sum(-1, keepdims=True), w, atol=1e-5)


def test_language_model_prompt_is_continued_greedily_with_causal_attention(workdirs):
    restored = inference.restore(str(workdirs["language_model"]))
    explained = Explainer(restored).explain("die Frau")
    prompt = restored.tokenizer.encode("die Frau")[:-1]
    row = greedy_decode_lm(restored.placed.model, restored.params, np.asarray([prompt]),
                           restored.config.data.max_length)  # fmt: skip
    output = until_eos(np.asarray(row)[0])
    assert explained["prompt_length"] == len(prompt)
    assert explained["tokens"]["target"] == restored.tokenizer.pieces(output)
    names = [m["name"] for m in explained["modules"]]
    assert names == ["decoder/layer_0/self_attention", "decoder/layer_1/self_attention"]
    for module in explained["modules"]:
        weights = array(module["attention_weights"])
        assert weights.shape[1:] == (len(output), len(output))
        assert np.all(np.triu(weights, k=1) == 0)  # Nothing from the future.


def test_word_starts_follow_sentencepiece_boundary_marks(translation):
    """Joining each piece that starts no word to the word before gives the words back."""
    sentence = "brothers want to write the newspaper ."
    ids = translation.tokenizer.encode(sentence)
    pieces = translation.tokenizer.pieces(ids)
    assert len(pieces) > len(sentence.split()) + 1  # Some words are split.
    words = []
    for piece, start in zip(pieces, word_starts(translation.tokenizer, ids), strict=True):
        if start:
            words.append(piece)
        else:
            words[-1] += piece
    assert [w.removeprefix("▁") for w in words] == [*sentence.split(), "</s>"]


# --------------------------------------------------------------------------- server
class Server:
    """explore.py serving a workdir on a free port of 127.0.0.1, in its own process."""

    def __init__(self, workdir):
        self.process = subprocess.Popen(
            [sys.executable, "explore.py", "--workdir", str(workdir), "--port", "0"],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            env=one_device_env(),
        )  # fmt: skip
        line = self.process.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert match, f"explore.py printed {line!r}"
        self.url = f"http://127.0.0.1:{match.group(1)}/"

    def request(self, path, body=None, method=None):
        """(status, parsed JSON or text) of one request; `body` bytes or a JSON value."""
        if body is not None and not isinstance(body, bytes):
            body = json.dumps(body).encode("utf-8")
        request = urllib.request.Request(self.url + path, data=body, method=method)
        try:
            with urllib.request.urlopen(request, timeout=300) as response:
                status, text = response.status, response.read().decode("utf-8")
        except urllib.error.HTTPError as e:
            status, text = e.code, e.read().decode("utf-8")
        try:
            return status, json.loads(text)
        except json.JSONDecodeError:
            return status, text

    def rss_mib(self):
        with open(f"/proc/{self.process.pid}/status") as f:
            return int(re.search(r"VmRSS:\s+(\d+) kB", f.read()).group(1)) / 1024

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def server(workdirs):
    server = Server(workdirs["translation"])
    yield server
    server.stop()


def test_server_explains_as_the_library_does(server, translation):
    status, info = server.request("api/info")
    assert status == 200 and info["kind"] == "encoder_decoder" and info["heads"] == 2
    status, page = server.request("")
    assert status == 200 and '<script src="explorer.js">' in page
    status, explained = server.request("api/explain", {"text": SENTENCES[2], "beam_size": 1})
    assert status == 200
    _, output, weights = model_attention(translation, SENTENCES[2])
    assert explained["tokens"]["target"] == translation.tokenizer.pieces(output)
    for module in explained["modules"]:
        np.testing.assert_allclose(
            array(module["attention_weights"]), weights[module["name"]], atol=1e-5
        )


BAD_REQUESTS = [
    ({"text": ""}, 400, "The input is empty"),
    ({"text": "  \n "}, 400, "The input is empty"),
    ({"beam_size": 1}, 400, '"text" must be a string'),
    ({"text": 5}, 400, '"text" must be a string'),
    ({"text": "a" * 4001}, 400, "4001 characters; at most 4000"),
    ({"text": "the dog " * 30}, 400, "tokens; this model takes at most"),
    (b'{"text": "the \xff dog"}', 400, "not UTF-8 text (byte 14)"),
    ({"text": "the \ud800 dog"}, 400, "not Unicode text (character 4)"),
    (b"text=the+dog", 400, "not JSON"),
    (["the dog"], 400, "must be a JSON object"),
    ({"text": "the dog", "beam_size": 0}, 400, "beam size must be a whole number from 1 to 8"),
    ({"text": "the dog", "beam_size": "4"}, 400, "beam size must be a whole number"),
    ({"text": "the dog", "beam_size": 9}, 400, "from 1 to 8"),
    ({"text": "the dog", "beam_size": 2, "alpha": -1}, 400, "alpha must be a number from 0"),
    (b"x" * (64 * 1024 + 1), 413, "at most 65536"),
]


@pytest.mark.parametrize("body, status, message", BAD_REQUESTS)
def test_bad_requests_get_a_clear_error_and_the_server_keeps_serving(server, body, status,
                                                                    message):  # fmt: skip
    got, answer = server.request("api/explain", body)
    assert (got, message in answer["error"]) == (status, True), answer
    assert server.request("api/info")[0] == 200


@pytest.mark.parametrize(
    "path", ["../../../../etc/passwd", "%2e%2e/%2e%2e/etc/passwd", "explore.py",
             "static/explorer.js", "transformer/explorer/server.py", "api/explain"],
)  # fmt: skip
def test_no_request_reads_a_file_by_name(server, path):
    status, answer = server.request(path)
    assert status == 404 and "No page at" in answer["error"]


def test_fifty_concurrent_requests_get_their_own_answers_and_memory_stays_flat(server):
    expected = {}
    for sentence in SENTENCES:
        status, answer = server.request("api/explain", {"text": sentence})
        assert status == 200
        expected[sentence] = answer

    def round_of_50():
        requests = [SENTENCES[i % len(SENTENCES)] for i in range(50)]
        with concurrent.futures.ThreadPoolExecutor(50) as pool:
            answers = pool.map(lambda s: server.request("api/explain", {"text": s}), requests)
            for sentence, (status, answer) in zip(requests, answers, strict=True):
                assert status == 200
                assert answer == expected[sentence]

    round_of_50()  # Warms the thread and allocator pools.
    warm = server.rss_mib()
    for _ in range(3):
        round_of_50()
    after = server.rss_mib()
    print(f"explore.py resident memory: {warm:.0f} MiB after 50 requests, {after:.0f} MiB "
          "after 200")  # fmt: skip
    assert after - warm < 0.1 * warm


# ------------------------------------------------------------------------ the export
def export(workdir, out, *lines, raw=None):
    sentences = out.with_suffix(".txt")
    sentences.write_bytes(raw if raw is not None else "".join(f"{s}\n" for s in lines).encode())
    return subprocess.run(
        [sys.executable, "explore.py", "--workdir", str(workdir), "--export", str(out),
         "--input", str(sentences)],
        cwd=REPO, capture_output=True, text=True, timeout=600, env=one_device_env(),
    )  # fmt: skip


def embedded_data(page):
    match = re.search(r'<script id="explorer-data" type="application/json">(.*?)</script>',
                      page, re.S)  # fmt: skip
    return json.loads(match.group(1))


@pytest.fixture(scope="module")
def exported(workdirs, tmp_path_factory):
    """The page explore.py --export wrote for SENTENCES."""
    out = tmp_path_factory.mktemp("export") / "page.html"
    result = export(workdirs["translation"], out, *SENTENCES)
    assert result.returncode == 0, result.stderr[-2000:]
    return out


def test_export_writes_one_self_contained_page(exported, translation):
    page = exported.read_text(encoding="utf-8")
    assert not re.search(r'(src|href)="(?!data:)', page)  # Nothing to fetch: opens offline.
    data = embedded_data(page)
    assert [e["input"] for e in data["examples"]] == SENTENCES
    _, output, weights = model_attention(translation, SENTENCES[1])
    example = data["examples"][1]
    assert example["tokens"]["target"] == translation.tokenizer.pieces(output)
    for module in example["modules"]:
        np.testing.assert_allclose(
            array(module["attention_weights"]), weights[module["name"]], atol=1e-5
        )


@pytest.mark.parametrize(
    "raw, message",
    [
        pytest.param(b"the dog .\nthe \xff cat\n", "sentences.txt:2: invalid UTF-8",
                     marks=pytest.mark.slow),
        (b"\n \n", "has no sentence to explain"),
        pytest.param(b"the dog .\n\n" + ("the dog " * 30).encode(),
                     "sentences.txt:3: The input has", marks=pytest.mark.slow),
    ],
)  # fmt: skip
def test_export_refuses_bad_input_and_writes_nothing(workdirs, tmp_path, raw, message):
    out = tmp_path / "sentences.html"
    result = export(workdirs["translation"], out, raw=raw)
    assert result.returncode == 1 and message in result.stderr, result.stderr[-2000:]
    assert list(tmp_path.iterdir()) == [out.with_suffix(".txt")]


# ------------------------------------------------------------------------ the browser
def chromium():
    """Headless Chromium through Selenium and the distribution's chromedriver (nothing is
    downloaded), or a skip saying what is missing."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install -e '.[test]').")
    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not binary or not driver:
        pytest.skip("No chromium or chromedriver: apt-get install chromium chromium-driver.")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    # As root and with no network: no sandbox, and none of Chromium's background fetches.
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1280,900",
                 f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-')}"):  # fmt: skip
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


@pytest.fixture(scope="module")
def browser():
    driver = chromium()
    yield driver
    driver.quit()


def wait_until_ready(driver, timeout=300):
    """Waits until the page has drawn a result (body data-status "ready")."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = driver.execute_script("return document.body.dataset.status")
        if status == "ready":
            return
        assert status != "error", driver.find_element("id", "message").text
        time.sleep(0.1)
    raise TimeoutError("The page drew no result.")


def click(driver, selector):
    driver.find_element("css selector", selector).click()


def select(driver, element_id, value):
    """Chooses `value` in the <select> `element_id`, as a user does."""
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element("id", element_id)).select_by_value(str(value))


def drawn(driver, selector, *keys):
    """{(data-KEY, ...): data-weight} of the elements the page drew."""
    script = """return Array.from(document.querySelectorAll(arguments[0]),
        (e) => [arguments[1].map((k) => Number(e.dataset[k])), Number(e.dataset.weight)]);"""
    return {tuple(map(int, k)): w for k, w in driver.execute_script(script, selector, list(keys))}


def check_head_view(driver, weights, module):
    """Every line of the head view is the model's weight; a line for every weight > 0."""
    for name in sorted(n for n in weights if re.fullmatch(module, n)):
        select(driver, "layer", int(name.split("/")[1].removeprefix("layer_")))
        lines = drawn(driver, "#head-lines line", "head", "query", "key")
        w = weights[name]
        assert set(lines) == {tuple(i) for i in np.argwhere(w > 0)}, name
        for (h, q, k), value in lines.items():
            assert abs(value - w[h, q, k]) <= 1e-5, (name, h, q, k)


def show(driver, module, view):
    click(driver, f'#module-tabs button[data-module="{module}"]')
    click(driver, f'#view-tabs button[data-view="{view}"]')


def check_page(driver, restored, sentence, screenshots=None):
    """Views, hovering and merging on a page showing `sentence`, against the model."""
    source, output, weights = model_attention(restored, sentence)
    for module in ("encoder/self_attention", "decoder/self_attention", "decoder/cross_attention"):
        show(driver, module, "head")
        stack, kind = module.split("/")
        check_head_view(driver, weights, f"{stack}/layer_\\d+/{kind}")
    if screenshots:
        driver.save_screenshot(str(screenshots / "explorer_head_view.png"))
    # Hovering output token 1 leaves only its lines.
    from selenium.webdriver.common.action_chains import ActionChains

    token = driver.find_element("css selector", '#head-svg text.query[data-index="1"]')
    ActionChains(driver).move_to_element(token).perform()
    visible = driver.execute_script("""return Array.from(document.querySelectorAll(
        '#head-lines line'), (e) => e.style.display === 'none' ? null : e.dataset.query)
        .filter((q) => q !== null);""")  # fmt: skip
    last = weights[f"decoder/layer_{restored.config.model.num_decoder_layers - 1}/cross_attention"]
    assert visible and set(visible) == {"1"} and len(visible) == np.count_nonzero(last[:, 1])
    # The model view: open layer 0, head 1 of cross-attention.
    show(driver, "decoder/cross_attention", "model")
    click(driver, '#model-grid canvas[data-layer="0"][data-head="1"]')
    cells = drawn(driver, "#opened-map rect", "query", "key")
    w = weights["decoder/layer_0/cross_attention"][1]
    assert len(cells) == w.size
    assert max(abs(v - w[q, k]) for (q, k), v in cells.items()) <= 1e-5
    # The query/key view: equation 1 computed by the page from q and k, head 1, query 2.
    show(driver, "decoder/cross_attention", "qk")
    select(driver, "layer", 0)
    click(driver, "#qk-controls button.qk-head:nth-of-type(2)")
    click(driver, "#qk-controls div:nth-child(2) button.qk-query:nth-of-type(3)")
    script = """return Array.from(document.querySelectorAll('#qk td.softmax'),
        (e) => Number(e.dataset.value));"""
    np.testing.assert_allclose(driver.execute_script(script), w[2], atol=1e-5)
    if screenshots:
        driver.save_screenshot(str(screenshots / "explorer_query_key_view.png"))
    check_merged_words(driver, restored, source, output, weights)


def check_merged_words(driver, restored, source, output, weights):
    """With pieces merged into words, attention to a word is the sum over its pieces and
    from a word the mean, computed here with NumPy from the model's weights."""
    show(driver, "decoder/cross_attention", "head")
    click(driver, "#merge")
    try:
        groups = []
        for ids in (output, source):
            starts = word_starts(restored.tokenizer, ids)
            groups.append(np.cumsum(starts) - 1)  # The word of each piece.
        w = weights["decoder/layer_0/cross_attention"]
        rows, cols = (np.eye(g.max() + 1)[g] for g in groups)  # [pieces, words]
        merged = np.einsum("hqk,qQ,kK->hQK", w, rows / rows.sum(0), cols)
        select(driver, "layer", 0)
        lines = drawn(driver, "#head-lines line", "head", "query", "key")
        assert set(lines) == {tuple(i) for i in np.argwhere(merged > 0)}
        for (h, q, k), value in lines.items():
            assert abs(value - merged[h, q, k]) <= 1e-5
    finally:
        click(driver, "#merge")


def type_and_explain(driver, text):
    """Types `text` into the page's input box and asks for its explanation."""
    box = driver.find_element("id", "input-text")
    box.clear()
    box.send_keys(text)
    click(driver, "#explain")


def test_page_draws_the_model_weights_in_a_real_browser(browser, server, translation):
    browser.get(server.url)
    type_and_explain(browser, SENTENCES[0])
    wait_until_ready(browser)
    check_page(browser, translation, SENTENCES[0], screenshot_dir())
    # A bad input gets its message on the page, and the next good one is explained.
    type_and_explain(browser, "the dog " * 100)
    with pytest.raises(AssertionError, match="tokens; this model takes at most"):
        wait_until_ready(browser, timeout=60)
    type_and_explain(browser, SENTENCES[1])
    wait_until_ready(browser)
    assert not browser.find_element("id", "message").is_displayed()


@pytest.mark.slow
def test_page_draws_a_recurrent_models_attention_from_its_top_layer(browser, recurrent_workdir):
    recurrent = inference.restore(str(recurrent_workdir))
    server = Server(recurrent_workdir)
    try:
        browser.get(server.url)
        type_and_explain(browser, SENTENCES[1])
        wait_until_ready(browser)
        assert "Recurrent" in browser.find_element("id", "model-info").text
        options = browser.find_elements("css selector", "#layer option")
        assert [o.get_attribute("value") for o in options] == ["1"]
        _, _, weights = model_attention(recurrent, SENTENCES[1])
        show(browser, "decoder/cross_attention", "head")
        check_head_view(browser, weights, r"decoder/layer_\d+/cross_attention")
    finally:
        server.stop()


def test_exported_page_opens_from_disk_with_the_same_weights(browser, exported, translation):
    browser.get(exported.as_uri())
    wait_until_ready(browser)
    picker = browser.find_element("id", "example")
    assert [o.text for o in picker.find_elements("tag name", "option")] == SENTENCES
    select(browser, "example", 2)
    check_page(browser, translation, SENTENCES[2])


def screenshot_dir():
    """EXPLORER_SCREENSHOTS, where the README's screenshots are written, if set."""
    path = os.environ.get("EXPLORER_SCREENSHOTS")
    return pathlib.Path(path) if path else None


@pytest.mark.parametrize(
    "flags, message",
    [pytest.param(["--input", "x.txt"], "--input is read only with --export",
                  marks=pytest.mark.slow),
     (["--export", "x.html"], "--export needs --input")],
)  # fmt: skip
def test_explore_refuses_export_flags_without_each_other(workdirs, flags, message):
    result = subprocess.run(
        [sys.executable, "explore.py", "--workdir", str(workdirs["translation"]), *flags],
        cwd=REPO, capture_output=True, text=True, timeout=600, env=one_device_env(),
    )  # fmt: skip
    assert result.returncode == 1 and message in result.stderr
