"""LAMB (You et al. 2020), the optimiser SparK pre-trains with: timm's ``Lamb`` with SparK's settings.

Official SparK (keyu-tian/SparK ``pretrain/utils/lamb.py``) uses a verbatim copy of timm 0.5.4's
``Lamb`` ("TheSameAsTimmLAMB"), built in ``pretrain/main.py`` with ``betas=(0.9, 0.95)`` (ResNets,
``utils/arg_util.py``), ``max_grad_norm=5.0`` and timm's defaults ``eps=1e-6``, ``trust_clip=False``
(no cap on the trust ratio), ``always_adapt=False`` (no trust ratio for a group without weight
decay). timm's current ``Lamb`` computes the same update (``tests/test_ssl_spark.py`` checks it
step by step against that copy). The global gradient-norm clipping at 5 is left to the Trainer
(``PretrainConfig.grad_clip`` -> ``gradient_clip_val``, the same ``||g|| > 5 -> g * 5 / ||g||``),
so that it also applies when another optimiser is chosen, as in official SparK.
"""

from __future__ import annotations

import torch

SPARK_BETAS = (0.9, 0.95)  # official SparK for ResNets: betas=(0.9, args.ada), ada = 0.95


def LAMB(params, lr: float, betas: tuple[float, float] = SPARK_BETAS, eps: float = 1e-6,
         weight_decay: float = 0.0, max_grad_norm: float | None = None, trust_clip: bool = False,
         always_adapt: bool = False) -> torch.optim.Optimizer:
    """timm's ``Lamb`` with official SparK's settings; per-group ``weight_decay`` comes with ``params``.

    A group with weight decay 0 gets plain Adam steps (no trust ratio) unless ``always_adapt``;
    ``max_grad_norm`` (None: off) clips inside the step, ``trust_clip`` caps the trust ratio at 1.
    """
    try:
        from timm.optim import Lamb
    except ModuleNotFoundError as exc:  # pragma: no cover - timm is part of the train extra
        raise ModuleNotFoundError("the LAMB optimiser needs timm: pip install 'ctreduce[train]'") from exc

    return Lamb(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, max_grad_norm=max_grad_norm,
                trust_clip=trust_clip, always_adapt=always_adapt)
