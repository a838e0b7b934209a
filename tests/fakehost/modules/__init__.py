"""Fake ``modules`` package of the AUTOMATIC1111 WebUI 1.10.1 (see ``tests/fakehost/__init__.py``).

Only the parts an extension touches are present: callbacks, options/state, the processing pipeline (txt2img with
hires fix), the CFG denoiser, a few samplers, prompt parsing and conditioning, scripts, the txt2img API and
infotext parsing. Each module's docstring names the host file it mirrors and states its simplifications.
"""
