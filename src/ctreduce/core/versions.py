"""Library versions recorded in every output (a Pillow upgrade once changed hashes by 2 bits)."""

from __future__ import annotations

import sys
from collections.abc import Iterable


def package_versions(names: Iterable[str]) -> dict[str, str]:
    """``{"python": ..., name: version or "not installed"}`` for installed distributions."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out
