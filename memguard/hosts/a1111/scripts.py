"""The WebUI scripts (A1111 1.10 ``modules/scripts.py`` ``Script``): a companion that watches every txt2img
generation, and the "Memorization guard" dropdown script that mitigates. Built by :func:`make_scripts` so that
importing memguard never imports the host."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from ... import strategies
from .. import autocalibrate, families, request, settings
from . import first_step, report
from .host import model_key
from .process import log_failure
from .run import ATTR, Run, finish, run_of, start, start_failed

log = logging.getLogger("memguard")

GUARD_TITLE = "Memorization guard"


def _audit(run: Run, p: Any) -> None:
    """Append one JSON line per image to the audit log, when the setting names a file."""
    path = settings.get("memguard_audit_log")
    if not path or not run.results:
        return
    with open(path, "a", encoding="utf-8") as handle:
        for r in run.ordered():
            action = r.mitigation["strategy"] if r.mitigation else ("warn" if r.flagged else "none")
            row = {
                "time": time.time(),
                "model": model_key(p),
                "prompt": r.prompt,
                "seed": r.seed,
                "score": r.score,
                "threshold": r.threshold,
                "threshold_source": run.threshold_source,
                "verdict": r.verdict,
                "action": action,
                "score_after": (r.mitigation or {}).get("score_after"),
                "still_above": r.still_above,
            }
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def _reason(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


def _report(run: Run, p: Any, processed: Any) -> None:
    """Write the generation's summary lines (and the data line the panel renders) to its log, and its results to
    the generation info (``Processed.js()``, the API's ``info``: ``extra_generation_params["memguard"]``, in a copy of
    the dict, so that no infotext written later carries them; memguard's per-image infotext values, which JSON
    would turn into nulls, left out there); audit if set."""
    processed.comments = (processed.comments or "") + "".join(f"{line}\n" for line in report.summary_lines(run))
    params = getattr(processed, "extra_generation_params", None) or {}
    processed.extra_generation_params = {
        **{k: v for k, v in params.items() if k not in report.INFOTEXT_KEYS},
        "memguard": report.payload(run),
    }
    try:
        _audit(run, p)
    except OSError as err:
        processed.comments += f"memguard could not write the audit log: {err}\n"


def make_scripts() -> tuple[type, type]:
    """Return the two ``Script`` subclasses; ``scripts/memguard.py`` puts them in its globals for the host."""
    from modules import processing, scripts

    class MemguardWatch(scripts.Script):
        """Always-visible companion: starts a watching run for every txt2img generation, reports at its end."""

        def title(self) -> str:
            return "memguard"

        def show(self, is_img2img: bool):
            return False if is_img2img else scripts.AlwaysVisible

        def ui(self, is_img2img: bool) -> list:
            import gradio as gr

            return [gr.State(None)]  # the API's per-request options (``request.py``); the UI sends none

        def process(self, p: Any, options: Any = None, *args: Any) -> None:
            try:
                self._process(p, {**request.parse(options), **request.parse(getattr(p, request.XYZ_ATTR, None))})
            except request.OptionsError as err:
                log.warning("memguard: %s", err)
                start_failed(p, "reading the request's options", err)
            except Exception as err:  # shielded: the generation goes on, memguard only says why it is not watching
                log_failure("starting to watch")
                start_failed(p, "starting to watch", err)

        def _process(self, p: Any, options: dict) -> None:
            run = run_of(p)
            if run is None:
                if not options.get("watch", settings.get("memguard_watch")):
                    return
                mitigate = options.get("action", settings.get("memguard_action")) == "mitigate"
                run = start(
                    p,
                    "mitigate" if mitigate else "watch",
                    strategy_name=options.get("strategy", settings.get("memguard_strategy")),
                    explain=bool(options.get("explain", settings.get("memguard_explain"))),
                    force=mitigate and options.get("force", False),
                )
            found = families.unscorable(p)
            if found is not None:  # probed here: the host has loaded the job's model by now (Forge: lazily)
                run.not_scorable(found)
            if "threshold" in options:
                run.threshold, run.threshold_source = options["threshold"], "manual threshold (request)"
            if settings.get("memguard_infotext"):
                p.extra_generation_params.update(report.infotext(run))

        def process_batch(self, p: Any, *args: Any, **kwargs: Any) -> None:
            run = getattr(p, ATTR, None)
            if run is None:
                return
            if run.not_applicable:
                run.guard("reporting", first_step.record_unscored, run, p)
                return
            try:
                autocalibrate.judge_batch(run, p)
            except Exception as err:  # shielded: the generation goes on; after a fault memguard only watches
                log_failure("calibrating automatically")
                run.fail("calibrating automatically", err)

        def postprocess(self, p: Any, processed: Any, *args: Any) -> None:
            try:
                run = finish(p)
                if run is not None:
                    _report(run, p, processed)
            except Exception as err:  # shielded: the images are done; say why the report is missing
                log_failure("reporting")
                processed.comments = (processed.comments or "") + f"memguard could not report: {_reason(err)}\n"

    class MemguardGuard(scripts.Script):
        """Dropdown script: score at step 1 and mitigate flagged images before sampling continues."""

        def title(self) -> str:
            return GUARD_TITLE

        def show(self, is_img2img: bool) -> bool:
            return not is_img2img

        def ui(self, is_img2img: bool) -> list:
            import gradio as gr

            strategy = gr.Radio(
                list(strategies.NAMES),
                value=strategies.DEFAULT,
                label="Mitigation strategy",
                elem_id=self.elem_id("strategy"),
            )
            force = gr.Checkbox(
                False, label="Mitigate every image, not only flagged ones", elem_id=self.elem_id("force")
            )
            explain = gr.Checkbox(True, label="Explain flagged images", elem_id=self.elem_id("explain"))
            components = {"strategy": strategy, "force": force}
            self.infotext_fields = [(components[e.paste], e.name) for e in report.INFOTEXT if e.paste]
            return [strategy, force, explain]

        def run(self, p: Any, strategy: str = "auto", force: bool = False, explain: bool = True) -> Any:
            if strategy not in strategies.NAMES:
                raise ValueError(f"memguard: unknown strategy {strategy!r}; use one of {', '.join(strategies.NAMES)}")
            failure = None
            try:
                start(p, "mitigate", strategy_name=strategy, force=bool(force), explain=bool(explain))
                p.extra_generation_params[report.STRATEGY.name] = strategy
                if force:
                    p.extra_generation_params[report.FORCE.name] = True
            except Exception as err:  # shielded: generate without mitigation, and say so
                log_failure("starting the Memorization guard")
                failure = f"memguard could not start the Memorization guard: {_reason(err)}\n"
                finish(p)
            try:
                processed = processing.process_images(p)
            finally:
                try:
                    finish(p)
                except Exception:  # shielded: never mask the host's own exception or result
                    log_failure("finishing")
            if failure and processed is not None:
                processed.comments = (processed.comments or "") + failure
            return processed

    return MemguardWatch, MemguardGuard
