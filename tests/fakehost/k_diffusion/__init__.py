"""Minimal stand-in for crowsonkb/k-diffusion 0.0.16 (commit ab527a9a, the version A1111 1.10.1 pins).

Only what the fake host uses: ``external.CompVisDenoiser`` / ``CompVisVDenoiser`` (discrete-schedule wrappers of
an ldm model) and ``sampling`` (``get_sigmas_karras``, ``get_sigmas_exponential``, ``sample_euler``,
``sample_euler_ancestral``, ``sample_dpmpp_2m``). Written from the update rules of Karras et al. 2022 (Euler and
ancestral steps) and Lu et al. 2022 (DPM-Solver++(2M)); the host replaces ``sampling.torch`` with its
``TorchHijack`` so that ``torch.randn_like`` draws per-image seeded noise, which these functions honour by looking
``torch`` up in their module at call time.
"""

from . import external, sampling, utils  # noqa: F401
