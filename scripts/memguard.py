"""memguard's WebUI entry: register callbacks, settings, the Memorization tab and the HTTP API; expose the scripts.

Everything lives in the ``memguard`` package (``memguard/hosts``); this file only wires it to the host.
"""

from modules import script_callbacks, shared

from memguard.api import register_routes
from memguard.hosts import a1111, forge, request, service_class, settings

if forge.is_forge():  # Forge: its modules_forge package imports
    from memguard.hosts.forge.scripts import make_scripts

    forge.register()
else:
    from memguard.hosts.a1111.scripts import make_scripts

    a1111.register()


def _tabs():
    from memguard.ui.tab import build_tab

    return [(build_tab(service_class()), "Memorization", "memorization")]


def _routes(_demo, app):
    register_routes(app, service_class(), getattr(shared.cmd_opts, "api_auth", None))


script_callbacks.on_ui_settings(settings.register)
script_callbacks.on_before_ui(request.add_xyz_axes)
script_callbacks.on_ui_tabs(_tabs)
script_callbacks.on_app_started(_routes)
MemguardWatch, MemguardGuard = make_scripts()
