"""Training-time mitigation: drop the samples a fine-tune is memorizing, inside a diffusers-style training step.

Wen et al., ICLR 2024, Sec. 4.3 (their ``train_text_to_image.py``, see methods.md 1.8): at each training step, with
``x_t`` the noisy latents at the sampled training timesteps ``t``, compute per sample ::

    d = || f(x_t, t, e_prompt) - f(x_t, t, e_empty) ||_2

(a plain L2 over the flattened latent, not squared, not divided by its size, in float32) and keep in the loss only the
samples with ``d < threshold``; when none is kept, the step is skipped (no backward, optimizer or scheduler step).
The conditional prediction is the one the step already computed (pass it as ``model_pred``), so the cost is one
extra no-grad UNet forward per sample, on the empty prompt.

``f`` is the network output as it is (epsilon, ``v`` or sample), as in Wen's code. Both predictions are taken at the
same ``x_t`` and ``t``, so for a v-prediction model ``eps_c - eps_u = sqrt(abar_t) (v_c - v_u)``
(:func:`memguard.algebra.eps_from_v`: the ``x_t`` terms cancel): the two spaces differ by a per-timestep factor,
which a threshold calibrated per timestep bucket on the same model (:class:`TimestepThreshold`) absorbs.

``d`` at a random training timestep is not on the scale of the first-step detection score (which is taken at
``t = T`` on pure noise), and it changes with ``t``. Wen's README uses a constant 2 for SD1.x; memguard calibrates a
threshold per timestep bucket from the base model on the data to be trained on, before training: at that point
nothing of the new data is memorized, so the ``q``-quantile of ``d`` in each bucket bounds what an unmemorized
sample looks like (:func:`training_magnitudes` + :meth:`TimestepThreshold.calibrate`).

Wiring it into a diffusers training loop (``examples/text_to_image/train_text_to_image.py``)::

    from memguard.training import TimestepThreshold, memorization_filter
    threshold = TimestepThreshold.load("threshold.json")  # or TimestepThreshold.constant(2.0)
    empty = text_encoder(tokenizer([""], padding="max_length", max_length=77, return_tensors="pt").input_ids)[0]
    # ... inside the step, after model_pred = unet(noisy_latents, timesteps, encoder_hidden_states).sample
    kept = memorization_filter(unet, noisy_latents, timesteps, encoder_hidden_states, empty, threshold,
                               model_pred=model_pred)
    accelerator.log(kept.stats(), step=global_step)
    if kept.skip:
        continue  # every sample looks memorized: no backward, optimizer or lr-scheduler step
    loss = F.mse_loss(model_pred[kept.keep].float(), target[kept.keep].float())

On SDXL (``train_text_to_image_sdxl.py``) the UNet calls take ``added_cond_kwargs`` (pooled text, size/crop numbers)
and the reference is the one detection uses on SDXL (:mod:`memguard.model`): zeros for the context and the pooled
vector, each sample's own size/crop numbers, which :func:`zero_reference` builds::

    cond_kwargs = {"added_cond_kwargs": {"text_embeds": pooled, "time_ids": add_time_ids}}
    empty, empty_kwargs = zero_reference(encoder_hidden_states, cond_kwargs)
    kept = memorization_filter(unet, noisy_latents, timesteps, encoder_hidden_states, empty, threshold,
                               model_pred=model_pred, cond_kwargs=cond_kwargs, empty_kwargs=empty_kwargs)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor

from .detect import size_factor, wen_norm

FORMAT = "memguard-training-threshold"


def _output(result) -> Tensor:
    """The prediction tensor of a UNet call: diffusers returns an object with ``.sample``, others a tensor."""
    return result.sample if hasattr(result, "sample") else result


@dataclass(frozen=True)
class TimestepThreshold:
    """A threshold on ``d`` per equal-width timestep bucket: bucket ``k`` covers ``[k T / B, (k + 1) T / B)``."""

    values: tuple[float, ...]
    num_train_timesteps: int = 1000
    quantile: float | None = None

    @classmethod
    def constant(cls, value: float, num_train_timesteps: int = 1000) -> TimestepThreshold:
        """One threshold for every timestep (Wen's ``--hard_threshold``, 2 for SD1.x in their README)."""
        return cls((float(value),), num_train_timesteps)

    @classmethod
    def calibrate(
        cls,
        d: Tensor,
        timesteps: Tensor,
        quantile: float = 0.99,
        buckets: int = 10,
        num_train_timesteps: int = 1000,
        min_count: int = 20,
    ) -> TimestepThreshold:
        """The ``quantile`` of benign ``d`` in each timestep bucket; a bucket with fewer than ``min_count`` samples
        takes the quantile over all samples."""
        d, timesteps = d.detach().float().cpu(), timesteps.detach().long().cpu()
        if d.numel() == 0 or d.shape != timesteps.shape:
            raise ValueError("calibration needs as many timesteps as magnitudes, at least one")
        overall = torch.quantile(d, quantile).item()
        index = (timesteps * buckets // num_train_timesteps).clamp(0, buckets - 1)
        values = []
        for k in range(buckets):
            inside = d[index == k]
            values.append(torch.quantile(inside, quantile).item() if inside.numel() >= min_count else overall)
        return cls(tuple(values), num_train_timesteps, quantile)

    def __call__(self, timesteps: Tensor) -> Tensor:
        """The threshold of each sample's timestep, float32 on the timesteps' device."""
        table = torch.tensor(self.values, dtype=torch.float32, device=timesteps.device)
        index = timesteps.long() * len(self.values) // self.num_train_timesteps
        return table[index.clamp(0, len(self.values) - 1)]

    def to_dict(self) -> dict:
        return {"format": FORMAT, **asdict(self), "values": list(self.values)}

    @classmethod
    def from_dict(cls, data: Mapping) -> TimestepThreshold:
        if data.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} file")
        return cls(tuple(float(v) for v in data["values"]), int(data["num_train_timesteps"]), data.get("quantile"))

    def save(self, path: Path | str) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path | str) -> TimestepThreshold:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


@dataclass(frozen=True)
class FilterResult:
    """What :func:`memorization_filter` decided for one batch; no tensor here requires grad."""

    keep: Tensor
    """``(B,)`` bool: ``d < threshold`` (a NaN ``d`` is dropped)."""
    d: Tensor
    """``(B,)`` float32 magnitudes at the sampled training timesteps."""
    threshold: Tensor
    """``(B,)`` float32 threshold each sample was compared with."""

    @property
    def kept(self) -> int:
        return int(self.keep.sum())

    @property
    def dropped(self) -> int:
        return int(self.keep.numel() - self.kept)

    @property
    def skip(self) -> bool:
        """Every sample was dropped: the caller skips backward, optimizer and lr-scheduler steps."""
        return self.kept == 0

    def stats(self, prefix: str = "memguard/") -> dict[str, float]:
        """Scalars to log: kept/dropped counts, drop rate, skipped step, mean and max ``d``."""
        d = self.d.nan_to_num(nan=float("inf"))
        return {
            f"{prefix}kept": float(self.kept),
            f"{prefix}dropped": float(self.dropped),
            f"{prefix}drop_rate": self.dropped / max(1, self.keep.numel()),
            f"{prefix}skipped_step": float(self.skip),
            f"{prefix}d_mean": self.d.mean().item(),
            f"{prefix}d_max": d.max().item(),
        }


def zero_reference(text_embeddings: Tensor, cond_kwargs: Mapping) -> tuple[Tensor, dict]:
    """SDXL's empty reference for :func:`magnitudes`: a zero context ``(1, L, C)`` and ``empty_kwargs`` with a zero
    pooled vector and the samples' own ``time_ids`` (A1111's ``force_zero_embeddings`` for an empty prompt; SDXL's
    captions were dropped to zeros in training; docs/benchmarks.md, SDXL miniature, measures the choice)."""
    added = dict(cond_kwargs["added_cond_kwargs"])
    added["text_embeds"] = torch.zeros_like(added["text_embeds"])
    return torch.zeros_like(text_embeddings[:1]), {**cond_kwargs, "added_cond_kwargs": added}


@torch.no_grad()
def magnitudes(
    unet,
    noisy_latents: Tensor,
    timesteps: Tensor,
    text_embeddings: Tensor,
    empty_embedding: Tensor,
    *,
    model_pred: Tensor | None = None,
    cond_kwargs: Mapping | None = None,
    empty_kwargs: Mapping | None = None,
    native: tuple[int, int] | None = None,
) -> Tensor:
    """``d`` per sample (float32, no grad): the conditional prediction (``model_pred`` if given, else one no-grad
    pass) against a no-grad pass on the empty prompt's embedding (``(1, L, C)`` or ``(B, L, C)``). With ``native``
    (the model's native latent ``(h0, w0)``), ``d`` at the native size (``detect.size_normalized``): one threshold
    for every training resolution (aspect-ratio buckets).

    ``cond_kwargs`` / ``empty_kwargs`` are extra keyword arguments of the two UNet calls (SDXL's
    ``added_cond_kwargs``, with the empty prompt's pooled embedding for the empty pass). The UNet's mode
    (train/eval) and ``requires_grad`` flags are left as they are.
    """
    batch = noisy_latents.shape[0]
    if model_pred is None:
        cond = unet(noisy_latents, timesteps, encoder_hidden_states=text_embeddings, **(cond_kwargs or {}))
        model_pred = _output(cond)
    empty = empty_embedding.to(device=text_embeddings.device, dtype=text_embeddings.dtype)
    empty = empty.expand(batch, *empty.shape[1:]) if empty.shape[0] == 1 else empty
    uncond = _output(unet(noisy_latents, timesteps, encoder_hidden_states=empty, **(empty_kwargs or {})))
    d = wen_norm(model_pred.detach().float() - uncond.float())
    return d * size_factor(noisy_latents.shape, native) if native is not None else d


def memorization_filter(
    unet,
    noisy_latents: Tensor,
    timesteps: Tensor,
    text_embeddings: Tensor,
    empty_embedding: Tensor,
    threshold: float | TimestepThreshold,
    *,
    model_pred: Tensor | None = None,
    cond_kwargs: Mapping | None = None,
    empty_kwargs: Mapping | None = None,
    native: tuple[int, int] | None = None,
) -> FilterResult:
    """Wen et al.'s training filter: keep the samples with ``d < threshold`` at their sampled timestep (see the
    module docstring for the loop). Adds no parameter gradient and works under ``torch.autocast``."""
    d = magnitudes(
        unet,
        noisy_latents,
        timesteps,
        text_embeddings,
        empty_embedding,
        model_pred=model_pred,
        cond_kwargs=cond_kwargs,
        empty_kwargs=empty_kwargs,
        native=native,
    )
    rule = threshold if isinstance(threshold, TimestepThreshold) else TimestepThreshold.constant(threshold)
    limit = rule(timesteps.reshape(-1).expand(d.shape[0]).to(d.device))
    return FilterResult(keep=d < limit, d=d, threshold=limit)


@dataclass
class FlaggedSamples:
    """Wen's filter per training sample instead of per draw: a sample (an image-caption pair, keyed by anything
    hashable: its dataset index, its caption, its image's perceptual hash) that the filter has dropped ``strikes``
    times is left out for the rest of training, at every timestep.

    memguard's extension of Sec. 4.3: memorization is a property of the sample, and ``d`` shows it mostly at the noisy
    timesteps, where the caption alone must decide the picture; at low ``t`` the noisy image already shows it, the two
    predictions agree, and the same sample passes the per-draw test and goes on teaching the copy
    (``bench/finetune.py`` measures both on the miniature). Keying by caption or image hash drops every copy of a
    duplicated image at once. ``strikes`` (default 2) spares samples that cross the threshold once by chance.

    Use: ``kept = flagged.update(keys, memorization_filter(...))`` then the loop as before (``kept.skip`` etc.).
    """

    strikes: int = 2
    counts: dict = field(default_factory=dict)

    @property
    def excluded(self) -> set:
        """The keys left out for the rest of training."""
        return {key for key, n in self.counts.items() if n >= self.strikes}

    def update(self, keys: list, result: FilterResult) -> FilterResult:
        """Count the samples ``result`` dropped, then drop every sample of the batch whose key is excluded."""
        if len(keys) != result.keep.numel():
            raise ValueError(f"{len(keys)} keys for a batch of {result.keep.numel()}")
        for key, kept in zip(keys, result.keep.tolist()):
            if not kept:
                self.counts[key] = self.counts.get(key, 0) + 1
        excluded = self.excluded
        keep = result.keep & torch.tensor([key not in excluded for key in keys], device=result.keep.device)
        return replace(result, keep=keep)


@torch.no_grad()
def training_magnitudes(
    unet,
    latents: Tensor,
    text_embeddings: Tensor,
    empty_embedding: Tensor,
    noise_scheduler,
    generator: torch.Generator | None = None,
    *,
    cond_kwargs: Mapping | None = None,
    empty_kwargs: Mapping | None = None,
) -> tuple[Tensor, Tensor]:
    """``(d, t)`` for clean ``latents`` noised as a training step would (uniform ``t``, Gaussian noise, the
    scheduler's ``add_noise``): feed many batches of the data to be trained on, through the base model, to
    :meth:`TimestepThreshold.calibrate`. ``cond_kwargs``/``empty_kwargs`` as for :func:`magnitudes` (SDXL)."""
    total = noise_scheduler.config.num_train_timesteps
    t = torch.randint(0, total, (latents.shape[0],), generator=generator).to(latents.device)
    noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(latents.device, latents.dtype)
    noisy = noise_scheduler.add_noise(latents, noise, t)
    d = magnitudes(unet, noisy, t, text_embeddings, empty_embedding, cond_kwargs=cond_kwargs, empty_kwargs=empty_kwargs)
    return d, t
