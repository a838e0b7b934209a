"""The few places gradio 3.41 (A1111, reForge) and gradio 4 (Forge) differ for this tab, found by feature, not
by version string."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any


def accepts(func: Callable[..., Any], name: str) -> bool:
    """Whether ``func`` takes a parameter called ``name`` (``False`` when its signature cannot be read)."""
    try:
        return name in inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False


def js_keyword(listener: Callable[..., Any]) -> str:
    """``js`` on gradio 4's event listeners, ``_js`` on gradio 3's."""
    return "js" if accepts(listener, "js") else "_js"


def listen(listener: Callable[..., Any], fn: Callable[..., Any] | None, inputs: list, outputs: list, **kw: Any) -> Any:
    """Attach ``fn`` through ``listener`` (e.g. ``button.click``); a ``js=`` source goes in under the right name, and
    options the installed gradio does not know are dropped."""
    js = kw.pop("js", None)
    kwargs = {k: v for k, v in kw.items() if accepts(listener, k)}
    if js is not None:
        kwargs[js_keyword(listener)] = js
    return listener(fn=fn, inputs=inputs, outputs=outputs, **kwargs)


def component_kwargs(cls: type, **kw: Any) -> dict[str, Any]:
    """The constructor options ``cls`` accepts (``max_rows`` exists on gradio 3's Dataframe only, say)."""
    init = cls.__init__  # type: ignore[misc]  # the class's own constructor, as gradio defines it
    return {k: v for k, v in kw.items() if accepts(init, k)}
