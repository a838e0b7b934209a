"""Hand-written mutations of ``javascript/memguard.js``, each run against the browser tests (``make mutation-js``).

mutmut mutates Python only; the page script's promises (user text only through ``textContent``, the data line taken
out of the log, a stale panel removed, ...) are checked by mutating it by hand: each mutation below is applied alone
to a copy of the checkout (``out/mutation/js/``), the browser tests run there (``-x``: the first failure kills it),
and a mutation that no test notices is reported as a survivor (exit status 1). Needs Debian's chromium, as the
browser tests do (they skip without it, and then every mutation survives).

    python tests/js_mutation.py            # every mutation
    python tests/js_mutation.py NAME ...   # some of them
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "out" / "mutation" / "js"
SCRIPT = Path("javascript") / "memguard.js"

# name: (the exact text of memguard.js, what it becomes, the browser tests that should notice)
MUTATIONS: dict[str, tuple[str, str, str]] = {
    "menu-title-as-markup": (
        'title.textContent = "\\u201c" + word',
        'title.innerHTML = "\\u201c" + word',
        "tests/browser/test_injection_browser.py",
    ),
    "menu-item-as-markup": (
        "button.textContent = label;",
        "button.innerHTML = label;",
        "tests/browser/test_injection_browser.py",
    ),
    "data-line-left-in-the-log": (
        'text.nodeValue = text.nodeValue.slice(0, at).replace(/\\s+$/, "");',
        "",
        "tests/browser/test_panel_browser.py",
    ),
    "stale-panel-kept": ("stale.remove();", "void stale;", "tests/browser/test_panel_browser.py"),
    "removed-word-still-editable": (
        ' && !span.classList.contains("memguard-removed")',
        "",
        "tests/browser/test_tab_browser.py",
    ),
    "deemphasize-as-emphasis": (
        'value.slice(0, start) + "[" + value.slice(start, end) + "]"',
        'value.slice(0, start) + "(" + value.slice(start, end) + ")"',
        "tests/browser/test_tab_browser.py",
    ),
    "panel-always-for-txt2img": (
        'target: tab + "_prompt"',
        'target: "txt2img_prompt"',
        "tests/browser/test_panel_browser.py",
    ),
    "word-menu-without-keyboard": (
        '(event.key === "Enter" || event.key === " ")',
        "false",
        "tests/browser/test_tab_browser.py",
    ),
}


def checkout() -> None:
    """A fresh copy of the working tree's tracked and untracked files (not the ignored ones) in ``WORK``."""
    shutil.rmtree(WORK, ignore_errors=True)
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, check=True
    )
    for name in filter(None, listed.stdout.decode().split("\0")):
        source = ROOT / name
        if source.is_file():
            (WORK / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, WORK / name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help=f"mutations to run (default: all of {', '.join(MUTATIONS)})")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(MUTATIONS))
    if unknown:
        parser.error(f"unknown mutation {', '.join(unknown)}")
    checkout()
    original = (WORK / SCRIPT).read_text(encoding="utf-8")
    survivors = []
    selected = args.names or list(MUTATIONS)
    for name in selected:
        old, new, tests = MUTATIONS[name]
        if original.count(old) != 1:
            raise SystemExit(f"{name}: {old!r} is not in {SCRIPT} exactly once (the script changed: update it)")
        (WORK / SCRIPT).write_text(original.replace(old, new), encoding="utf-8")
        started = time.monotonic()
        command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", tests]
        done = subprocess.run(command, cwd=WORK, capture_output=True, text=True, check=False)
        seconds = time.monotonic() - started
        last = (done.stdout.strip().splitlines() or ["(no output)"])[-1]
        killed = done.returncode == 1
        print(f"{'killed' if killed else 'SURVIVED'}: {name} ({tests}, {seconds:.0f} s): {last}")
        if not killed:
            survivors.append(name)
    (WORK / SCRIPT).write_text(original, encoding="utf-8")
    print(f"\n{len(selected) - len(survivors)} of {len(selected)} killed; survived: {', '.join(survivors) or 'none'}")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
