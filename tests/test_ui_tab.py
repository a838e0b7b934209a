"""The Memorization tab builds under the pinned gradio, and the functions behind its buttons work on a real
:class:`memguard.service.PipelineService` over the tiny model."""

from __future__ import annotations

import asyncio
import csv
import http.server
import json
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest

from memguard.calibrate import CalibrationStore
from memguard.service import PipelineService
from memguard.ui.actions import TABLE_HEADERS, no_progress
from memguard.ui.tab import build_tab

# gradio 3.41 registers its startup hook with FastAPI's deprecated on_event; nothing memguard can change.
pytestmark = pytest.mark.filterwarnings(r"ignore:\s*on_event is deprecated:DeprecationWarning")


def _listeners(blocks: gr.Blocks):
    """``(config, python function or None)`` of every event listener: gradio 3 keeps the configs in
    ``blocks.dependencies`` beside the list ``blocks.fns``; gradio 4 keeps one ``BlockFunction`` per listener in the
    dict ``blocks.fns``, whose ``get_config()`` is the config."""
    if hasattr(blocks, "dependencies"):
        return [(dep, fn.fn) for dep, fn in zip(blocks.dependencies, blocks.fns)]
    return [(fn.get_config(), fn.fn) for fn in blocks.fns.values()]


def _targets(dep: dict):
    """``(block id, event name)`` of each trigger: gradio 4 lists pairs, gradio 3 block ids beside one ``trigger``."""
    for target in dep["targets"]:
        yield tuple(target) if isinstance(target, list | tuple) else (target, dep.get("trigger"))


def _handler(blocks: gr.Blocks, elem_id: str, event: str = "click"):
    """The listener of ``event`` on the component with ``elem_id``: ``(config, python function or None)``."""
    for dep, fn in _listeners(blocks):
        for block_id, trigger in _targets(dep):
            if blocks.blocks[block_id].elem_id == elem_id and trigger == event:
                return dep, fn
    raise AssertionError(f"nothing listens to {event} on {elem_id}")


def _elem_ids(blocks: gr.Blocks) -> set[str]:
    return {b.elem_id for b in blocks.blocks.values() if getattr(b, "elem_id", None)}


@pytest.fixture
def service(tiny, tmp_path) -> PipelineService:
    return PipelineService(tiny, CalibrationStore(tmp_path / "calibration.json"), steps=50)


@pytest.fixture
def tab(service) -> gr.Blocks:
    return build_tab(lambda: service)


def test_tab_builds_without_loading_a_model():
    calls = []
    blocks = build_tab(lambda: calls.append(1))
    assert isinstance(blocks, gr.Blocks) and calls == []
    expected = {"memguard_prompt", "memguard_seeds", "memguard_analyze", "memguard_paste", "memguard_send"}
    expected |= {"memguard_analysis", "memguard_fpr", "memguard_calibrate", "memguard_calibration"}
    expected |= {"memguard_audit_file", "memguard_audit", "memguard_audit_table", "memguard_audit_csv"}
    assert expected <= _elem_ids(blocks)


def test_paste_and_send_run_in_the_browser_only(tab):
    for elem_id, js in (("memguard_paste", "readTxt2imgPrompt"), ("memguard_send", "sendToTxt2img")):
        dep, fn = _handler(tab, elem_id)
        assert fn is None and not dep["backend_fn"]
        assert js in dep["js"]


def test_send_button_can_be_hidden():
    blocks = build_tab(lambda: None, send_to_txt2img=False)
    send = next(b for b in blocks.blocks.values() if b.elem_id == "memguard_send")
    assert send.visible is False


def test_the_tab_renders_inside_another_page(tab):
    with gr.Blocks() as page, gr.Tabs(elem_id="tabs"), gr.Tab("Memorization"):
        tab.render()
    assert "memguard_analyze" in _elem_ids(page)


def test_analyze_button(tab):
    _, analyze = _handler(tab, "memguard_analyze")
    html = analyze("a photo of a cat, sitting on a red sofa", 2, progress=no_progress)
    assert "memguard-word" in html and 'data-memguard-target="memguard_prompt"' in html
    assert "Not calibrated" in html and "model " in html and html.count("<tr>") == 3  # header + 2 seeds
    _, submit = _handler(tab, "memguard_prompt", "submit")
    assert submit is analyze
    assert "the prompt box is empty" in analyze("", 2, progress=no_progress)


def test_calibrate_button_stores_a_threshold_used_by_analyze(tab, service, tmp_path):
    extra = tmp_path / "benign.jsonl"
    extra.write_text(json.dumps({"caption": "a quiet harbour at dawn"}) + "\n", encoding="utf-8")
    _, calibrate = _handler(tab, "memguard_calibrate")
    html = calibrate(SimpleNamespace(name=str(extra)), 0.05, progress=no_progress)
    assert "Calibrated" in html and "and 1 from your file" in html and "<svg" in html
    assert service.threshold() is not None
    assert f"Threshold <b>{float(service.threshold()):.4g}</b>" in html
    _, analyze = _handler(tab, "memguard_analyze")
    assert "Not calibrated" not in analyze("a cat", 1, progress=no_progress)
    assert "at least 0 and below 1" in calibrate(None, 5, progress=no_progress)


def test_calibration_store_problems_are_shown(tiny, tmp_path):
    store = tmp_path / "calibration.json"
    store.write_text("not json", encoding="utf-8")
    service = PipelineService(tiny, CalibrationStore(store), steps=50)
    _, calibrate = _handler(build_tab(lambda: service), "memguard_calibrate")
    html = calibrate(None, 0.01, progress=no_progress)
    assert "memguard-error" in html and "unreadable" in html and "left as it is" in html
    assert store.read_text(encoding="utf-8") == "not json"


def test_audit_button_table_histogram_and_csv(tab, tmp_path):
    prompts = ["a cat", "a dog on a beach", '{"prompt": "=SUM(A1) <b>bold</b>"}', "", '{"caption": "a red car"}', "x"]
    upload = tmp_path / "prompts.txt"
    upload.write_text("\n".join(prompts), encoding="utf-8")
    _, audit = _handler(tab, "memguard_audit")
    html, table, report = audit(str(upload), 2, progress=no_progress)
    assert "Audited 5 prompts on 2 seed(s)" in html and "<svg" in html
    assert list(table.columns) == TABLE_HEADERS and len(table) == 5
    assert table["prompt"].tolist() == ["a cat", "a dog on a beach", "=SUM(A1) <b>bold</b>", "a red car", "x"]
    with Path(report).open(encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["index", "prompt", "score", "threshold", "flagged", "seed_scores"]
    assert len(rows) == 1 + 5
    assert rows[3][1] == "'=SUM(A1) <b>bold</b>"
    assert all(len(r[5].split(";")) == 2 for r in rows[1:])


def test_audit_without_a_file_explains(tab):
    _, audit = _handler(tab, "memguard_audit")
    html, table, report = audit(None, 1, progress=no_progress)
    assert "Upload a prompt file first" in html and len(table) == 0 and report is None


class _Slow(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # http.server's name
        time.sleep(0.3)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


def test_queue_requests_are_not_cut_by_httpx_client_timeout():
    """gradio 3.41's queue runs every job as ``AsyncClient(...).send(httpx.Request(...))`` to its own server; httpx
    0.27.1 and later apply the client's 5 s default timeout to such requests, so every job longer than 5 s fails with
    a bare "Error". Same mechanism here, scaled down: the client's timeout must not apply."""
    import httpx

    server = http.server.HTTPServer(("127.0.0.1", 0), _Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    async def post() -> int:
        async with httpx.AsyncClient(timeout=0.05) as client:
            url = f"http://127.0.0.1:{server.server_address[1]}/"
            return (await client.send(httpx.Request("POST", url))).status_code

    try:
        assert asyncio.run(post()) == 200
    finally:
        server.shutdown()


def test_no_model_message():
    blocks = build_tab(lambda: (_ for _ in ()).throw(FileNotFoundError("model/unet is missing")))
    _, analyze = _handler(blocks, "memguard_analyze")
    assert "memguard has no model to work with: model/unet is missing" in analyze("a cat", 1, progress=no_progress)


def test_launcher_page_assets_from_a_checkout_and_without_one(tmp_path):
    """In a checkout the launcher inlines the extension's script and stylesheet; an installed wheel has neither, and
    the page then gets the ``gradioApp()`` shim alone instead of failing to start."""
    from memguard.ui.launch import GRADIO_APP_SHIM, SCRIPT, STYLE, head_html, style_html

    assert "memguard" in head_html() and head_html().count("<script>") == 2
    assert style_html().startswith("<style>") and SCRIPT.is_file() and STYLE.is_file()
    assert head_html(tmp_path / "memguard.js") == f"<script>{GRADIO_APP_SHIM}</script>\n"
    assert style_html(tmp_path / "style.css") == ""
