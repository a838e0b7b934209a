"""A WebUI-like page for the browser test of the warning panel under a generation (run as a script).

What the page reproduces of A1111 1.10.1, the parts memguard's panel depends on:

* the generation runs through the A1111 double (``tests/fakehost``) with memguard loaded as an extension, and its
  comments reach the page the way ``modules/txt2img.py: txt2img`` returns them: ``plaintext_to_html(comments,
  classname="comments")`` into ``gr.HTML(elem_id="html_log_txt2img")`` (``modules/ui_common.py:
  create_output_panel``);
* extension scripts are loaded in ``<head>`` after the host's ``script.js``, whose ``onUiUpdate(callback)`` runs the
  callbacks from a ``MutationObserver`` on ``gradioApp()`` started at ``DOMContentLoaded`` (shim below, same
  behaviour); ``style.css`` at the end of ``<body>`` (``modules/ui_gradio_extensions.py``);
* ``on_app_started(demo, app)`` is called with gradio's FastAPI app after ``launch`` (``webui.py``), so memguard's
  ``/memguard/v1/panel`` route is served next to the page;
* the img2img tab's prompt box and log, with the host's ids (``modules/ui.py: create_ui``: ``gr.TabItem("img2img",
  elem_id="tab_img2img")``, ``ui_toprow.Toprow(is_img2img=True)``'s ``gr.Textbox(elem_id=f"{id_part}_prompt")``
  and ``create_output_panel("img2img", ...)``'s ``gr.HTML(elem_id=f"html_log_{tabname}")``), so that a panel
  under an img2img log can be checked. Not its generation: memguard's scripts do not show on img2img
  (``memguard/hosts/a1111/scripts.py``), so the host never writes memguard's line into that log; a test that needs
  one there writes it.

Usage: ``python tests/browser/webui_page.py --model DIR --port N [--threshold T]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import fakehost  # noqa: E402

ON_UI_UPDATE_SHIM = """
var uiUpdateCallbacks = [];
function onUiUpdate(callback) { uiUpdateCallbacks.push(callback); }
document.addEventListener("DOMContentLoaded", function () {
    new MutationObserver(function (mutations) {
        uiUpdateCallbacks.forEach(function (callback) { callback(mutations); });
    }).observe(gradioApp(), {childList: true, subtree: true});
});
"""


def build(threshold: float):
    import gradio as gr
    from modules import scripts, shared, txt2img

    shared.opts.memguard_threshold = threshold
    side = int(shared.sd_model.memguard_model.unet.config.sample_size)

    def generate(prompt: str, batch_size: float, watch: bool) -> str:
        shared.opts.memguard_watch = bool(watch)
        p = txt2img.txt2img_create_processing(
            *scripts.scripts_txt2img.default_script_args(None),
            prompt=prompt,
            negative_prompt="",
            steps=2,
            batch_size=int(batch_size),
            width=side,
            height=side,
            seed=7,
            sampler_name="Euler",
        )
        return txt2img.txt2img(p)[3]

    blocks = gr.Blocks(title="WebUI-like page", analytics_enabled=False)
    with blocks as demo, gr.Tabs(elem_id="tabs"):
        with gr.Tab("txt2img", elem_id="tab_txt2img"):
            prompt = gr.Textbox(label="Prompt", lines=2, elem_id="txt2img_prompt")
            batch = gr.Number(value=2, label="Batch size", elem_id="txt2img_batch_size")
            watch = gr.Checkbox(value=True, label="memguard watch", elem_id="txt2img_watch")
            button = gr.Button("Generate", elem_id="txt2img_generate")
            log = gr.HTML(elem_id="html_log_txt2img", elem_classes="html-log")
            button.click(generate, [prompt, batch, watch], [log])
        with gr.Tab("img2img", elem_id="tab_img2img"):
            gr.Textbox(label="Prompt", lines=2, elem_id="img2img_prompt")
            gr.HTML(elem_id="html_log_img2img", elem_classes="html-log")
    return demo


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threshold", type=float, default=1e-6)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    fakehost.boot(args.model, extension_dirs=[str(REPO)])
    from modules import script_callbacks

    from memguard.ui.launch import head_html, install_page_assets, style_html

    install_page_assets(f"<script>{ON_UI_UPDATE_SHIM}</script>\n" + head_html(), style_html())
    demo = build(args.threshold)
    demo.queue()
    app, _, _ = demo.launch(
        server_name="127.0.0.1", server_port=args.port, prevent_thread_lock=True, show_api=False, quiet=True
    )
    script_callbacks.app_started_callback(demo, app)
    print(f"serving http://127.0.0.1:{args.port}/", flush=True)
    while True:
        time.sleep(1)


if __name__ == "__main__":
    main()
