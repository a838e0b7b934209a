"""The AUTOMATIC1111 1.10 seam: everything that knows the WebUI's callbacks, processing object and CFG batch layout.

Reading (A1111 1.10.1 ``modules/sd_samplers_cfg_denoiser.py``, ``CFGDenoiser.forward``): ``on_cfg_denoiser`` fires
before the UNet with the batched inputs (all conditional rows, one per ``AND`` sub-prompt per image, then one
unconditional row per image) and reads ``text_cond`` back; ``on_cfg_denoised`` fires after it with the raw outputs;
``on_cfg_after_cfg`` with the guided result, read back. k-diffusion samplers output the denoised ``x0`` (so
``eps = (x - x0) / sigma``), timestep samplers (DDIM, PLMS, UniPC) output ``eps`` with ``sigma`` the integer timestep.

* watch (every generation, unless switched off): at ``denoiser.step == 0`` of the first pass, Wen's ``d`` per image
  from the host's own CFG batch in ``on_cfg_denoised`` (no extra UNet pass with an empty negative prompt; one batch of
  empty-prompt rows otherwise, or when the host skipped its unconditional pass);
* mitigate (the "Memorization guard" script, or the setting): at ``step == 0`` in ``on_cfg_denoiser``, score the
  images with one extra CFG batch, run the first-step flow (``memguard.flow``) on the flagged ones and substitute
  their rows of ``text_cond`` (a new tensor: the host caches conds across generations) for this and every later
  call; the attention edit stays hooked for the rest of sampling, the guidance schedule is applied in
  ``on_cfg_after_cfg``.

Modules, by job: ``conditioning`` (tensor or SDXL dict, extension prefix rows), ``process`` (the per-process state),
``run`` (one generation's state and lifecycle), ``host`` (what is read from the WebUI), ``denoiser`` (the UNet call
as ``eps``), ``callbacks``, ``first_step`` (score, explain, mitigate), ``prompt_tokens`` (the host's tokens on the
typed words), ``mitigation`` (the intervention in force), ``report`` (infotext, log lines, payload), ``scripts`` and
``service`` (the WebUI scripts; the tab's and the API's model interface). The lifecycle (who starts, finishes and
clears what) is in ``docs/architecture.md``.

Any failure inside memguard is recorded and shown ("memguard could not score this image: ..."); it never fails or
alters the generation: every callback is shielded (nothing it raises reaches the host), a strategy that fails (out
of memory, say) is abandoned before it takes effect (the images are those of an unmitigated run) and its memory
released, and after any other fault the run stops intervening and only watches (:meth:`Run.fail`).
"""

from .callbacks import register
from .conditioning import crossattn, take, with_crossattn
from .host import current_threshold, host_queue, interrupted, model_key, native_latent, store, text_model
from .process import PROCESS, log_failure
from .prompt_tokens import encoded_subprompt, host_tokens, keep_positions
from .report import INFOTEXT, INFOTEXT_KEYS, infotext, payload, summary_lines
from .run import ATTR, Run, Step0, finish, run_of, start, start_failed

__all__ = [
    "ATTR",
    "INFOTEXT",
    "INFOTEXT_KEYS",
    "PROCESS",
    "Run",
    "Step0",
    "crossattn",
    "current_threshold",
    "encoded_subprompt",
    "finish",
    "host_queue",
    "host_tokens",
    "infotext",
    "interrupted",
    "keep_positions",
    "log_failure",
    "model_key",
    "native_latent",
    "payload",
    "register",
    "run_of",
    "start",
    "start_failed",
    "store",
    "summary_lines",
    "take",
    "text_model",
    "with_crossattn",
]
