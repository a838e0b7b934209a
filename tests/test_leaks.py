"""No leaks: a reduced soak (two rounds of every kind of job in ``tests/generation_mix.py``; ``bench/soak.py`` runs
200) leaves no memguard hooks on the model, no callbacks beyond the module-level ones, no per-generation state and no
growth in live tensors or memguard's caches. Resident memory is printed, not asserted (``bench/soak.py`` reports it).
"""

from __future__ import annotations

import generation_mix
import numpy as np
import pytest
from webui_helpers import generate, pixels, set_threshold
from webui_helpers import processing as job

pytest.importorskip("gradio")


def test_mixed_generations_leave_nothing_behind(webui):
    boot = generation_mix.census()
    rounds = [[], []]
    for k in range(2 * len(generation_mix.KINDS)):
        outcome = generation_mix.run_job(webui, k, steps=2)
        kind = generation_mix.KINDS[k % len(generation_mix.KINDS)]
        assert outcome == ("failed" if kind.fault == "fail-sampling" else "ok"), kind
        assert generation_mix.model_hooks() == 0, kind  # released at the end of every job, failed ones included
        rounds[k // len(generation_mix.KINDS)].append(outcome)
        if k + 1 == len(generation_mix.KINDS):
            warm, warm_rss = generation_mix.census(), generation_mix.rss_kib()
    end, end_rss = generation_mix.census(), generation_mix.rss_kib()
    print(f"RSS after one round: {warm_rss} KiB, after two: {end_rss} KiB")
    assert end["callbacks"] == boot["callbacks"] and end["memguard callbacks"] == boot["memguard callbacks"]
    for name in ("runs alive", "processing objects alive", "processing objects with a run", "model hooks"):
        assert end[name] == 0, name
    assert not end["current run"]
    assert end["empty-prompt cache"] <= 1 and end["tokenizer cache"] <= 1
    assert end["live tensors"] == warm["live tensors"]  # the second round keeps nothing the first did not


def test_hooks_of_a_failed_job_nobody_closed_go_before_the_next_unet_call(webui):
    """A job run with ``process_images`` outside ``closing(p)`` (some extensions do) that fails mid-sampling: memguard's
    attention hooks are removed at the next denoiser call of any generation, before they could touch it."""
    from modules import processing, shared

    shared.opts.memguard_watch = False
    plain = generate(webui, batch_size=2)
    shared.opts.memguard_watch = True
    shared.opts.memguard_action, shared.opts.memguard_strategy = "mitigate", "attention"
    set_threshold(1e-6)
    unet = shared.sd_model.model.diffusion_model
    handle = unet.register_forward_pre_hook(generation_mix._fault_hook("fail-sampling"))
    try:
        with pytest.raises(generation_mix.InjectedFault):
            processing.process_images(job(webui, batch_size=2))
    finally:
        handle.remove()
    assert generation_mix.model_hooks() > 0  # the job was never closed
    shared.opts.memguard_watch = False
    after = generate(webui, batch_size=2)
    assert generation_mix.model_hooks() == 0
    assert all(np.array_equal(a, b) for a, b in zip(pixels(after), pixels(plain)))
