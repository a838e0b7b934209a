"""Mirrors ``modules/scripts.py`` of A1111 1.10.1: ``Script``, ``AlwaysVisible``, the hook argument objects,
``load_scripts`` and ``ScriptRunner``.

Kept from the host:

* ``load_scripts`` clears all callbacks, then imports each extension's ``scripts/*.py`` (sorted) with the
  extension directory on ``sys.path`` only while loading, registering every ``Script`` subclass found in the
  module's namespace (including ``Script`` itself when imported by name, as the host does);
* ``ScriptRunner.initialize_scripts(is_img2img)`` instantiates every class, sets ``filename``, ``is_txt2img``,
  ``is_img2img``, ``tabname`` and sorts scripts into ``alwayson_scripts`` (``show() is AlwaysVisible``) and
  ``selectable_scripts`` (truthy ``show()``);
* ``setup_ui`` assigns argument ranges like the host: ``inputs[0]`` is the script dropdown, AlwaysVisible scripts'
  ``ui()`` controls come first, then the selectable scripts'; ``args_from``/``args_to`` index into ``inputs``;
  ``name`` = lower-cased title; ``api_info`` from the controls' ``label``/``value``/``minimum``/``maximum``/
  ``step``/``choices``; ``infotext_fields`` and ``paste_field_names`` collected;
* ``run(p, *args)``: ``args[0]`` is the dropdown index (0 or None: no script, returns None); the selected script's
  ``run(p, *args[args_from:args_to])``;
* the hook dispatchers (``before_process``, ``process``, ``before_process_batch``, ``process_batch``,
  ``process_before_every_sampling``, ``postprocess_batch``, ``postprocess_batch_list``, ``post_sample``,
  ``postprocess_image``, ``postprocess_maskoverlay``, ``postprocess_image_after_composite``, ``postprocess``,
  ``before_hr``, ``setup``) call only AlwaysVisible scripts that override the method, each with
  ``p.script_args[args_from:args_to]``, inside ``try/except`` reported through ``errors.report``.

Not mirrored: gradio (no Blocks/Groups are built: controls are whatever ``ui()`` returns, and a control's default
is its ``.value``), ``metadata.ini`` ordering, postprocessing scripts, ``reload_sources``.
"""

from __future__ import annotations

import inspect
import os
import re
import sys
from collections import namedtuple
from dataclasses import dataclass
from typing import Any

from modules import errors, extensions, paths, script_callbacks, script_loading

AlwaysVisible = object()


class MaskBlendArgs:
    def __init__(self, current_latent, nmask, init_latent, mask, blended_latent, denoiser=None, sigma=None):
        self.current_latent = current_latent
        self.nmask = nmask
        self.init_latent = init_latent
        self.mask = mask
        self.blended_latent = blended_latent
        self.denoiser = denoiser
        self.is_final_blend = denoiser is None
        self.sigma = sigma


class PostSampleArgs:
    def __init__(self, samples):
        self.samples = samples


class PostprocessImageArgs:
    def __init__(self, image):
        self.image = image


class PostProcessMaskOverlayArgs:
    def __init__(self, index, mask_for_overlay, overlay_image):
        self.index = index
        self.mask_for_overlay = mask_for_overlay
        self.overlay_image = overlay_image


class PostprocessBatchListArgs:
    def __init__(self, images):
        self.images = images


@dataclass
class OnComponent:
    component: Any


class Script:
    """Base class of txt2img/img2img scripts; see the host docstrings for when each method runs."""

    name = None
    section = None
    filename = None
    args_from = None
    args_to = None
    alwayson = False
    is_txt2img = False
    is_img2img = False
    tabname = None
    group = None
    create_group = True
    infotext_fields = None
    paste_field_names = None
    api_info = None
    on_before_component_elem_id = None
    on_after_component_elem_id = None
    setup_for_ui_only = False
    controls = None

    def title(self):
        raise NotImplementedError()

    def ui(self, is_img2img):
        pass

    def show(self, is_img2img):
        return True

    def run(self, p, *args):
        pass

    def setup(self, p, *args):
        pass

    def before_process(self, p, *args):
        pass

    def process(self, p, *args):
        pass

    def before_process_batch(self, p, *args, **kwargs):
        pass

    def after_extra_networks_activate(self, p, *args, **kwargs):
        pass

    def process_before_every_sampling(self, p, *args, **kwargs):
        pass

    def process_batch(self, p, *args, **kwargs):
        pass

    def postprocess_batch(self, p, *args, **kwargs):
        pass

    def postprocess_batch_list(self, p, pp, *args, **kwargs):
        pass

    def on_mask_blend(self, p, mba, *args):
        pass

    def post_sample(self, p, ps, *args):
        pass

    def postprocess_image(self, p, pp, *args):
        pass

    def postprocess_maskoverlay(self, p, ppmo, *args):
        pass

    def postprocess_image_after_composite(self, p, pp, *args):
        pass

    def postprocess(self, p, processed, *args):
        pass

    def before_component(self, component, **kwargs):
        pass

    def after_component(self, component, **kwargs):
        pass

    def on_before_component(self, callback, *, elem_id):
        if self.on_before_component_elem_id is None:
            self.on_before_component_elem_id = []
        self.on_before_component_elem_id.append((elem_id, callback))

    def on_after_component(self, callback, *, elem_id):
        if self.on_after_component_elem_id is None:
            self.on_after_component_elem_id = []
        self.on_after_component_elem_id.append((elem_id, callback))

    def describe(self):
        return ""

    def elem_id(self, item_id):
        """``script_[txt2img_|img2img_]<sanitized title>_<item_id>`` (tab prefix when shown on both tabs)."""
        need_tabname = self.show(True) == self.show(False)
        tabname = f"{'img2img' if self.is_img2img else 'txt2img'}_" if need_tabname else ""
        title = re.sub(r"[^a-z_0-9]", "", re.sub(r"\s", "_", self.title().lower()))
        return f"script_{tabname}{title}_{item_id}"

    def before_hr(self, p, *args):
        pass


class ScriptBuiltinUI(Script):
    setup_for_ui_only = True

    def elem_id(self, item_id):
        need_tabname = self.show(True) == self.show(False)
        tabname = ("img2img" if self.is_img2img else "txt2img") + "_" if need_tabname else ""
        return f"{tabname}{item_id}"

    def show(self, is_img2img):
        return AlwaysVisible


current_basedir = paths.script_path


def basedir():
    """The extension directory of the script being loaded (the WebUI root otherwise)."""
    return current_basedir


ScriptFile = namedtuple("ScriptFile", ["basedir", "filename", "path"])
ScriptClassData = namedtuple("ScriptClassData", ["script_class", "path", "basedir", "module"])
scripts_data: list[ScriptClassData] = []
postprocessing_scripts_data: list = []


def list_scripts(extension_dirs: list[str]) -> list[ScriptFile]:
    """``scripts/*.py`` of each extension, sorted by name within an extension (registers the extensions)."""
    files = []
    for ext_dir in extension_dirs:
        ext = extensions.register(ext_dir)
        script_dir = os.path.join(ext.path, "scripts")
        if not os.path.isdir(script_dir):
            continue
        for filename in sorted(os.listdir(script_dir)):
            path = os.path.join(script_dir, filename)
            if os.path.isfile(path) and os.path.splitext(filename)[1].lower() == ".py":
                files.append(ScriptFile(ext.path, filename, path))
    return files


def load_scripts(extension_dirs: list[str] = (), script_classes: list[type] = (), builtin_scripts: bool = True) -> None:
    """Mirrors ``scripts.load_scripts``: clear callbacks, import the extensions' scripts, make new runners.

    The WebUI's own dropdown scripts come first (placeholders, see ``builtin_scripts``). ``script_classes`` (not in
    the host) registers classes defined in test modules as if loaded from their file, after the extensions.
    """
    global current_basedir, scripts_txt2img, scripts_img2img
    scripts_data.clear()
    postprocessing_scripts_data.clear()
    script_callbacks.clear_callbacks()
    if builtin_scripts:
        from modules import builtin_scripts as builtins

        scripts_data.extend(builtins.script_data())

    syspath = sys.path
    for scriptfile in list_scripts(list(extension_dirs)):
        try:
            if scriptfile.basedir != paths.script_path:
                sys.path = [scriptfile.basedir] + sys.path
            current_basedir = scriptfile.basedir
            module = script_loading.load_module(scriptfile.path)
            for obj in module.__dict__.values():
                if inspect.isclass(obj) and issubclass(obj, Script):
                    scripts_data.append(ScriptClassData(obj, scriptfile.path, scriptfile.basedir, module))
        except Exception:
            errors.report(f"Error loading script: {scriptfile.filename}", exc_info=True)
        finally:
            sys.path = syspath
            current_basedir = paths.script_path

    for cls in script_classes:
        path = inspect.getfile(cls)
        scripts_data.append(ScriptClassData(cls, path, os.path.dirname(path), sys.modules.get(cls.__module__)))

    scripts_txt2img = ScriptRunner()
    scripts_img2img = ScriptRunner()


def wrap_call(func, filename, funcname, *args, default=None, **kwargs):
    try:
        return func(*args, **kwargs)
    except Exception:
        errors.report(f"Error calling: {filename}/{funcname}", exc_info=True)
    return default


@dataclass
class _Group:
    """Stands for the ``gr.Group`` the host wraps each script's UI in."""

    visible: bool


class ScriptDropdown:
    """Stands for the host's ``gr.Dropdown(label="Script", elem_id="script_list", type="index")``."""

    def __init__(self, choices: list[str]):
        self.label = "Script"
        self.elem_id = "script_list"
        self.choices = choices
        self.value = "None"
        self.type = "index"


class ScriptRunner:
    def __init__(self) -> None:
        self.scripts: list[Script] = []
        self.selectable_scripts: list[Script] = []
        self.alwayson_scripts: list[Script] = []
        self.titles: list[str] = []
        self.title_map: dict[str, Script] = {}
        self.infotext_fields: list = []
        self.paste_field_names: list = []
        self.inputs: list = [None]
        self.callback_map: dict = {}
        self.on_before_component_elem_id: dict = {}
        self.on_after_component_elem_id: dict = {}

    def initialize_scripts(self, is_img2img: bool) -> None:
        self.scripts.clear()
        self.alwayson_scripts.clear()
        self.selectable_scripts.clear()
        for data in scripts_data:
            try:
                script = data.script_class()
            except Exception:
                errors.report(f"Error # failed to initialize Script {data.module}: ", exc_info=True)
                continue
            script.filename = data.path
            script.is_txt2img = not is_img2img
            script.is_img2img = is_img2img
            script.tabname = "img2img" if is_img2img else "txt2img"
            visibility = script.show(script.is_img2img)
            if visibility == AlwaysVisible:
                self.scripts.append(script)
                self.alwayson_scripts.append(script)
                script.alwayson = True
            elif visibility:
                self.scripts.append(script)
                self.selectable_scripts.append(script)
        self.callback_map.clear()
        self.apply_on_before_component_callbacks()

    def apply_on_before_component_callbacks(self) -> None:
        for script in self.scripts:
            for elem_id, callback in script.on_before_component_elem_id or []:
                self.on_before_component_elem_id.setdefault(elem_id, []).append((callback, script))
            for elem_id, callback in script.on_after_component_elem_id or []:
                self.on_after_component_elem_id.setdefault(elem_id, []).append((callback, script))
            (script.on_before_component_elem_id or []).clear()
            (script.on_after_component_elem_id or []).clear()

    def create_script_ui(self, script: Script) -> None:
        script.args_from = len(self.inputs)
        script.args_to = len(self.inputs)
        try:
            self.create_script_ui_inner(script)
        except Exception:
            errors.report(f"Error creating UI for {script.name}: ", exc_info=True)

    def create_script_ui_inner(self, script: Script) -> None:
        from modules.api import models as api_models

        controls = wrap_call(script.ui, script.filename, "ui", script.is_img2img)
        script.controls = controls
        if controls is None:
            return
        script.name = wrap_call(script.title, script.filename, "title", default=script.filename).lower()
        api_args = []
        for control in controls:
            control.custom_script_source = os.path.basename(script.filename)
            arg = api_models.ScriptArg(label=getattr(control, "label", None) or "")
            for name in ("value", "minimum", "maximum", "step"):
                v = getattr(control, name, None)
                if v is not None:
                    setattr(arg, name, v)
            choices = getattr(control, "choices", None)
            if choices is not None:
                arg.choices = [x[0] if isinstance(x, tuple) else x for x in choices]
            api_args.append(arg)
        script.api_info = api_models.ScriptInfo(
            name=script.name, is_img2img=script.is_img2img, is_alwayson=script.alwayson, args=api_args
        )
        if script.infotext_fields is not None:
            self.infotext_fields += script.infotext_fields
        if script.paste_field_names is not None:
            self.paste_field_names += script.paste_field_names
        self.inputs += controls
        script.args_to = len(self.inputs)

    def setup_ui_for_section(self, section: Any, scriptlist: list[Script] | None = None) -> None:
        for script in self.alwayson_scripts if scriptlist is None else scriptlist:
            if script.alwayson and script.section != section:
                continue
            if script.create_group:
                self.create_script_ui(script)
                script.group = _Group(visible=script.alwayson)
            else:
                self.create_script_ui(script)

    def prepare_ui(self) -> None:
        self.inputs = [None]

    def setup_ui(self) -> list:
        """Build the (gradio-less) script UI: AlwaysVisible controls, the dropdown, then the selectable ones."""
        all_titles = [wrap_call(s.title, s.filename, "title") or s.filename for s in self.scripts]
        self.title_map = {title.lower(): s for title, s in zip(all_titles, self.scripts)}
        self.titles = [
            wrap_call(s.title, s.filename, "title") or f"{s.filename} [error]" for s in self.selectable_scripts
        ]
        for section in dict.fromkeys(
            s.section for s in self.alwayson_scripts
        ):  # the host builds other sections elsewhere in the page
            self.setup_ui_for_section(section)
        self.inputs[0] = ScriptDropdown(["None"] + self.titles)
        self.setup_ui_for_section(None, self.selectable_scripts)
        self.infotext_fields.append((self.inputs[0], lambda x: x.get("Script", "None")))
        self.apply_on_before_component_callbacks()
        return self.inputs

    def default_script_args(self, script_title: str | None = None) -> list:
        """Test helper (not in the host): what the UI submits with every control at its default, and the
        dropdown at ``script_title`` (None: "None")."""
        args = [getattr(c, "value", None) for c in self.inputs]
        args[0] = 0 if script_title is None else self.titles.index(script_title) + 1
        return args

    def run(self, p, *args):
        """Run the dropdown script selected by ``args[0]`` (an index; 0/None = none, returns None)."""
        script_index = args[0]
        if script_index == 0 or script_index is None:
            return None
        script = self.selectable_scripts[script_index - 1]
        if script is None:
            return None
        processed = script.run(p, *args[script.args_from : script.args_to])
        from modules import shared

        shared.total_tqdm.clear()
        return processed

    def list_scripts_for_method(self, method_name: str) -> list[Script]:
        if method_name in ("before_component", "after_component"):
            return self.scripts
        return self.alwayson_scripts

    def create_ordered_callbacks_list(self, method_name: str, *, enable_user_sort: bool = True) -> list:
        category = f"script_{method_name}"
        callbacks: list = []
        for script in self.list_scripts_for_method(method_name):
            if getattr(script.__class__, method_name, None) == getattr(Script, method_name, None):
                continue
            script_callbacks.add_callback(
                callbacks, script, category=category, name=script.__class__.__name__, filename=script.filename
            )
        return script_callbacks.sort_callbacks(category, callbacks, enable_user_sort=enable_user_sort)

    def ordered_callbacks(self, method_name: str, *, enable_user_sort: bool = True) -> list:
        script_list = self.list_scripts_for_method(method_name)
        category = f"script_{method_name}"
        count, callbacks = self.callback_map.get(category, (-1, None))
        if callbacks is None or count != len(script_list):
            callbacks = self.create_ordered_callbacks_list(method_name, enable_user_sort=enable_user_sort)
            self.callback_map[category] = len(script_list), callbacks
        return callbacks

    def ordered_scripts(self, method_name: str) -> list[Script]:
        return [x.callback for x in self.ordered_callbacks(method_name)]

    def _each(self, method_name: str, p: Any, *pre: Any, label: str | None = None, **kwargs: Any) -> None:
        for script in self.ordered_scripts(method_name):
            try:
                script_args = p.script_args[script.args_from : script.args_to]
                getattr(script, method_name)(p, *pre, *script_args, **kwargs)
            except Exception:
                errors.report(f"Error running {label or method_name}: {script.filename}", exc_info=True)

    def before_process(self, p) -> None:
        self._each("before_process", p)

    def process(self, p) -> None:
        self._each("process", p)

    def process_before_every_sampling(self, p, **kwargs) -> None:
        self._each("process_before_every_sampling", p, **kwargs)

    def before_process_batch(self, p, **kwargs) -> None:
        self._each("before_process_batch", p, **kwargs)

    def after_extra_networks_activate(self, p, **kwargs) -> None:
        self._each("after_extra_networks_activate", p, **kwargs)

    def process_batch(self, p, **kwargs) -> None:
        self._each("process_batch", p, **kwargs)

    def postprocess(self, p, processed) -> None:
        self._each("postprocess", p, processed)

    def postprocess_batch(self, p, images, **kwargs) -> None:
        self._each("postprocess_batch", p, images=images, **kwargs)

    def postprocess_batch_list(self, p, pp: PostprocessBatchListArgs, **kwargs) -> None:
        self._each("postprocess_batch_list", p, pp, **kwargs)

    def post_sample(self, p, ps: PostSampleArgs) -> None:
        self._each("post_sample", p, ps)

    def on_mask_blend(self, p, mba: MaskBlendArgs) -> None:
        self._each("on_mask_blend", p, mba, label="post_sample")

    def postprocess_image(self, p, pp: PostprocessImageArgs) -> None:
        self._each("postprocess_image", p, pp)

    def postprocess_maskoverlay(self, p, ppmo: PostProcessMaskOverlayArgs) -> None:
        self._each("postprocess_maskoverlay", p, ppmo, label="postprocess_image")

    def postprocess_image_after_composite(self, p, pp: PostprocessImageArgs) -> None:
        self._each("postprocess_image_after_composite", p, pp)

    def before_hr(self, p) -> None:
        self._each("before_hr", p)

    def setup_scrips(self, p, *, is_ui: bool = True) -> None:
        for script in self.ordered_scripts("setup"):
            if not is_ui and script.setup_for_ui_only:
                continue
            try:
                script.setup(p, *p.script_args[script.args_from : script.args_to])
            except Exception:
                errors.report(f"Error running setup: {script.filename}", exc_info=True)

    def before_component(self, component, **kwargs) -> None:
        for callback, script in self.on_before_component_elem_id.get(kwargs.get("elem_id"), []):
            try:
                callback(OnComponent(component=component))
            except Exception:
                errors.report(f"Error running on_before_component: {script.filename}", exc_info=True)
        for script in self.ordered_scripts("before_component"):
            try:
                script.before_component(component, **kwargs)
            except Exception:
                errors.report(f"Error running before_component: {script.filename}", exc_info=True)

    def after_component(self, component, **kwargs) -> None:
        for callback, script in self.on_after_component_elem_id.get(getattr(component, "elem_id", None), []):
            try:
                callback(OnComponent(component=component))
            except Exception:
                errors.report(f"Error running on_after_component: {script.filename}", exc_info=True)
        for script in self.ordered_scripts("after_component"):
            try:
                script.after_component(component, **kwargs)
            except Exception:
                errors.report(f"Error running after_component: {script.filename}", exc_info=True)

    def script(self, title: str) -> Script | None:
        return self.title_map.get(title.lower())

    def set_named_arg(self, args, script_name, arg_elem_id, value, fuzzy=False):
        script = next((x for x in self.scripts if x.name == script_name), None)
        if script is None:
            raise RuntimeError(f"script {script_name} not found")
        for i, control in enumerate(script.controls):
            elem = getattr(control, "elem_id", None) or ""
            if (arg_elem_id in elem) if fuzzy else (arg_elem_id == elem):
                index = script.args_from + i
                if isinstance(args, tuple):
                    return args[:index] + (value,) + args[index + 1 :]
                if isinstance(args, list):
                    args[index] = value
                    return args
                raise RuntimeError(f"args is not a list or tuple, but {type(args)}")
        raise RuntimeError(f"arg_elem_id {arg_elem_id} not found in script {script_name}")


scripts_txt2img: ScriptRunner = ScriptRunner()
scripts_img2img: ScriptRunner = ScriptRunner()
scripts_current: ScriptRunner | None = None
