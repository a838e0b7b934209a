"""memguard beside the extensions users combine it with, on the A1111 double (``tests/peer_extensions.py``):
ControlNet's marked conditioning, ADetailer's copies of the processing object, Dynamic Prompts' generated prompts."""

from __future__ import annotations

import json
from pathlib import Path

import fakehost
import numpy as np
import pytest
from peer_extensions import make_adetailer, make_controlnet, make_dynamic_prompts
from webui_helpers import GUARD, data, generate, guard_index, pixels, results, scores, set_threshold

pytest.importorskip("gradio")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def host(model_dir):
    """The A1111 double with memguard loaded as an extension and the three peer doubles (each off by default)."""
    fakehost.uninstall()
    fakehost.install()
    peers = [make_controlnet(), make_adetailer(), make_dynamic_prompts()]
    h = fakehost.boot(model_dir, extension_dirs=[str(ROOT)], script_classes=peers, api=True)
    from modules import scripts, shared

    shared.opts.memguard_threshold = 0.0
    h.enable = {s.title(): s.args_from for s in scripts.scripts_txt2img.alwayson_scripts}
    h.controlnet = peers[0]
    yield h
    fakehost.uninstall()


def on(host, *titles: str, more: dict | None = None) -> dict:
    """Script arguments that enable the peer extensions ``titles`` (plus ``more``)."""
    return {**{host.enable[t]: True for t in titles}, **(more or {})}


def close(a: list[float], b: list[float]) -> bool:
    return a == pytest.approx(b, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("negative", ["", "blurry"])
def test_controlnet_marked_conditioning_scores_and_explains_as_without_it(host, negative):
    """ControlNet puts a marker row before every cond and uncond (``1 + 77k`` rows) and strips it in the UNet:
    memguard's scores, its empty-prompt reference and the word each image's score depends on stay those of the
    same generation without ControlNet."""
    long = "a red circle, " + ", ".join(f"shape{i}" for i in range(40))  # two chunks
    fields = dict(batch_size=2, prompt=long, negative_prompt=negative)
    plain = generate(host, **fields)
    set_threshold(min(scores(plain)) / 2)
    plain = generate(host, **fields)
    host.controlnet.calls = 0
    marked = generate(host, script_args=on(host, "ControlNet"), **fields)
    assert host.controlnet.calls > 0
    assert close(scores(marked), scores(plain))
    for a, b in zip(results(marked), results(plain)):
        assert a["words"] and [w["text"] for w in a["words"]] == [w["text"] for w in b["words"]]
        assert close([w["value"] for w in a["words"]], [w["value"] for w in b["words"]])


@pytest.mark.parametrize("strategy", ["embedding", "attention", "auto"])
def test_controlnet_marked_conditioning_mitigates_as_without_it(host, strategy):
    """Mitigation works on the prompt's rows only: the embedding never moves the marker row (ControlNet would no
    longer recognise it), and the attention edit's BOS and padding positions are the chunks' own."""
    set_threshold(1e-6)
    args = {guard_index(): strategy}
    plain = generate(host, GUARD, args, batch_size=2)
    host.controlnet.calls = 0
    marked = generate(host, GUARD, on(host, "ControlNet", more=args), batch_size=2)
    assert host.controlnet.calls > 0
    after = [r["mitigation"]["score_after"] for r in results(marked)]
    assert close(after, [r["mitigation"]["score_after"] for r in results(plain)])
    for a, b in zip(pixels(marked), pixels(plain)):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_adetailer_copies_do_not_finish_or_report_twice(host, tmp_path):
    """ADetailer calls every always-on script's ``postprocess`` on ``copy(p)`` after the first image of each batch
    and ``process`` on another copy after the last: one report, one audit row per image, all batches scored."""
    from modules import shared

    log = tmp_path / "audit.jsonl"
    shared.opts.memguard_audit_log = str(log)
    out = generate(host, script_args=on(host, "ADetailer"), batch_size=2, n_iter=2)
    assert [r["index"] for r in results(out)] == [0, 1, 2, 3] and all(s > 0 for s in scores(out))
    assert sum(line.startswith("memguard-data:") for line in out.comments.splitlines()) == 1
    assert [json.loads(line)["seed"] for line in log.read_text().splitlines()] == out.all_seeds


def test_dynamic_prompts_are_scored_shown_and_explained_as_generated(host):
    """With Dynamic Prompts, ``p.prompt`` is the template and ``p.all_prompts`` what was generated: each image's
    result names its generated prompt, and its words are spans of that prompt."""
    template = "a {red|blue} {circle|square}"
    set_threshold(1e-6)
    out = generate(host, script_args=on(host, "Dynamic Prompts"), prompt=template, batch_size=2)
    res = results(out)
    assert [r["prompt"] for r in res] == ["a red circle", "a blue square"] == out.all_prompts
    for r in res:
        assert {w["text"] for w in r["words"]} == set(r["prompt"].split())
        assert all(r["prompt"][w["start"] : w["end"]] == w["text"] for w in r["words"])
    assert data(out)["results"][0]["prompt"] == "a red circle"


def xyz_plot(host, label: str, values: str = "", dropdown: list | None = None, **fields):
    """An X/Y/Z plot over memguard's axis ``label`` (index among the txt2img axis options, as the UI sends it)."""
    from modules import scripts

    script = next(s for s in scripts.scripts_txt2img.selectable_scripts if s.title() == "X/Y/Z plot")
    module = next(d.module for d in scripts.scripts_data if d.script_class.__module__ == "xyz_grid.py")
    labels = [o.label for o in module.axis_options if type(o) is module.AxisOption or not o.is_img2img]
    args = {script.args_from: labels.index(label), script.args_from + 1: values, script.args_from + 2: dropdown}
    return generate(host, "X/Y/Z plot", args, **fields)


def test_xyz_plot_axes_set_strategy_threshold_and_explain_per_cell(host, monkeypatch):
    """memguard's X/Y/Z axes: each cell (a ``copy(p)`` the axis set) is judged and mitigated as its value says."""
    from modules import shared

    from memguard.hosts import a1111

    grid = xyz_plot(host, "[memguard] Threshold", "1e-6, 1e6")
    assert ["Memguard verdict: flagged" in t for t in grid.infotexts] == [True, False]
    assert "/1e-06," in grid.infotexts[0] and "/1e+06," in grid.infotexts[1]

    shared.opts.memguard_threshold = 1e-6
    grid = xyz_plot(host, "[memguard] Strategy", dropdown=["off", "attention"])
    assert all("Memguard verdict: flagged" in t for t in grid.infotexts)
    assert "Memguard mitigation" not in grid.infotexts[0]  # off: watched only
    assert "Memguard mitigation: attention" in grid.infotexts[1]

    explained = []
    monkeypatch.setattr(a1111.first_step, "explain_image", lambda *a, **k: explained.append(1) or ([], None))
    grid = xyz_plot(host, "[memguard] Explain", dropdown=["False", "True"])
    assert len(grid.infotexts) == 2 and explained == [1]
