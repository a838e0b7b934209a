"""Which models and jobs memguard can score, probed from the loaded model and the processing object (never from a
version string).

memguard's score is Wen et al.'s ``d = ||eps(x_T, c) - eps(x_T, empty)||`` at the first sampling step of a
DDPM-trained noise (eps) or v predictor, read from the host's classifier-free-guidance batch; the thresholds are
calibrated on that quantity. It does not apply to:

* **flow-matching models**: SD3 on A1111 1.10 (the model brings its own k-diffusion denoiser, ``create_denoiser``,
  which ``modules/sd_samplers_kdiffusion.py: CFGDenoiserKDiffusion.inner_model`` uses instead of ldm's
  ``CompVisDenoiser``; ``modules/models/sd3/sd3_model.py``), SD3 and Flux on Forge (their ``KModel`` predictor has
  ``prediction_type == "const"``: ``backend/modules/k_prediction.py: PredictionDiscreteFlow``, ``PredictionFlux``;
  reForge's ``model_sampling`` classes ``ModelSamplingDiscreteFlow``/``ModelSamplingFlux``). They predict a velocity
  between noise and image, not DDPM noise; Wen's ``d`` and its calibration are not defined for them;
* **guidance-distilled models**: Forge's Flux dev (``use_distilled_cfg_scale``: the guidance scale is an input of the
  network, ``backend/diffusion_engine/flux.py``), sampled without an unconditional pass to compare with;
* **img2img and inpainting jobs** (``modules/processing.py: StableDiffusionProcessingImg2Img``; memguard's scripts
  show in txt2img only, but extensions run img2img jobs with txt2img's scripts, ADetailer's inpainting pass for one):
  their first step starts from the init image noised to the denoising strength, not from ``x_T``.

For those the generation runs untouched and memguard says once why it did not score it (:class:`Unscorable`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Unscorable:
    """Why memguard does not apply: ``code`` (the infotext's word), ``what`` (a short name, each image's reason) and
    ``why`` (one sentence)."""

    code: str
    what: str
    why: str

    @property
    def reason(self) -> str:
        """Each image's ``ImageResult.reason``: verdict ``unscored``."""
        return f"not applicable: {self.what}"

    @property
    def notice(self) -> str:
        """What the run says once (the panel's notice, the log)."""
        return f"memguard does not apply to {self.what}: {self.why}; the images were generated untouched (not scored)"


FLOW = Unscorable(
    "flow-matching",
    "a flow-matching model",
    "it predicts a velocity between noise and image, not diffusion noise, and memguard's score (Wen et al.'s "
    "first-step noise difference) and its calibration are defined for noise- or v-predicting diffusion models",
)
DISTILLED = Unscorable(
    "guidance-distilled",
    "a guidance-distilled model",
    "the guidance scale is an input of the network and the host samples it without an unconditional pass, so there "
    "is no empty-prompt prediction to measure the prompt's pull against",
)
IMG2IMG = Unscorable(
    "img2img",
    "img2img or inpainting",
    "the first step starts from the init image noised to the denoising strength, not from pure noise x_T, where "
    "memguard's score is defined",
)


KINDS = (FLOW, DISTILLED, IMG2IMG)


def infotext_value(reason: str) -> str | None:
    """The infotext's ``Memguard reason`` for an image's reason: ``not-applicable/<code>`` (a value the host needs
    not quote), or None for any other reason."""
    found = next((kind for kind in KINDS if kind.reason == reason), None)
    return None if found is None else f"not-applicable/{found.code}"


class NotApplicable(RuntimeError):
    """The loaded model is one memguard cannot score (the tab's and the API's error)."""


def is_img2img(p: Any) -> bool:
    """Whether ``p`` is an img2img (or inpainting) job: the host's ``StableDiffusionProcessingImg2Img``, or a
    processing object with init images."""
    try:
        from modules.processing import StableDiffusionProcessingImg2Img
    except ImportError:
        StableDiffusionProcessingImg2Img = None
    if StableDiffusionProcessingImg2Img is not None and isinstance(p, StableDiffusionProcessingImg2Img):
        return True
    return getattr(p, "init_images", None) is not None


def _predictor(sd_model: Any) -> Any:
    """Forge's ``KModel.predictor`` or reForge's ``model_sampling`` of the sampling UNet, if any."""
    unet = getattr(getattr(sd_model, "forge_objects", None), "unet", None)
    model = getattr(unet, "model", None)
    found = getattr(model, "predictor", None)
    return found if found is not None else getattr(model, "model_sampling", None)


def model_unscorable(sd_model: Any) -> Unscorable | None:
    """Why memguard cannot score ``sd_model`` (see the module docstring), or None."""
    if sd_model is None:
        return None
    if getattr(sd_model, "use_distilled_cfg_scale", False) is True:
        return DISTILLED
    predictor = _predictor(sd_model)
    if predictor is not None:
        kind = getattr(predictor, "prediction_type", None)
        if kind is not None and kind not in ("epsilon", "eps", "v_prediction", "v"):
            return FLOW
        if kind is None and any(word in type(predictor).__name__ for word in ("Flow", "Flux")):
            return FLOW
    if callable(getattr(sd_model, "create_denoiser", None)):
        return FLOW
    return None


def unscorable(p: Any = None, sd_model: Any = None) -> Unscorable | None:
    """Why memguard cannot score the job ``p`` on the loaded model (``shared.sd_model`` unless given), or None."""
    if p is not None and is_img2img(p):
        return IMG2IMG
    if sd_model is None:
        try:
            from modules import shared
        except ImportError:
            return None
        sd_model = getattr(shared, "sd_model", None)
    return model_unscorable(sd_model)
