"""Prompts from the wild (hypothesis, ``tests/hostile_prompts.py``) through memguard's prompt handling.

Layers: the pure core (``memguard.prompt_syntax``, ``memguard.tokens``: many examples), the WebUI seam on the fake
A1111 host (``host_tokens`` and real generations watched by memguard: few examples, each is a generation) and the
pipeline service behind the tab and the API. The property everywhere: memguard either scores with every token and
word span inside the prompt, naming the prompt's own text, or says "cannot score" with a reason; it never raises
an undocumented error, and the generation is the same with memguard watching as without.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from hostile_prompts import EDGE_PROMPTS, LONG_PROMPT, examples, prompts
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from memguard import prompt_syntax
from memguard.tokens import CHUNK, CONTEXT, load_tokenizer, tokenize

pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")  # the 10,000-character edge case
FAKE_PARSER = Path(__file__).resolve().parent / "fakehost" / "modules" / "prompt_parser.py"
CORE = settings(max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def tk():
    return load_tokenizer()


@pytest.fixture(scope="module")
def host_parser():
    """The fake host's ``prompt_parser`` (A1111 1.10.1's behaviour), loaded on its own: it imports no host module."""
    spec = importlib.util.spec_from_file_location("fake_prompt_parser", FAKE_PARSER)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def assert_spans_inside(prompt: str, items, what: str) -> None:
    """Every item's ``[start, end)`` lies inside ``prompt`` and its ``text`` is that slice."""
    for item in items:
        get = item.get if isinstance(item, dict) else lambda k, it=item: getattr(it, k)
        start, end, text = get("start"), get("end"), get("text")
        assert 0 <= start <= end <= len(prompt), (what, item)
        assert prompt[start:end] == text, (what, item)


# --- the pure core ---------------------------------------------------------------------------------------------------
@CORE
@given(prompts())
def test_split_and_offsets_point_at_each_subprompt(prompt):
    parts = prompt_syntax.split_and(prompt)
    assert parts
    for text, weight, offset in parts:
        assert 0 <= offset <= len(prompt)
        assert prompt[offset : offset + len(text)] == text
        assert isinstance(weight, float)


@CORE
@given(prompts())
@example("a \\")
@example("(a:1.2:3) BREAK\nBREAK")
@example("(BREAK)")
def test_parse_attention_matches_the_host_and_keeps_sources(host_parser, prompt):
    fragments = prompt_syntax.parse_attention(prompt)
    assert [[f.text, f.weight] for f in fragments] == host_parser.parse_prompt_attention(prompt)
    for frag in fragments:  # BREAK too: inside brackets the host encodes it as a word
        assert len(frag.source) == len(frag.text)
        assert all(0 <= i < len(prompt) for i in frag.source)
        assert "".join(prompt[i] for i in frag.source) == frag.text


@CORE
@given(prompts())
def test_tokenize_spans_lie_inside_the_prompt(tk, prompt):
    tok = tokenize(tk, prompt)
    assert tok.n_chunks >= 1 and all(len(row) == CONTEXT for row in tok.ids)
    assert_spans_inside(prompt, tok.tokens, "token")
    assert [t.position for t in tok.tokens] == sorted({t.position for t in tok.tokens})
    assert len(tok.tokens) <= tok.n_chunks * CHUNK


def test_tokenize_refuses_an_unpaired_surrogate_with_its_documented_error(tk):
    """JSON and JavaScript strings can carry one (``"\\ud800"``); the tokenizer used to fail with a TypeError."""
    with pytest.raises(ValueError, match="well-formed Unicode"):
        tokenize(tk, "a \ud800 cat")


@CORE
@given(prompts(), prompts())
def test_align_maps_equal_characters_in_order(typed, encoded):
    where = prompt_syntax.align(typed, encoded)
    assert len(where) == len(encoded)
    mapped = [(k, i) for k, i in enumerate(where) if i is not None]
    assert all(0 <= i < len(typed) and typed[i] == encoded[k] for k, i in mapped)
    assert [i for _, i in mapped] == sorted({i for _, i in mapped})


@CORE
@given(prompts(), st.sampled_from([0, 20]))
def test_replay_chunks_spans_lie_inside_the_prompt(tk, prompt, backtrack):
    def tokenize_fragment(text: str):
        enc = tk(text, add_special_tokens=False, return_offsets_mapping=True)
        return enc["input_ids"], enc["offset_mapping"]

    comma = tk.convert_tokens_to_ids(",</w>")
    chunks, pieces = prompt_syntax.replay_chunks(
        prompt_syntax.parse_attention(prompt),
        tokenize_fragment,
        comma_id=comma,
        bos_id=tk.bos_token_id,
        eos_id=tk.eos_token_id,
        backtrack=backtrack,
    )
    assert chunks and all(len(c) == CONTEXT for c in chunks)
    flat = [t for c in chunks for t in c]
    for piece in pieces:
        assert flat[piece.position] == piece.id
        if piece.start is not None:
            assert 0 <= piece.start < piece.end <= len(prompt)


def test_edge_prompts_cover_the_issue_list():
    assert "" in EDGE_PROMPTS and "   " in EDGE_PROMPTS and LONG_PROMPT in EDGE_PROMPTS and len(LONG_PROMPT) >= 10_000


# --- the WebUI seam on the fake A1111 host ---------------------------------------------------------------------------
STYLE = ("hostile", "{prompt}, masterpiece, (detailed:1.2)", "")
SEAM = settings(max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.too_slow])
GENERATIONS = settings(max_examples=examples(10), deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def host(tiny_dir):
    """One fake A1111 host for the module (booting costs more than the examples), with a ``{prompt}`` style."""
    import fakehost

    pytest.importorskip("gradio")
    fakehost.uninstall()
    h = fakehost.boot(tiny_dir, extension_dirs=[str(Path(__file__).resolve().parents[1])], api=True)
    from modules import shared, styles

    shared.prompt_styles.styles[STYLE[0]] = styles.PromptStyle(*STYLE)
    yield h
    fakehost.uninstall()


def encoded_subprompts(prompt: str) -> list[str]:
    """What the host encodes at step 0 for each AND sub-prompt of ``prompt`` (extra-network tags removed)."""
    from types import SimpleNamespace

    from modules import extra_networks

    from memguard.hosts import a1111

    p = SimpleNamespace(prompts=[extra_networks.parse_prompt(prompt)[0]], steps=20)
    return [a1111.encoded_subprompt(p, 0, k) for k in range(len(prompt_syntax.split_and(p.prompts[0])))]


@SEAM
@given(prompts())
@example("(BREAK) a cat")
@example("a, " * 30 + "BREAK " + "b " * 80)
def test_host_tokens_replay_the_hosts_chunks_on_the_typed_words(host, prompt):
    from memguard.hosts import a1111

    for text in encoded_subprompts(prompt):
        tok = a1111.host_tokens(text, prompt)
        flat = [t for chunk in tok.ids for t in chunk]
        assert_spans_inside(prompt, tok.tokens, "host token")
        assert all(flat[t.position] == t.id for t in tok.tokens)


def assert_scored_or_explained(prompt: str, result: dict) -> None:
    if result["score"] is None:
        assert result["reason"], result
        return
    assert result["flagged"] == (result["score"] > result["threshold"]), result  # flagged ones were explained
    assert_spans_inside(prompt, result["words"], "word")


@GENERATIONS
@given(prompts(max_leaves=6), st.sampled_from([[], [STYLE[0]]]), st.sampled_from(["Euler a", "DDIM"]))
@example("", [], "Euler a")
@example(LONG_PROMPT, [STYLE[0]], "Euler a")
@example("   ", [STYLE[0]], "DDIM")
@example("[cat:dog:0.5] [a|b] <lora:x:0.8> (BREAK) \\(x\\) AND y :0.3", [], "Euler a")
@example("(a:9999999999999999999999999999999999999999)", [], "Euler a")  # the host's own NaN check fails it
def test_a_watched_generation_completes_unchanged_and_reports_on_the_typed_prompt(host, prompt, styles, sampler):
    """The same outcome with memguard watching as without: the same images, or the same error from the host."""
    import numpy as np
    from modules import shared
    from webui_helpers import data, generate, pixels

    def outcome(watch: bool):
        shared.opts.memguard_watch = watch
        try:
            return generate(host, prompt=prompt, styles=styles, sampler_name=sampler, steps=2, seed=3)
        except Exception as err:  # the host refusing the prompt is part of the outcome
            return err

    shared.opts.memguard_threshold = 1e-9  # flag, and so explain, every image
    watched, plain = outcome(True), outcome(False)
    if isinstance(plain, Exception):
        assert type(watched) is type(plain) and str(watched) == str(plain)
        return
    assert not isinstance(watched, Exception), watched
    report = data(watched)
    assert report["errors"] == []
    for result in report["results"]:
        assert result["prompt"] == prompt
        assert_scored_or_explained(prompt, result)
    assert all(np.array_equal(a, b) for a, b in zip(pixels(watched), pixels(plain), strict=True))


# --- the service behind the tab and the API ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pipeline_service(tiny, tmp_path_factory):
    from memguard.calibrate import CalibrationStore
    from memguard.service import PipelineService

    return PipelineService(tiny, CalibrationStore(tmp_path_factory.mktemp("store") / "c.json"), steps=4)


@pytest.mark.parametrize("prompt", EDGE_PROMPTS, ids=range(len(EDGE_PROMPTS)))
def test_pipeline_service_scores_and_explains_every_edge_prompt(pipeline_service, prompt):
    analyzed = pipeline_service.analyze(prompt, [0])
    assert analyzed["prompt"] == prompt
    if analyzed["score"] is None:
        assert analyzed.get("reason")
    assert_spans_inside(prompt, analyzed["tokens"], "token")
    assert_spans_inside(prompt, analyzed["words"], "word")
    (audited,) = pipeline_service.audit([prompt], [0])
    assert audited["score"] == pytest.approx(analyzed["score"], rel=1e-5)


def test_words_keep_their_text_when_the_hosts_chunks_cannot_be_mapped(host, monkeypatch):
    """Textual inversion makes the host's chunks differ from the replay: memguard falls back to the host's tokens,
    without spans; each is then a word of its own that keeps its text (it used to become one empty word)."""
    import torch

    from memguard.explain import explain
    from memguard.hosts import a1111

    monkeypatch.setattr(prompt_syntax, "replay_chunks", lambda *a, **k: ([[0] * CONTEXT], []))
    tok = a1111.host_tokens("a red easynegative cat", "a red easynegative cat")
    words = explain(tok, torch.linspace(0, 1, CONTEXT)).to_dict()["words"]
    assert [w["text"] for w in words] == ["a", "red", "easy", "negative", "cat"]
    assert all((w["start"], w["end"]) == (-1, -1) for w in words)


def test_the_tab_says_what_is_wrong_with_an_unpaired_surrogate(pipeline_service):
    from memguard.ui import actions

    html = actions.analyze(lambda: pipeline_service, "a \ud800 cat", 1)
    assert "memguard-error" in html and "unpaired surrogate" in html
