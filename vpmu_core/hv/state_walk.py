"""A flat view of the model's mutable state: every plain value reachable from named roots.

The VM-exit fast-forward (hv/fast_forward.py) compares the view before and after an exit to
learn what one exit changes, and adds that change in bulk; `VPMU_FF_VERIFY` and the tests
compare whole views of two runs. A path is the chain of attribute names and container keys
from a root; reading never calls code (no properties), so walking cannot change the state.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable
from enum import Enum
from functools import partial
from types import BuiltinFunctionType, FunctionType, MethodType, ModuleType
from typing import Any

import pluggy
from pydantic import BaseModel

#: a step of a path: (0, attribute name) or (1, container key or index)
Step = tuple[int, Any]
Path = tuple[Any, ...]

_LEAF = (int, float, str, bytes, bool, type(None), Enum)
_OPAQUE = (
    type,
    ModuleType,
    FunctionType,
    BuiltinFunctionType,
    MethodType,
    partial,
    random.Random,
    BaseModel,  # frozen configuration records
    pluggy.PluginManager,
)
#: a view larger than this is refused (the fast-forward then runs exits one by one)
MAX_LEAVES = 200_000


class TooLarge(Exception):
    """The state has more leaves than MAX_LEAVES."""


def _slots(cls: type) -> Iterable[str]:
    for k in cls.__mro__:
        s = k.__dict__.get("__slots__", ())
        yield from (s,) if isinstance(s, str) else s


def _key(k: Any) -> Any:
    """A dict key in a path: itself if plain; an object by its name or index where it has
    one (a vCPU, a CPU: stable across two runs), else by identity."""
    if isinstance(k, _LEAF):
        return k
    name = getattr(k, "name", None)
    if isinstance(name, str):
        return ("@name", type(k).__name__, name)
    index = getattr(k, "index", None)
    if type(index) is int:
        return ("@index", type(k).__name__, index)
    return ("@", id(k))


_LEAF_T, _OPAQUE_T, _DICT_T, _SEQ_T, _SET_T, _OBJ_T = range(6)
#: type -> how to walk it (and an object type's slot names): resolved once per type
_KINDS: dict[type, tuple[int, tuple[str, ...]]] = {}


def _kind(t: type) -> tuple[int, tuple[str, ...]]:
    k = _KINDS.get(t)
    if k is None:
        if issubclass(t, _LEAF):
            k = (_LEAF_T, ())
        elif issubclass(t, _OPAQUE):
            k = (_OPAQUE_T, ())
        elif issubclass(t, dict):
            k = (_DICT_T, ())
        elif issubclass(t, list | tuple | deque):
            k = (_SEQ_T, ())
        elif issubclass(t, set | frozenset):
            k = (_SET_T, ())
        elif callable(t) and "__call__" in t.__dict__ and not hasattr(t, "__dict__"):
            k = (_OPAQUE_T, ())
        else:
            k = (_OBJ_T, tuple(n for n in _slots(t) if n != "__weakref__" and n != "__dict__"))
        _KINDS[t] = k
    return k


def walk(roots: dict[str, Any], stop: Iterable[Any] = (), skip_attrs: frozenset[str] = frozenset()) -> dict[Path, Any]:
    """path -> value for every plain value reachable from `roots`, not entering the objects
    in `stop` nor attributes named in `skip_attrs`. Sets are one value. Breadth first: each
    object is entered once and named by its shortest path (`host.cpus[0]`, not the same CPU
    reached through some cache keyed by object ids), so two runs name it alike. A leaf is
    recorded when its container is entered, not queued: leaves are never entered, so the
    objects are named as before, and the view is the same mapping (a probe views the state
    twice: this is most of its cost)."""
    out: dict[Path, Any] = {}
    seen = {id(o) for o in stop}
    kinds = _KINDS
    queue: deque[tuple[Path, Any, tuple[int, tuple[str, ...]]]] = deque()
    push = queue.append

    def visit(path: Path, v: Any) -> None:
        t = type(v)
        k = kinds.get(t)
        if k is None:
            k = _kind(t)
        if k[0] == _LEAF_T:
            out[path] = v
        elif k[0] != _OPAQUE_T:
            push((path, v, k))

    for name, root in roots.items():
        visit((name,), root)
    while queue:
        path, obj, (kind, slots) = queue.popleft()
        i = id(obj)
        if i in seen:
            continue
        seen.add(i)
        if kind == _DICT_T:
            for k, v in obj.items():
                visit((*path, (1, k if isinstance(k, _LEAF) else _key(k))), v)
        elif kind == _SEQ_T:
            for n, v in enumerate(obj):
                visit((*path, (1, n)), v)
        elif kind == _SET_T:
            out[path] = frozenset(_key(x) for x in obj)
        else:
            if len(out) > MAX_LEAVES:
                raise TooLarge
            d = getattr(obj, "__dict__", None)
            if d is not None:
                for k, v in d.items():
                    if k not in skip_attrs:
                        visit((*path, (0, k)), v)
            for k in slots:
                if k not in skip_attrs:
                    try:
                        v = getattr(obj, k)
                    except AttributeError:
                        continue
                    visit((*path, (0, k)), v)
    return out


def resolve(roots: dict[str, Any], path: Path) -> tuple[Any, Step]:
    """The container holding the value at `path`, and the last step into it."""
    obj = roots[path[0]]
    for kind, k in path[1:-1]:
        if kind == 0:
            obj = getattr(obj, k)
        elif isinstance(k, tuple) and k and str(k[0]).startswith("@"):
            obj = obj[_find(obj, k)]
        else:
            obj = obj[k]
    return obj, path[-1]


def add(roots: dict[str, Any], path: Path, delta: int) -> None:
    """Add `delta` to the integer at `path`."""
    obj, (kind, k) = resolve(roots, path)
    if kind == 0:
        setattr(obj, k, getattr(obj, k) + delta)
    elif isinstance(k, tuple) and k and str(k[0]).startswith("@"):
        obj[_find(obj, k)] += delta
    else:
        obj[k] += delta


def value_at(roots: dict[str, Any], path: Path) -> Any:
    """The value at `path`."""
    obj, (kind, k) = resolve(roots, path)
    if kind == 0:
        return getattr(obj, k)
    if isinstance(k, tuple) and k and str(k[0]).startswith("@"):
        return obj[_find(obj, k)]
    return obj[k]


def assign(roots: dict[str, Any], path: Path, value: Any) -> None:
    """Set the value at `path` (the fast-forward's positional fields)."""
    obj, (kind, k) = resolve(roots, path)
    if kind == 0:
        setattr(obj, k, value)
    elif isinstance(k, tuple) and k and str(k[0]).startswith("@"):
        obj[_find(obj, k)] = value
    else:
        obj[k] = value


def _find(d: dict[Any, Any], key: Any) -> Any:
    return next(kk for kk in d if _key(kk) == key)


def comparable(view: dict[Path, Any]) -> dict[Path, Any]:
    """The part of a view two runs can share: without values reached through identity keys
    (object ids differ between runs); sets by size."""
    out = {}
    for p, v in view.items():
        if any(type(k) is tuple and k[:1] == ("@",) or type(k) is int and k > 1 << 40 for _, k in p[1:]):
            continue
        out[p] = len(v) if isinstance(v, frozenset) else v
    return out


class Adder:
    """`add` for many paths and many calls, each path's container resolved once (for a
    sequence in which no container is replaced: the accumulators of one batch)."""

    def __init__(self, roots: dict[str, Any]) -> None:
        self.roots = roots
        self._slots: dict[Path, tuple[Any, int, Any]] = {}

    def add(self, path: Path, delta: int) -> None:
        slot = self._slots.get(path)
        if slot is None:
            obj, (kind, k) = resolve(self.roots, path)
            if kind != 0 and isinstance(k, tuple) and k and str(k[0]).startswith("@"):
                k = _find(obj, k)
            slot = self._slots[path] = (obj, kind, k)
        obj, kind, k = slot
        if kind == 0:
            setattr(obj, k, getattr(obj, k) + delta)
        else:
            obj[k] += delta


def diff(a: dict[Path, Any], b: dict[Path, Any], limit: int = 10) -> list[str]:
    """The first paths whose values differ between two views (for error messages)."""
    out = []
    for p in sorted(set(a) | set(b), key=repr):
        if a.get(p, "<absent>") != b.get(p, "<absent>"):
            out.append(f"{format_path(p)}: {a.get(p, '<absent>')!r} != {b.get(p, '<absent>')!r}")
            if len(out) >= limit:
                break
    return out


def format_path(p: Path) -> str:
    s = str(p[0])
    for kind, k in p[1:]:
        s += f".{k}" if kind == 0 else f"[{k!r}]"
    return s
