"""Mutation testing of memguard/ with mutmut 3, one module at a time, each against its own fast test selection
(``make mutation``; not part of ``make test``: minutes per module).

    python tests/mutation.py memguard/detect.py memguard/flow.py ...   # every module of MODULES when none is named

For each module, a fresh working folder ``out/mutation/<module>/`` gets a pyproject.toml (this repository's, with
``[tool.mutmut]`` extended by the module and its tests) and links to the files the tests need; mutmut copies them into
``mutants/`` there, mutates the module (each function becomes a trampoline to its mutants), runs the selected tests
once to learn which tests reach which function, then each mutant against the tests that reach it. The survivors are
printed as diffs, except those listed in tests/mutation_equivalent.txt: equivalent mutants (no test can tell them from
the original), each with its reason. The summary gives per module: mutants, killed, equivalent, survived (not
covered by any test included), the score ``killed / (mutants - equivalent)`` and the wall time.

Exit status 1 when a mutant survives that is not allow-listed (or an allow-list entry names no surviving mutant any
more: it is stale), 0 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ALLOW_LIST = ROOT / "tests" / "mutation_equivalent.txt"
OUT = ROOT / "out" / "mutation"

# Each module with the tests that run against its mutants: fast (seconds to a minute on 2 cores), and together
# covering the module's behaviour. A module not listed runs against tests/test_<name>.py.
MODULES: dict[str, list[str]] = {
    "memguard/result.py": ["tests/test_result.py", "tests/test_ui_panel.py"],
    "memguard/flow.py": ["tests/test_flow.py"],
    "memguard/detect.py": ["tests/test_detect.py"],
    "memguard/strategies.py": ["tests/test_strategies.py"],
    "memguard/calibrate.py": ["tests/test_calibrate.py"],
    "memguard/explain.py": ["tests/test_explain.py"],
    "memguard/ui/panel.py": ["tests/test_ui_panel.py"],
    "memguard/hosts/request.py": ["tests/test_request.py"],
    "memguard/api.py": ["tests/test_api.py", "tests/test_api_hardening.py"],
    "memguard/hosts/a1111/report.py": ["tests/test_report.py"],
    "memguard/hosts/a1111/conditioning.py": ["tests/test_conditioning.py"],
    "memguard/algebra.py": ["tests/test_algebra.py"],
    "memguard/mitigate/base.py": ["tests/test_mitigate.py"],
    "memguard/prompt_syntax.py": ["tests/test_prompt_syntax.py"],
}

# What the tests read besides memguard/ and tests/ (the fake WebUI loads this folder as an extension).
LINKED = ["memguard", "tests", "scripts", "javascript", "style.css", "metadata.ini", "install.py"]

STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 36: "timeout", 24: "timeout"}
STATUS |= {-24: "timeout", 152: "timeout", 255: "timeout", 37: "type check"}


def allow_list() -> dict[str, str]:
    """``mutant name: reason`` for every equivalent mutant (tests/mutation_equivalent.txt)."""
    entries = {}
    for raw in ALLOW_LIST.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, _, reason = line.partition(" ")
        if not reason.strip():
            raise SystemExit(f"{ALLOW_LIST.name}: {name} has no reason")
        entries[name] = reason.strip()
    return entries


def mutant_prefix(module: str) -> str:
    """The prefix of the module's mutant names (``memguard.detect.``)."""
    return module.removesuffix(".py").replace("/", ".") + "."


def prepare(module: str, tests: list[str]) -> Path:
    """A fresh working folder for ``module``: links to the repository's files and a pyproject.toml whose
    ``[tool.mutmut]`` mutates only ``module`` and selects ``tests``."""
    work = OUT / module.removesuffix(".py").replace("/", ".")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for name in LINKED:
        (work / name).symlink_to(ROOT / name)
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    # this repository's pyproject.toml (pytest's configuration too), its [tool.mutmut] extended by the module's keys
    section = re.search(r"^\[tool\.mutmut\]\n(?:(?!\[).*\n)*", text, flags=re.MULTILINE)
    if section is None:
        raise SystemExit("pyproject.toml has no [tool.mutmut]")
    keys = {"only_mutate": [module], "pytest_add_cli_args_test_selection": tests}
    added = "".join(f"{key} = {json.dumps(value)}\n" for key, value in keys.items())
    text = text[: section.end()].rstrip("\n") + "\n" + added + text[section.end() :]
    (work / "pyproject.toml").write_text(text, encoding="utf-8")
    return work


# run in the module's working folder: the diff of every mutant named on the command line, as JSON
SHOW = """
import json, sys
from mutmut.mutation.diff_apply import find_mutant, get_diff_for_mutant
print(json.dumps({name: get_diff_for_mutant(name, path=find_mutant(name).path) for name in sys.argv[1:]}))
"""


def diffs(work: Path, names: list[str]) -> dict[str, str]:
    """The changed lines of each mutant (what ``mutmut show`` prints, without the file names)."""
    if not names:
        return {}
    shown = subprocess.run([sys.executable, "-c", SHOW, *names], cwd=work, capture_output=True, text=True, check=False)
    if shown.returncode != 0:
        return {name: f"(mutmut show {name} in {work})" for name in names}
    out = {}
    for name, text in json.loads(shown.stdout).items():
        changed = [line for line in text.splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---")]
        out[name] = "\n".join(changed)
    return out


def run(module: str, tests: list[str], jobs: int, equivalent: dict[str, str]) -> dict:
    missing = [t for t in tests if not (ROOT / t).exists()]
    tests = [t for t in tests if t not in missing]
    if missing:
        print(f"{module}: no test file {', '.join(missing)} (left out)")
    if not tests:
        raise SystemExit(f"{module}: none of its test files exists")
    work = prepare(module, tests)
    started = time.monotonic()
    log = work / "mutmut.log"
    with log.open("w", encoding="utf-8") as out:
        env = os.environ | {"PYTHONDONTWRITEBYTECODE": "1"}
        mutmut = str(Path(sys.executable).parent / "mutmut")
        command = [mutmut, "run", "--max-children", str(jobs)]
        done = subprocess.run(command, cwd=work, stdout=out, stderr=out, env=env, check=False)
    meta = work / "mutants" / (module + ".meta")
    # mutmut stops (exit 1) when none of the tests reaches the module: every mutant then survives, untested
    untested = "could not find any test case for any mutant" in log.read_text(encoding="utf-8", errors="replace")
    if (done.returncode != 0 and not untested) or not meta.exists():
        print(log.read_text(encoding="utf-8", errors="replace")[-4000:])
        raise SystemExit(f"{module}: mutmut failed (exit {done.returncode}); its log: {log}")
    codes = json.loads(meta.read_text(encoding="utf-8"))["exit_code_by_key"]
    status = {name: "no tests" if code is None else STATUS.get(code, "suspicious") for name, code in codes.items()}
    killed = sorted(n for n, s in status.items() if s in ("killed", "timeout", "type check"))
    alive = sorted(n for n, s in status.items() if s not in ("killed", "timeout", "type check"))
    allowed = [n for n in alive if n in equivalent]
    survivors = [n for n in alive if n not in equivalent]
    prefix = mutant_prefix(module)
    stale = sorted(n for n in equivalent if n.startswith(prefix) and n not in allowed)
    print(f"\n== {module} ({' '.join(tests)}): {len(status)} mutants")
    shown = diffs(work, survivors)
    for name in survivors:
        print(f"-- {status[name]}: {name}\n{shown[name]}")
    for name in stale:
        print(f"-- stale allow-list entry (killed or gone): {name}")
    seconds = time.monotonic() - started
    scored = len(status) - len(allowed)
    return {
        "module": module,
        "mutants": len(status),
        "killed": len(killed),
        "equivalent": len(allowed),
        "survived": len(survivors),
        "stale": len(stale),
        "score": len(killed) / scored if scored else 1.0,
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help="memguard/... .py files (default: every module of MODULES)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="mutants tested at once")
    parser.add_argument("--json", type=Path, help="also write the summary here")
    args = parser.parse_args(argv)
    equivalent = allow_list()
    rows = []
    for module in args.modules or list(MODULES):
        tests = MODULES.get(module) or [f"tests/test_{Path(module).stem}.py"]
        rows.append(run(module, tests, args.jobs, equivalent))
    print(f"\n{'module':38} {'mutants':>7} {'killed':>6} {'equiv':>5} {'surv':>4} {'score':>6} {'time':>6}")
    for r in rows:
        print(
            f"{r['module']:38} {r['mutants']:7} {r['killed']:6} {r['equivalent']:5} {r['survived']:4}"
            f" {r['score']:6.1%} {r['seconds']:5.0f}s"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return 1 if any(r["survived"] or r["stale"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
