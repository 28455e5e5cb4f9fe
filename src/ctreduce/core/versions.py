"""Library versions recorded in every output (a Pillow upgrade once changed hashes by 2 bits).

Each command records the libraries its output depends on (``LIBRARIES`` beside it: the reduction, the
export, pre-training, fine-tuning); :func:`library_versions` is the one place that looks them up.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable


def library_versions(names: Iterable[str]) -> dict[str, str]:
    """``{"python": ..., name: version or "not installed"}`` for installed distributions."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out
