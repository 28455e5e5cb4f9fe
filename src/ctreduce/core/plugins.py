"""Plug-ins: modules outside ctreduce that register a reduction measure, a pre-training method or an
export format, the same way the built-in ones register (docs/architecture.md, "Extending ctreduce").

A plug-in module registers when it is imported. It reaches ctreduce in one of two ways, both read the
first time a registry is asked what it holds (once per process, so worker processes load them too):

- an installed package declares it as an entry point in the group ``ctreduce.plugins``
  (``[project.entry-points."ctreduce.plugins"] toy = "ctreduce_toy"`` in its pyproject.toml);
- the environment variable ``CTREDUCE_PLUGINS`` lists importable modules, comma-separated.
"""

from __future__ import annotations

import os
from importlib import import_module
from importlib.metadata import entry_points

GROUP = "ctreduce.plugins"
VARIABLE = "CTREDUCE_PLUGINS"

_state = {"loaded": False, "loading": False}


class PluginError(ValueError):
    """A plug-in that cannot be imported; the message names it, where it was declared and why."""


def plugin_modules() -> list[tuple[str, str]]:
    """(where it was declared, module) of every plug-in: entry points first, then ``CTREDUCE_PLUGINS``."""
    found = [(f"entry point {ep.name!r} of {ep.dist.name if ep.dist else 'an installed package'}", ep.value)
             for ep in entry_points(group=GROUP)]
    return found + [(VARIABLE, name.strip()) for name in os.environ.get(VARIABLE, "").split(",") if name.strip()]


def load_plugins() -> None:
    """Import every plug-in once. A plug-in that fails to import is a :class:`PluginError` (again at the next
    call: nothing is half registered silently). Re-entrant: a plug-in may ask a registry while it loads."""
    if _state["loaded"] or _state["loading"]:
        return
    _state["loading"] = True
    try:
        for origin, name in plugin_modules():
            module = name.split(":", 1)[0]  # an entry point may name an object: its module registers
            try:
                import_module(module)
            except Exception as exc:  # whatever the plug-in raised, said in one line
                reason = " ".join(str(exc).split()) or type(exc).__name__
                raise PluginError(f"plug-in {module!r} ({origin}) cannot be loaded: {type(exc).__name__}: "
                                  f"{reason}") from exc
        _state["loaded"] = True
    finally:
        _state["loading"] = False
