"""Helpers shared by the tests that drive memguard through a fake WebUI host (A1111 and Forge doubles)."""

from __future__ import annotations

import json

import numpy as np

GUARD = "Memorization guard"


def side() -> int:
    """Sample size of the loaded model (pixel space: width = height = this)."""
    from modules import shared

    return int(shared.sd_model.memguard_model.unet.config.sample_size)


def generate(host, title=None, script_args=None, **fields):
    """Run one txt2img job the way the UI submits it; ``title`` selects a dropdown script."""
    return host.run_txt2img(processing(host, title, script_args, **fields))


def processing(host, title=None, script_args=None, **fields):
    """The processing object :func:`generate` runs (small sizes and steps unless ``fields`` say otherwise)."""
    defaults = dict(
        prompt="a red circle",
        negative_prompt="",
        steps=4,
        batch_size=1,
        width=side(),
        height=side(),
        seed=7,
        sampler_name="Euler",
    )
    return host.txt2img_processing(title, script_args=script_args, **{**defaults, **fields})


def data(processed) -> dict:
    """memguard's machine-readable log line of a generation."""
    line = next(li for li in processed.comments.splitlines() if li.startswith("memguard-data:"))
    return json.loads(line[len("memguard-data:") :])


def results(processed) -> list[dict]:
    return sorted(data(processed)["results"], key=lambda r: r["index"])


def scores(processed) -> list[float]:
    return [r["score"] for r in results(processed)]


def pixels(processed) -> list[np.ndarray]:
    return [np.asarray(im) for im in processed.images[processed.index_of_first_image :]]


def record_first_step() -> dict:
    """Register an ``on_cfg_denoiser`` callback that keeps clones of the first sampling step's ``x`` and ``sigma``;
    returns the dict it fills (``"x"``, ``"sigma"``) in the generations that follow."""
    from modules import script_callbacks

    seen = {}

    def grab(params):
        if params.denoiser.step == 0:
            seen["x"], seen["sigma"] = params.x.clone(), params.sigma.clone()

    script_callbacks.on_cfg_denoiser(grab)
    return seen


def guard_index() -> int:
    """First argument index of the Memorization guard dropdown script."""
    from modules import scripts

    script = next(s for s in scripts.scripts_txt2img.selectable_scripts if s.title() == GUARD)
    return script.args_from


def flag_one(host, **fields):
    """A generation (batch 4, seed 11 unless ``fields`` say otherwise) and a threshold that flags exactly its
    highest-scoring image: ``(processed, index of that image)``."""
    plain = generate(host, **{"batch_size": 4, "seed": 11, **fields})
    s = scores(plain)
    ranked = sorted(s)
    set_threshold((ranked[-1] + ranked[-2]) / 2)
    return plain, s.index(ranked[-1])


def set_threshold(value: float) -> None:
    from modules import shared

    shared.opts.memguard_threshold = value


def assert_scoring_failure_contained(host, monkeypatch) -> None:
    """A failure inside memguard's scoring (``a1111.first_step.record`` raising) is reported in the log and leaves the
    images of a batch of 2 bit-identical to the same generation before the fault."""
    from memguard.hosts import a1111

    plain = generate(host, batch_size=2)

    def boom(*a, **k):
        raise RuntimeError("injected")

    monkeypatch.setattr(a1111.first_step, "record", boom)
    out = generate(host, batch_size=2)
    assert "memguard could not score this generation: scoring: RuntimeError: injected" in out.comments
    for a, b in zip(pixels(out), pixels(plain)):
        assert np.array_equal(a, b)


def assert_embedding_recomputes_layers(host, monkeypatch, network, script_args=None) -> None:
    """A forced embedding mitigation (batch of 2; other scripts' ``script_args`` added) inside the host recomputes
    every residual block, spatial transformer and resampler of ``network`` (the host's UNet) in its backward passes,
    found in the UNet's top-level blocks, and gives the conditioning the same optimization gives with every activation
    stored (no blocks handed over)."""
    import torch

    from memguard.hosts.a1111 import first_step
    from memguard.mitigate import embedding

    recomputed, optimized = [], []
    checkpoint, optimize = embedding.checkpoint, embedding.Embedding.__call__

    def counted(forward, *args, **kwargs):
        recomputed.append(getattr(forward, "__self__", None))
        return checkpoint(forward, *args, **kwargs)

    def kept(self, case):
        out = optimize(self, case)
        optimized.append(out)
        return out

    monkeypatch.setattr(embedding, "checkpoint", counted)
    monkeypatch.setattr(embedding.Embedding, "__call__", kept)
    set_threshold(1e-6)
    args = {guard_index(): "embedding", **(script_args or {})}
    generate(host, GUARD, args, batch_size=2)
    layers = [m for m in network.modules() if type(m).__name__ in embedding.LAYERS]
    assert layers and {id(m) for m in recomputed} == {id(m) for m in layers}
    calls = len(recomputed)
    monkeypatch.setattr(first_step, "unet_blocks", lambda network: [])
    generate(host, GUARD, args, batch_size=2)
    assert len(recomputed) == calls  # nothing recomputed without the blocks
    with_units, stored = optimized
    assert [r.iterations for r in with_units.reports] == [r.iterations for r in stored.reports] != [0, 0]
    assert torch.allclose(with_units.cond, stored.cond, rtol=1e-5, atol=1e-6)
