"""The registry of mitigation strategies: the names every surface offers and how a name becomes a strategy."""

from __future__ import annotations

import pytest

from memguard import strategies
from memguard.mitigate import Attention, Auto, Embedding, Guidance


def test_the_names_offered_and_the_default():
    assert strategies.NAMES == ("auto", "embedding", "attention", "guidance")
    assert strategies.DEFAULT == "auto"


@pytest.mark.parametrize(("name", "kind"), [("embedding", Embedding), ("attention", Attention), ("guidance", Guidance)])
def test_each_name_builds_its_strategy_with_its_defaults(name, kind):
    strategy = strategies.build(name)
    assert type(strategy) is kind
    assert strategy == kind()
    assert strategy.name == name


@pytest.mark.parametrize("name", ["attention", "guidance"])
def test_strategies_without_gradients_build_where_the_host_allows_no_backward_pass(name):
    assert strategies.build(name, gradients=False) == strategies.build(name)


def test_auto_uses_gradients_unless_the_host_forbids_them():
    assert strategies.build("auto") == Auto(gradients=True)
    assert strategies.build("auto", gradients=True).gradients is True
    assert strategies.build("auto", gradients=False) == Auto(gradients=False)


def test_embedding_without_gradients_is_refused_with_the_reason():
    with pytest.raises(RuntimeError, match=r"^embedding optimization needs gradients, which this host does not allow"):
        strategies.build("embedding", gradients=False)


@pytest.mark.parametrize("name", ["Auto", "", "none", "attention "])
def test_an_unknown_name_is_refused_with_the_names_to_use(name):
    with pytest.raises(ValueError, match=r"^unknown strategy .*; use one of auto, embedding, attention, guidance$"):
        strategies.build(name)
    with pytest.raises(ValueError) as raised:
        strategies.build(name)
    assert repr(name) in str(raised.value)
