"""Cost of each memguard part on an SD1.5-sized UNet (random weights, built from the standard config) on this machine.

Wall time: every part against plain DDIM + CFG sampling of the same image, interleaved (plain, parts..., then the
same round reversed, ...; one untimed warm-up round), the ratio taken within each round; the table gives the median
ratio over ``--repeats`` rounds with its min-max, the UNet evaluations each part adds (one evaluation = one UNet
forward over one image row; a backward counts as two) and the machine's load. Memory: one first step of plain
sampling against one embedding-optimization iteration at ``--memory-latent`` (64 = 512 px), each configuration in a
fresh process: the peak above the loaded weights and the whole-process peak (``bench/common.py``'s ``peak_memory``).

    .venv/bin/python -u bench/cost.py [--latent 8] [--steps 10] [--repeats 5] [--memory-latent 64]
    .venv/bin/python -u bench/cost.py --repeats 0              # memory only
    .venv/bin/python -u bench/cost.py --memory-latent 0        # wall time only
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    FIXED_MMAP,
    Load,
    in_subprocess,
    interleave,
    median,
    median_spread,
    peak_memory,
    print_progress,
    ratio,
    table,
)

from memguard.miniature.train import DDIM_CONFIG
from memguard.mitigate import Attention, Embedding, Guidance
from memguard.pipeline import Model, explain_prompt, sample, score
from memguard.tokens import load_tokenizer

PROMPT = "a watercolor painting of a lighthouse on a cliff at dusk"
SCHEDULER = DDIM_CONFIG  # SD1's DDIM configuration


def sd15(latent: int) -> Model:
    """SD1.5's UNet and CLIP ViT-L/14 text encoder configurations with random weights (no download)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=latent,
        in_channels=4,
        out_channels=4,
        cross_attention_dim=768,
        layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    )
    text = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
        )
    )
    model = Model(
        Path("."), unet.eval().requires_grad_(False), text.eval().requires_grad_(False), load_tokenizer(), SCHEDULER
    )
    model._hash = "sd15-random"
    return model


# Memory configurations: one first step of plain sampling, and the first step with one embedding-optimization
# iteration (forced: threshold 0, target 0) recomputing the given granularity in the backward pass.
MEMORY = {
    "plain": ("plain first step (CFG pair, no gradient)", None),
    "embedding": ("embedding optimization, 1 iteration, recompute layers (default)", "layers"),
    "embedding-nested": ("embedding optimization, 1 iteration, recompute blocks and layers in them", "nested"),
    "embedding-blocks": ("embedding optimization, 1 iteration, recompute top-level blocks", "blocks"),
    "embedding-none": ("embedding optimization, 1 iteration, no recomputation", "none"),
}
ALLOCATORS = {"fixed": FIXED_MMAP, "default": {}}


def memory(mode: str, latent: int, threads: int) -> dict:
    """Subprocess body: the peak resident set of one run of ``mode`` above the loaded model, and in all."""
    torch.set_num_threads(threads)
    model = sd15(latent)
    model.empty()  # the cached empty-prompt embedding is part of the loaded state
    recompute = MEMORY[mode][1]
    if recompute is None:
        run = lambda: sample(model, PROMPT, [0], steps=1, watch=False)  # noqa: E731
    else:
        strategy = Embedding(max_iters=1, target=0.0, recompute=recompute)
        run = lambda: sample(model, PROMPT, [0], steps=1, threshold=0.0, strategy=strategy)  # noqa: E731
    return peak_memory(run)


def timing(args) -> None:
    torch.set_num_threads(args.threads)
    model = sd15(args.latent)
    s = args.steps
    reports = {}

    def mitigated(name, strategy):
        def run():
            reports[name] = sample(model, PROMPT, [0], steps=s, threshold=0.0, strategy=strategy)[0].mitigation

        return run

    parts = {
        "plain DDIM + CFG sampling": (lambda: sample(model, PROMPT, [0], steps=s, watch=False), 2 * s, ""),
        "watch (detect at step 1, empty negative)": (
            lambda: sample(model, PROMPT, [0], steps=s, threshold=1e9),
            2 * s,
            "reads the CFG pair",
        ),
        "watch with a negative prompt": (
            lambda: sample(model, PROMPT, [0], steps=s, threshold=1e9, negative="blurry"),
            2 * s + 1,
            "+1 empty-prompt row at step 1",
        ),
        "Asthana score (norm + angle), step 1 only": (
            lambda: score(model, PROMPT, [0], steps=s, method="asthana"),
            4,
            "+1 CFG pass at low t",
        ),
        "token significance (step 1)": (
            lambda: explain_prompt(model, PROMPT, [0], steps=s),
            2 + 3,
            "1 CFG pass + 1 forward/backward",
        ),
        "mitigate: embedding (10 iterations, forced)": (
            mitigated("embedding", Embedding(max_iters=10, target=0.0)),
            None,
            "",
        ),
        "mitigate: embedding-blocks (10 iterations, recompute blocks only)": (
            mitigated("embedding-blocks", Embedding(max_iters=10, target=0.0, recompute="blocks")),
            None,
            "",
        ),
        "mitigate: attention": (mitigated("attention", Attention()), None, ""),
        "mitigate: guidance": (mitigated("guidance", Guidance()), None, ""),
    }
    base = next(iter(parts))

    with Load() as load:
        times = interleave({name: fn for name, (fn, _, _) in parts.items()}, args.repeats, log=print_progress)
    rows = []
    for name, (_, planned, described) in parts.items():
        key = name.split(": ", 1)[1].split(" ")[0] if name.startswith("mitigate") else None
        evals, note = planned, described
        if key in reports:
            evals = 2 * s + reports[key].unet_equivalents
            note = "; ".join(reports[key].notes)[:60]
        wall, cpu = ratio(times.wall, name, base), ratio(times.cpu, name, base)
        rows.append([name, f"{median(times.wall[name]):.2f}", str(wall), str(cpu), f"{evals:g}", note])
    table(
        ["part", "median wall s", "wall ratio to plain (min-max)", "CPU ratio (min-max)", "UNet evals", "note"],
        rows,
        f"SD1.5-sized UNet (random weights), {8 * args.latent} px, DDIM {s} steps, batch 1, CPU fp32, "
        f"{args.repeats} interleaved rounds",
    )
    print(load.line())


def memory_table(args) -> None:
    from concurrent.futures import ThreadPoolExecutor

    runs = [(alloc, mode, r) for r in range(args.memory_repeats) for alloc in ALLOCATORS for mode in MEMORY]

    def child(run):
        alloc, mode, _ = run
        argv = ["--memory", mode, "--memory-latent", str(args.memory_latent), "--threads", str(args.threads)]
        out = in_subprocess(__file__, *argv, env=ALLOCATORS[alloc])
        print(f"  {alloc} malloc, {mode}: {json.dumps(out)}", flush=True)
        return out

    with Load() as load, ThreadPoolExecutor(args.jobs) as pool:
        results = dict(zip(runs, pool.map(child, runs)))
    rows = []
    for mode, (label, _) in MEMORY.items():
        cells = [label]
        for alloc in ALLOCATORS:
            above = [results[alloc, mode, r]["above_kib"] / 2**10 for r in range(args.memory_repeats)]
            vs = [
                results[alloc, mode, r]["above_kib"] / results[alloc, "plain", r]["above_kib"]
                for r in range(args.memory_repeats)
            ]
            whole = [
                results[alloc, mode, r]["peak_kib"] / results[alloc, "plain", r]["peak_kib"]
                for r in range(args.memory_repeats)
            ]
            cells += [median_spread(above, "{:.0f}"), median_spread(vs, "{:.2f}x"), median_spread(whole, "{:.3f}x")]
        rows.append(cells)
    base = median([results[k]["base_kib"] for k in results if k[1] == "plain"]) / 2**20
    side = 8 * args.memory_latent
    header = ["run"]
    for alloc in ALLOCATORS:
        header += [f"{alloc}: above weights MiB", f"{alloc}: vs plain", f"{alloc}: whole process vs plain"]
    table(
        header,
        rows,
        f"Peak memory, SD1.5-sized UNet fp32 on CPU, {side}x{side} px (latent {args.memory_latent}), one fresh process "
        f"per run, {args.memory_repeats} run(s) each (median, min-max); weights loaded: {base:.2f} GiB resident; "
        "fixed: glibc mmap threshold fixed at 128 KiB (the resident set follows the live tensors), default: glibc as "
        "it comes (freed blocks stay in a fragmented heap)",
    )
    print(load.line())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latent", type=int, default=8, help="latent side for wall time (8 = 64 px images)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5, help="interleaved rounds (0: no wall-time table)")
    ap.add_argument("--memory-latent", type=int, default=64, help="latent side for memory (0: no memory table)")
    ap.add_argument("--memory-repeats", type=int, default=1, help="fresh processes per memory configuration")
    ap.add_argument("--jobs", type=int, default=1, help="memory processes at a time (about 7 GB each at 512 px)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--memory", choices=list(MEMORY), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory:
        print(json.dumps(memory(args.memory, args.memory_latent, args.threads)))
        return
    if args.repeats:
        timing(args)
    if args.memory_latent:
        memory_table(args)


if __name__ == "__main__":
    main()
