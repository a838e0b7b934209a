"""End-to-end check of memguard inside a real WebUI (AUTOMATIC1111 1.10 or Forge), headless on the CPU. Opt-in.

    python tests/realhost/check.py --webui /root/hosts/a1111 --host a1111 \
        --python /root/hosts/venv-a1111/bin/python --report out/realhost-a1111.json

What it does (see tests/realhost/README.md and setup.sh for preparing a WebUI checkout and its Python):

1. installs memguard into the WebUI: ``extensions/memguard`` -> this project (a symlink);
2. makes a random-weight SD1.5 checkpoint (ldm layout, from the host's ``configs/v1-inference.yaml``; zero-initialised
   UNet output layers redrawn, fp16 safetensors), cached under ``--cache`` and linked into ``models/Stable-diffusion``;
   A1111 also gets an offline Hugging Face cache entry for ``openai/clip-vit-large-patch14`` (config and tokenizer
   files written from open-clip-torch's CLIP vocabulary);
3. boots the WebUI on 127.0.0.1 with flags that make no network call, ``--api --api-auth user:pass``;
4. runs the checks over HTTP and, for the page, in Debian's Chromium through Playwright; prints check -> PASS /
   FAIL (reason) / SKIP (reason) and writes the table as JSON (``--report``, rewritten after every check);
5. stops the WebUI it started (its whole process group), also on a timeout, an interrupt or an error.

64x64 generations with 4 steps; the three calls that score at 512 px (the API's score, its explanation, the tab's
Analyze) come last, one seed each.

``--arch sdxl`` makes a random-weight SDXL checkpoint instead (``make_checkpoint.py --arch sdxl``: the host's
``sd_xl_base.yaml`` on the meta device, written module by module; 6.5 GiB fp16) and runs a focused subset of the checks
on it (:meth:`Run.run_sdxl`), with guards for the memory it needs (about 15 GiB for A1111 in fp32).

Only the Python standard library is needed to run it, plus ``playwright`` (in memguard's ``.venv``) for the page
checks, and Pillow (optional) for the pixel comparisons.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable
from pathlib import Path

from make_checkpoint import CLIP_L_TEXT  # the same folder: the text tower's configuration

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parents[1]
sys.path.insert(0, str(PROJECT))
from memguard.tokens import write_tokenizer_files  # noqa: E402  (the CLIP vocabulary, built as memguard builds it)

sys.path.insert(0, str(HERE.parent / "browser"))
from browser_helpers import CHROMIUM, CHROMIUM_ARGS  # noqa: E402  (the browser tests' Chromium and its flags)

USER, PASSWORD = "user", "pass"
CKPT_NAMES = {"sd15": "memguard-random-sd15.safetensors", "sdxl": "memguard-random-sdxl.safetensors"}
SDXL_CONFIG = "repositories/generative-models/configs/inference/sd_xl_base.yaml"  # A1111's config_sdxl
CLIP_REPO = "openai/clip-vit-large-patch14"
COMMON_FLAGS = [
    "--skip-prepare-environment",
    "--skip-install",
    "--skip-torch-cuda-test",
    "--skip-version-check",
    "--no-download-sd-model",
    "--api",
    "--api-auth",
    f"{USER}:{PASSWORD}",
]
HOST_FLAGS = {
    "a1111": ["--use-cpu", "all", "--no-half", "--precision", "full"],
    "forge": ["--always-cpu"],
    "reforge": ["--always-cpu"],
}
DEFAULT_PORT = {"a1111": 7860, "forge": 7861, "reforge": 7862}
FREEU = "FreeU Integrated (SD 1.x, SD 2.x, SDXL)"
GUARD = "memorization guard"
STRATEGIES = ("auto", "embedding", "attention", "guidance")
PROMPT = "a photograph of an astronaut riding a horse on the moon"
SEED = 1234
ADJECTIVES = (
    "red green blue yellow purple orange golden silver tiny huge ancient modern quiet noisy bright dark "
    "soft sharp warm cold wet dry old young tall short round square heavy light"
)
NOUNS = (
    "house tree river mountain cloud castle bridge garden forest lake tower ship road field city valley "
    "island desert harbor village meadow canyon temple market station palace garage bakery lighthouse orchard"
)
LONG_PROMPT = ", ".join(f"{a} {n}" for a, n in zip(ADJECTIVES.split(" "), NOUNS.split(" ")))  # ~78 CLIP tokens


class CheckFailed(Exception):
    """A check's assertion: the reason goes into the table."""


class Skipped(Exception):
    """A check that does not apply, or cannot run here: the reason goes into the table."""


def need(condition: bool, reason: str) -> None:
    if not condition:
        raise CheckFailed(reason)


# --- the Hugging Face cache entry A1111's ldm text encoder loads (config and tokenizer only) ----------------------
CLIP_CONFIG = {
    "architectures": ["CLIPModel"],
    "model_type": "clip",
    "projection_dim": 768,
    "logit_scale_init_value": 2.6592,
    "initializer_factor": 1.0,
    "text_config": {"model_type": "clip_text_model", **CLIP_L_TEXT},
    "vision_config": {
        "model_type": "clip_vision_model",
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "image_size": 224,
        "patch_size": 14,
        "hidden_act": "quick_gelu",
        "projection_dim": 768,
    },
}


def write_hf_cache(hf_home: Path, bpe_gz: Path) -> Path:
    """``$HF_HOME/hub/models--openai--clip-vit-large-patch14`` with config.json and the slow CLIP tokenizer's files,
    built from open-clip-torch's ``bpe_simple_vocab_16e6.txt.gz`` the way CLIP builds its vocabulary."""
    repo = hf_home / "hub" / ("models--" + CLIP_REPO.replace("/", "--"))
    revision = "0" * 40
    snap = repo / "snapshots" / revision
    if (snap / "vocab.json").exists() and (repo / "refs" / "main").exists():
        return snap
    write_tokenizer_files(snap, bpe_gz)  # vocab.json, merges.txt, tokenizer and special-token configs
    (snap / "config.json").write_text(json.dumps(CLIP_CONFIG, indent=1))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return snap


# --- small helpers --------------------------------------------------------------------------------------------------
def port_free(port: int) -> bool:
    """Nothing listens on 127.0.0.1:port and it can be bound as the WebUI's server binds it (SO_REUSEADDR: the
    connections a previous run left in TIME_WAIT do not count)."""
    with socket.socket() as sock:
        sock.settimeout(2)
        if sock.connect_ex(("127.0.0.1", port)) == 0:
            return False
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def host_python_info(python: str) -> dict:
    code = (
        "import json, importlib.metadata as m\n"
        "out = {}\n"
        "for n in ('torch', 'transformers', 'gradio', 'fastapi', 'pydantic', 'open-clip-torch', 'diffusers'):\n"
        "    try: out[n] = m.version(n)\n"
        "    except Exception: out[n] = None\n"
        "import open_clip, os\n"
        "out['bpe'] = os.path.join(os.path.dirname(open_clip.__file__), 'bpe_simple_vocab_16e6.txt.gz')\n"
        "import sys; out['python'] = sys.version.split()[0]\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=180, check=False)
    if done.returncode:
        raise RuntimeError(f"{python} cannot report its packages: {done.stderr[-800:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def git_head(path: Path) -> str:
    try:
        done = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=30, check=False
        )
        return done.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def pixels(b64png: str) -> bytes:
    """Decoded pixels of a base64 PNG (Pillow if present, else the PNG's inflated IDAT stream, which is equal for
    equal pixels written by the same encoder)."""
    raw = base64.b64decode(b64png.split(",", 1)[-1])
    try:
        from PIL import Image

        with Image.open(io.BytesIO(raw)) as image:
            return image.convert("RGB").tobytes()
    except ImportError:
        pass
    pos, idat = 8, b""
    while pos < len(raw):
        length = int.from_bytes(raw[pos : pos + 4], "big")
        kind = raw[pos + 4 : pos + 8]
        if kind == b"IDAT":
            idat += raw[pos + 8 : pos + 8 + length]
        pos += 12 + length
    return zlib.decompress(idat)


def infotext_field(text: str, key: str) -> str | None:
    match = re.search(rf'(?:^|, |\n){re.escape(key)}: ("(?:[^"\\]|\\.)*"|[^,\n]*)', text)
    if not match:
        return None
    value = match.group(1)
    return json.loads(value) if value.startswith('"') else value


def memguard_defaults(memguard: Path) -> dict:
    """memguard's settings and their defaults (``memguard/hosts/settings.py: OPTIONS``, read as text: nothing of
    memguard is imported here)."""
    text = (memguard / "memguard" / "hosts" / "settings.py").read_text()
    found = re.findall(r'"(memguard_\w+)": Option\(\s*("[^"]*"|True|False|[-\d.]+|DEFAULT)', text)
    default = re.search(r'^DEFAULT = ("[^"]*")', (memguard / "memguard" / "strategies.py").read_text(), re.M)
    literal = {"True": "true", "False": "false", "DEFAULT": default.group(1) if default else "null"}
    return {key: json.loads(literal.get(raw, raw)) for key, raw in found}


def memguard_said(info: dict) -> str:
    """What memguard's results in the API's ``info`` say about image 1 (reason it is unscored, errors), if any."""
    params = info.get("extra_generation_params") or {}
    data = params.get("memguard") if isinstance(params, dict) else None
    if not isinstance(data, dict):
        return ""
    results = data.get("results") or [{}]
    first = results[0] if isinstance(results[0], dict) else {}
    said = {k: first.get(k) for k in ("verdict", "reason", "mitigation_error") if first.get(k)}
    if data.get("errors"):
        said["errors"] = data["errors"]
    return f" memguard says: {json.dumps(said)[:700]}" if said else ""


def score_of(text: str) -> tuple[float | None, float | None]:
    field = infotext_field(text, "Memguard score")
    if field is None:
        return None, None
    score, _, tau = field.partition("/")
    return float(score), (float(tau) if tau else None)


# --- memory --------------------------------------------------------------------------------------------------------
class MemoryWatch(threading.Thread):
    """Samples the resident memory of the WebUI's process group every second (peak overall and since ``reset``)."""

    def __init__(self, pgid: int, floor_bytes: float = 0):
        super().__init__(daemon=True)
        self.pgid = pgid
        self.peak = 0
        self.window = 0
        self.min_available = None
        self.floor = floor_bytes  # MemAvailable below this: the WebUI is killed before the kernel picks a victim
        self.tripped = ""
        self.stop = threading.Event()

    def rss(self) -> int:
        total = 0
        page = os.sysconf("SC_PAGE_SIZE")
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
                if int(fields[2]) != self.pgid:  # field 5, pgrp
                    continue
                with open(f"/proc/{entry}/statm") as handle:
                    total += int(handle.read().split()[1]) * page
            except (OSError, IndexError, ValueError):
                continue
        return total

    @staticmethod
    def available() -> int | None:
        try:
            with open("/proc/meminfo") as handle:
                for line in handle:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None

    def reset(self) -> None:
        self.window = 0

    def run(self) -> None:
        while not self.stop.wait(1.0):
            value = self.rss()
            self.peak = max(self.peak, value)
            self.window = max(self.window, value)
            avail = self.available()
            if avail is not None:
                self.min_available = avail if self.min_available is None else min(self.min_available, avail)
                if self.floor and avail < self.floor and not self.tripped:
                    self.tripped = (
                        f"MemAvailable {avail / 2**30:.2f} GiB < --kill-below-gb {self.floor / 2**30:g} with the "
                        f"WebUI's group at {value / 2**30:.2f} GiB RSS (peak {self.peak / 2**30:.2f} GiB): killed it"
                    )
                    print(f"    memory guard: {self.tripped}", flush=True)
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(self.pgid, signal.SIGKILL)


# --- the WebUI process ---------------------------------------------------------------------------------------------
def _oom_first(pid: int) -> None:
    """The WebUI (and what it forks after this) is the kernel's first choice if memory runs out, not a neighbour's."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/oom_score_adj").write_text("1000")


class WebUI:
    def __init__(self, args: argparse.Namespace, log: Path):
        self.args = args
        self.log_path = log
        self.proc: subprocess.Popen | None = None
        self.base = f"http://127.0.0.1:{args.port}"
        self.auth = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        self.memory: MemoryWatch | None = None

    # process
    def start(self, env: dict, ckpt: Path) -> None:
        flags = COMMON_FLAGS + HOST_FLAGS[self.args.host] + ["--port", str(self.args.port), "--ckpt", str(ckpt)]
        flags += self.args.extra_flag
        command = [self.args.python, "launch.py", *flags]
        self.command = command
        with self.log_path.open("w") as handle:
            handle.write("$ " + " ".join(command) + "\n")
            handle.flush()
            self.proc = subprocess.Popen(
                command,
                cwd=self.args.webui,
                stdout=handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # its own process group: stop() ends the WebUI and every child it started
            )
        _oom_first(self.proc.pid)
        self.memory = MemoryWatch(self.proc.pid, self.args.kill_below_gb * 2**30)
        self.memory.start()

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=30)
        else:  # the launcher is gone; children it left in its group go too
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        if self.memory is not None:
            self.memory.stop.set()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    # HTTP
    def request(
        self,
        method: str,
        path: str,
        body=None,
        auth: bool | str = True,
        timeout: float = 120,
        content_type: str = "application/json",
    ) -> tuple[int, object]:
        data = None
        headers = {}
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            headers["Content-Type"] = content_type
        if auth is True:
            headers["Authorization"] = self.auth
        elif isinstance(auth, str):
            headers["Authorization"] = auth
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as err:
            status, raw = err.code, err.read()
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode(errors="replace")

    def txt2img(self, timeout: float = 600, **payload) -> tuple[dict, list[str], dict]:
        """POST /sdapi/v1/txt2img with 64x64, 4 steps, Euler a, seed 1234 unless overridden; returns the parsed
        ``info``, the images (base64 PNG) and the raw response."""
        body = {
            "prompt": PROMPT,
            "negative_prompt": "",
            "width": 64,
            "height": 64,
            "steps": self.args.steps,
            "cfg_scale": 7,
            "seed": SEED,
            "sampler_name": "Euler a",
            "batch_size": 1,
            "n_iter": 1,
            "send_images": True,
            "save_images": False,
        }
        body.update(payload)
        status, response = self.request("POST", "/sdapi/v1/txt2img", body, timeout=timeout)
        if status != 200 or not isinstance(response, dict):
            raise CheckFailed(f"txt2img HTTP {status}: {str(response)[:600]}")
        info = json.loads(response["info"]) if isinstance(response.get("info"), str) else response.get("info") or {}
        return info, response.get("images") or [], response


# --- the checks ----------------------------------------------------------------------------------------------------
class Run:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.out = Path(args.out).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        suffix = "-sdxl" if args.arch == "sdxl" else ""
        self.webui = WebUI(args, self.out / f"webui-{args.host}{suffix}.log")
        self.results: list[dict] = []
        self.state: dict = {}
        self.current: tuple[str, float, int] | None = None
        self.started = time.monotonic()
        self.deadline = self.started + args.max_minutes * 60
        self.meta: dict = {
            "host": args.host,
            "arch": args.arch,
            "webui": str(Path(args.webui).resolve()),
            "webui_commit": git_head(Path(args.webui)),
            "memguard": str(args.memguard),
            "memguard_commit": args.memguard_commit or git_head(args.memguard),
            "memguard_dirty": bool(
                not args.memguard_commit
                and subprocess.run(
                    ["git", "-C", str(args.memguard), "status", "--porcelain"],
                    capture_output=True,
                    text=True,
                    check=False,
                ).stdout.strip()
            ),
            "python": args.python,
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }

    # bookkeeping
    def write_report(self) -> None:
        memory = self.webui.memory
        self.meta["peak_rss_mb"] = round(memory.peak / 2**20) if memory else None
        self.meta["min_available_mb"] = round(memory.min_available / 2**20) if memory and memory.min_available else None
        if memory and memory.tripped:
            self.meta["memory_guard"] = memory.tripped
        self.meta["seconds"] = round(time.monotonic() - self.started, 1)
        report = {"meta": self.meta, "checks": self.results}
        path = Path(self.args.report)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".part")
        tmp.write_text(json.dumps(report, indent=1))
        tmp.replace(path)

    def excerpt(self, since: int) -> str:
        """Log lines written during a check that mention memguard, an error or a traceback (with what follows)."""
        try:
            with self.webui.log_path.open("rb") as handle:
                handle.seek(since)
                text = handle.read().decode(errors="replace")
        except OSError:
            return ""
        lines = text.splitlines()
        keep: list[str] = []
        i = 0
        while i < len(lines):
            line = lines[i]
            if "Traceback (most recent call last)" in line:
                block = lines[max(0, i - 2) : i + 40]
                end = next((k for k, b in enumerate(block[3:], 3) if b and not b.startswith((" ", "\t", "*"))), None)
                keep += block[: (end + 1) if end is not None else len(block)]
                i += len(block) - 2
                continue
            if re.search(r"memguard|error|exception", line, re.IGNORECASE) and "memguard-data:" not in line:
                keep.append(line)
            i += 1
        joined = "\n".join(keep)
        return joined[-3000:]

    def check(
        self, name: str, fn: Callable[[], str | None], hosts: tuple[str, ...] = ("a1111", "forge", "reforge")
    ) -> None:
        if self.args.only and not any(re.search(p, name) for p in self.args.only):
            return
        if any(re.search(p, name) for p in self.args.skip):
            self.record(name, "SKIP", "--skip", 0.0, 0, "")
            return
        if self.args.host not in hosts:
            return
        if time.monotonic() > self.deadline:
            self.record(name, "SKIP", f"the run's --max-minutes {self.args.max_minutes} passed", 0.0, 0, "")
            return
        if self.state.get("down") and name not in ("install", "checkpoint", "prepare"):
            self.record(name, "SKIP", f"the WebUI is not up ({self.state['down']})", 0.0, 0, "")
            return
        since = self.webui.log_size()
        if self.webui.memory:
            self.webui.memory.reset()
        t0 = time.monotonic()
        self.current = (name, t0, since)
        print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
        try:
            reason = fn() or ""
            status = "PASS"
        except CheckFailed as err:
            status, reason = "FAIL", str(err)
        except Skipped as err:
            status, reason = "SKIP", str(err)
        except Exception as err:  # a check's own error, or the WebUI's: report it as the check's failure
            status, reason = "FAIL", f"{type(err).__name__}: {err}"
            if self.args.verbose:
                traceback.print_exc()
        self.current = None
        seconds = time.monotonic() - t0
        window = self.webui.memory.window if self.webui.memory else 0
        excerpt = self.excerpt(since) if status == "FAIL" or self.args.verbose else ""
        if name == "boot" and status != "PASS":
            self.state["down"] = "boot failed"
        if status != "PASS" and self.webui.proc is not None and not self.webui.alive():
            self.state["down"] = f"exited with {self.webui.proc.returncode}"
            reason += f" (the WebUI exited with {self.webui.proc.returncode})"
            if self.webui.memory and self.webui.memory.tripped:
                reason += f"; {self.webui.memory.tripped}"
        self.record(name, status, reason, seconds, window, excerpt)

    def record(self, name: str, status: str, reason: str, seconds: float, peak: int, excerpt: str) -> None:
        row = {
            "check": name,
            "status": status,
            "reason": reason,
            "seconds": round(seconds, 1),
            "peak_rss_mb": round(peak / 2**20) if peak else None,
        }
        if excerpt:
            row["log_excerpt"] = excerpt
        self.results.append(row)
        shown = f" ({reason})" if reason else ""
        print(f"    {status} {name} [{seconds:.1f} s]{shown}", flush=True)
        if status == "FAIL" and excerpt:
            print("      " + excerpt[-1200:].replace("\n", "\n      "), flush=True)
        self.write_report()

    # --- preparation ---------------------------------------------------------------------------------------------
    def install(self) -> str:
        link = Path(self.args.webui) / "extensions" / "memguard"
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink():
            if link.resolve() == self.args.memguard:
                return f"{link} -> {self.args.memguard} (already)"
            link.unlink()
        elif link.exists():
            raise CheckFailed(f"{link} exists and is not a symlink; move it away first")
        link.symlink_to(self.args.memguard, target_is_directory=True)
        return f"{link} -> {self.args.memguard}"

    def checkpoint(self) -> str:
        cache = Path(self.args.cache).expanduser()
        name = CKPT_NAMES[self.args.arch]
        cached = cache / name
        made = "cached"
        if self.args.checkpoint:
            cached = Path(self.args.checkpoint).resolve()
            made = "given"
        elif not cached.exists() and self.args.arch == "sdxl":
            made = self.make_sdxl_checkpoint(cached)
        elif not cached.exists():
            webui = Path(self.args.webui)
            ldm = Path(self.args.ldm or webui / "repositories" / "stable-diffusion-stability-ai")
            config = Path(self.args.sd_config or webui / "configs" / "v1-inference.yaml")
            if not (ldm / "ldm").is_dir() or not config.is_file():
                raise CheckFailed(
                    f"no cached checkpoint at {cached}, and no ldm package at {ldm} or no config at {config} to make "
                    "one (run the A1111 check first, or pass --ldm and --sd-config, or --checkpoint)"
                )
            cache.mkdir(parents=True, exist_ok=True)
            command = [
                self.args.python,
                str(HERE / "make_checkpoint.py"),
                "--ldm",
                str(ldm),
                "--config",
                str(config),
                "--out",
                str(cached),
            ]
            done = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False)
            if done.returncode:
                raise CheckFailed(f"make_checkpoint.py failed: {(done.stderr or done.stdout)[-1500:]}")
            made = done.stdout.strip().splitlines()[-1]
        target_dir = Path(self.args.webui) / "models" / "Stable-diffusion"
        target_dir.mkdir(parents=True, exist_ok=True)
        target = target_dir / name
        if (target.is_symlink() or target.exists()) and target.resolve() != cached.resolve():
            target.unlink()
        if not target.exists():
            target.symlink_to(cached)
        self.state["ckpt"] = target
        return f"{made}; {target} -> {cached} ({cached.stat().st_size / 2**30:.2f} GiB)"

    def make_sdxl_checkpoint(self, cached: Path) -> str:
        """The random-weight SDXL checkpoint (``make_checkpoint.py --arch sdxl``: sgm's ``sd_xl_base.yaml``
        instantiated on the meta device, written module by module; about 7 GB fp16)."""
        webui = Path(self.args.webui)
        sgm = Path(self.args.sgm or webui / "repositories" / "generative-models")
        config = Path(self.args.sd_config or webui / SDXL_CONFIG)
        if not (sgm / "sgm").is_dir() or not config.is_file():
            raise CheckFailed(
                f"no cached checkpoint at {cached}, and no sgm package at {sgm} or no config at {config} to make one "
                "(run the A1111 check first, or pass --sgm and --sd-config, or --checkpoint)"
            )
        free = shutil.disk_usage(cached.parent if cached.parent.exists() else Path.home()).free
        need(free > 16 * 2**30, f"{free / 2**30:.1f} GiB free on disk; the SDXL checkpoint needs about 7 GiB")
        cached.parent.mkdir(parents=True, exist_ok=True)
        command = [self.args.python, str(HERE / "make_checkpoint.py"), "--arch", "sdxl", "--sgm", str(sgm)]
        command += ["--config", str(config), "--out", str(cached)]
        t0 = time.monotonic()
        done = subprocess.run(command, capture_output=True, text=True, timeout=3600, check=False)
        if done.returncode:
            raise CheckFailed(f"make_checkpoint.py --arch sdxl failed: {(done.stderr or done.stdout)[-1500:]}")
        return f"{done.stdout.strip().splitlines()[-1]} in {time.monotonic() - t0:.0f} s"

    def prepare(self) -> str:
        info = host_python_info(self.args.python)
        self.meta["packages"] = info
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("COMMANDLINE_ARGS", "VIRTUAL_ENV", "PYTHONPATH", "GRADIO_SERVER"))
        }
        env.update(
            {
                "PYTHONUNBUFFERED": "1",
                "GRADIO_ANALYTICS_ENABLED": "False",
                "DO_NOT_TRACK": "1",
                "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1",
                "HF_HUB_DISABLE_TELEMETRY": "1",
                "DISABLE_TELEMETRY": "1",
                "PIP_NO_INDEX": "1",
                "TORCH_CUDA_ARCH_LIST": "",
                "CUDA_VISIBLE_DEVICES": "",
            }
        )
        if self.args.host in ("a1111", "reforge"):
            hf_home = Path(self.args.cache).expanduser() / "hf"
            snap = write_hf_cache(hf_home, Path(info["bpe"]))
            env["HF_HOME"] = str(hf_home)
            self.state["hf"] = str(snap)
        self.state["env"] = env
        versions = ", ".join(f"{k} {v}" for k, v in info.items() if k not in ("bpe",) and v)
        return versions

    # --- boot ----------------------------------------------------------------------------------------------------
    def boot(self) -> str:
        if not port_free(self.args.port):
            raise CheckFailed(f"port {self.args.port} on 127.0.0.1 is taken; pass --port")
        if self.args.boot_min_free_gb:
            avail = None
            for _ in range(120):  # up to 10 minutes for the other processes on the machine to give memory back
                avail = MemoryWatch.available()
                if avail is None or avail >= self.args.boot_min_free_gb * 2**30:
                    break
                time.sleep(5)
            else:
                self.state["down"] = "not booted: too little memory"
                raise CheckFailed(
                    f"only {avail / 2**30:.1f} GiB available after 10 minutes, --boot-min-free-gb "
                    f"{self.args.boot_min_free_gb}: not booted"
                )
            self.meta["available_gb_at_boot"] = round((avail or 0) / 2**30, 1)
        t0 = time.monotonic()
        self.webui.start(self.state["env"], self.state["ckpt"])
        deadline = t0 + self.args.boot_timeout
        status = None
        while time.monotonic() < deadline:
            if not self.webui.alive():
                self.state["down"] = "exited during boot"
                tail = self.webui.log()[-2500:]
                raise CheckFailed(f"the WebUI exited with {self.webui.proc.returncode} during boot:\n{tail}")
            with contextlib.suppress(OSError, ValueError):
                status, _ = self.webui.request("GET", "/sdapi/v1/sd-models", timeout=10)
                if status == 200:
                    break
            time.sleep(2)
        else:
            self.state["down"] = "not served in time"
            raise CheckFailed(f"/sdapi/v1/sd-models not served in {self.args.boot_timeout} s (last status {status})")
        served = time.monotonic() - t0
        # memguard's routes are added at on_app_started; the model may still be loading (A1111 loads it in a thread)
        status, body = None, None
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                status, body = self.webui.request("GET", "/memguard/v1/version", timeout=self.args.boot_timeout)
                if status == 200:
                    break
            time.sleep(2)
        need(status == 200, f"/memguard/v1/version: HTTP {status}: {str(body)[:300]}")
        self.meta["boot_seconds"] = round(served, 1)
        notes = self.apply_settings()
        self.meta["memguard_version"] = body
        return f"API served after {served:.0f} s; memguard {body}" + (f"; {notes}" if notes else "")

    def apply_settings(self) -> str:
        """``--setting KEY=JSON`` through ``POST /sdapi/v1/options`` for the whole run (restored at its end); a key
        this memguard does not have is left out and said."""
        done, missing = [], []
        for item in self.args.setting:
            key, _, raw = item.partition("=")
            value = json.loads(raw)
            if key.startswith("memguard_") and key not in memguard_defaults(self.args.memguard):
                missing.append(key)  # not this memguard's: the host would log a KeyError traceback
                continue
            status, body = self.webui.request("GET", "/sdapi/v1/options", timeout=120)
            previous = body.get(key) if isinstance(body, dict) else None
            status, body = self.webui.request("POST", "/sdapi/v1/options", {key: value}, timeout=120)
            if status != 200:
                missing.append(key)
                continue
            self.state.setdefault("restore", []).append((key, previous))
            done.append(f"{key}={raw}")
        said = []
        if done:
            said.append("set " + ", ".join(done))
        if missing:
            said.append("no such setting: " + ", ".join(missing))
        return "; ".join(said)

    def restore_settings(self) -> None:
        defaults = memguard_defaults(self.args.memguard)
        for key, previous in reversed(self.state.pop("restore", [])):
            value = previous if previous is not None else defaults.get(key)
            if value is not None:
                with contextlib.suppress(OSError, ValueError):
                    self.webui.request("POST", "/sdapi/v1/options", {key: value}, timeout=60)

    def clean_start(self) -> str:
        log = self.webui.log()
        blocks = []
        lines = log.splitlines()
        for i, line in enumerate(lines):
            if "Traceback (most recent call last)" in line:
                block = "\n".join(lines[max(0, i - 3) : i + 40])
                blocks.append(block)
        ext = str(Path(self.args.webui) / "extensions" / "memguard")
        ours = [b for b in blocks if str(self.args.memguard) in b or ext in b]  # a frame in memguard's own files
        named = [b for b in blocks if b not in ours and "memguard" in b]  # the host's code, about memguard
        errors = [
            ln
            for ln in lines
            if re.search(r"memguard[:\] ]", ln, re.I) and re.search(r"error|failed|could not", ln, re.I)
        ]
        need(not ours, f"{len(ours)} traceback(s) through memguard's files at boot:\n{ours[0][:1500] if ours else ''}")
        need(not errors, "memguard errors at boot: " + " | ".join(errors[:5]))
        notes = []
        for block in named:
            last = [ln.strip() for ln in block.splitlines() if ln.strip()]
            head = next((ln for ln in last if ln.startswith("***")), last[0])
            notes.append(f"host traceback naming memguard (not memguard's code): {head} / {last[-1] if last else ''}")
        others = len(blocks) - len(ours) - len(named)
        if others:
            notes.append(f"{others} other traceback(s) in the log")
        self.state["boot_notes"] = notes
        return "no traceback through memguard's files" + ("; " + "; ".join(notes) if notes else "")

    # --- HTTP routes ---------------------------------------------------------------------------------------------
    def routes_require_auth(self) -> str:
        routes = [
            ("GET", "/memguard/v1/version"),
            ("GET", "/memguard/v1/schema"),
            ("GET", "/memguard/v1/calibration"),
            ("POST", "/memguard/v1/score"),
            ("POST", "/memguard/v1/calibration"),
        ]
        wrong = "Basic " + base64.b64encode(b"user:wrong").decode()
        bad = []
        for method, path in routes:
            body = {"prompts": ["a cat"]} if method == "POST" else None
            for auth in (False, wrong):
                status, _ = self.webui.request(method, path, body, auth=auth, timeout=60)
                if status != 401:
                    bad.append(f"{method} {path} {'no' if auth is False else 'wrong'} credentials -> {status}")
        status, _ = self.webui.request("GET", "/sdapi/v1/options", auth=False, timeout=60)
        if status != 401:
            bad.append(f"the host's own /sdapi/v1/options without credentials -> {status}")
        need(not bad, "; ".join(bad))
        panel, body = self.webui.request(
            "POST", "/memguard/v1/panel", {"payload": '{"results": []}'}, auth=False, timeout=60
        )
        return f"{len(routes)} routes x (none, wrong) -> 401; POST panel (by design open) -> {panel}"

    def routes_with_auth(self) -> str:
        out = []
        for path in ("/memguard/v1/version", "/memguard/v1/schema"):
            status, body = self.webui.request("GET", path, timeout=120)
            need(status == 200, f"GET {path}: HTTP {status}: {str(body)[:300]}")
            out.append(path.rsplit("/", 1)[1])
        status, body = self.webui.request(
            "POST", "/memguard/v1/score", b"prompts=x", timeout=60, content_type="text/plain"
        )
        need(status == 415, f"POST score as text/plain: HTTP {status}, expected 415")
        status, body = self.webui.request("POST", "/memguard/v1/score", {"prompts": []}, timeout=60)
        need(status == 422, f"POST score with no prompts: HTTP {status}, expected 422")
        return "version, schema 200; text/plain 415; empty prompts 422"

    def calibration_get(self) -> str:
        status, body = self.webui.request("GET", "/memguard/v1/calibration", timeout=120)
        need(status == 200 and isinstance(body, dict), f"HTTP {status}: {str(body)[:300]}")
        need("model" in body and "threshold" in body, f"missing model/threshold: {body}")
        need("source" in body, f"no 'source' (the schema promises model, threshold, source): {body}")
        return json.dumps(body)

    # --- generations ---------------------------------------------------------------------------------------------
    def plain(self) -> tuple[dict, list[str]]:
        """The reference generation (watch on, threshold 0 = the calibration, none): cached."""
        if "plain" not in self.state:
            info, images, _ = self.webui.txt2img()
            self.state["plain"] = (info, images)
        return self.state["plain"]

    def _first_infotext(self, info: dict) -> str:
        texts = info.get("infotexts") or []
        need(bool(texts), f"no infotexts in info: {str(info)[:300]}")
        return texts[0]

    def watch_infotext(self) -> str:
        info, images = self.plain()
        need(len(images) >= 1, "no image returned")
        text = self._first_infotext(info)
        score, tau = score_of(text)
        verdict = infotext_field(text, "Memguard verdict")
        need(score is not None, f"no 'Memguard score' in the infotext: {text[-400:]}")
        need(verdict is not None, f"no 'Memguard verdict' in the infotext: {text[-400:]}")
        need(score > 0, f"score {score}: 0 means the prompt cannot reach eps (zero-initialised layers?)")
        self.state["score"] = score
        return f"Memguard score: {infotext_field(text, 'Memguard score')}, verdict: {verdict}"

    def _score(self) -> float:
        if "score" not in self.state:
            self.watch_infotext()
        return self.state["score"]

    def flagged_manual_threshold(self) -> str:
        score = self._score()
        low, high = score / 2, score * 2
        info, _, _ = self.webui.txt2img(override_settings={"memguard_threshold": low})
        text = self._first_infotext(info)
        need(infotext_field(text, "Memguard verdict") == "flagged", f"threshold {low:.4g}: {text[-300:]}")
        s2, tau = score_of(text)
        need(tau is not None and abs(tau - low) <= 1e-3 * low + 1e-4, f"threshold shown {tau}, set {low:.4g}")
        need(s2 is not None and abs(s2 - score) <= 1e-3 * score, f"score {s2} differs from the plain run's {score}")
        self.state["flagged_info"] = info
        info, _, _ = self.webui.txt2img(override_settings={"memguard_threshold": high})
        text = self._first_infotext(info)
        need(infotext_field(text, "Memguard verdict") == "ok", f"threshold {high:.4g}: {text[-300:]}")
        return f"score {score:.4g}: flagged at threshold {low:.4g}, ok at {high:.4g} (override_settings)"

    def api_info_results(self) -> str:
        info = self.state.get("flagged_info")
        if info is None:
            info, _, _ = self.webui.txt2img(override_settings={"memguard_threshold": self._score() / 2})
        params = info.get("extra_generation_params") or {}
        data = params.get("memguard") if isinstance(params, dict) else None
        if data is None:
            blob = json.dumps(info)
            need(
                "memguard-data" in blob,
                f"the API's info carries no memguard results beyond the infotext (info keys: {sorted(info)}; "
                f"extra_generation_params: {params}; comments={info.get('comments')!r})",
            )
            return "results in info's comments (memguard-data line)"
        results = data.get("results") or []
        need(len(results) == 1, f"{len(results)} results for one image: {str(data)[:300]}")
        result = results[0]
        need(result.get("flagged") is True, f"not flagged: {str(result)[:300]}")
        words = result.get("words") or []
        need(words, f"a flagged result without words (explain is on by default): {str(result)[:300]}")
        spans = [w for w in words if isinstance(w.get("start"), int) and w["start"] >= 0]
        off = [w for w in spans if PROMPT[w["start"] : w["end"]] != w.get("text")]
        need(not off, f"words whose span is not their text in the typed prompt: {off[:3]}")
        typed = sum(w.get("text") in PROMPT for w in words)
        keys = ", ".join(sorted(result))
        top = [w.get("text") for w in sorted(words, key=lambda w: -(w.get("value") or 0))[:3]]
        return (
            f"extra_generation_params.memguard: {len(words)} words ({len(spans)} with a span, each = "
            f"PROMPT[start:end]; {typed} found in the typed prompt), top {top}, verdict {result.get('verdict')}; "
            f"keys {keys}"
        )

    def audit_log(self) -> str:
        path = self.out / f"audit-{self.args.host}.jsonl"
        path.unlink(missing_ok=True)
        score = self._score()
        settings = {"memguard_threshold": score / 2, "memguard_audit_log": str(path)}
        info, _, _ = self.webui.txt2img(override_settings=settings)
        need(path.exists(), f"no audit log written at {path}")
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        need(len(rows) == 1, f"{len(rows)} audit rows for one image")
        row = rows[0]
        keys = ("time", "model", "prompt", "seed", "score", "threshold", "verdict", "action")
        missing = [k for k in keys if k not in row]
        need(not missing, f"audit row lacks {missing}: {row}")
        need(row["verdict"] == "flagged", f"audit verdict {row['verdict']!r} for a flagged image: {row}")
        need(row["action"] == "warn", f"audit action {row['action']!r}, expected 'warn': {row}")
        need(row["seed"] == SEED, f"audit seed {row['seed']}, generated with {SEED}")
        return json.dumps(row)[:300]

    def strategy(self, name: str, via: str = "script") -> Callable[[], str]:
        def run() -> str:
            score = self._score()
            _, plain_images = self.plain()
            if via == "script":
                with self.options(memguard_threshold=score / 2):
                    info, images, _ = self.webui.txt2img(
                        script_name=GUARD, script_args=[name, False, True], timeout=self.args.mitigation_timeout
                    )
                text = self._first_infotext(info)
                strategy = infotext_field(text, "Memguard strategy")
                need(strategy == name, f"no 'Memguard strategy: {name}': {text[-400:]}")
            else:
                self.request_options_supported()
                options = {"action": "mitigate", "strategy": name, "threshold": score / 2}
                info, images, _ = self.webui.txt2img(alwayson_scripts={"memguard": {"args": [options]}}, timeout=900)
                text = self._first_infotext(info)
            need(infotext_field(text, "Memguard verdict") is not None, f"no verdict: {text[-400:]}")
            mitigation = infotext_field(text, "Memguard mitigation")
            need(mitigation is not None, f"no 'Memguard mitigation'.{memguard_said(info)} Infotext: {text[-300:]}")
            need(not mitigation.startswith("failed"), f"Memguard mitigation: {mitigation}")
            match = re.match(r"(\S+) (\S+)->(\S+)", mitigation)
            need(match is not None, f"unreadable 'Memguard mitigation: {mitigation}'")
            before, after = match.group(2), match.group(3)
            if before != "?" and after != "?":
                need(
                    float(after) <= float(before) or "still above" in mitigation,
                    f"reported as mitigated although the score rose: {mitigation} (verdict "
                    f"{infotext_field(text, 'Memguard verdict')})",
                )
            need(pixels(images[0]) != pixels(plain_images[0]), "the mitigated image equals the unmitigated one")
            used = match.group(1)
            fell_back = "" if name == "auto" or used.startswith(name) else f"; asked for {name}, memguard used {used}"
            said = f"verdict {infotext_field(text, 'Memguard verdict')}, mitigation {mitigation}; image differs"
            return said + fell_back

        return run

    def request_options_supported(self) -> None:
        if "request_options" not in self.state:
            status, body = self.webui.request("GET", "/sdapi/v1/script-info", timeout=120)
            need(status == 200 and isinstance(body, list), f"GET /sdapi/v1/script-info: HTTP {status}")
            ours = [s for s in body if s.get("name") == "memguard" and not s.get("is_img2img")]
            self.state["request_options"] = bool(ours and ours[0].get("args"))
        if not self.state["request_options"]:
            raise Skipped("this memguard's always-on script takes no argument (no per-request options)")

    def request_options_threshold(self) -> str:
        self.request_options_supported()
        score = self._score()
        args = [{"threshold": score / 2}]
        info, _, _ = self.webui.txt2img(alwayson_scripts={"memguard": {"args": args}})
        text = self._first_infotext(info)
        need(infotext_field(text, "Memguard verdict") == "flagged", f"threshold {score / 2:.4g}: {text[-300:]}")
        status, body = self.webui.request(
            "POST",
            "/sdapi/v1/txt2img",
            {
                "prompt": "x",
                "steps": 1,
                "width": 64,
                "height": 64,
                "alwayson_scripts": {"memguard": {"args": [{"nonsense": 1}]}},
            },
            timeout=300,
        )
        if status == 200 and isinstance(body, dict):
            bad = json.loads(body["info"]) if isinstance(body.get("info"), str) else {}
            said = memguard_said(bad).strip() or "generated, nothing said in info"
        else:
            said = str(body)[:300]
        return f"flagged with args [{{threshold: {score / 2:.4g}}}]; an unknown option -> HTTP {status}: {said}"

    def script_override_settings(self) -> str:
        """The guard script from the API with the threshold in ``override_settings`` (applied by the host inside
        ``process_images``, which the script's ``run`` calls)."""
        score = self._score()
        info, _, _ = self.webui.txt2img(
            override_settings={"memguard_threshold": score / 2},
            script_name=GUARD,
            script_args=["attention", False, False],
            timeout=900,
        )
        text = self._first_infotext(info)
        verdict = infotext_field(text, "Memguard verdict")
        need(
            verdict == "flagged",
            f"verdict {verdict!r}, mitigation {infotext_field(text, 'Memguard mitigation')!r} with override_settings "
            f"memguard_threshold {score / 2:.4g} (score {score:.4g}): the script reads the threshold before the host "
            "applies override_settings",
        )
        return f"flagged, mitigation {infotext_field(text, 'Memguard mitigation')}"

    def mitigate_setting(self) -> str:
        score = self._score()
        settings = {"memguard_threshold": score / 2, "memguard_action": "mitigate", "memguard_strategy": "attention"}
        info, _, _ = self.webui.txt2img(override_settings=settings, timeout=900)
        text = self._first_infotext(info)
        mitigation = infotext_field(text, "Memguard mitigation")
        need(mitigation is not None and mitigation.startswith("attention"), f"mitigation {mitigation!r}: {text[-400:]}")
        return f"Memguard mitigation: {mitigation}"

    def sampler(self, name: str) -> Callable[[], str]:
        def run() -> str:
            info, images, _ = self.webui.txt2img(sampler_name=name)
            text = self._first_infotext(info)
            need(len(images) == 1, f"{len(images)} images")
            score, _ = score_of(text)
            need(score is not None and score > 0, f"no score.{memguard_said(info)} Infotext: {text[-300:]}")
            need(infotext_field(text, "Sampler") == name, f"ran sampler {infotext_field(text, 'Sampler')!r}")
            euler = f" (Euler a: {self.state['score']:.4g})" if "score" in self.state else ""
            return f"score {score:.4g}{euler}"

        return run

    def hires_payload(self) -> dict:
        payload = {
            "enable_hr": True,
            "hr_scale": 2,
            "hr_upscaler": "Latent",
            "hr_second_pass_steps": 2,
            "denoising_strength": 0.5,
        }
        if self.args.host == "forge":
            payload["hr_additional_modules"] = ["Use same choices"]
        return payload

    def hires(self) -> str:
        score = self._score()
        info, images, _ = self.webui.txt2img(**self.hires_payload(), timeout=900)
        text = self._first_infotext(info)
        s2, _ = score_of(text)
        need(s2 is not None, f"no score with hires fix.{memguard_said(info)} Infotext: {text[-300:]}")
        need(abs(s2 - score) <= 1e-3 * score, f"hires run scored {s2}, the same seed without hires {score}")
        need("Hires upscale" in text, f"hires fix did not run: {text[-300:]}")
        return f"score {s2:.4g} (= first pass; hires pass not scored again)"

    def prompt_case(self, prompt: str, note: str) -> Callable[[], str]:
        def run() -> str:
            info, images, _ = self.webui.txt2img(prompt=prompt)
            text = self._first_infotext(info)
            score, _ = score_of(text)
            need(score is not None and score > 0, f"no score for {note}.{memguard_said(info)} {text[-300:]}")
            verdict = infotext_field(text, "Memguard verdict")
            return f"{note}: score {score:.4g}, verdict {verdict}"

        return run

    def watch_off_identical(self, negative: str) -> Callable[[], str]:
        def run() -> str:
            common = {"negative_prompt": negative, "seed": SEED + 7}
            info_on, on, _ = self.webui.txt2img(override_settings={"memguard_watch": True}, **common)
            info_off, off, _ = self.webui.txt2img(override_settings={"memguard_watch": False}, **common)
            need(score_of(self._first_infotext(info_on))[0] is not None, "watch on: no score in the infotext")
            need(score_of(self._first_infotext(info_off))[0] is None, "watch off: still a score in the infotext")
            need(pixels(on[0]) == pixels(off[0]), "watch on and off give different pixels")
            return f"pixel-identical (negative prompt {negative!r})"

        return run

    def forge_freeu(self, hires: bool, guard: bool = False) -> Callable[[], str]:
        def run() -> str:
            # 128 px: at 64 px the 1280-channel output blocks FreeU scales are 1x1, where its min-max normalisation
            # divides by zero and the host's own prediction is NaN (FreeU's, with or without memguard)
            payload: dict = {
                "alwayson_scripts": {FREEU: {"args": [True, 1.01, 1.02, 0.99, 0.95, 0.0, 1.0]}},
                "width": 128,
                "height": 128,
            }
            if hires:
                payload.update(self.hires_payload())
            threshold = {"memguard_threshold": self._score() / 2} if guard else {}
            if guard:
                payload.update(script_name=GUARD, script_args=["attention", False, False])
            with self.options(**threshold):
                info, images, _ = self.webui.txt2img(**payload, timeout=900)
            text = self._first_infotext(info)
            need("freeu_enabled: True" in text, f"FreeU did not run: {text[-400:]}")
            score, _ = score_of(text)
            need(score is not None, f"no memguard score with FreeU.{memguard_said(info)} Infotext: {text[-300:]}")
            out = f"score {score:.4g} with FreeU" + (" + hires" if hires else "")
            if guard:
                mitigation = infotext_field(text, "Memguard mitigation")
                need(
                    mitigation is not None and mitigation.startswith("attention"),
                    f"mitigation {mitigation!r}.{memguard_said(info)}",
                )
                out += f"; Memguard mitigation: {mitigation}"
            return out

        return run

    def forge_freeu_64_host(self) -> str:
        """Diagnostic, memguard off: what Forge's own FreeU makes at 64 px (why the FreeU checks run at 128 px)."""
        info, images, _ = self.webui.txt2img(
            alwayson_scripts={FREEU: {"args": [True, 1.01, 1.02, 0.99, 0.95, 0.0, 1.0]}},
            override_settings={"memguard_watch": False},
        )
        values = set(pixels(images[0]))
        if len(values) <= 1:
            return f"memguard off: the host's FreeU image at 64 px is one flat colour {sorted(values)} (NaN prediction)"
        return f"memguard off: the host's FreeU image at 64 px has {len(values)} distinct byte values (finite)"

    def hires_guard(self) -> str:
        """Hires fix with the Memorization guard (Forge installs memguard's function again after its patcher reset)."""
        with self.options(memguard_threshold=self._score() / 2):
            info, images, _ = self.webui.txt2img(
                **self.hires_payload(), script_name=GUARD, script_args=["attention", False, False], timeout=900
            )
        text = self._first_infotext(info)
        mitigation = infotext_field(text, "Memguard mitigation")
        need(
            mitigation is not None and mitigation.startswith("attention"),
            f"mitigation {mitigation!r}.{memguard_said(info)} Infotext: {text[-300:]}",
        )
        return f"Memguard mitigation: {mitigation} (hires)"

    # --- 512 px: the service ---------------------------------------------------------------------------------------
    def memory_room(self) -> None:
        need_bytes = self.args.min_free_gb * 2**30
        for _ in range(60):
            avail = MemoryWatch.available()
            if avail is None or avail >= need_bytes:
                return
            time.sleep(5)
        raise Skipped(f"only {avail / 2**30:.1f} GiB available, --min-free-gb {self.args.min_free_gb}")

    def api_score(self) -> str:
        self.memory_room()
        status, body = self.webui.request("POST", "/memguard/v1/score", {"prompts": [PROMPT], "seeds": 1}, timeout=1200)
        need(status == 200 and isinstance(body, dict), f"HTTP {status}: {str(body)[:500]}")
        result = body["results"][0]
        need(isinstance(result.get("score"), (int, float)) and result["score"] > 0, f"score {result.get('score')}")
        self.state["api_model"] = body.get("model")
        return f"score {result['score']:.4g} at 512 px (model {body.get('model')}, threshold {body.get('threshold')})"

    def model_key(self) -> str:
        info = self.state["plain"][0] if "plain" in self.state else self.webui.txt2img()[0]
        shown = infotext_field(self._first_infotext(info), "Model hash")
        status, body = self.webui.request("GET", "/memguard/v1/calibration", timeout=120)
        need(status == 200 and isinstance(body, dict), f"HTTP {status}: {str(body)[:300]}")
        at_boot = (self.meta.get("memguard_version") or {}).get("model")
        need(body.get("model") == shown, f"memguard's model key {body.get('model')!r}, the host's hash {shown!r}")
        early = f" (at boot, before the host loaded it: {at_boot!r})" if at_boot != shown else ""
        return f"{body.get('model')}{early}"

    def model_is_sdxl(self) -> str:
        """The host loaded the random checkpoint as SDXL (A1111: ``sd_xl_base.yaml``; Forge: its SDXL class), and
        memguard's watched generation scored it."""
        self.plain()  # the model is loaded by now (A1111 loads it in a thread at boot)
        log = self.webui.log()
        if self.args.host == "a1111":
            found = re.findall(r"Creating model from config: (\S+)", log)
            need(bool(found), "no 'Creating model from config' line in the log")
            need(found[-1].endswith("sd_xl_base.yaml"), f"created from {found[-1]}, not sd_xl_base.yaml")
            said = f"config {Path(found[-1]).name}"
        else:
            found = re.findall(r"StateDict Keys: [^\n]*", log)  # Forge's backend/loader.py, per component
            need(bool(found), "no 'StateDict Keys' line in the log")
            need("text_encoder_2" in found[-1], f"no second text encoder (SDXL's): {found[-1]}")
            said = found[-1][:200]
        status, body = self.webui.request("GET", "/sdapi/v1/options", timeout=120)
        loaded = body.get("sd_model_checkpoint") if isinstance(body, dict) else None
        need(
            (loaded and CKPT_NAMES["sdxl"].rsplit(".", 1)[0] in str(loaded)) or bool(self.args.checkpoint),
            f"sd_model_checkpoint is {loaded!r}",
        )
        return f"{said}; sd_model_checkpoint {loaded}"

    def calibration_post_small(self) -> str:
        """``POST /memguard/v1/calibration`` with a few prompts (the native size: 1024 px on SDXL), then a watched
        generation judged by that calibration (no manual threshold). The calibration stays stored in the WebUI's data
        (``data/memguard/calibration.json`` under the WebUI); the other checks set their own thresholds."""
        self.memory_room()
        prompts = self.args.calibration_prompts
        t0 = time.monotonic()
        status, body = self.webui.request(
            "POST", "/memguard/v1/calibration", {"prompts": prompts, "fpr": 0.5}, timeout=3600
        )
        seconds = time.monotonic() - t0
        need(status == 200 and isinstance(body, dict), f"HTTP {status} after {seconds:.0f} s: {str(body)[:500]}")
        need(body.get("n") == len(prompts), f"n {body.get('n')} for {len(prompts)} prompts: {body}")
        tau = body.get("threshold")
        need(isinstance(tau, (int, float)) and tau > 0, f"threshold {tau}")
        status, got = self.webui.request("GET", "/memguard/v1/calibration", timeout=120)
        need(status == 200 and got.get("threshold") == tau, f"GET calibration after POST: {got}")
        need("manual" not in str(got.get("source")), f"source {got.get('source')!r}")
        info, _, _ = self.webui.txt2img(override_settings={"memguard_threshold": 0})
        text = self._first_infotext(info)
        score, shown = score_of(text)
        need(shown is not None and abs(shown - tau) <= 1e-3 * tau, f"the generation's threshold {shown}, stored {tau}")
        verdict = infotext_field(text, "Memguard verdict")
        return (
            f"{len(prompts)} prompts at the native size in {seconds:.0f} s: threshold {tau:.4g} "
            f"({got.get('source')}); a watched generation: score {score}, threshold {shown}, verdict {verdict}"
        )

    def api_score_native(self) -> str:
        """``POST /memguard/v1/score`` (no explanation): one seed at the model's native size."""
        self.memory_room()
        t0 = time.monotonic()
        status, body = self.webui.request("POST", "/memguard/v1/score", {"prompts": [PROMPT], "seeds": 1}, timeout=3600)
        need(status == 200 and isinstance(body, dict), f"HTTP {status}: {str(body)[:500]}")
        result = body["results"][0]
        need(isinstance(result.get("score"), (int, float)) and result["score"] > 0, f"score {result.get('score')}")
        return f"score {result['score']:.4g} at the native size in {time.monotonic() - t0:.0f} s"

    def api_score_explain(self) -> str:
        self.memory_room()
        status, body = self.webui.request(
            "POST", "/memguard/v1/score", {"prompts": [PROMPT], "seeds": 1, "explain": True}, timeout=1800
        )
        need(status == 200 and isinstance(body, dict), f"HTTP {status}: {str(body)[:800]}")
        result = body["results"][0]
        words = result.get("words") or []
        need(words, f"no words in the explanation: {str(result)[:400]}")
        need(all(PROMPT[w["start"] : w["end"]] == w["text"] for w in words), f"word spans off: {words[:3]}")
        top = sorted(words, key=lambda w: -w.get("value", 0))[:3]
        note = f"; note: {result['note']}" if result.get("note") else ""
        return f"{len(words)} words, top {[w['text'] for w in top]}{note}"

    # --- the page (Chromium) ---------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def browser_page(self):
        try:
            from playwright.sync_api import sync_playwright
        except ImportError as err:
            raise Skipped(f"playwright is not importable in {sys.executable} ({err})") from err
        if not CHROMIUM.exists():
            if os.geteuid() == 0 and shutil.which("apt-get"):
                subprocess.run(["apt-get", "install", "-y", "chromium"], capture_output=True, timeout=900, check=False)
            if not CHROMIUM.exists():
                raise Skipped(f"{CHROMIUM} is missing (apt-get install -y chromium)")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 1000})
                page.errors = []
                page.phase = "loading the page"
                page.on(
                    "pageerror",
                    lambda err: page.errors.append(f"[{page.phase}] {err.message} | {err.stack or ''}"[:600]),
                )
                page.on("dialog", lambda dialog: dialog.dismiss())
                page.set_default_timeout(120_000)
                page.goto(self.webui.base + "/", timeout=300_000)
                page.wait_for_selector("#txt2img_prompt textarea", timeout=300_000)
                page.phase = "after load"
                yield page
            finally:
                browser.close()

    @staticmethod
    def memguard_errors(page) -> list[str]:
        return [e for e in page.errors if "memguard" in e]

    @staticmethod
    def host_errors(page) -> str:
        others = [e for e in page.errors if "memguard" not in e]
        return f"; {len(others)} page error(s) not from memguard.js: {others[0]}" if others else ""

    @staticmethod
    def _set_number(page, elem_id: str, value: int) -> None:
        box = page.locator(f"#{elem_id} input[type=number]").first
        box.fill(str(value))
        box.press("Enter")
        box.blur()

    @contextlib.contextmanager
    def options(self, **values):
        """Set WebUI options through ``POST /sdapi/v1/options`` (persisted by the host), restored afterwards."""
        previous = {key: self._set_option(key, value) for key, value in values.items()}
        try:
            yield
        finally:
            defaults = memguard_defaults(self.args.memguard)
            for key, value in previous.items():
                self._set_option(key, value if value is not None else defaults.get(key, value))

    def _set_option(self, key: str, value) -> object:
        status, before = self.webui.request("GET", "/sdapi/v1/options", timeout=120)
        previous = before.get(key) if isinstance(before, dict) else None
        status, body = self.webui.request("POST", "/sdapi/v1/options", {key: value}, timeout=120)
        need(status == 200, f"POST /sdapi/v1/options {key}: HTTP {status}: {str(body)[:300]}")
        return previous

    def ui_panel_words(self) -> str:
        score = self._score()
        previous = self._set_option("memguard_threshold", score / 2)
        try:
            with self.browser_page() as page:
                page.fill("#txt2img_prompt textarea", PROMPT)
                page.fill("#txt2img_neg_prompt textarea", "")
                for elem, value in (("txt2img_width", 64), ("txt2img_height", 64), ("txt2img_steps", self.args.steps)):
                    self._set_number(page, elem, value)
                seed = page.locator("#txt2img_seed input").first
                seed.fill(str(SEED))
                seed.blur()
                page.phase = "generating"
                page.click("#txt2img_generate")
                log = "#html_log_txt2img"
                page.wait_for_selector(f"{log} .memguard-panel, {log} .memguard-message", timeout=600_000)
                page.wait_for_timeout(500)
                shot = self.out / f"panel-{self.args.host}.png"
                page.locator(log).first.screenshot(path=str(shot))
                panel_text = page.locator(log).first.inner_text()
                words = page.locator(f"{log} .memguard-word")
                count = words.count()
                need(page.locator(f"{log} .memguard-panel").count() >= 1, f"no panel: {panel_text[:400]}")
                need("memguard-data:" not in panel_text, "the raw memguard-data line is still shown")
                need(count > 0, f"the panel shows no highlighted words: {panel_text[:400]}")
                texts = [words.nth(i).inner_text() for i in range(min(count, 12))]
                need(not self.memguard_errors(page), f"page errors from memguard.js: {self.memguard_errors(page)[:3]}")
                return f"panel with {count} highlighted words {texts[:6]}; screenshot {shot.name}" + self.host_errors(
                    page
                )
        finally:
            default = memguard_defaults(self.args.memguard).get("memguard_threshold", 0.0)
            self._set_option("memguard_threshold", previous if previous is not None else default)

    def ui_tab_analyze(self) -> str:
        self.memory_room()
        with self.browser_page() as page:
            clicked = page.evaluate(
                """() => {
                    const buttons = [...document.querySelectorAll('#tabs button, #tabs [role=tab]')];
                    const tab = buttons.find(b => b.textContent.trim() === 'Memorization');
                    if (tab) { tab.click(); return true; }
                    return false;
                }"""
            )
            need(clicked, "no 'Memorization' tab button in #tabs")
            page.wait_for_selector("#memguard_prompt textarea", state="visible", timeout=60_000)
            page.fill("#memguard_prompt textarea", PROMPT)
            seeds = page.locator("#memguard_seeds input").first
            seeds.fill("1")
            seeds.blur()
            page.phase = "analyzing"
            page.click("#memguard_analyze")
            out = "#memguard_analysis"
            page.wait_for_selector(f"{out} .memguard-analysis, {out} .memguard-message", timeout=1_800_000)
            page.wait_for_timeout(500)
            shot = self.out / f"tab-{self.args.host}.png"
            page.locator(out).first.screenshot(path=str(shot))
            text = page.locator(out).first.inner_text()
            need(page.locator(f"{out} .memguard-analysis").count() >= 1, f"analysis failed: {text[:600]}")
            count = page.locator(f"{out} .memguard-word").count()
            need(count > 0, f"no highlighted words: {text[:400]}")
            need(not self.memguard_errors(page), f"page errors from memguard.js: {self.memguard_errors(page)[:3]}")
            return f"analysis with {count} highlighted words; screenshot {shot.name}" + self.host_errors(page)

    # --- the sequence ----------------------------------------------------------------------------------------------
    def run_sdxl(self) -> None:
        """The SDXL subset, most important first: 64x64 generations (an 8x8 latent; SDXL's UNet halves it twice),
        ``--steps`` (2 by default with --arch sdxl: one UNet call of the CFG batch takes about 35 s on 2 busy cores);
        the calls at SDXL's native 1024 px (calibration, the API's score) and the extras after them."""
        self.check("clean_start", self.clean_start)
        self.check("calibration_get_source", self.calibration_get)
        self.check("watch_infotext", self.watch_infotext)
        self.check("model_is_sdxl", self.model_is_sdxl)
        self.check("flagged_manual_threshold", self.flagged_manual_threshold)
        self.check("api_info_carries_results", self.api_info_results)
        self.check("model_key_is_the_checkpoint_hash", self.model_key)
        for name in ("attention", "embedding"):
            self.check(f"script_strategy_{name}", self.strategy(name))
        self.check("calibration_post_native", self.calibration_post_small)
        self.check("ui_panel_words", self.ui_panel_words)
        self.check("request_options_threshold", self.request_options_threshold)
        self.check("watch_on_off_pixel_identical", self.watch_off_identical(""))
        self.check("api_score_native", self.api_score_native)

    def run(self) -> None:
        host = self.args.host
        self.check("install", self.install)
        self.check("checkpoint", self.checkpoint)
        if any(r["status"] == "FAIL" for r in self.results):
            self.state["down"] = "preparation failed"
        self.check("prepare", self.prepare)
        if any(r["status"] == "FAIL" for r in self.results):
            self.state["down"] = "preparation failed"
        self.check("boot", self.boot)
        if self.args.arch == "sdxl":
            self.run_sdxl()
            return
        self.check("clean_start", self.clean_start)
        self.check("routes_401_without_credentials", self.routes_require_auth)
        self.check("routes_with_credentials", self.routes_with_auth)
        self.check("calibration_get_source", self.calibration_get)
        self.check("api_score_512_before_first_generation", self.api_score)
        self.check("watch_infotext", self.watch_infotext)
        self.check("flagged_manual_threshold", self.flagged_manual_threshold)
        self.check("api_info_carries_results", self.api_info_results)
        self.check("audit_log_verdict", self.audit_log)
        for name in STRATEGIES:
            self.check(f"script_strategy_{name}", self.strategy(name))
        self.check("request_options_threshold", self.request_options_threshold)
        for name in STRATEGIES:
            self.check(f"request_options_mitigate_{name}", self.strategy(name, via="request"))
        self.check("script_with_override_settings", self.script_override_settings)
        self.check("setting_action_mitigate", self.mitigate_setting)
        for name in ("DPM++ 2M", "DDIM", "UniPC"):
            self.check(f"sampler_{name.replace(' ', '_')}", self.sampler(name))
        self.check("hires_fix", self.hires)
        self.check("hires_fix_with_guard", self.hires_guard)
        self.check("prompt_AND", self.prompt_case("a red house AND a green tree", "AND"))
        self.check("prompt_BREAK", self.prompt_case("a red house BREAK a green tree", "BREAK"))
        self.check("prompt_over_75_tokens", self.prompt_case(LONG_PROMPT, f"{len(LONG_PROMPT.split())} words"))
        self.check("watch_on_off_pixel_identical", self.watch_off_identical(""))
        self.check("watch_on_off_pixel_identical_negative", self.watch_off_identical("blurry"))
        self.check("forge_freeu_64px_host_only", self.forge_freeu_64_host, hosts=("forge",))
        self.check("forge_freeu", self.forge_freeu(False), hosts=("forge",))
        self.check("forge_freeu_hires", self.forge_freeu(True), hosts=("forge",))
        self.check("forge_freeu_guard", self.forge_freeu(False, guard=True), hosts=("forge",))
        self.check("model_key_is_the_checkpoint_hash", self.model_key)
        self.check("ui_panel_words", self.ui_panel_words)
        self.check("api_score_explain_512", self.api_score_explain)
        self.check("ui_tab_analyze_512", self.ui_tab_analyze)
        del host


def export_memguard(checkout: Path, rev: str, cache: str) -> tuple[Path, str]:
    """``git archive REV`` of the memguard checkout into ``CACHE/memguard-SHA`` (once): a fixed tree to install."""
    sha = subprocess.run(
        ["git", "-C", str(checkout), "rev-parse", "--verify", rev + "^{commit}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    dest = Path(cache).expanduser().resolve() / f"memguard-{sha[:12]}"
    if not (dest / "scripts" / "memguard.py").exists():
        part = dest.with_name(dest.name + ".part")
        shutil.rmtree(part, ignore_errors=True)
        part.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(checkout), "archive", sha], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(part)], input=archive.stdout, check=True)
        shutil.rmtree(dest, ignore_errors=True)
        part.rename(dest)
    return dest, sha


def print_table(results: list[dict], meta: dict) -> None:
    width = max((len(r["check"]) for r in results), default=10)
    print()
    host, memguard = meta.get("webui_commit", "")[:10], meta.get("memguard_commit", "")[:10]
    print(f"memguard in {meta['host']} ({host}), memguard {memguard}")
    for r in results:
        reason = r["reason"].splitlines()[0][:160] if r["reason"] else ""
        print(f"  {r['check']:<{width}}  {r['status']:<4}  {reason}")
    counts = {s: sum(r["status"] == s for r in results) for s in ("PASS", "FAIL", "SKIP")}
    print(f"{counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped")
    print(f"peak WebUI RSS {meta.get('peak_rss_mb')} MiB; lowest MemAvailable {meta.get('min_available_mb')} MiB")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="memguard end-to-end in a real A1111 or Forge WebUI (opt-in).")
    parser.add_argument("--webui", required=True, help="a prepared WebUI checkout (see setup.sh)")
    parser.add_argument(
        "--host", required=True, choices=("a1111", "forge", "reforge"), help="reforge: Panchovix's fork (best effort)"
    )
    parser.add_argument("--python", help="the WebUI's Python (default: WEBUI/venv/bin/python)")
    parser.add_argument("--report", help="JSON report path (default: OUT/realhost-HOST.json)")
    parser.add_argument("--out", default=None, help="logs, screenshots (default: out/realhost under the project)")
    parser.add_argument("--port", type=int)
    parser.add_argument("--cache", default="~/.cache/memguard-realhost", help="checkpoint and HF cache")
    parser.add_argument(
        "--arch",
        choices=("sd15", "sdxl"),
        default="sd15",
        help="sdxl: a random-weight SDXL checkpoint (about 7 GB fp16, 14 GB in the WebUI) and the SDXL subset",
    )
    parser.add_argument("--checkpoint", help="use this checkpoint (of --arch) instead of the random one")
    parser.add_argument("--ldm", help="stablediffusion repository for making the SD1.5 checkpoint")
    parser.add_argument("--sgm", help="generative-models repository for making the SDXL checkpoint")
    parser.add_argument("--sd-config", help="v1-inference.yaml (sd_xl_base.yaml) for making the checkpoint")
    parser.add_argument(
        "--boot-min-free-gb",
        type=float,
        default=None,
        help="memory available to wait for (up to 10 min) before booting; default 17 with --arch sdxl, else 0",
    )
    parser.add_argument(
        "--kill-below-gb",
        type=float,
        default=None,
        help="kill the WebUI when the machine's available memory falls below this (default 1 with --arch sdxl, "
        "else 0 = off); the WebUI also gets oom_score_adj 1000",
    )
    parser.add_argument(
        "--calibration-prompts",
        type=lambda text: [p.strip() for p in text.split("|") if p.strip()],
        default=["a red house by a lake", "a bowl of fruit on a table"],
        help="SDXL: the prompts of the native-size calibration check, separated by |",
    )
    parser.add_argument("--boot-timeout", type=float, default=900)
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default 4; 2 with --arch sdxl)")
    parser.add_argument(
        "--mitigation-timeout", type=float, default=None, help="seconds for a guarded generation (900; 2400 sdxl)"
    )
    parser.add_argument("--max-minutes", type=float, default=150, help="checks still waiting then are skipped")
    parser.add_argument(
        "--min-free-gb",
        type=float,
        default=None,
        help="free memory to wait for before a native-size call (beyond the WebUI; default 9, 4 with --arch sdxl)",
    )
    parser.add_argument("--only", action="append", default=[], help="regex: run only matching checks (+ setup)")
    parser.add_argument("--skip", action="append", default=[], help="regex: skip matching checks")
    parser.add_argument("--extra-flag", action="append", default=[], help="one more WebUI flag (repeatable)")
    parser.add_argument("--memguard", help="the memguard checkout to install (default: the project this script is in)")
    parser.add_argument(
        "--memguard-rev",
        help="install this commit of the memguard checkout instead of its work tree (git archive into --cache)",
    )
    parser.add_argument(
        "--setting",
        action="append",
        default=None,
        help="KEY=JSON set through /sdapi/v1/options after boot, restored at the end (repeatable; default "
        "memguard_auto_calibrate=false: calibrating 320 prompts at 512 px takes most of an hour on 2 cores)",
    )
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    args.webui = str(Path(args.webui).resolve())
    if args.steps is None:
        args.steps = 2 if args.arch == "sdxl" else 4
    if args.mitigation_timeout is None:
        args.mitigation_timeout = 2400 if args.arch == "sdxl" else 900
    if args.min_free_gb is None:
        args.min_free_gb = 4.0 if args.arch == "sdxl" else 9.0
    if args.boot_min_free_gb is None:
        args.boot_min_free_gb = 17.0 if args.arch == "sdxl" else 0.0
    if args.kill_below_gb is None:
        args.kill_below_gb = 1.0 if args.arch == "sdxl" else 0.0
    args.python = args.python or str(Path(args.webui) / "venv" / "bin" / "python")
    args.port = args.port or DEFAULT_PORT[args.host]
    args.out = args.out or str(PROJECT / "out" / "realhost")
    suffix = "-sdxl" if args.arch == "sdxl" else ""
    args.report = args.report or str(Path(args.out) / f"realhost-{args.host}{suffix}.json")
    if args.only:
        args.only += ["^install$", "^checkpoint$", "^prepare$", "^boot$"]
    if args.setting is None:
        args.setting = ["memguard_auto_calibrate=false"]
        if args.arch == "sdxl":  # A1111's live preview (Approx NN) downloads vaeapprox-sdxl.pt at the first step
            args.setting.append("live_previews_enable=false")
    args.memguard = Path(args.memguard or PROJECT).resolve()
    args.memguard_commit = None
    if args.memguard_rev:
        args.memguard, args.memguard_commit = export_memguard(args.memguard, args.memguard_rev, args.cache)

    run = Run(args)

    def hard_stop(*_a) -> None:
        if run.current is not None:  # the check in flight: its log excerpt before the WebUI goes
            name, t0, since = run.current
            excerpt = run.excerpt(since)
            run.record(name, "FAIL", "aborted (signal or --max-minutes watchdog)", time.monotonic() - t0, 0, excerpt)
        run.webui.stop()
        run.meta["aborted"] = "deadline or signal"
        with contextlib.suppress(Exception):
            run.write_report()
            print_table(run.results, run.meta)
        os._exit(3)

    signal.signal(signal.SIGTERM, hard_stop)
    signal.signal(signal.SIGINT, hard_stop)
    watchdog = threading.Timer(args.max_minutes * 60 + 1800, hard_stop)  # a hung check cannot keep it alive
    watchdog.daemon = True
    watchdog.start()
    try:
        run.run()
    finally:
        if run.webui.alive():
            run.restore_settings()
        run.webui.stop()
        watchdog.cancel()
        run.write_report()
    print_table(run.results, run.meta)
    print(f"report: {args.report}; WebUI log: {run.webui.log_path}")
    return 1 if any(r["status"] == "FAIL" for r in run.results) else 0


if __name__ == "__main__":
    sys.exit(main())
