"""Mirrors ``modules/shared_cmd_options.py`` / ``cmd_args.py``: the parsed command line ``cmd_opts``.

Only the flags the double reads, with the host's defaults for a plain ``python launch.py`` (``--api`` off,
``--nowebui`` off, no ``--api-auth``). Tests flip them before :func:`modules.initialize.start`.
"""

from __future__ import annotations

import argparse
import os

from modules import paths

cmd_opts = argparse.Namespace(
    api=False,
    nowebui=False,
    api_auth=None,
    api_server_stop=False,
    gradio_auth=None,
    listen=False,
    freeze_settings=False,
    freeze_settings_in_sections=None,
    freeze_specific_settings=None,
    hide_ui_dir_config=False,
    no_prompt_history=False,
    enable_console_prompts=False,
    embeddings_dir=os.path.join(paths.data_path, "embeddings"),
    skip_load_model_at_start=False,
    no_half=True,
    use_cpu=["all"],
    ckpt=None,
)
parser = argparse.ArgumentParser()
