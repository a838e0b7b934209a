#!/bin/sh
# The timing and memory runs behind docs/benchmarks.md ("How timings are measured" and the sections after it), one
# after another, each logging to out/. About 2 hours on a loaded 2-core machine; the memory runs need about 7 GB each.
set -x
PY=${PY:-.venv/bin/python}
mkdir -p out
$PY -u bench/throughput.py --threads 2 --repeats 9 2>&1 | tee out/throughput_t2.log
$PY -u bench/throughput.py --threads 1 --repeats 9 2>&1 | tee out/throughput_t1.log
$PY -u bench/scan_profile.py --threads 2 --repeats 9 2>&1 | tee out/scan_profile_t2.log
$PY -u bench/watch_overhead.py --repeats 21 2>&1 | tee out/watch_overhead.log
$PY -u bench/cost.py --latent 8 --steps 10 --repeats 5 --memory-latent 0 2>&1 | tee out/cost_time.log
$PY -u bench/cost.py --repeats 0 --memory-latent 64 2>&1 | tee out/cost_memory.log
