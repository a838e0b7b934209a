"""memguard's WebUI entry: register the callbacks and settings, expose the scripts (see ``memguard.hosts``)."""

from modules import script_callbacks

from memguard.hosts import a1111, settings
from memguard.hosts.a1111_scripts import make_scripts

a1111.register()
script_callbacks.on_ui_settings(settings.register)
MemguardWatch, MemguardGuard = make_scripts()
