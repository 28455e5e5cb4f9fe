"""SparK's sparse encoder emulated with dense ops on a torchvision ResNet (official ``pretrain/encoder.py``).

The masked image is treated as a sparse point set: the input is zeroed at masked pixels, every ``Conv2d``,
``MaxPool2d`` and residual block output is multiplied by the active mask at its resolution (forward hooks), and
every ``BatchNorm2d`` becomes a *sparse* batch norm that normalises with, and updates its running statistics from,
the active positions only (``SparseSyncBatchNorm2d`` across processes under DDP on GPUs, as official SparK's
``sbn``). Without a mask set, hooks and sparse BNs are exact no-ops and ``state_dict`` keys are torchvision's.
Also timm's stochastic depth and zero-initialised last BN per residual branch, as official SparK's ResNet.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# --- masks at every resolution ---------------------------------------------------------------------


def resize_active(active: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bool (N, gh, gw) active grid -> bool (N, 1, h, w) at a feature map's resolution.

    Finer maps repeat each grid cell (nearest neighbour); coarser maps are active where any
    covered cell is active (max pooling), the output-site rule of a strided sparse conv.
    """
    h, w = int(size[0]), int(size[1])
    gh, gw = active.shape[-2:]
    grid = active[:, None]
    if (h, w) == (gh, gw):
        return grid
    if h % gh == 0 and w % gw == 0:
        return grid.repeat_interleave(h // gh, dim=2).repeat_interleave(w // gw, dim=3)
    if gh % h == 0 and gw % w == 0:
        return F.max_pool2d(grid.float(), kernel_size=(gh // h, gw // w)) > 0
    if h >= gh and w >= gw:
        return F.interpolate(grid.float(), size=(h, w), mode="nearest") > 0
    return F.adaptive_max_pool2d(grid.float(), (h, w)) > 0


class ActiveState:
    """The active mask of the current masked forward pass, shared by hooks and sparse BNs.

    A plain object (not a module), so it never appears in a ``state_dict``. Resized masks are
    cached per resolution for the duration of one pass.
    """

    def __init__(self) -> None:
        self.active: torch.Tensor | None = None
        self._cache: dict[tuple[int, int], torch.Tensor] = {}

    def set(self, active: torch.Tensor | None) -> None:
        self.active = active
        self._cache = {}

    def at(self, size: Sequence[int]) -> torch.Tensor | None:
        """Bool (N, 1, h, w) active mask at ``size``, or None when no mask is set."""
        if self.active is None:
            return None
        key = (int(size[0]), int(size[1]))
        if key not in self._cache:
            self._cache[key] = resize_active(self.active, key)
        return self._cache[key]


# --- sparse encoder emulation ----------------------------------------------------------------------


def _sparse_norm(norm: nn.modules.batchnorm._BatchNorm, dense: Any, x: torch.Tensor) -> torch.Tensor:
    """``dense(x)`` (the batch norm's own forward) on the active positions of ``norm.state`` only; masked ones 0."""
    active = norm.state.at(x.shape[-2:]) if norm.state is not None else None
    if active is None:
        return dense(x)
    n, c, h, w = x.shape
    keep = active.expand(n, 1, h, w).reshape(n, h, w)
    visible = x.permute(0, 2, 3, 1)[keep]  # (n_active, C)
    normed = dense(visible.t().reshape(1, c, -1, 1)).reshape(c, -1).t()
    out = x.new_zeros(n, c, h, w)  # contiguous NCHW, filled through a channels-last view
    out.permute(0, 2, 3, 1)[keep] = normed.to(out.dtype)
    return out


def _rebuilt(norm: nn.modules.batchnorm._BatchNorm, cls: type[nn.modules.batchnorm._BatchNorm],
             state: ActiveState | None) -> nn.modules.batchnorm._BatchNorm:
    """A ``cls`` holding ``norm``'s settings, parameters, buffers, mode and forward hooks (drop path), sparse on
    ``state`` where ``cls`` is."""
    weight = norm.weight if norm.weight is not None else norm.running_mean
    out = cls(norm.num_features, eps=norm.eps, momentum=norm.momentum, affine=norm.affine,
              track_running_stats=norm.track_running_stats,
              device=weight.device if weight is not None else None, dtype=weight.dtype if weight is not None else None)
    out.load_state_dict(norm.state_dict())
    out.train(norm.training)
    for hooks in ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called"):
        setattr(out, hooks, getattr(norm, hooks))  # shared: the handles in ``SparK._hooks`` still remove them
    if hasattr(out, "state"):
        out.state = state
    return out


class SparseBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` that, while a mask is set, sees only active positions (SparK's SparseBatchNorm2d).

    Active positions are gathered into a (1, C, n_active, 1) tensor and passed to the ordinary
    batch norm, so batch statistics, running-statistics updates (momentum, unbiased variance)
    and eval-mode behaviour are exactly ``nn.BatchNorm2d``'s, restricted to the visible set;
    masked positions come out as zeros. With no mask set it *is* ``nn.BatchNorm2d``
    (same parameters, buffers and ``state_dict`` keys).
    """

    state: ActiveState | None = None

    @classmethod
    def from_batchnorm(cls, bn: nn.BatchNorm2d, state: ActiveState) -> SparseBatchNorm2d:
        return _rebuilt(bn, cls, state)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _sparse_norm(self, super().forward, x)


class SparseSyncBatchNorm2d(nn.SyncBatchNorm):
    """:class:`SparseBatchNorm2d` with statistics over the active positions of every process (official SparK's
    ``SparseSyncBatchNorm2d``, used when it runs distributed). Same ``state_dict`` keys."""

    state: ActiveState | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _sparse_norm(self, super().forward, x)


_SYNCHRONISED = {SparseBatchNorm2d: SparseSyncBatchNorm2d, nn.BatchNorm2d: nn.SyncBatchNorm}
_LOCAL = {SparseSyncBatchNorm2d: SparseBatchNorm2d, nn.SyncBatchNorm: nn.BatchNorm2d}


def synchronise(model: nn.Module, on: bool) -> None:
    """Every batch norm of ``model`` synchronised across processes (``on``) or back, as official SparK's ``sbn`` (on
    whenever it runs distributed): sparse BNs stay sparse, dense ones (SparK's decoder) become ``SyncBatchNorm``;
    parameters, statistics and forward hooks are kept."""
    mapping = _SYNCHRONISED if on else _LOCAL
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) in mapping:
                setattr(parent, name, _rebuilt(child, mapping[type(child)], getattr(child, "state", None)))


def sparsify(backbone: nn.Module, state: ActiveState) -> list[torch.utils.hooks.RemovableHandle]:
    """Make a torchvision ResNet run sparsely while ``state`` holds a mask (Sec. 3.1-3.2).

    Every ``BatchNorm2d`` is replaced in place by a :class:`SparseBatchNorm2d` carrying the
    same parameters and buffers (``state_dict`` keys unchanged), and forward hooks on every
    ``Conv2d``, ``MaxPool2d`` and residual block zero the masked positions of their outputs.
    Returns the hook handles.
    """
    from torchvision.models.resnet import BasicBlock, Bottleneck

    for parent in list(backbone.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.BatchNorm2d:
                setattr(parent, name, SparseBatchNorm2d.from_batchnorm(child, state))

    hook = ZeroMasked(state)
    handles = []
    for module in backbone.modules():
        if isinstance(module, nn.Conv2d | nn.MaxPool2d | BasicBlock | Bottleneck):
            handles.append(module.register_forward_hook(hook))
    return handles


class ZeroMasked:
    """Forward hook: multiply a module's output by the active mask at its resolution (no-op without mask).

    A top-level class rather than a closure, so that a deep copy of the model gets hooks bound
    to the copy's :class:`ActiveState` and the model still pickles (e.g. for spawned workers).
    """

    def __init__(self, state: ActiveState) -> None:
        self.state = state

    def __call__(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor | None:
        active = self.state.at(output.shape[-2:])
        if active is None:
            return None
        return output * active.to(output.dtype)


class DropPath:
    """Forward hook on a residual branch's last BN: timm's ``DropPath`` (stochastic depth) in train mode.

    timm's ResNet blocks apply it to the branch output right after that BN, before the shortcut
    is added; each sample's branch is kept with probability ``1 - rate`` and then scaled by
    ``1 / (1 - rate)`` (``x.new_empty((N, 1, 1, 1)).bernoulli_(keep) / keep``, the same draw).
    """

    def __init__(self, rate: float) -> None:
        self.rate = rate

    def __call__(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor | None:
        if self.rate <= 0 or not module.training:
            return None
        keep = 1.0 - self.rate
        shape = (output.shape[0],) + (1,) * (output.ndim - 1)
        return output * output.new_empty(shape).bernoulli_(keep).div_(keep)


def residual_blocks(backbone: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    """(block, last BN of its residual branch) for every block of a torchvision ResNet, in forward order."""
    from torchvision.models.resnet import BasicBlock, Bottleneck

    out = []
    for layer in (backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4):
        for block in layer:
            if isinstance(block, Bottleneck):
                out.append((block, block.bn3))
            elif isinstance(block, BasicBlock):
                out.append((block, block.bn2))
    return out


def add_drop_path(backbone: nn.Module, rate: float) -> list[torch.utils.hooks.RemovableHandle]:
    """Stochastic depth as timm's ResNet: block ``k`` of ``n`` drops its branch with ``rate * k / (n - 1)``."""
    blocks = residual_blocks(backbone)
    handles = []
    for k, (_, last_bn) in enumerate(blocks):
        block_rate = rate * k / max(1, len(blocks) - 1)
        if block_rate > 0:
            handles.append(last_bn.register_forward_hook(DropPath(block_rate)))
    return handles


def zero_init_last_bn(backbone: nn.Module) -> None:
    """Zero the weight of each residual branch's last BN (timm's ``zero_init_last``, torchvision's
    ``zero_init_residual``): every block starts as its shortcut."""
    for _, last_bn in residual_blocks(backbone):
        nn.init.zeros_(last_bn.weight)
