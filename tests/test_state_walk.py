"""The flat state view the fast-forward learns from and the verify switch compares
(hv/state_walk.py): a value it does not reach is a change neither can see."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import pytest

from vpmu_core.hv import state_walk


class Color(Enum):
    RED = 1


class Slotted:
    __slots__ = ("a", "b", "unset")

    def __init__(self) -> None:
        self.a = 1
        self.b = [2, {"k": 3}]


@dataclass(eq=False)
class Node:
    name: str
    value: int = 0
    child: Any = None
    items: dict[Any, Any] = field(default_factory=dict)
    tags: set[str] = field(default_factory=set)


def test_every_kind_of_leaf_is_reached_by_its_path() -> None:
    shared = Node("shared", 7)
    root = Node("root", 1, child=Slotted(), items={"x": shared, 2: (4, 5.5), None: deque([Color.RED])}, tags={"t"})
    view = state_walk.walk({"r": root, "again": shared})
    assert view[("r", (0, "value"))] == 1
    assert view[("r", (0, "child"), (0, "a"))] == 1
    assert view[("r", (0, "child"), (0, "b"), (1, 1), (1, "k"))] == 3
    assert view[("r", (0, "items"), (1, 2), (1, 1))] == 5.5
    assert view[("r", (0, "items"), (1, None), (1, 0))] is Color.RED
    assert view[("r", (0, "tags"))] == frozenset({"t"})
    # an object reached twice is entered once, by its shortest path (breadth first)
    assert view[("again", (0, "value"))] == 7
    assert ("r", (0, "items"), (1, "x"), (0, "value")) not in view
    assert not any(p[-1] == (0, "unset") for p in view)  # an unset slot is no value


class Cpu:
    def __init__(self, index: int) -> None:
        self.index = index


def test_objects_as_keys_are_named_by_name_index_else_identity() -> None:
    c, b = Cpu(3), object()
    n = Node("cpu0")
    view = state_walk.walk({"d": {n: 0, c: 1, b: 2}})
    assert view[("d", (1, ("@name", "Node", "cpu0")))] == 0
    assert view[("d", (1, ("@index", "Cpu", 3)))] == 1
    assert view[("d", (1, ("@", id(b))))] == 2


def test_stop_objects_and_skipped_attributes_are_not_entered() -> None:
    inner = Node("inner", 5)
    root = Node("root", 1, child=inner, items={"cache": 9})
    view = state_walk.walk({"r": root}, stop=[inner], skip_attrs=frozenset({"items"}))
    assert ("r", (0, "child"), (0, "value")) not in view
    assert not any((0, "items") in p for p in view)
    assert view[("r", (0, "value"))] == 1


def test_a_change_anywhere_shows_in_the_diff() -> None:
    root = Node("root", 1, child=Slotted(), items={"x": Node("x", 2)})
    before = state_walk.walk({"r": root})
    root.child.b[1]["k"] += 1
    after = state_walk.walk({"r": root})
    assert state_walk.diff(before, after) == ["r.child.b[1]['k']: 3 != 4"]


def test_a_view_too_large_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(state_walk, "MAX_LEAVES", 10)
    with pytest.raises(state_walk.TooLarge):
        state_walk.walk({"r": [Node(str(i), i) for i in range(50)]})
