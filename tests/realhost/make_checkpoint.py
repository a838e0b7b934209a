"""Write a random-weight SD1.5 checkpoint in the ldm layout (run with a WebUI's Python; see check.py).

``python make_checkpoint.py --ldm REPO --config v1-inference.yaml --out model.safetensors``

The model is instantiated from the host's own config with the ldm package of Stability-AI's ``stablediffusion``
repository (A1111's ``repositories/stable-diffusion-stability-ai``), on the CPU, from a fixed seed. The text encoder
is built from its configuration (nothing is downloaded). ldm zero-initialises the UNet's output layers
(``zero_module``); with them at zero the prompt cannot reach the noise prediction and every memguard score is 0, so
every all-zero weight of the UNet is drawn again with its layer's default initialisation. Saved as fp16 safetensors.
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
    parser.add_argument("--ldm", required=True, help="the stablediffusion repository (holds the ldm package)")
    parser.add_argument("--config", required=True, help="the host's configs/v1-inference.yaml")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    sys.path.insert(0, str(Path(args.ldm).resolve()))
    import ldm.modules.encoders.modules as encoders
    import torch
    import transformers
    from ldm.util import instantiate_from_config
    from omegaconf import OmegaConf

    class _Tokenizer:  # the checkpoint holds no tokenizer; the host loads its own
        @classmethod
        def from_pretrained(cls, *_args, **_kwargs):
            return cls()

    class _TextModel:
        @staticmethod
        def from_pretrained(*_args, **_kwargs):
            return transformers.CLIPTextModel(transformers.CLIPTextConfig(**CLIP_L_TEXT))

    encoders.CLIPTokenizer = _Tokenizer
    encoders.CLIPTextModel = _TextModel

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


if __name__ == "__main__":
    sys.exit(main())
