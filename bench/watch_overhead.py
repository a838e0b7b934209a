"""Overhead of memguard watching a WebUI generation, measured on the faithful A1111 double (tests/fakehost) with the
miniature model: the same txt2img jobs with memguard's watch setting off and on, interleaved, same seeds.

Prints the ratio watch / off with an empty and with a non-empty negative prompt (per-round ratios of interleaved
repeats, off, watch, watch, off, ...; one untimed warm-up round; median and min-max, by wall and by CPU time), the
UNet rows each adds (the non-empty negative prompt adds one batch of empty-prompt rows at step 1) and the machine's
load. A ratio of two noisy wall times cannot resolve 1% on a shared machine; the last column can: the share of a
watched generation's time spent inside memguard's code (every memguard function the host calls, with what it calls:
UNet passes memguard adds included), by cProfile over ``--profile-jobs`` watched generations (cProfile slows Python
more than the UNet's kernels, so the share is an upper bound).

    .venv/bin/python -u bench/watch_overhead.py [--repeats 15] [--steps 20] [--batch 4] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys

from common import MODEL_DIR, ROOT, Load, interleave, median, ratio, table

sys.path.insert(0, str(ROOT / "tests"))

import fakehost


def memguard_share(job, jobs: int) -> float:
    """Time inside memguard's code (entered from the host) over all time, across ``jobs`` profiled runs of ``job``."""
    import cProfile
    import pstats

    profile = cProfile.Profile()
    profile.enable()
    for _ in range(jobs):
        job()
    profile.disable()
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    ours = {func for func in stats if "/memguard/" in func[0].replace("\\", "/")}
    entered = sum(stats[f][3] for f in ours if not any(caller in ours for caller in stats[f][4]))
    return entered / max(pstats.Stats(profile).total_tt, 1e-9)  # type: ignore[attr-defined]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--profile-jobs", type=int, default=5)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    host = fakehost.boot(MODEL_DIR, extension_dirs=[str(ROOT)])
    from modules import shared

    side = int(shared.sd_model.model.diffusion_model.config.sample_size)
    shared.opts.memguard_explain = False

    def job(negative: str, watch: bool) -> None:
        shared.opts.memguard_watch = watch
        p = host.txt2img_processing(
            prompt="a red circle on the left",
            negative_prompt=negative,
            steps=args.steps,
            batch_size=args.batch,
            width=side,
            height=side,
            seed=3,
            sampler_name="Euler",
        )
        host.run_txt2img(p)

    rows = []
    with Load() as load:
        for negative, label in (("", "empty negative prompt"), ("blurry", "negative prompt 'blurry'")):
            cases = {"off": lambda n=negative: job(n, False), "watch": lambda n=negative: job(n, True)}
            times = interleave(cases, args.repeats)
            extra = 0 if not negative else args.batch
            wall, cpu = ratio(times.wall, "watch", "off"), ratio(times.cpu, "watch", "off")
            share = memguard_share(lambda n=negative: job(n, True), args.profile_jobs)
            rows.append(
                [
                    label,
                    f"{median(times.wall['off']):.3f}",
                    f"{median(times.wall['watch']):.3f}",
                    str(wall),
                    str(cpu),
                    f"{100 * share:.2f}%",
                    f"+{extra} rows at step 1",
                ]
            )
    table(
        [
            "generation",
            "off s",
            "watch s",
            "wall ratio (min-max)",
            "CPU ratio (min-max)",
            "memguard's share",
            "extra UNet rows",
        ],
        rows,
        f"Watch overhead, fake A1111 + miniature, txt2img Euler {args.steps} steps, batch {args.batch}, "
        f"median of {args.repeats} interleaved rounds",
    )
    print(load.line())
    fakehost.uninstall()


if __name__ == "__main__":
    main()
