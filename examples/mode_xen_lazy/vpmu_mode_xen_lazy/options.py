"""The mode's options as `vpmu modes` lists them (name -> help text).

A leaf module: registering the mode (`vpmu plugins`) reads these without importing the mode
itself (`mode.py`, which validates them)."""

from __future__ import annotations

OPTIONS: dict[str, str] = {
    "lazy": "load a non-counting context at its first PMU access instead of at schedule-in (Xen); default true",
    "emulated_instructions": "count (default: the counting rule of every vpmu mode) | xen (Xen counts none)",
}
