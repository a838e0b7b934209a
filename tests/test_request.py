"""Per-request options (memguard's always-on script argument): what is accepted, how it is normalized, and the
messages that say which option is wrong and why."""

from __future__ import annotations

import json
import math
import sys
import types
from types import SimpleNamespace

import pytest

from memguard.hosts.request import FIELDS, XYZ_ATTR, OptionsError, add_xyz_axes, parse
from memguard.strategies import NAMES


@pytest.mark.parametrize("nothing", [None, "", {}, "{}"])
def test_no_options_are_an_empty_dict(nothing):
    assert parse(nothing) == {}


def test_every_option_as_an_object_or_as_json_text():
    options = {"watch": False, "action": "mitigate", "strategy": "attention", "threshold": 2.5, "explain": True}
    options["force"] = True
    assert parse(options) == options
    assert parse(json.dumps(options)) == options


def test_the_options_and_their_descriptions():
    assert list(FIELDS) == ["watch", "action", "strategy", "threshold", "explain", "force"]
    assert FIELDS["action"][0] == ("warn", "mitigate")
    assert FIELDS["strategy"][0] == NAMES
    assert all(isinstance(doc, str) and doc for _, doc in FIELDS.values())


def test_a_threshold_is_a_positive_finite_number_given_as_a_float():
    assert parse({"threshold": 3}) == {"threshold": 3.0}
    assert type(parse({"threshold": 3})["threshold"]) is float
    assert parse({"threshold": 1e-9}) == {"threshold": 1e-9}
    for bad in (0, 0.0, -1.0, math.inf, math.nan, True, "2.5", None):
        with pytest.raises(OptionsError, match=r"^memguard option 'threshold' must be a number above 0, not "):
            parse({"threshold": bad})


@pytest.mark.parametrize("name", ["watch", "explain", "force"])
def test_switches_take_only_true_or_false(name):
    assert parse({name: True}) == {name: True}
    assert parse({name: False}) == {name: False}
    for bad in (1, 0, "true", None):
        with pytest.raises(OptionsError, match=rf"^memguard option '{name}' must be true or false, not {bad!r}$"):
            parse({name: bad})


def test_choices_name_the_allowed_values():
    for strategy in NAMES:
        assert parse({"strategy": strategy}) == {"strategy": strategy}
    assert parse({"action": "warn"}) == {"action": "warn"}
    with pytest.raises(OptionsError, match=r"^memguard option 'action' must be one of warn, mitigate, not 'block'$"):
        parse({"action": "block"})
    with pytest.raises(OptionsError, match=r"^memguard option 'strategy' must be one of auto, embedding, attention"):
        parse({"strategy": "Attention"})


def test_an_unknown_option_is_named_with_the_known_ones():
    with pytest.raises(OptionsError) as raised:
        parse({"watch": True, "zeta": 1, "alpha": 2})
    assert str(raised.value) == (
        "unknown memguard option 'alpha'; known: watch, action, strategy, threshold, explain, force"
    )


def test_text_that_is_not_json_is_refused():
    with pytest.raises(OptionsError, match=r"^memguard's argument is not JSON: Expecting value"):
        parse("mitigate")


@pytest.mark.parametrize("value", [["action", "mitigate"], '["mitigate"]', 3, True])
def test_anything_but_an_object_is_refused_with_an_example(value):
    with pytest.raises(OptionsError) as raised:
        parse(value)
    shown = json.loads(value) if isinstance(value, str) else value
    assert str(raised.value) == (
        f'memguard\'s argument must be an object such as {{"action": "mitigate"}}, not {shown!r}'
    )


# --- the X/Y/Z plot's axes ------------------------------------------------------------------------------------------
class AxisOption:
    """``scripts/xyz_grid.py``'s ``AxisOption`` (A1111 1.10.1), as an extension constructs it."""

    def __init__(self, label, type, apply, format_value=None, confirm=None, cost=0.0, choices=None, prepare=None):
        self.label, self.type, self.apply, self.choices = label, type, apply, choices


class AxisOptionTxt2Img(AxisOption):
    pass


def xyz_plot(monkeypatch, *, txt2img_axes: bool = True) -> types.ModuleType:
    """The X/Y/Z plot script's module among the host's loaded scripts (``modules.scripts.scripts_data``), after a
    script of another file and an entry of the plot's file whose module did not load."""
    xyz = types.ModuleType("xyz_grid.py")
    xyz.AxisOption = AxisOption
    if txt2img_axes:
        xyz.AxisOptionTxt2Img = AxisOptionTxt2Img
    xyz.boolean_choice = lambda reverse=False: lambda: ["True", "False"]
    xyz.axis_options = [AxisOption("Seed", int, None)]
    data = [
        SimpleNamespace(script_class=type("Other", (), {"__module__": "other.py"}), module=types.ModuleType("o")),
        SimpleNamespace(script_class=type("Script", (), {"__module__": "xyz_grid.py"}), module=None),
        SimpleNamespace(script_class=type("Script", (), {"__module__": "xyz_grid.py"}), module=xyz),
    ]
    monkeypatch.setitem(sys.modules, "modules", SimpleNamespace(scripts=SimpleNamespace(scripts_data=data)))
    return xyz


def axes(xyz) -> dict:
    return {o.label: o for o in xyz.axis_options[1:]}


def test_memguard_adds_its_three_xyz_axes_once(monkeypatch):
    xyz = xyz_plot(monkeypatch)
    add_xyz_axes()
    add_xyz_axes()  # a second UI build adds nothing
    assert [o.label for o in xyz.axis_options] == [
        "Seed",
        "[memguard] Strategy",
        "[memguard] Threshold",
        "[memguard] Explain",
    ]
    added = axes(xyz)
    assert all(type(o) is AxisOptionTxt2Img for o in added.values())
    assert [o.type for o in added.values()] == [str, float, str]
    assert added["[memguard] Strategy"].choices() == ["off", *NAMES]
    assert added["[memguard] Threshold"].choices is None
    assert added["[memguard] Explain"].choices() == ["True", "False"]


def test_xyz_axes_of_a_plot_without_txt2img_axis_options(monkeypatch):
    xyz = xyz_plot(monkeypatch, txt2img_axes=False)
    add_xyz_axes()
    assert [type(o) for o in xyz.axis_options] == [AxisOption] * 4


def test_without_the_xyz_plot_no_axes_are_added(monkeypatch):
    other = SimpleNamespace(script_class=type("Other", (), {"__module__": "other.py"}), module=None)
    monkeypatch.setitem(sys.modules, "modules", SimpleNamespace(scripts=SimpleNamespace(scripts_data=[other])))
    add_xyz_axes()  # nothing to add to, nothing raised


def test_each_xyz_cell_carries_its_options_on_the_processing_object(monkeypatch):
    xyz = xyz_plot(monkeypatch)
    add_xyz_axes()
    added = axes(xyz)
    p = SimpleNamespace()
    added["[memguard] Strategy"].apply(p, "attention", ["off", "attention"])
    assert getattr(p, XYZ_ATTR) == {"action": "mitigate", "strategy": "attention"}
    added["[memguard] Threshold"].apply(p, 2.5, [2.5])
    added["[memguard] Explain"].apply(p, "True", ["True", "False"])
    assert getattr(p, XYZ_ATTR) == {"action": "mitigate", "strategy": "attention", "threshold": 2.5, "explain": True}
    # the options parse as a request's
    assert parse(getattr(p, XYZ_ATTR)) == getattr(p, XYZ_ATTR)
    off = SimpleNamespace()
    added["[memguard] Strategy"].apply(off, "off", ["off"])
    added["[memguard] Explain"].apply(off, "False", ["False"])
    assert getattr(off, XYZ_ATTR) == {"action": "warn", "explain": False}  # off: watch only, the setting's strategy
