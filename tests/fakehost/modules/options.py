"""Mirrors ``modules/options.py`` of A1111 1.10.1: ``OptionInfo``, ``options_section`` and ``Options``.

Behaviour kept: ``opts.key`` reads ``data`` first, then the registered default, and raises ``AttributeError`` for an
unknown key; assignment to a registered key writes ``data`` (refused for ``do_not_save`` options and for components
declared ``visible: False``); ``set`` returns whether the value changed and honours ``restrict_api``;
``add_option`` registers a key and seeds ``data`` with its default; ``cast_value`` converts infotext strings.
Dropped: file load/save, settings freezing flags, categories ordering and ``dumpjson`` details.
"""

from __future__ import annotations

from typing import Any

from modules import errors


class OptionInfo:
    """A setting's declaration (mirrors ``options.OptionInfo``; same constructor and chaining helpers)."""

    def __init__(
        self,
        default: Any = None,
        label: str = "",
        component: Any = None,
        component_args: Any = None,
        onchange: Any = None,
        section: Any = None,
        refresh: Any = None,
        comment_before: str = "",
        comment_after: str = "",
        infotext: str | None = None,
        restrict_api: bool = False,
        category_id: str | None = None,
    ):
        self.default = default
        self.label = label
        self.component = component
        self.component_args = component_args
        self.onchange = onchange
        self.section = section
        self.category_id = category_id
        self.refresh = refresh
        self.do_not_save = False
        self.comment_before = comment_before
        self.comment_after = comment_after
        self.infotext = infotext
        self.restrict_api = restrict_api

    def link(self, label: str, url: str) -> OptionInfo:
        self.comment_before += f"[<a href='{url}' target='_blank'>{label}</a>]"
        return self

    def js(self, label: str, js_func: str) -> OptionInfo:
        self.comment_before += f"[<a onclick='{js_func}(); return false'>{label}</a>]"
        return self

    def info(self, info: str) -> OptionInfo:
        self.comment_after += f"<span class='info'>({info})</span>"
        return self

    def html(self, html: str) -> OptionInfo:
        self.comment_after += html
        return self

    def needs_restart(self) -> OptionInfo:
        self.comment_after += " <span class='info'>(requires restart)</span>"
        return self

    def needs_reload_ui(self) -> OptionInfo:
        self.comment_after += " <span class='info'>(requires Reload UI)</span>"
        return self


class OptionHTML(OptionInfo):
    """An informational settings row; never saved (mirrors ``options.OptionHTML``)."""

    def __init__(self, text: str):
        super().__init__(str(text).strip(), label="")
        self.do_not_save = True


def options_section(section_identifier: tuple, options_dict: dict[str, OptionInfo]) -> dict[str, OptionInfo]:
    """Mirrors ``options.options_section``: stamp ``section`` (and ``category_id`` for a 3-tuple) on each option."""
    for info in options_dict.values():
        if len(section_identifier) == 3:
            info.section = tuple(section_identifier[:2])
            info.category_id = section_identifier[2]
        else:
            info.section = section_identifier
    return options_dict


_BUILTIN = frozenset({"data_labels", "data", "restricted_opts", "typemap"})


class Options:
    """The settings object ``shared.opts`` (mirrors ``options.Options``)."""

    typemap = {int: float}

    def __init__(self, data_labels: dict[str, OptionInfo], restricted_opts: set[str]):
        object.__setattr__(self, "data_labels", data_labels)
        object.__setattr__(self, "data", {k: v.default for k, v in data_labels.items() if not v.do_not_save})
        object.__setattr__(self, "restricted_opts", restricted_opts)

    def __setattr__(self, key: str, value: Any) -> None:
        if key in _BUILTIN:
            object.__setattr__(self, key, value)
            return
        if key in self.data or key in self.data_labels:
            info = self.data_labels.get(key)
            if info is not None and info.do_not_save:
                return
            comp_args = info.component_args if info else None
            if isinstance(comp_args, dict) and comp_args.get("visible", True) is False:
                raise RuntimeError(f"not possible to set '{key}' because it is restricted")
            self.data[key] = value
            return
        object.__setattr__(self, key, value)

    def __getattr__(self, item: str) -> Any:
        # only called when normal lookup fails, i.e. for option keys and unknown names
        if item in _BUILTIN:
            raise AttributeError(item)
        data = self.__dict__.get("data")
        if data is not None and item in data:
            return data[item]
        labels = self.__dict__.get("data_labels", {})
        if item in labels:
            return labels[item].default
        raise AttributeError(f"'Options' object has no attribute '{item}'")

    def set(self, key: str, value: Any, is_api: bool = False, run_callbacks: bool = True) -> bool:
        """Set an option; True when it changed (mirrors ``Options.set``)."""
        if self.data.get(key, None) == value:
            return False
        option = self.data_labels[key]
        if option.do_not_save:
            return False
        if is_api and option.restrict_api:
            return False
        old = self.data.get(key, None)
        try:
            setattr(self, key, value)
        except RuntimeError:
            return False
        if run_callbacks and option.onchange is not None:
            try:
                option.onchange()
            except Exception as e:
                errors.display(e, f"changing setting {key} to {value}")
                setattr(self, key, old)
                return False
        return True

    def get_default(self, key: str) -> Any:
        info = self.data_labels.get(key)
        return None if info is None else info.default

    def add_option(self, key: str, info: OptionInfo) -> None:
        """Mirrors ``Options.add_option`` (what ``on_ui_settings`` callbacks call)."""
        self.data_labels[key] = info
        if key not in self.data and not info.do_not_save:
            self.data[key] = info.default

    def onchange(self, key: str, func: Any, call: bool = True) -> None:
        self.data_labels[key].onchange = func
        if call:
            func()

    def same_type(self, x: Any, y: Any) -> bool:
        if x is None or y is None:
            return True
        return self.typemap.get(type(x), type(x)) == self.typemap.get(type(y), type(y))

    def cast_value(self, key: str, value: Any) -> Any:
        """Mirrors ``Options.cast_value``: convert ``value`` to the type of the option's default."""
        if value is None:
            return None
        default = self.data_labels[key].default
        if default is None:
            default = getattr(self, key, None)
        if default is None:
            return None
        expected = type(default)
        if expected is bool and value == "False":
            return False
        return expected(value)

    def reset(self) -> None:
        """Test helper (not in the host): restore every option to its default."""
        self.data.clear()
        self.data.update({k: v.default for k, v in self.data_labels.items() if not v.do_not_save})
