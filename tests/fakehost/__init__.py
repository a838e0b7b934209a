"""A faithful test double of the AUTOMATIC1111 Stable Diffusion WebUI 1.10.1 host (commit 82a973c0).

The double is a ``modules`` package (plus a tiny ``k_diffusion`` package) that lives in this directory. Tests put
the directory on ``sys.path`` with :func:`install` and import ``modules.*`` exactly as an extension running inside
the WebUI would. Every fake module names, in its docstring, the host file and functions it mirrors. The code is an
independent re-implementation of the host's *behaviour* (call order, tensor layout, parameter objects and attribute
names), written from the host's source as a reference; no host code is copied (the host is AGPL).

Typical use::

    import fakehost
    fakehost.install()                           # tests/fakehost on sys.path; ``import modules`` now works
    from modules import scripts                  # define Script subclasses against the fake host here
    host = fakehost.boot(model_dir, script_classes=[MyScript], api=True)  # start-up order: modules/initialize.py
    p = host.txt2img_processing("My Script", prompt="a cat", steps=4, batch_size=2, width=16, height=16,
                                sampler_name="Euler", seed=1)   # script inputs at their defaults, dropdown set
    processed = host.run_txt2img(p)              # UI path: dropdown script's run() via args[0], else process_images
    response = host.api.text2imgapi({"prompt": "a cat", "script_name": "my script", "script_args": [...]})
    fakehost.uninstall()                         # forget every modules* / k_diffusion* module

The model is pixel-space, so ``width``/``height`` are the sample size in pixels (the processing default is the
host's 512); use the UNet's ``sample_size``.

The model is a diffusers directory (``unet/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``) loaded with
``memguard.pipeline.Model.load``; see ``modules/sd_models.py`` for how it is wrapped like an ldm ``LatentDiffusion``.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent
_PACKAGES = ("modules", "k_diffusion")


def install() -> ModuleType:
    """Put the double's directory first on ``sys.path`` and return the (fresh or already imported) ``modules``."""
    path = str(HERE)
    if path not in sys.path:
        sys.path.insert(0, path)
    import modules

    return modules


def uninstall() -> None:
    """Drop every ``modules*`` and ``k_diffusion*`` entry from ``sys.modules`` and the directory from ``sys.path``.

    The next :func:`install` then starts from a pristine host (fresh options, callbacks, state and caches).
    """
    paths = sys.modules.get("modules.paths")
    if paths is not None:  # the temporary data directory (params.txt, saved images) of this install
        shutil.rmtree(paths.data_path, ignore_errors=True)
    for name in list(sys.modules):
        if any(name == pkg or name.startswith(pkg + ".") for pkg in _PACKAGES):
            del sys.modules[name]
    while str(HERE) in sys.path:
        sys.path.remove(str(HERE))


def boot(model_dir: str | Path, **kwargs: Any):
    """Install the double and run the WebUI start-up sequence; returns a :class:`modules.initialize.Host`.

    Keyword arguments are those of :func:`modules.initialize.start` (``extension_dirs``, ``script_classes``,
    ``api``, ``nowebui``, ``builtin_scripts``).
    """
    install()
    from modules import initialize

    return initialize.start(model_dir, **kwargs)
