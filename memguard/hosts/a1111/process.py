"""memguard's per-process state in a WebUI: one :class:`Process` object (:data:`PROCESS`).

It holds, between the host's callbacks, the run and CFG denoiser of the denoiser call in progress (weak references:
a generation that ends, or fails, leaves nothing alive here), the hooks memguard has installed on the model (the
attention edit of the batch being sampled; ``None`` when there are none, so the check at every denoiser call of every
generation costs nothing), and the tokenizer memguard replays the host's chunking with. Who starts, finishes and
clears what: ``docs/architecture.md``.
"""

from __future__ import annotations

import contextlib
import logging
import traceback
import weakref
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("memguard")


@dataclass
class Process:
    run_ref: weakref.ref | None = None
    denoiser_ref: weakref.ref | None = None
    hooks: contextlib.ExitStack | None = None
    tokenizers: dict[str, Any] = field(default_factory=dict)

    def current(self) -> tuple[Any, Any]:
        """The run and denoiser of the denoiser call in progress, if both are still alive (else ``(None, None)``)."""
        run = self.run_ref() if self.run_ref is not None else None
        denoiser = self.denoiser_ref() if self.denoiser_ref is not None else None
        return (run, denoiser) if run is not None and denoiser is not None else (None, None)

    def set_current(self, run: Any, denoiser: Any) -> None:
        if run is None or denoiser is None:
            self.run_ref, self.denoiser_ref = None, None
        else:
            self.run_ref, self.denoiser_ref = weakref.ref(run), weakref.ref(denoiser)

    def hook_stack(self) -> contextlib.ExitStack:
        """Where memguard's hooks go, removed together by :meth:`release_hooks`."""
        if self.hooks is None:
            self.hooks = contextlib.ExitStack()
        return self.hooks

    def release_hooks(self) -> None:
        """Remove every hook memguard has installed on the model."""
        stack, self.hooks = self.hooks, None
        if stack is not None:
            stack.close()

    def tokenizer(self) -> Any:
        """The CLIP tokenizer (offsets) memguard maps the host's tokens to typed words with, loaded once."""
        if "clip" not in self.tokenizers:
            from ...tokens import load_tokenizer

            self.tokenizers["clip"] = load_tokenizer()
        return self.tokenizers["clip"]


PROCESS = Process()


def log_failure(what: str) -> None:
    """Log the exception being handled with its traceback as text: no log record keeps its frames (and tensors)."""
    log.error("memguard: %s failed\n%s", what, traceback.format_exc())
