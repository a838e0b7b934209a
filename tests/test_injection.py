"""HTML and JS payloads in prompts reach every place memguard shows a prompt as text only: the warning panel under a
generation (rendered from the generation's own log line, as ``javascript/memguard.js`` does), the tab's analysis,
the Batch audit's summary, table and CSV, the audit log, and the image's infotext (whose memguard values never need
the host's quoting and survive the host's round trip next to a hostile prompt). The browser side is
``tests/browser/test_injection_browser.py``.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from hostile_prompts import INJECTIONS, Markup

from memguard.calibrate import CalibrationStore
from memguard.service import PipelineService
from memguard.ui import actions

pytest.importorskip("fastapi")
from fastapi import FastAPI
from fastapi.testclient import TestClient

from memguard.api import PREFIX, register_routes

ROOT = Path(__file__).resolve().parents[1]
PANEL_TAGS = {"div", "span", "p", "b", "ul", "li", "table", "thead", "tbody", "tr", "th", "td"}
SVG_TAGS = {"svg", "title", "rect", "line", "text", "g", "desc"}
# the infotext must survive a prompt that looks like infotext itself
INFOTEXT_PROMPT = 'a "cat", Steps: 99, Seed: 1\nNegative prompt: x\nMemguard verdict: ok, ' + INJECTIONS[0]
INFOTEXT_VALUE = re.compile(r"^[\w.+\-/>?]+$")  # numbers, words, "/", "->": nothing the host must quote


def shown_as_text(html: str, payload: str, allowed: set[str] = PANEL_TAGS) -> bool:
    parsed = Markup(html)
    return parsed.inert(allowed) and payload in "".join(parsed.text)


@pytest.fixture(scope="module")
def service(tiny, tmp_path_factory):
    return PipelineService(tiny, CalibrationStore(tmp_path_factory.mktemp("store") / "c.json"), steps=4)


@pytest.mark.parametrize("payload", INJECTIONS)
def test_the_tab_analysis_shows_a_payload_as_text(service, payload):
    html = actions.analyze(lambda: service, f"a cat {payload} on a sofa", 1)
    assert "memguard-analysis" in html and shown_as_text(html, payload)
    assert Markup(html).attrs.count(("data-prompt", f"a cat {payload} on a sofa")) == 1


def test_the_batch_audit_summary_table_and_csv_keep_payloads_as_text(service, tmp_path):
    upload = tmp_path / "prompts.txt"
    upload.write_text("\n".join(INJECTIONS) + '\n=HYPERLINK("http://x")\n', encoding="utf-8")
    audit = actions.audit(lambda: service, str(upload), 1, out_dir=tmp_path)
    assert Markup(audit.html).inert(PANEL_TAGS | SVG_TAGS) and "Audited 6 prompts" in audit.html
    assert [row[1] for row in audit.rows] == [*INJECTIONS, '=HYPERLINK("http://x")']  # plain strings: gradio's
    with audit.csv.open(encoding="utf-8", newline="") as handle:  # Dataframe shows them as text (browser test)
        prompts = [row[1] for row in csv.reader(handle)][1:]
    assert prompts == [*INJECTIONS, '\'=HYPERLINK("http://x")']


@pytest.fixture(scope="module")
def host(tiny_dir):
    import fakehost

    pytest.importorskip("gradio")
    fakehost.uninstall()
    yield fakehost.boot(tiny_dir, extension_dirs=[str(ROOT)], api=True)
    fakehost.uninstall()


@pytest.fixture(scope="module")
def flagged_generation(host, tmp_path_factory):
    """One generation of a hostile prompt with every image flagged, explained, and written to the audit log."""
    from modules import shared
    from webui_helpers import generate

    log = tmp_path_factory.mktemp("audit") / "audit.jsonl"
    shared.opts.memguard_threshold, shared.opts.memguard_audit_log = 1e-9, str(log)
    prompt = f"a cat {' '.join(INJECTIONS)} {INFOTEXT_PROMPT}"
    processed = generate(host, prompt=prompt, batch_size=2, steps=2)
    shared.opts.memguard_audit_log = ""
    return prompt, processed, log


def test_the_generation_panel_shows_payloads_as_text(flagged_generation):
    """What memguard.js does: cut the JSON after "memguard-data:" from the log and POST it to the panel route."""
    prompt, processed, _ = flagged_generation
    line = next(li for li in processed.comments.splitlines() if li.startswith("memguard-data:"))
    app = FastAPI()
    register_routes(app, lambda: None, "user:password")  # the panel route needs neither a model nor credentials
    response = TestClient(app).post(f"{PREFIX}/panel", json={"payload": line[len("memguard-data:") :]})
    html = response.json()["html"]
    assert response.status_code == 200 and html.count("Likely memorized") == 2
    assert Markup(html).inert(PANEL_TAGS)
    assert all("".join(Markup(html).text).count(payload) >= 2 for payload in INJECTIONS)
    assert ("data-prompt", prompt) in Markup(html).attrs


def test_the_log_lines_and_the_audit_log_carry_the_prompt_verbatim(flagged_generation):
    prompt, processed, log = flagged_generation
    line = next(li for li in processed.comments.splitlines() if li.startswith("memguard-data:"))
    assert [r["prompt"] for r in json.loads(line[len("memguard-data:") :])["results"]] == [prompt, prompt]
    rows = [json.loads(row) for row in log.read_text(encoding="utf-8").splitlines()]
    assert [r["prompt"] for r in rows] == [prompt, prompt] and {r["verdict"] for r in rows} == {"flagged"}


def test_the_infotext_values_need_no_quoting_and_survive_the_hosts_round_trip(flagged_generation):
    from modules import infotext_utils

    from memguard.hosts.a1111 import INFOTEXT_KEYS

    prompt, processed, _ = flagged_generation
    for infotext in processed.infotexts:
        params = infotext_utils.parse_generation_parameters(infotext)
        assert params["Memguard verdict"] == "flagged"
        assert INFOTEXT_VALUE.match(params["Memguard score"])
        assert params["Prompt"].replace("\n", " ").startswith("a cat")
        for key in INFOTEXT_KEYS:
            value = params.get(key)
            assert value is None or INFOTEXT_VALUE.match(value), (key, value)


def test_the_guards_infotext_restores_its_settings_next_to_a_hostile_prompt(host):
    from modules import infotext_utils
    from webui_helpers import GUARD, generate, guard_index

    processed = generate(host, GUARD, {guard_index(): "attention", guard_index() + 1: True}, prompt=INFOTEXT_PROMPT)
    params = infotext_utils.parse_generation_parameters(processed.infotexts[0])
    assert params["Memguard strategy"] == "attention" and params["Memguard force"] == "True"
    assert INFOTEXT_VALUE.match(params["Memguard mitigation"].replace(" ", "_"))
