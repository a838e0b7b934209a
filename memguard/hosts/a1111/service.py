"""The Memorization tab's and the HTTP API's :class:`memguard.service.Service` over the checkpoint the WebUI has
loaded (A1111 1.10 ``shared.sd_model``, an ldm/sgm ``LatentDiffusion``).

Outside a generation memguard evaluates the model itself, with Wen et al.'s protocol at the first step of a
k-diffusion sampler (every WebUI k-diffusion schedule starts at ``sigma_max``, i.e. model timestep 999): ``x_T`` is
unit Gaussian noise drawn from the seed on the CPU, the latent is 64x64 (512 px; 128x128 for SDXL), and the
reference is what the model conditions an empty negative prompt on (``host.empty_cond``: the encoding of ``""``; SDXL's
zero text embeddings), prompts and reference conditioned at the native size (SDXL's vector). Scores from the tab, the
API, calibration and the watcher at a k-diffusion sampler's first step are therefore on the same scale.

The tab and the API run on other threads than the generations (A1111 lets gradio run 64 events at once), and a
generation may have hooks on the UNet (memguard's own attention edit, other extensions'), offload it, or need all
the accelerator's memory. Every model use here therefore holds the host's ``queue_lock`` (``host.host_queue``;
A1111 1.10 ``modules/call_queue.py``, kept by Forge), the lock every generation holds, one prompt at a time.

Token significance is ``memguard.explain.significance``: Wen's gradient, or occlusion where the weights refuse a
backward pass (Forge's are inference tensors, see ``forge.service``), said in the result's ``note``.
"""

from __future__ import annotations

import contextlib
import math
import statistics
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ... import prompt_syntax
from ...algebra import eps_from_v
from ...detect import wen_norm
from ...explain import explain, significance
from ...service import calibrate_into, result
from .. import families
from . import host
from .conditioning import crossattn, take, with_crossattn
from .prompt_tokens import host_tokens

T_FIRST = 999
CALIBRATION_BATCH = 8  # sub-prompts per UNet call when calibrating


@dataclass
class A1111Service:
    """Scores, explanations and calibration for ``shared.sd_model`` (see the module docstring)."""

    def _model(self) -> Any:
        from modules import shared

        if shared.sd_model is None:
            raise RuntimeError("no checkpoint is loaded")
        found = families.model_unscorable(shared.sd_model)
        if found is not None:
            raise families.NotApplicable(f"{found.notice.split(';')[0]} (the loaded checkpoint)")
        return shared.sd_model

    def model_id(self) -> str:
        return host.model_key()

    def threshold(self) -> float | None:
        return host.current_threshold()[0]

    def threshold_source(self) -> str:
        return host.current_threshold()[1]

    def _cond(self, texts: list[str]) -> Any:
        """The prompts' conditioning at the native size (SDXL's vector carries the size, as in a generation)."""
        return self._model().get_learned_conditioning(host.conditioning_texts(texts, self._size()))

    def _empty(self, n: int) -> Any:
        """The empty reference (:func:`~.host.empty_cond`) at the native size, ``n`` rows."""
        return host.empty_cond(n, self._size())

    def _size(self) -> tuple[int, int]:
        return host.native_size(self._network(), self._model())

    def _network(self) -> torch.nn.Module:
        """The UNet itself (for the latent shape and the device)."""
        return self._model().model.diffusion_model

    def _eps(self, x: torch.Tensor, cond: Any) -> torch.Tensor:
        model = self._model()
        t = torch.full((x.shape[0],), T_FIRST, device=x.device, dtype=torch.long)
        wrapped = cond if isinstance(cond, dict) else {"c_crossattn": [cond]}
        out = model.apply_model(x, t, wrapped)
        if getattr(model, "parameterization", "eps") == "v":
            return eps_from_v(x, out, model.alphas_cumprod[T_FIRST])
        return out

    def _noise(self, seeds: Sequence[int]) -> torch.Tensor:
        network = self._network()
        shape = host.native_latent(network, self._model())
        device = next(network.parameters()).device
        noise = [torch.randn((1, *shape), generator=torch.Generator("cpu").manual_seed(int(s))) for s in seeds]
        return torch.cat(noise).to(device)

    def _scores(self, text: str, seeds: Sequence[int]) -> tuple[list[float], Any, torch.Tensor, torch.Tensor]:
        n = len(seeds)
        cond = take(self._cond([text]), [0] * n)
        empty = self._empty(n)
        x = self._noise(seeds)
        with torch.no_grad():
            eps_e = self._eps(x, empty)
            d = wen_norm(self._eps(x, cond) - eps_e)
        return [float(v) for v in d], cond, x, eps_e

    def _subprompts(self, prompt: str) -> list[str]:
        from modules import prompt_parser

        parts = [text for text, _w, _o in prompt_syntax.split_and(prompt)] or [prompt]
        return [prompt_parser.get_learned_conditioning_prompt_schedules([t], 20)[0][0][1] for t in parts]

    @contextlib.contextmanager
    def _model_in_use(self) -> Iterator[None]:
        """Hold the host's generation lock, with the model made ready for memguard's own calls."""
        with host.host_queue():
            self._prepare()
            yield

    @contextlib.contextmanager
    def _prepared(self) -> Iterator[None]:
        """The model made ready, the lock not taken (inside a generation, which holds it)."""
        self._prepare()
        yield

    def _prepare(self) -> None:
        """Nothing on A1111: its ``--medvram`` / ``--lowvram`` hooks move the weights as they are called."""

    def analyze(self, prompt: str, seeds: Sequence[int]) -> dict:
        with self._model_in_use():
            return self._analyze(prompt, seeds)

    def audit(self, prompts: Sequence[str], seeds: Sequence[int]) -> list[dict]:
        tau = self.threshold()
        out = []
        for prompt in prompts:  # the lock prompt by prompt: a generation can start between two
            with self._model_in_use():
                per_part = [self._scores(text, seeds)[0] for text in self._subprompts(prompt)]
            strongest: list[float] = max(per_part, key=statistics.fmean)
            out.append(result(prompt, strongest, tau))
        return out

    def calibrate(
        self,
        prompts: Sequence[str],
        fpr: float,
        *,
        origin: str = "user",
        locked: bool = True,
        interrupted: Callable[[], bool] = lambda: False,
        progress: Callable[[int, int], None] = lambda done, total: None,
        key: str | None = None,
    ) -> dict | None:
        """Calibrate the loaded checkpoint on ``prompts`` (:meth:`benign_scores`) and store its threshold at ``fpr``
        under ``key`` (default: the checkpoint's); None when ``interrupted``. ``locked=False`` inside a generation,
        which holds the host's lock already."""

        def scores() -> list[float] | None:
            return self.benign_scores(prompts, locked=locked, interrupted=interrupted, progress=progress)

        sampler = "k-diffusion first step (t=999)"
        return calibrate_into(key or self.model_id(), host.store(), scores, fpr, sampler=sampler, origin=origin)

    def benign_scores(
        self,
        prompts: Sequence[str],
        *,
        locked: bool = True,
        interrupted: Callable[[], bool] = lambda: False,
        progress: Callable[[int, int], None] = lambda done, total: None,
    ) -> list[float] | None:
        """Each prompt's first-step score (its AND parts': the highest) on one noise image (seed 0) against one
        empty-prompt pass made once, :data:`CALIBRATION_BATCH` sub-prompts of one chunk count per UNet call; the
        host's lock held per call (``locked``); None as soon as ``interrupted()``."""
        use = self._model_in_use if locked else self._prepared
        parts = [(i, text) for i, prompt in enumerate(prompts) for text in self._subprompts(prompt)]
        chunker = host.text_model()
        groups: dict[int, list[tuple[int, str]]] = {}
        for i, text in parts:
            groups.setdefault(len(chunker.process_texts([text])[0][0]), []).append((i, text))
        batches = [g[k : k + CALIBRATION_BATCH] for g in groups.values() for k in range(0, len(g), CALIBRATION_BATCH)]
        with use(), torch.no_grad():
            x = self._noise([0])
            eps_e = self._eps(x, self._empty(1))
        scores = [-math.inf] * len(prompts)
        for done, batch in enumerate(batches, 1):
            if interrupted():
                return None
            with use(), torch.no_grad():
                d = wen_norm(self._eps(x.expand(len(batch), -1, -1, -1), self._cond([t for _, t in batch])) - eps_e)
            for (i, _), value in zip(batch, d.tolist()):
                scores[i] = max(scores[i], value)
            progress(done, len(batches))
        return scores

    def _analyze(self, prompt: str, seeds: Sequence[int]) -> dict:
        tau = self.threshold()
        best = None
        for text in self._subprompts(prompt):
            scores, cond, x, eps_e = self._scores(text, seeds)
            mean = statistics.fmean(scores)
            if best is None or mean > best[0]:
                best = (mean, text, scores, cond, x, eps_e)
        if best is None:
            raise ValueError("the prompt has no part to score")
        _, text, scores, cond, x, eps_e = best

        tokens = host_tokens(text, prompt)

        def eps_model(xx: torch.Tensor, crossattn: torch.Tensor) -> torch.Tensor:
            return self._eps(xx, with_crossattn(take(cond, [0] * xx.shape[0]), crossattn))

        empty = crossattn(self._empty(1))
        positions = [t.position for t in tokens.tokens]
        values, note = significance(eps_model, x, crossattn(cond), eps_e, empty, positions)
        return result(prompt, scores, tau, **explain(tokens, values).to_dict(), note=note)
