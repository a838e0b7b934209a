"""A small stand-alone page with the Memorization tab on a diffusers model directory (the bundled miniature by default).

    python -m memguard.ui [--model DIR] [--port 7861] [--store FILE] [--steps 50] [--threads 1]

It serves on 127.0.0.1 only, and loads ``javascript/memguard.js`` and ``style.css`` into the page the way the WebUI
does (script in ``<head>``, stylesheet at the end of ``<body>``, by wrapping gradio's template response), next to a
stand-in "txt2img" tab whose ``#txt2img_prompt`` box shows what "Send to txt2img" does. Nothing is fetched from the
network: the theme uses the system fonts. The calibration store is a temporary file unless ``--store`` names one.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from ..calibrate import CalibrationStore
from ..miniature import MODEL_DIR
from ..service import PipelineService, Service
from .compat import accepts

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "javascript" / "memguard.js"
STYLE = REPO / "style.css"

# The WebUI's script.js defines gradioApp() for every extension script; the launcher provides the same function.
GRADIO_APP_SHIM = """
function gradioApp() {
    const elems = document.getElementsByTagName('gradio-app');
    const elem = elems.length == 0 ? document : elems[0];
    if (elem !== document) { elem.getElementById = function(id) { return document.getElementById(id); }; }
    return elem.shadowRoot ? elem.shadowRoot : elem;
}
"""


def head_html(script: Path = SCRIPT) -> str:
    """``<script>`` tags for ``<head>``: the ``gradioApp()`` shim, then memguard.js (inlined: no file route). The
    script is the WebUI extension's (``javascript/`` beside the package in a checkout); an installed wheel has none,
    and the page then works without it (no menu on highlighted words)."""
    shim = f"<script>{GRADIO_APP_SHIM}</script>\n"
    if not script.is_file():
        return shim
    code = script.read_text(encoding="utf-8").replace("</", "<\\/")
    return f"{shim}<script>{code}</script>\n"


def style_html(style: Path = STYLE) -> str:
    """The extension's stylesheet, for the end of ``<body>`` (where the WebUI links it); none outside a checkout."""
    if not style.is_file():
        return ""
    css = style.read_text(encoding="utf-8").replace("</", "<\\/")
    return f"<style>{css}</style>\n"


OFFSITE = re.compile(rb'<script\s+src="https?://[^"]*"[^>]*>\s*</script>|<link\s[^>]*href="https?://[^"]*"[^>]*>', re.S)


def strip_offsite(page: bytes) -> bytes:
    """Drop gradio's off-site tags (font preconnects, the iframe-resizer script): the page needs no network."""
    return OFFSITE.sub(b"", page)


def install_page_assets(head: str, body_end: str) -> None:
    """Insert ``head`` before ``</head>`` and ``body_end`` before ``</body>`` of every page gradio renders, as the
    WebUI's ``ui_gradio_extensions.reload_javascript`` does, and drop the off-site tags."""
    import gradio.routes

    templates = gradio.routes.templates
    original = getattr(templates, "_memguard_original", templates.TemplateResponse)

    def template_response(*args, **kwargs):
        response = original(*args, **kwargs)
        response.body = strip_offsite(response.body).replace(b"</head>", head.encode("utf-8") + b"</head>")
        response.body = response.body.replace(b"</body>", body_end.encode("utf-8") + b"</body>")
        response.init_headers()
        return response

    templates._memguard_original = original
    templates.TemplateResponse = template_response


def service_factory(model_dir: Path, store: Path, steps: int) -> Callable[[], Service]:
    """A factory that loads the model once, on first use, and answers every later call with the same service
    (or the same loading error, so the tab can show it)."""
    lock = threading.Lock()
    state: dict[str, object] = {}

    def factory() -> Service:
        with lock:
            if "service" not in state and "error" not in state:
                try:
                    from ..pipeline import Model

                    state["service"] = PipelineService(Model.load(model_dir), CalibrationStore(store), steps=steps)
                except Exception as err:  # kept and re-raised on every call: the tab shows it
                    state["error"] = err
            if "error" in state:
                raise state["error"]  # type: ignore[misc]
            return state["service"]  # type: ignore[return-value]

    return factory


def build_demo(factory: Callable[[], Service]):
    """The page: a stand-in txt2img tab and the Memorization tab, inside ``#tabs`` as in the WebUI."""
    import gradio as gr

    from .tab import build_tab

    fonts = {"font": ["ui-sans-serif", "system-ui", "sans-serif"], "font_mono": ["ui-monospace", "monospace"]}
    theme = gr.themes.Default(**fonts)
    memorization = build_tab(factory)  # built first and rendered inside the page, as the WebUI does with its tabs
    with gr.Blocks(title="memguard", analytics_enabled=False, theme=theme) as demo, gr.Tabs(elem_id="tabs"):
        with gr.Tab("txt2img", elem_id="tab_txt2img"):
            gr.Textbox(label="Prompt", lines=3, elem_id="txt2img_prompt")
            gr.Markdown("A stand-in for the WebUI's txt2img tab: **Send to txt2img** writes the prompt here.")
        with gr.Tab("Memorization", elem_id="tab_memorization"):
            memorization.render()
    return demo


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m memguard.ui", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=MODEL_DIR, help="diffusers model directory (default: the miniature)")
    p.add_argument("--port", type=int, default=7861, help="port on 127.0.0.1 (default 7861)")
    p.add_argument("--store", type=Path, help="calibration store (default: a file in a new temporary directory)")
    p.add_argument("--steps", type=int, default=50, help="sampling steps of the schedule the score is read on")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: small models run fastest on one)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import torch

    torch.set_num_threads(max(1, args.threads))
    store = args.store or Path(tempfile.mkdtemp(prefix="memguard-ui-")) / "calibration.json"
    factory = service_factory(args.model, store, args.steps)
    try:
        factory()
    except Exception as err:  # serve anyway: the tab explains that there is no model
        print(f"memguard: no model: {err}", file=sys.stderr)
    install_page_assets(head_html(), style_html())
    demo = build_demo(factory)
    # One job at a time: gradio 4's ``default_concurrency_limit``; gradio 3's ``concurrency_count`` (gradio 4 still
    # takes that name, only to raise that it is deprecated, so the gradio 4 name is probed first).
    queue = demo.queue
    one = {"default_concurrency_limit": 1} if accepts(queue, "default_concurrency_limit") else {"concurrency_count": 1}
    queue(**one)
    print(f"memguard: calibration store {store}", file=sys.stderr)
    print(f"memguard: serving http://127.0.0.1:{args.port}/", file=sys.stderr, flush=True)
    demo.launch(server_name="127.0.0.1", server_port=args.port, share=False, show_api=False, quiet=True)
    return 0
