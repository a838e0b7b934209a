"""What memguard leaves in Forge's model options: a :class:`Hook`, the key of a live sampling pass and the name of
its method, never the pass itself."""

from __future__ import annotations

import itertools
import weakref
from dataclasses import dataclass
from typing import Any

from .denoiser import attention_function

# the live passes (``sampling_pass.Pass``) by key, for as long as their processing object holds them
LIVE: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()
KEYS = itertools.count(1)


@dataclass(frozen=True)
class Hook:
    """Forge's ``UnetPatcher.clone()`` deep-copies the model options (``backend/patcher/unet.py``), and FreeU, SAG,
    PAG, ControlNet and most other extensions clone the patcher memguard's clone has become; so the hook holds neither
    the pass nor the run nor the processing object (locks, models), only a key. A copy that outlives its pass (its
    generation ended) finds nothing and steps aside: the host's ``denoised`` or plain attention."""

    key: int
    name: str

    def __call__(self, *args: Any) -> Any:
        state = LIVE.get(self.key)
        if state is not None:
            return getattr(state, self.name)(*args)
        if self.name == "post_cfg":
            return args[0]["denoised"]
        q, k, v, extra = args
        return attention_function()(q, k, v, extra["n_heads"])
