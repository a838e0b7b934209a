"""A diffusers-format model directory as memguard uses it: the UNet, the CLIP text encoder and tokenizer, the
scheduler configuration, and the VAE for latent models (without ``vae/`` the model samples pixels). Nothing is
downloaded.

SDXL layouts (``StableDiffusionXLPipeline.save_pretrained``: ``text_encoder_2/``, ``tokenizer_2/``, a UNet with
``addition_embed_type="text_time"``) are recognized from the UNet's configuration. Their conditioning, reimplemented
from diffusers' ``StableDiffusionXLPipeline.encode_prompt`` and A1111's ``sd_hijack_clip``/``sd_models_xl``:

* the cross-attention context is, per 77-token chunk, the channel concatenation of both encoders' penultimate hidden
  states (``hidden_states[-2]``, no final layer norm), the chunks concatenated on the sequence axis (A1111's
  long-prompt scheme); ``tokenizer_2`` frames the same tokens with its own padding (OpenCLIP's ``"!"``, id 0), so
  the positions of both streams coincide;
* the *added conditioning* (:data:`Added`, per row): ``text_embeds``, ``text_encoder_2``'s projected pooled output
  of the **first** chunk (A1111 returns ``zs[0].pooled``; diffusers truncates to one chunk), and ``time_ids``:
  original size, crop top-left ``(0, 0)``, target size, in pixels, from the latent size (height first);
* the empty reference (``empty``, ``empty_added``) is **zeros**, context and pooled vector, with the generation's
  size/crop numbers: what A1111 feeds for an empty negative prompt (``force_zero_embeddings``), what diffusers feeds
  by default (``force_zeros_for_empty_prompt``) and how SDXL's captions were dropped in training (docs/benchmarks.md,
  SDXL miniature, measures it against the encoding of ``""``).
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from .added import Added, fit_added
from .algebra import eps_from_v
from .mitigate.embedding import unet_blocks
from .tokens import Tokenized, load_tokenizer, tokenize

CALIBRATION_FILE = "memguard_calibration.json"
POOLED_CACHE = 1024  # pooled vectors kept per model (keyed by the first chunk's ids)


class ModelError(ValueError):
    """The model directory is missing a part or has a wrong one; the message names it."""


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise ModelError(f"{path} is missing: a diffusers model directory needs {what}")
    return path


def _weights_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*") if p.suffix in (".safetensors", ".bin"))


def _text_encoder(folder: Path, dtype: torch.dtype, projection: bool = False) -> torch.nn.Module:
    """``CLIPTextModel`` (``CLIPTextModelWithProjection`` with ``projection``, SDXL's second encoder) from ``folder``
    under transformers 4 (the WebUIs) and 5 alike: 5.x writes ``CLIPTextModel``'s weights without the
    ``text_model.`` prefix that 4.x expects (4.x would leave them random with only a warning), and the dtype keyword
    differs (``torch_dtype`` on 4.x, ``dtype`` on 5.x), so the model is cast after loading."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    kind: Any = CLIPTextModelWithProjection if projection else CLIPTextModel
    files = [f for f in _weights_files(folder) if f.suffix == ".safetensors"]
    if not files:
        loaded: Any = kind.from_pretrained(folder, local_files_only=True)
        return loaded.to(dtype)
    from safetensors.torch import load_file

    model: Any = kind(CLIPTextConfig.from_pretrained(folder, local_files_only=True))
    state = {k: v for f in files for k, v in load_file(str(f)).items()}
    if not state.keys() & model.state_dict().keys():  # written by the other major version of transformers
        prefix = "text_model."

        def swapped(k: str) -> str:
            if k.startswith("text_projection"):
                return k
            return k[len(prefix) :] if k.startswith(prefix) else prefix + k

        state = {swapped(k): v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    unexpected = [k for k in unexpected if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(f"{folder}: weights that do not fit {kind.__name__} (missing {missing[:3]}, {unexpected[:3]})")
    return model.to(dtype)


@dataclass
class Model:
    """The parts of a text-to-image model memguard needs, loaded from a local diffusers directory (SD1/SD2, or SDXL
    with ``text_encoder_2`` and ``tokenizer_2``)."""

    path: Path
    unet: Any  # diffusers UNet2DConditionModel (untyped)
    text_encoder: Any  # transformers CLIPTextModel
    tokenizer: Any
    scheduler_config: dict
    vae: Any = None  # diffusers AutoencoderKL, or None for a pixel-space model
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    text_encoder_2: Any = None  # SDXL: transformers CLIPTextModelWithProjection
    tokenizer_2: Any = None
    reference: str = "zeros"  # SDXL's empty reference: "zeros" (A1111, diffusers, SDXL's training) or "encoded" ("")
    _empty: torch.Tensor | None = None
    _hash: str | None = None
    _pooled: dict = field(default_factory=dict)
    _training_schedule: Any = None  # a DDIMScheduler of ``_schedule_of``, a copy of the configuration it was built from
    _schedule_of: dict | None = None

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
        unet_config = json.loads((path / "unet" / "config.json").read_text(encoding="utf-8"))
        xl = unet_config.get("addition_embed_type") == "text_time"
        if xl:
            for part, what in (("text_encoder_2", "SDXL's second text encoder"), ("tokenizer_2", "its tokenizer")):
                _require(path / part, f"{part}/ ({what}): its UNet takes SDXL's pooled text and size conditioning")
            if not _weights_files(path / "text_encoder_2"):
                raise ModelError(f"{path / 'text_encoder_2'} has no weights (.safetensors or .bin)")
        try:
            unet = UNet2DConditionModel.from_pretrained(
                path / "unet", torch_dtype=dtype, local_files_only=True, low_cpu_mem_usage=False
            )
            text_encoder = _text_encoder(path / "text_encoder", dtype)
            tokenizer = load_tokenizer(path / "tokenizer")
            text_encoder_2 = _text_encoder(path / "text_encoder_2", dtype, projection=True) if xl else None
            tokenizer_2 = load_tokenizer(path / "tokenizer_2") if xl else None
            vae = None
            if (path / "vae").is_dir():
                vae = AutoencoderKL.from_pretrained(
                    path / "vae", torch_dtype=dtype, local_files_only=True, low_cpu_mem_usage=False
                )
        except (OSError, ValueError, KeyError) as err:
            raise ModelError(f"cannot load {path}: {err}") from err
        if tokenizer_2 is not None:
            _same_tokens(tokenizer, tokenizer_2, path)
        config = json.loads((path / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))
        model = cls(path, unet.eval(), text_encoder.eval(), tokenizer, config, vae.eval() if vae else None)
        text_encoder_2 = text_encoder_2.eval() if text_encoder_2 is not None else None
        model.text_encoder_2, model.tokenizer_2 = text_encoder_2, tokenizer_2
        model.device, model.dtype = torch.device(device), dtype
        for module in (model.unet, model.text_encoder, model.text_encoder_2, model.vae):
            if module is not None:
                module.to(model.device).requires_grad_(False)
        return model

    @property
    def is_xl(self) -> bool:
        """Whether the UNet takes SDXL's added conditioning (pooled text, size/crop numbers)."""
        return self.text_encoder_2 is not None

    @property
    def prediction_type(self) -> str:
        return self.scheduler_config.get("prediction_type", "epsilon")

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        size = self.unet.config.sample_size
        return (self.unet.config.in_channels, size, size)

    @property
    def model_hash(self) -> str:
        """Short sha256 (10 hex digits, as the WebUI shows) over the UNet's and text encoders' weight files."""
        if self._hash is None:
            digest = hashlib.sha256()
            for part in ("unet", "text_encoder", "text_encoder_2") if self.is_xl else ("unet", "text_encoder"):
                for file in _weights_files(self.path / part):
                    with file.open("rb") as handle:
                        for block in iter(partial(handle.read, 1 << 20), b""):
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
        """``(1, 77 * n_chunks, C)``: each 77-token chunk encoded on its own, then concatenated (the WebUI's scheme);
        SDXL: both encoders' penultimate states side by side (``C = C_1 + C_2``), the pooled vector kept for
        :meth:`added`. A sequence of ``n`` prompts of equal chunk count gives ``(n, 77 * n_chunks, C)`` in one
        text-encoder call."""
        many = [tokenized] if isinstance(tokenized, Tokenized) else list(tokenized)
        if len({t.n_chunks for t in many}) != 1:
            raise ValueError("prompts encoded together must have the same number of 75-token chunks")
        ids = torch.tensor([row for t in many for row in t.ids], device=self.device)
        if not self.is_xl:
            hidden = self.text_encoder(input_ids=ids).last_hidden_state
            return hidden.reshape(len(many), -1, hidden.shape[-1]).to(self.dtype)
        first = self.text_encoder(input_ids=ids, output_hidden_states=True)
        second = self.text_encoder_2(input_ids=self._ids_2(ids), output_hidden_states=True)
        hidden = torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1)
        if len(self._pooled) + len(many) > POOLED_CACHE:
            self._pooled.clear()
        chunks = many[0].n_chunks
        for k, tok in enumerate(many):  # the pooled vector of each prompt's first chunk
            self._pooled[tuple(tok.ids[0])] = second.text_embeds[k * chunks : k * chunks + 1].to(self.dtype)
        return hidden.reshape(len(many), -1, hidden.shape[-1]).to(self.dtype)

    def _ids_2(self, ids: torch.Tensor) -> torch.Tensor:
        """``tokenizer_2``'s framing of the same chunks: its own padding after each chunk's first EOS."""
        eos = (ids == self.tokenizer.eos_token_id).int().argmax(dim=1, keepdim=True)
        after = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0) > eos
        return ids.masked_fill(after, int(self.tokenizer_2.pad_token_id))

    def pooled(self, tokenized: Tokenized) -> torch.Tensor:
        """SDXL's pooled vector ``(1, P)``: ``text_encoder_2``'s projected output of the prompt's first chunk."""
        key = tuple(tokenized.ids[0])
        if key not in self._pooled:
            self.encode(Tokenized(tokenized.prompt, tokenized.ids[:1], []))
        return self._pooled[key]

    def time_ids(self, n: int) -> torch.Tensor:
        """SDXL's size/crop numbers per row, ``(n, 6)``: original size, crop top-left ``(0, 0)``, target size, in
        pixels (height, width), for this model's latent size."""
        _, h, w = self.latent_shape
        scale = 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else 1
        row = [h * scale, w * scale, 0, 0, h * scale, w * scale]
        return torch.tensor([row], dtype=self.dtype, device=self.device).expand(n, -1)

    def added(self, tokenized: Sequence[Tokenized]) -> Added:
        """The added conditioning of one row per prompt (None for SD1/SD2)."""
        if not self.is_xl:
            return None
        pooled = torch.cat([self.pooled(tok) for tok in tokenized])
        return {"text_embeds": pooled, "time_ids": self.time_ids(len(tokenized))}

    def empty(self) -> torch.Tensor:
        """``e_empty``, the reference of Wen's ``d`` (and the uncond of an empty negative prompt), cached: the text
        encoder's embedding of ``""`` (Wen et al.); SDXL: zeros (see the module docstring), or the encoding of
        ``""`` with ``reference="encoded"``."""
        if self._empty is None:
            encoded = self.encode(self.tokenize(""))
            zeros = self.is_xl and self.reference == "zeros"
            self._empty = torch.zeros_like(encoded) if zeros else encoded
        return self._empty

    def empty_added(self, n: int = 1) -> Added:
        """The empty reference's added conditioning for ``n`` rows: its pooled vector (zeros, or that of ``""``) and
        the generation's size/crop numbers; None for SD1/SD2."""
        if not self.is_xl:
            return None
        pooled = self.pooled(self.tokenize(""))
        pooled = torch.zeros_like(pooled) if self.reference == "zeros" else pooled
        return {"text_embeds": pooled.expand(n, -1), "time_ids": self.time_ids(n)}

    # --- network ------------------------------------------------------------------------------------------------
    def scheduler(self, steps: int):
        from diffusers import DDIMScheduler

        scheduler = DDIMScheduler.from_config({**self.scheduler_config, "prediction_type": "epsilon"})
        scheduler.set_timesteps(steps, device=self.device)
        return scheduler

    def training_schedule(self) -> Any:
        """A ``DDIMScheduler`` of ``scheduler_config`` for what does not depend on the sampling steps
        (``alphas_cumprod``, ``init_noise_sigma``): built once, and again only after the configuration changed."""
        if self._schedule_of != self.scheduler_config:
            from diffusers import DDIMScheduler

            self._training_schedule = DDIMScheduler.from_config(self.scheduler_config)
            self._schedule_of = copy.deepcopy(self.scheduler_config)
        return self._training_schedule

    def abar(self, t: int) -> torch.Tensor:
        return self.training_schedule().alphas_cumprod[int(t)].to(self.device)

    def eps(self, x: torch.Tensor, t: int | torch.Tensor, cond: torch.Tensor, added: Added = None) -> torch.Tensor:
        """The network's prediction at timestep ``t`` converted to ``eps`` (eps-, v- and sample-parameterized);
        ``added``: SDXL's added conditioning of the rows (required there)."""
        kwargs: dict[str, Any] = {}
        if self.is_xl:
            if added is None:
                raise ModelError("an SDXL UNet needs the rows' added conditioning (pooled text and size numbers)")
            rows = fit_added(added, x.shape[0]) or {}
            kwargs["added_cond_kwargs"] = {k: v.to(self.dtype) for k, v in rows.items()}
        out = self.unet(x.to(self.dtype), t, encoder_hidden_states=cond.to(self.dtype), **kwargs).sample
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
        return unet_blocks(self.unet)

    def noise(self, seed: int) -> torch.Tensor:
        """``x_T`` of ``seed``: ``randn`` from a CPU generator times the schedule's ``init_noise_sigma``."""
        gen = torch.Generator("cpu").manual_seed(int(seed))
        x = torch.randn((1, *self.latent_shape), generator=gen, dtype=torch.float32)
        return (x * self.training_schedule().init_noise_sigma).to(self.device)

    @torch.no_grad()
    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """Samples in ``[-1, 1]`` pixel space (through the VAE for latent models)."""
        if self.vae is None:
            return x0.float().clamp(-1, 1)
        scale = getattr(self.vae.config, "scaling_factor", 0.18215)
        return self.vae.decode(x0.to(self.dtype) / scale).sample.float().clamp(-1, 1)


def _same_tokens(tokenizer: Any, tokenizer_2: Any, path: Path) -> None:
    """SDXL's two tokenizers must cut a prompt into the same ids (same BPE; only the padding differs), or the
    positions the explanation and the attention edit index would differ between the two encoders' states."""
    probe = "a photo of an astronaut, riding a horse; oil painting by Rembrandt 1642"
    ids = [
        tokenizer(probe, add_special_tokens=False)["input_ids"],
        tokenizer_2(probe, add_special_tokens=False)["input_ids"],
    ]
    specials = [(t.bos_token_id, t.eos_token_id) for t in (tokenizer, tokenizer_2)]
    if ids[0] != ids[1] or specials[0] != specials[1]:
        raise ModelError(
            f"{path}: tokenizer/ and tokenizer_2/ cut prompts differently; token positions would not align"
        )
