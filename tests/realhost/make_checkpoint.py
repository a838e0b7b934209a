"""Write a random-weight checkpoint in the ldm/sgm layout (run with a WebUI's Python; see check.py).

``python make_checkpoint.py --ldm REPO --config v1-inference.yaml --out model.safetensors``  (SD1.5, the default)
``python make_checkpoint.py --arch sdxl --sgm REPO --config sd_xl_base.yaml --out model.safetensors``

SD1.5: the model is instantiated from the host's own config with the ldm package of Stability-AI's
``stablediffusion`` repository (A1111's ``repositories/stable-diffusion-stability-ai``), on the CPU, from a fixed seed.
The text encoder is built from its configuration (nothing is downloaded). ldm zero-initialises the UNet's output
layers (``zero_module``); with them at zero the prompt cannot reach the noise prediction and every memguard score is
0, so every all-zero weight of the UNet is drawn again with its layer's default initialisation. Saved as fp16
safetensors.

SDXL (``--arch sdxl``): the host's ``sd_xl_base.yaml`` is instantiated with the sgm package of Stability-AI's
``generative-models`` (A1111's ``repositories/generative-models``) with every parameter on the meta device (buffers
stay real), so the key set and shapes are exactly the host's (``conditioner.embedders.1.model.ln_final.weight`` is
what A1111's ``sd_models_config`` detects SDXL by). OpenCLIP's ViT-bigG-14 is built without pretrained weights, the
CLIP ViT-L text tower from its configuration. The file is then written module by module: each module's parameters are
materialised on the CPU in fp32, drawn with the layer's default initialisation (``reset_parameters``; no layer stays
zero), converted to fp16, written into the safetensors file (header first, from the meta shapes) and freed, so the
writer holds one module at a time (6.5 GiB on disk, about 0.7 GiB of memory).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# CLIP ViT-L/14's text tower (the configuration of openai/clip-vit-large-patch14's text model).
CLIP_L_TEXT = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=("sd15", "sdxl"), default="sd15")
    parser.add_argument("--ldm", help="sd15: the stablediffusion repository (holds the ldm package)")
    parser.add_argument("--sgm", help="sdxl: the generative-models repository (holds the sgm package)")
    parser.add_argument("--config", required=True, help="the host's configs/v1-inference.yaml or sd_xl_base.yaml")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.arch == "sdxl":
        if not args.sgm:
            parser.error("--arch sdxl needs --sgm")
        return make_sdxl(args)
    if not args.ldm:
        parser.error("--arch sd15 needs --ldm")
    return make_sd15(args)


def offline_clip_l(encoders) -> None:
    """Point a host's ``encoders`` module at a CLIP-L text model built from its configuration (random weights) and a
    placeholder tokenizer, instead of the Hugging Face download: the checkpoint holds no tokenizer, the host loads
    its own."""
    import transformers

    class Tokenizer:
        @classmethod
        def from_pretrained(cls, *_args, **_kwargs):
            return cls()

    class TextModel:
        @staticmethod
        def from_pretrained(*_args, **_kwargs):
            return transformers.CLIPTextModel(transformers.CLIPTextConfig(**CLIP_L_TEXT))

    encoders.CLIPTokenizer = Tokenizer
    encoders.CLIPTextModel = TextModel


def make_sd15(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(Path(args.ldm).resolve()))
    import ldm.modules.encoders.modules as encoders
    import torch
    from ldm.util import instantiate_from_config
    from omegaconf import OmegaConf

    offline_clip_l(encoders)

    torch.manual_seed(args.seed)
    config = OmegaConf.load(args.config)
    config.model.params.cond_stage_config.params = {"device": "cpu"}
    model = instantiate_from_config(config.model)
    model.eval()

    redrawn = 0
    with torch.no_grad():
        for module in model.model.diffusion_model.modules():
            weight = getattr(module, "weight", None)
            resettable = isinstance(weight, torch.nn.Parameter) and hasattr(module, "reset_parameters")
            if resettable and not bool(weight.detach().abs().sum()):
                module.reset_parameters()
                redrawn += 1
    if not redrawn:
        print("warning: no zero-initialised UNet layer found", file=sys.stderr)

    from safetensors.torch import save_file

    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".part")
    save_file(state, str(tmp))
    tmp.replace(out)
    print(f"wrote {out}: {len(state)} tensors, {redrawn} zero-initialised UNet layers redrawn")
    return 0


# --- SDXL ----------------------------------------------------------------------------------------------------------
def _params_on_meta():
    """While active, every parameter a module registers is moved to the meta device (no memory, no values); buffers
    stay real (the CLIP position ids, the denoiser's sigmas)."""
    import contextlib

    import torch

    @contextlib.contextmanager
    def active():
        original = torch.nn.Module.register_parameter

        def register(module, name, param):
            original(module, name, param)
            if param is not None and not param.is_meta:
                module._parameters[name] = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

        torch.nn.Module.register_parameter = register
        try:
            yield
        finally:
            torch.nn.Module.register_parameter = original

    return active()


def _draw(module, names: list[str], generator_seed: int) -> dict:
    """Materialise ``module``'s own parameters ``names`` on the CPU in fp32 and draw them: the layer's
    ``reset_parameters`` (``_reset_parameters`` for attention) where it has one, else by name (OpenCLIP's bare
    parameters: embeddings and projections N(0, 0.02), the logit scale log(1/0.07), other 1-D ones zero)."""
    import math

    import torch

    torch.manual_seed(generator_seed)
    for name in names:
        meta = module._parameters[name]
        module._parameters[name] = torch.nn.Parameter(torch.empty(meta.shape, dtype=torch.float32), requires_grad=False)
    reset = getattr(module, "reset_parameters", None) or getattr(module, "_reset_parameters", None)
    with torch.no_grad():
        if reset is not None:
            reset()
        else:
            for name in names:
                tensor = module._parameters[name]
                if name == "logit_scale":
                    tensor.fill_(math.log(1 / 0.07))
                elif tensor.dim() <= 1:
                    tensor.zero_()
                else:
                    tensor.normal_(0.0, 0.02)
    return {name: module._parameters[name] for name in names}


def _release(module, names: list[str]) -> None:
    import torch

    for name in names:
        tensor = module._parameters[name]
        module._parameters[name] = torch.nn.Parameter(tensor.to("meta"), requires_grad=False)


def _malloc_returns_large_blocks() -> None:
    """glibc: serve every allocation of 1 MiB or more by ``mmap`` and give it back on ``free`` (a fixed threshold;
    the default one rises after frees, and the writer's freed tensors then stayed resident)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name:
        libc = ctypes.CDLL(name)
        if hasattr(libc, "mallopt"):
            libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD


def make_sdxl(args: argparse.Namespace) -> int:
    import json
    import struct

    _malloc_returns_large_blocks()

    sys.path.insert(0, str(Path(args.sgm).resolve()))
    import open_clip
    import sgm.modules.encoders.modules as encoders
    import torch
    from omegaconf import OmegaConf
    from sgm.util import instantiate_from_config

    create = open_clip.create_model_and_transforms

    def create_without_pretrained(*a, **kw):  # ViT-bigG-14 from its config, on meta (open_clip moves it to `device`)
        kw.update(pretrained=None, device="meta")
        return create(*a, **kw)

    offline_clip_l(encoders)
    encoders.open_clip.create_model_and_transforms = create_without_pretrained

    config = OmegaConf.load(args.config)
    for emb in config.model.params.conditioner_config.params.emb_models:
        if emb.target.endswith(("FrozenCLIPEmbedder", "FrozenOpenCLIPEmbedder2")):
            emb.params["device"] = "cpu"
    with _params_on_meta():
        model = instantiate_from_config(config.model)
    model.eval()

    state = model.state_dict(keep_vars=True)
    bad = [k for k, v in state.items() if not v.is_meta and isinstance(v, torch.nn.Parameter)]
    if bad:
        print(f"error: parameters not on meta: {bad[:5]}", file=sys.stderr)
        return 1
    # the owner of each key: parameters are drawn per module (all of a module's at once), buffers copied
    owners: dict[str, tuple[str, str]] = {}
    for key in state:
        prefix, _, name = key.rpartition(".")
        owners[key] = (prefix, name)
    header: dict = {}
    offset = 0
    for key, value in state.items():
        size = value.numel() * 2
        header[key] = {"dtype": "F16", "shape": list(value.shape), "data_offsets": [offset, offset + size]}
        offset += size
    header["__metadata__"] = {"format": "pt", "memguard": "random-weight SDXL (tests/realhost/make_checkpoint.py)"}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".part")
    params = sum(v.numel() for v in state.values())
    drawn: dict[str, dict] = {}
    written = 0
    with tmp.open("wb") as handle:
        handle.write(struct.pack("<Q", len(blob)))
        handle.write(blob)
        for index, (key, value) in enumerate(state.items()):
            prefix, name = owners[key]
            module = model.get_submodule(prefix) if prefix else model
            if isinstance(value, torch.nn.Parameter):
                if prefix not in drawn:
                    for done in list(drawn):  # one module materialised at a time
                        _release(model.get_submodule(done) if done else model, list(drawn.pop(done)))
                    names = [n for n, p in module._parameters.items() if p is not None]
                    drawn[prefix] = _draw(module, names, args.seed * 1_000_003 + index)
                tensor = drawn[prefix][name].detach()
            else:
                tensor = value.detach()
            data = memoryview(tensor.to(torch.float16).contiguous().numpy()).cast("B")
            if data.nbytes != header[key]["data_offsets"][1] - header[key]["data_offsets"][0]:
                print(f"error: {key}: {data.nbytes} bytes, header says otherwise", file=sys.stderr)
                return 1
            handle.write(data)
            del data, tensor
            written += 1
    tmp.replace(out)
    print(
        f"wrote {out}: {written} tensors, {params / 1e9:.2f}B parameters "
        f"({out.stat().st_size / 2**30:.2f} GiB), every UNet and text-encoder weight drawn from its default"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
