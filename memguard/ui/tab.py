"""The WebUI's "Memorization" tab: Analyze a prompt, Calibrate the model, Batch audit a prompt file.

The WebUI glue registers it with ``script_callbacks.on_ui_tabs(lambda: [(build_tab(factory), "Memorization",
"memorization")])``; :mod:`memguard.ui.launch` mounts the same Blocks on the miniature model. Buttons call
:mod:`memguard.ui.actions`; the browser-side pieces (paste from and send to txt2img, clicking a highlighted word)
are in ``javascript/memguard.js``, which the WebUI loads into every page.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gradio as gr

from ..service import Service
from . import actions
from .actions import PROMPT_TARGET, TABLE_HEADERS
from .compat import component_kwargs, listen

PASTE_JS = "(prompt) => (window.memguard ? window.memguard.readTxt2imgPrompt(prompt) : prompt)"
SEND_JS = "(prompt) => { if (window.memguard) { window.memguard.sendToTxt2img(prompt); } return []; }"

INTRO = (
    "memguard scores how strongly a prompt pulls the model towards a memorized training image (Wen et al., "
    "ICLR 2024: the size of the text-conditional noise prediction at the first sampling step) and shows which "
    "words drive it. Scores are per model: calibrate once on benign prompts to get a threshold."
)


def _table(rows: list[list[Any]]):
    import pandas as pd  # a gradio dependency

    return pd.DataFrame(rows, columns=TABLE_HEADERS)


def _analyze_pane(factory: Callable[[], Service], send_to_txt2img: bool) -> None:
    with gr.Row():
        prompt = gr.Textbox(
            label="Prompt", lines=3, placeholder="A prompt to check before generating", elem_id=PROMPT_TARGET
        )
    with gr.Row(elem_classes=["memguard-toolbar"]):
        paste = gr.Button("Paste from txt2img", elem_id="memguard_paste")
        seeds = gr.Number(label="Seeds", value=4, precision=0, elem_id="memguard_seeds")
        analyze = gr.Button("Analyze", variant="primary", elem_id="memguard_analyze")
        send = gr.Button("Send to txt2img", elem_id="memguard_send", visible=send_to_txt2img)
    result = gr.HTML(elem_id="memguard_analysis")

    def on_analyze(text: str, count: float, progress=gr.Progress()) -> str:  # noqa: B008 (gradio's API)
        return actions.analyze(factory, text, count, progress)

    listen(analyze.click, on_analyze, [prompt, seeds], [result])
    listen(prompt.submit, on_analyze, [prompt, seeds], [result])
    listen(paste.click, None, [prompt], [prompt], js=PASTE_JS, queue=False)
    listen(send.click, None, [prompt], [], js=SEND_JS, queue=False)


def _calibrate_pane(factory: Callable[[], Service]) -> None:
    gr.Markdown(
        "Scores memguard's bundled benign prompts (plus your own, optional) with the loaded model and stores the "
        "threshold that flags the chosen share of them."
    )
    with gr.Row():
        upload = gr.File(label="More benign prompts (optional: .txt or .jsonl)", elem_id="memguard_calibration_file")
        with gr.Column():
            fpr = gr.Number(label="False-positive rate (0.01 = 1%)", value=0.01, elem_id="memguard_fpr")
            calibrate = gr.Button("Calibrate", variant="primary", elem_id="memguard_calibrate")
    result = gr.HTML(elem_id="memguard_calibration")

    def on_calibrate(file: object, rate: float, progress=gr.Progress()) -> str:  # noqa: B008 (gradio's API)
        return actions.calibrate(factory, file, rate, progress)

    listen(calibrate.click, on_calibrate, [upload, fpr], [result])


def _audit_pane(factory: Callable[[], Service]) -> None:
    gr.Markdown("Upload prompts (one per line, or JSON lines with `prompt` or `caption`) to score them all.")
    with gr.Row():
        upload = gr.File(label="Prompt file", elem_id="memguard_audit_file")
        with gr.Column():
            seeds = gr.Number(label="Seeds per prompt", value=1, precision=0, elem_id="memguard_audit_seeds")
            run = gr.Button("Audit", variant="primary", elem_id="memguard_audit")
    summary = gr.HTML(elem_id="memguard_audit_summary")
    table = gr.Dataframe(
        **component_kwargs(
            gr.Dataframe,
            headers=TABLE_HEADERS,
            datatype=["number", "str", "number", "str"],
            interactive=False,
            wrap=True,
            elem_id="memguard_audit_table",
        )
    )
    report = gr.File(label="CSV report", interactive=False, elem_id="memguard_audit_csv")

    def on_audit(file: object, count: float, progress=gr.Progress()):  # noqa: B008 (gradio's API)
        result = actions.audit(factory, file, count, progress)
        return result.html, _table(result.rows), str(result.csv) if result.csv else None

    listen(run.click, on_audit, [upload, seeds], [summary, table, report])


def build_tab(service_factory: Callable[[], Service], send_to_txt2img: bool = True) -> gr.Blocks:
    """The Memorization tab as a ``gr.Blocks`` (the WebUI renders it inside its own tab).

    ``service_factory`` is called on every button press, so the tab follows the checkpoint the host has loaded;
    it may raise to say that no model is available. ``send_to_txt2img`` shows the "Send to txt2img" button.
    """
    with gr.Blocks(analytics_enabled=False, elem_id="memguard_tab") as blocks:
        gr.Markdown(INTRO, elem_classes=["memguard-intro"])
        with gr.Tabs(elem_id="memguard_tabs"):
            with gr.Tab("Analyze", elem_id="memguard_tab_analyze"):
                _analyze_pane(service_factory, send_to_txt2img)
            with gr.Tab("Calibrate", elem_id="memguard_tab_calibrate"):
                _calibrate_pane(service_factory)
            with gr.Tab("Batch audit", elem_id="memguard_tab_audit"):
                _audit_pane(service_factory)
    return blocks


__all__ = ["build_tab"]
