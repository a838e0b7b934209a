"""No leaks: a reduced soak (two rounds of every kind of job in ``tests/generation_mix.py``; ``bench/soak.py`` runs
200) leaves no memguard hooks on the model, no callbacks beyond the module-level ones, no per-generation state and no
growth in live tensors or memguard's caches. Resident memory is printed, not asserted (``bench/soak.py`` reports it).
"""

from __future__ import annotations

import generation_mix
import pytest

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
