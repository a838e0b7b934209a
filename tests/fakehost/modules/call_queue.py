"""Mirrors ``modules/call_queue.py`` of A1111 1.10.1 as far as extensions see it: ``queue_lock``, the one lock every
generation holds (the UI's ``wrap_gradio_gpu_call`` and ``Api.text2imgapi``, which ``webui.py`` hands this lock).
The fake's ``txt2img.txt2img`` / ``txt2img.run`` and ``Api.text2imgapi`` take it where the host does.
"""

from __future__ import annotations

import threading

queue_lock = threading.Lock()
