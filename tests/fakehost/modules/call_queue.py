"""Mirrors ``modules/call_queue.py`` of A1111 1.10.1 (and Forge) as far as extensions see it: ``queue_lock``, the one
lock every GPU job holds.

``wrap_gradio_gpu_call`` (the txt2img / img2img buttons) and the host's own API (``Api.text2imgapi``: ``with
self.queue_lock``) run a generation while holding it; the double's ``txt2img.txt2img`` / ``txt2img.run`` and
``Api.text2imgapi`` take it where the host does. The host's lock is a ``fifo_lock.FIFOLock`` (waiters served in
arrival order); the double's is a plain lock with the same ``acquire`` / ``release`` / context-manager interface
(order among waiters is not mirrored).
"""

from __future__ import annotations

import threading

queue_lock = threading.Lock()
