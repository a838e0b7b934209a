"""Run memguard on a diffusers-format model directory: score, explain, calibrate, generate with mitigation.

The model directory is what ``StableDiffusionPipeline.save_pretrained`` writes (``unet/``, ``text_encoder/``,
``tokenizer/``, ``scheduler/``, and ``vae/`` for latent models; without ``vae/`` the model samples pixels). Nothing is
downloaded. Sampling is DDIM (Song et al. 2021) with the model's own scheduler configuration and classifier-free
guidance ``eps = eps_u + s (eps_c - eps_u)`` (Ho & Salimans 2022); the unconditional prompt is the negative prompt
(empty by default). Seeds: image ``j`` of a prompt with seed ``s`` starts from
``torch.randn((1, C, H, W), generator=torch.Generator("cpu").manual_seed(s + j)) * init_noise_sigma``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .algebra import eps_from_v
from .detect import Detection, anisotropy, combined_score, judge, unscorable, wen_norm
from .explain import Explanation, explain, token_gradients
from .mitigate.attention import cross_attention_modules, rescaled_attention
from .mitigate.base import Case, Intervention, Report, Strategy
from .tokens import CONTEXT, Tokenized, load_tokenizer, tokenize, tokenize_many

CALIBRATION_FILE = "memguard_calibration.json"


class ModelError(ValueError):
    """The model directory is missing a part or has a wrong one; the message names it."""


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise ModelError(f"{path} is missing: a diffusers model directory needs {what}")
    return path


def _weights_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*") if p.suffix in (".safetensors", ".bin"))


def _text_encoder(folder: Path, dtype: torch.dtype) -> torch.nn.Module:
    """``CLIPTextModel`` from ``folder`` under transformers 4 (the WebUIs) and 5 alike: 5.x writes the weights without
    the ``text_model.`` prefix that 4.x expects (4.x would leave them random with only a warning), and the dtype
    keyword differs (``torch_dtype`` on 4.x, ``dtype`` on 5.x), so the model is cast after loading."""
    from transformers import CLIPTextConfig, CLIPTextModel

    files = [f for f in _weights_files(folder) if f.suffix == ".safetensors"]
    if not files:
        return CLIPTextModel.from_pretrained(folder, local_files_only=True).to(dtype)
    from safetensors.torch import load_file

    model = CLIPTextModel(CLIPTextConfig.from_pretrained(folder, local_files_only=True))
    state = {k: v for f in files for k, v in load_file(str(f)).items()}
    if not state.keys() & model.state_dict().keys():  # written by the other major version of transformers
        prefix = "text_model."
        state = {(k[len(prefix) :] if k.startswith(prefix) else prefix + k): v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    unexpected = [k for k in unexpected if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(f"{folder}: weights that do not fit CLIPTextModel (missing {missing[:3]}, {unexpected[:3]})")
    return model.to(dtype)


@dataclass
class Model:
    """The parts of a text-to-image model memguard needs, loaded from a local diffusers directory."""

    path: Path
    unet: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    scheduler_config: dict
    vae: torch.nn.Module | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    _empty: torch.Tensor | None = None
    _hash: str | None = None

    @classmethod
    def load(cls, path: Path | str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> Model:
        from diffusers import AutoencoderKL, UNet2DConditionModel

        path = Path(path)
        if not path.is_dir():
            raise ModelError(f"{path} is not a directory: --model takes a diffusers model directory")
        for part, what in (("unet", "a UNet"), ("text_encoder", "a text encoder"), ("tokenizer", "a tokenizer")):
            _require(path / part, f"{part}/ ({what})")
        _require(path / "scheduler" / "scheduler_config.json", "scheduler/scheduler_config.json")
        for part in ("unet", "text_encoder"):
            _require(path / part / "config.json", f"{part}/config.json")
            if not _weights_files(path / part):
                raise ModelError(f"{path / part} has no weights (.safetensors or .bin)")
        try:
            unet = UNet2DConditionModel.from_pretrained(
                path / "unet", torch_dtype=dtype, local_files_only=True, low_cpu_mem_usage=False
            )
            text_encoder = _text_encoder(path / "text_encoder", dtype)
            tokenizer = load_tokenizer(path / "tokenizer")
            vae = None
            if (path / "vae").is_dir():
                vae = AutoencoderKL.from_pretrained(
                    path / "vae", torch_dtype=dtype, local_files_only=True, low_cpu_mem_usage=False
                )
        except (OSError, ValueError, KeyError) as err:
            raise ModelError(f"cannot load {path}: {err}") from err
        config = json.loads((path / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))
        model = cls(path, unet.eval(), text_encoder.eval(), tokenizer, config, vae.eval() if vae else None)
        model.device, model.dtype = torch.device(device), dtype
        for module in (model.unet, model.text_encoder, model.vae):
            if module is not None:
                module.to(model.device).requires_grad_(False)
        return model

    @property
    def prediction_type(self) -> str:
        return self.scheduler_config.get("prediction_type", "epsilon")

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        size = self.unet.config.sample_size
        return (self.unet.config.in_channels, size, size)

    @property
    def model_hash(self) -> str:
        """Short sha256 (10 hex digits, as the WebUI shows) over the UNet's and text encoder's weight files."""
        if self._hash is None:
            digest = hashlib.sha256()
            for part in ("unet", "text_encoder"):
                for file in _weights_files(self.path / part):
                    with file.open("rb") as handle:
                        for block in iter(lambda h=handle: h.read(1 << 20), b""):
                            digest.update(block)
            self._hash = digest.hexdigest()[:10]
        return self._hash

    def shipped_threshold(self) -> float | None:
        """A threshold calibrated by the model's author, stored beside the weights."""
        file = self.path / CALIBRATION_FILE
        if not file.is_file():
            return None
        return float(json.loads(file.read_text(encoding="utf-8"))["threshold"])

    # --- text -------------------------------------------------------------------------------------------------
    def tokenize(self, prompt: str) -> Tokenized:
        return tokenize(self.tokenizer, prompt)

    @torch.no_grad()
    def encode(self, tokenized: Tokenized | Sequence[Tokenized]) -> torch.Tensor:
        """``(1, 77 * n_chunks, C)``: each 77-token chunk encoded on its own, then concatenated (the WebUI's scheme).

        A sequence of ``n`` prompts of equal chunk count gives ``(n, 77 * n_chunks, C)`` in one text-encoder call."""
        many = [tokenized] if isinstance(tokenized, Tokenized) else list(tokenized)
        if len({t.n_chunks for t in many}) != 1:
            raise ValueError("prompts encoded together must have the same number of 75-token chunks")
        ids = torch.tensor([row for t in many for row in t.ids], device=self.device)
        hidden = self.text_encoder(input_ids=ids).last_hidden_state
        return hidden.reshape(len(many), -1, hidden.shape[-1]).to(self.dtype)

    def empty(self) -> torch.Tensor:
        """``e_empty``: the text encoder's embedding of ``""`` (Wen et al.'s reference), cached."""
        if self._empty is None:
            self._empty = self.encode(self.tokenize(""))
        return self._empty

    # --- network ------------------------------------------------------------------------------------------------
    def scheduler(self, steps: int):
        from diffusers import DDIMScheduler

        scheduler = DDIMScheduler.from_config({**self.scheduler_config, "prediction_type": "epsilon"})
        scheduler.set_timesteps(steps, device=self.device)
        return scheduler

    def abar(self, t: int) -> torch.Tensor:
        from diffusers import DDIMScheduler

        if not hasattr(self, "_abar"):
            self._abar = DDIMScheduler.from_config(self.scheduler_config).alphas_cumprod.to(self.device)
        return self._abar[int(t)]

    def eps(self, x: torch.Tensor, t: int | torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The network's prediction at timestep ``t`` converted to ``eps`` (eps-, v- and sample-parameterized)."""
        out = self.unet(x.to(self.dtype), t, encoder_hidden_states=cond.to(self.dtype)).sample
        kind = self.prediction_type
        if kind == "epsilon":
            return out
        abar = self.abar(int(t))
        if kind == "v_prediction":
            return eps_from_v(x, out, abar)
        if kind == "sample":
            return (x - abar.sqrt() * out) / (1 - abar).sqrt()
        raise ModelError(f"unsupported prediction_type {kind!r} in scheduler_config.json")

    def blocks(self) -> list[torch.nn.Module]:
        """The UNet's top-level blocks, recomputed in backward passes to bound memory."""
        unet = self.unet
        return [*unet.down_blocks, unet.mid_block, *unet.up_blocks]

    def noise(self, seed: int) -> torch.Tensor:
        gen = torch.Generator("cpu").manual_seed(int(seed))
        x = torch.randn((1, *self.latent_shape), generator=gen, dtype=torch.float32)
        return (x * self.scheduler(1).init_noise_sigma).to(self.device)

    @torch.no_grad()
    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """Samples in ``[-1, 1]`` pixel space (through the VAE for latent models)."""
        if self.vae is None:
            return x0.float().clamp(-1, 1)
        scale = getattr(self.vae.config, "scaling_factor", 0.18215)
        return self.vae.decode(x0.to(self.dtype) / scale).sample.float().clamp(-1, 1)


def positions_kept(tokenized: Tokenized) -> list[int]:
    """BOS, prompt tokens and the first EOS of every chunk: what Ren et al.'s padding mask keeps."""
    kept = []
    for k in range(tokenized.n_chunks):
        body = min(max(len(tokenized.tokens) - 75 * k, 0), 75)
        kept.extend(range(k * CONTEXT, k * CONTEXT + body + 2))
    return kept


@dataclass
class Generation:
    """One image: its prompt and seed, the first-step verdict, what mitigation did, and the final sample."""

    prompt: str
    seed: int
    detection: Detection
    image: torch.Tensor | None = None
    latent: torch.Tensor | None = None
    mitigation: Report | None = None
    trajectory: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "prompt": self.prompt,
            "seed": self.seed,
            "score": self.detection.score,
            "threshold": self.detection.threshold,
            "flagged": self.detection.flagged,
            "detection": self.detection.to_dict(),
            "score_after": self.mitigation.score_after if self.mitigation else None,
            "mitigation": self.mitigation.to_dict() if self.mitigation else None,
        }


def _cfg(model: Model, x: torch.Tensor, t, cond: torch.Tensor, uncond: torch.Tensor, edit_rows=None, edit=None):
    """``(eps_c, eps_u)`` in one batch when the lengths match (as the WebUI batches them), else two calls."""
    context = nullcontext()
    n = x.shape[0]
    same = cond.shape[1] == uncond.shape[1]
    if edit is not None and edit_rows:
        rows, keep = edit_rows
        bos = list(range(0, cond.shape[1], CONTEXT))
        context = rescaled_attention(cross_attention_modules(model.unet), rows, keep, edit, 2 * n if same else n, bos)
    with context:
        if same:
            eps = model.eps(torch.cat([x, x]), t, torch.cat([cond, uncond]))
            return eps[:n], eps[n:]
        eps_c = model.eps(x, t, cond)
    return eps_c, model.eps(x, t, uncond)


def _rows(model: Model, prompts: str | Sequence[str], n: int) -> tuple[list[Tokenized], torch.Tensor]:
    """Tokenize and encode one prompt per image row (a single prompt is repeated); all must have as many chunks.

    The distinct prompts are tokenized in one tokenizer call and encoded in one text-encoder call."""
    texts = [prompts] * n if isinstance(prompts, str) else list(prompts)
    if len(texts) != n:
        raise ValueError(f"{len(texts)} prompts for {n} seeds")
    index: dict[str, int] = {}
    for text in texts:
        index.setdefault(text, len(index))
    toks = tokenize_many(model.tokenizer, list(index))
    if len({tok.n_chunks for tok in toks}) > 1:
        raise ValueError("prompts of one batch must have the same number of 75-token chunks; batch them by length")
    encoded = model.encode(toks)
    rows = [index[t] for t in texts]
    cond = encoded if rows == list(range(len(toks))) else encoded[torch.tensor(rows, device=encoded.device)]
    return [toks[i] for i in rows], cond


@torch.no_grad()
def sample(
    model: Model,
    prompts: str | Sequence[str],
    seeds: Sequence[int],
    *,
    steps: int = 50,
    guidance: float = 7.5,
    negative: str = "",
    threshold: float | None = None,
    strategy: Strategy | None = None,
    force: bool = False,
    score_steps: int = 1,
    stop_after: int | None = None,
    interrupted: Callable[[], bool] = lambda: False,
    watch: bool = True,
) -> list[Generation]:
    """Sample one image per seed with DDIM + CFG, score each at the first step, and mitigate the flagged ones.

    ``prompts`` is one prompt for all seeds or one per seed (a batch of prompts of equal chunk count).
    ``score_steps > 1`` averages ``d_t`` over the first steps for the reported score (the decision to mitigate is
    taken at the first step). ``stop_after`` ends sampling early (scanning needs only the first steps); the
    generations then carry no image. ``watch=False`` samples plainly, without scoring (the benchmarks' baseline).
    """
    n = len(seeds)
    toks, cond = _rows(model, prompts, n)
    empty = model.empty().expand(n, -1, -1)
    uncond = empty if negative == "" else model.encode(model.tokenize(negative)).expand(n, -1, -1)
    x = torch.cat([model.noise(s) for s in seeds])
    scheduler = model.scheduler(steps)
    timesteps = scheduler.timesteps
    last = len(timesteps) if stop_after is None else min(stop_after, len(timesteps))
    history = torch.zeros(n, last)
    intervention: Intervention | None = None
    targets: list[int] = []
    keep = [positions_kept(tok) for tok in toks]
    detections: list[Detection] = []
    for step, t in enumerate(timesteps[:last]):
        edit = intervention.attention if intervention else None
        eps_c, eps_u = _cfg(model, x, t, cond, uncond, (targets, [keep[i] for i in targets]), edit)
        if not watch:
            x = scheduler.step(eps_u + guidance * (eps_c - eps_u), t, x).prev_sample
            continue
        extra = step < max(score_steps, 1) and negative != ""
        eps_e = model.eps(x, t, empty) if extra else eps_u
        d = wen_norm(eps_c - eps_e)
        history[:, step] = d
        if step == 0:
            detections = judge(d.tolist(), threshold, extra_pass=extra, steps=score_steps)
            targets = [i for i, det in enumerate(detections) if det.scorable and (force or det.flagged)]
            if strategy is not None and targets:
                intervention = _mitigate(model, strategy, x, t, cond, eps_e, d, targets, keep, threshold, interrupted)
                cond = cond.clone()
                cond[targets] = intervention.cond.to(cond.dtype)
                edit = intervention.attention
                rows = (list(range(len(targets))), [keep[i] for i in targets])
                new_c, new_u = _cfg(model, x[targets], t, cond[targets], uncond[targets], rows, edit)
                eps_c, eps_u = eps_c.clone(), eps_u.clone()
                eps_c[targets], eps_u[targets] = new_c, new_u
                after = wen_norm(new_c - (eps_e[targets] if extra else new_u))
                for j, report in enumerate(intervention.reports):
                    report.score_after = float(after[j])
                    d[targets[j]] = after[j]
        scale = torch.full((n,), float(guidance))
        if intervention is not None and intervention.guidance:
            for j, i in enumerate(targets):
                scale[i] = intervention.guidance[j].scale(step, len(timesteps), float(t), float(d[i]), guidance)
        eps = eps_u + scale.to(x.device, x.dtype).view(-1, 1, 1, 1) * (eps_c - eps_u)
        x = scheduler.step(eps, t, x).prev_sample
        if interrupted():
            break
    if not watch:
        detections = unscorable(n, "memguard was not watching this generation")
    if score_steps > 1:
        window = history[:, : max(1, min(score_steps, last))].mean(dim=1)
        for i, det in enumerate(detections):
            if det.scorable and i not in targets:
                det.score = float(window[i])
                det.flagged = bool(threshold is not None and det.score > threshold)
    reports = dict(zip(targets, intervention.reports)) if intervention else {}
    images = model.decode(x) if stop_after is None else None
    return [
        Generation(
            prompt=toks[i].prompt,
            seed=int(s),
            detection=detections[i],
            image=images[i] if images is not None else None,
            latent=x[i] if stop_after is None else None,
            mitigation=reports.get(i),
            trajectory=history[i].tolist(),
        )
        for i, s in enumerate(seeds)
    ]


def _mitigate(model, strategy, x, t, cond, eps_e, d, targets, keep, threshold, interrupted) -> Intervention:
    started = time.perf_counter()
    case = Case(
        eps_model=lambda xx, cc: model.eps(xx, t, cc),
        x=x[targets],
        cond=cond[targets],
        eps_empty=eps_e[targets],
        keep=[keep[i] for i in targets],
        bos=list(range(0, cond.shape[1], CONTEXT)),
        target=threshold if threshold is not None else float(d[targets].min()) / 2,
        scores=[float(d[i]) for i in targets],
        interrupted=interrupted,
        model=model.unet,
        checkpoint=model.blocks(),
    )
    intervention = strategy(case)
    for report in intervention.reports:
        report.unet_forwards += 2  # the first step evaluated again with the intervention in force
        report.seconds = max(report.seconds, (time.perf_counter() - started) / len(targets))
    return intervention


@torch.no_grad()
def score(
    model: Model,
    prompts: str | Sequence[str],
    seeds: Sequence[int],
    *,
    steps: int = 50,
    guidance: float = 7.5,
    score_steps: int = 1,
    threshold: float | None = None,
    method: str = "wen",
    gammas: tuple[float, float] = (1.0, 2.0),
) -> list[Detection]:
    """First-step verdicts without sampling the rest: Wen's ``d`` or, with ``method="asthana"``, norm + angle."""
    gens = sample(
        model,
        prompts,
        seeds,
        steps=steps,
        guidance=guidance,
        threshold=threshold,
        score_steps=score_steps,
        stop_after=score_steps,
    )
    if method == "wen":
        return [g.detection for g in gens]
    if method != "asthana":
        raise ValueError(f"unknown score method {method!r}: use 'wen' or 'asthana'")
    _, cond = _rows(model, prompts, len(seeds))
    x = torch.cat([model.noise(s) for s in seeds])
    t_low = model.scheduler(steps).timesteps[-3]
    eps_c, eps_u = _cfg(model, x, t_low, cond, model.empty().expand(len(seeds), -1, -1))
    norms = torch.tensor([g.trajectory[0] for g in gens])
    return judge(combined_score(norms, anisotropy(eps_u, eps_c), *gammas).tolist(), threshold, method="asthana")


def score_prompts(
    model: Model,
    prompts: Sequence[str],
    seeds: Sequence[int],
    *,
    batch_size: int = 16,
    progress: Callable[[int], None] = lambda n: None,
    **kwargs,
) -> list[list[Detection]]:
    """:func:`score` for many prompts: every (prompt, seed) row batched ``batch_size`` at a time, grouped by chunk
    count; returns one list of detections (one per seed) per prompt, in input order."""
    groups: dict[int, list[tuple[int, int]]] = {}
    for i, tok in enumerate(tokenize_many(model.tokenizer, prompts)):
        groups.setdefault(tok.n_chunks, []).extend((i, s) for s in seeds)
    out: list[list[Detection]] = [[] for _ in prompts]
    for rows in groups.values():
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            dets = score(model, [prompts[i] for i, _ in batch], [s for _, s in batch], **kwargs)
            for (i, _), det in zip(batch, dets):
                out[i].append(det)
            progress(len(batch))
    return out


def explain_prompt(
    model: Model, prompt: str, seeds: Sequence[int], *, steps: int = 50, guidance: float = 7.5, explain_steps: int = 1
) -> Explanation:
    """Token significance (Wen et al. Sec. 4) at the first step, or averaged over the first ``explain_steps``."""
    n = len(seeds)
    tok = model.tokenize(prompt)
    cond = model.encode(tok).expand(n, -1, -1)
    empty = model.empty().expand(n, -1, -1)
    x = torch.cat([model.noise(s) for s in seeds])
    scheduler = model.scheduler(steps)
    grads = []
    for t in scheduler.timesteps[:explain_steps]:
        with torch.no_grad():
            eps_c, eps_u = _cfg(model, x, t, cond, empty)
        grads.append(token_gradients(lambda xx, cc, t=t: model.eps(xx, t, cc), x, cond, eps_u))
        with torch.no_grad():
            x = scheduler.step(eps_u + guidance * (eps_c - eps_u), t, x).prev_sample
    return explain(tok, torch.stack(grads).mean(dim=0))
