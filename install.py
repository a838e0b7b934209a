"""Run by the WebUI when memguard is installed or the WebUI starts (A1111 1.10 ``launch_utils``).

memguard needs nothing the WebUI does not already ship (torch, gradio, numpy, transformers, safetensors, fastapi),
and this script never touches those. The one file it needs beyond them is the CLIP BPE vocabulary inside
``open-clip-torch``, which A1111 installs; where it is missing (some forks), the package is added without its
dependencies, so nothing the host pinned is upgraded.
"""

import importlib.util

import launch

if importlib.util.find_spec("open_clip") is None and not launch.is_installed("open_clip_torch"):
    launch.run_pip("install --no-deps open-clip-torch==3.3.0", "open-clip-torch (CLIP vocabulary) for memguard")
