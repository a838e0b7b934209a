"""Fake ``backend`` package of Stable Diffusion WebUI Forge (see ``tests/fakeforge/__init__.py``).

Only what the post-CFG path and the UNet patcher need: ``attention``, ``sampling`` (``sampling_function``,
``condition``), ``patcher`` (``ModelPatcher``, ``UnetPatcher``), ``modules.k_model`` (``KModel`` and its
predictor), ``nn.unet`` (the UNet as patches see it) and ``diffusion_engine`` (the loaded model object).
"""
