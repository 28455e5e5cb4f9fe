"""SparK (Tian et al., ICLR 2023): masking, sparse encoder emulation, decoder, loss, schedule, export."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch
import torchvision
from torch import nn

from ctreduce.config import make_pretrain_config
from ctreduce.ssl.spark import SparK, masked_count, random_mask, spark_loss
from ctreduce.ssl.sparse import ActiveState, SparseBatchNorm2d, SparseSyncBatchNorm2d, resize_active

SETTINGS = {"preset": "cpu", "method": "spark", "backbone": "resnet18", "input_size": 64, "batch_size": 4,
            "spark": {"patch_size": 16, "decoder_width": 64}}


def make_module(steps_per_epoch: int = 10, **overrides) -> SparK:
    torch.manual_seed(0)
    return SparK(make_pretrain_config({**SETTINGS, **overrides}), steps_per_epoch=steps_per_epoch)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def module() -> SparK:
    return make_module()


@pytest.fixture(scope="module")
def slices() -> torch.Tensor:
    """8 normalised phantom slices (8, 3, 64, 64), the way the views present them."""
    from ctreduce.io.intensity import Intensity
    from ctreduce.sample_data.phantom import make_phantom

    hu, _ = make_phantom(n_slices=8, size=64, seed=1)
    x = torch.from_numpy(Intensity().to_uint8(hu)).float().div(255)[:, None].expand(-1, 3, -1, -1)
    return ((x - 0.1806) / 0.1907).contiguous()


def pixel_mask(mask: torch.Tensor, size: int) -> torch.Tensor:
    """Bool (N, 1, size, size): True at pixels of masked patches."""
    return resize_active(mask, (size, size))


def test_mask_counts_and_differs_between_images(module):
    torch.manual_seed(1)
    mask = module.random_mask(6)
    assert mask.shape == (6, 4, 4) and mask.dtype == torch.bool
    expected = round(0.6 * 16)
    assert mask.flatten(1).sum(1).tolist() == [expected] * 6
    assert len({tuple(m.flatten().tolist()) for m in mask}) > 1
    gen = torch.Generator().manual_seed(3)
    assert random_mask(2, (7, 7), 0.6, generator=gen).flatten(1).sum(1).tolist() == [round(0.6 * 49)] * 2


def test_resize_active_nearest_up_and_any_active_down():
    active = torch.tensor([[[True, False], [False, False]]])
    up = resize_active(active, (4, 4))[0, 0]
    assert up[:2, :2].all() and not up[2:].any() and not up[:, 2:].any()
    down = resize_active(torch.tensor([[[True, False], [False, False]]]), (1, 1))
    assert down.item() is True


def test_sparse_batchnorm_uses_active_positions_only():
    torch.manual_seed(7)
    state = ActiveState()
    dense = nn.BatchNorm2d(5)
    sparse = SparseBatchNorm2d.from_batchnorm(dense, state)
    reference = nn.BatchNorm1d(5)
    x = torch.randn(3, 5, 8, 8) * 2 + 1
    active = torch.rand(3, 2, 2) > 0.4
    active[0, 0, 0] = True
    state.set(active)
    out = sparse(x)
    keep = resize_active(active, (8, 8))
    expected = reference(x.permute(0, 2, 3, 1)[keep[:, 0]])
    torch.testing.assert_close(out.permute(0, 2, 3, 1)[keep[:, 0]], expected)
    assert (out * ~keep).abs().max() == 0 and out.is_contiguous()
    torch.testing.assert_close(sparse.running_mean, reference.running_mean)
    torch.testing.assert_close(sparse.running_var, reference.running_var)
    state.set(None)
    torch.testing.assert_close(sparse(x), dense(x))
    assert list(sparse.state_dict()) == list(dense.state_dict())


def test_deep_copy_keeps_hooks_and_sparse_bns_consistent(module, slices):
    clone = copy.deepcopy(module)
    mask = clone.random_mask(2)
    with torch.no_grad():
        features = clone.masked_forward(slices[:2], mask)
    for f in features:
        assert (f * ~resize_active(~mask, f.shape[-2:])).abs().max() == 0


@pytest.fixture(scope="module")
def plain_init_module() -> SparK:
    """Without the zero-initialised last BNs: in eval mode each block is then not its shortcut, so one
    visible pixel reaches every scale (with them, strided 1x1 shortcuts can skip it)."""
    return make_module(spark={**SETTINGS["spark"], "zero_init_last_bn": False})


@pytest.mark.parametrize("train", [True, False])
def test_encoder_ignores_masked_pixels_but_not_visible_ones(plain_init_module, slices, train):
    module = plain_init_module
    x = slices[:4]
    torch.manual_seed(2)
    mask = module.random_mask(4)
    hidden = pixel_mask(mask, 64).expand_as(x)
    module.train(train)
    with torch.no_grad():
        ref = module.masked_forward(x, mask)
        changed = torch.where(hidden, torch.randn_like(x) * 5, x)
        assert not torch.equal(changed, x)
        out = module.masked_forward(changed, mask)
        for a, b in zip(ref, out, strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
        # One visible pixel: the centre of the first visible patch of image 0.
        r, c = (~mask[0]).nonzero()[0].tolist()
        poked = x.clone()
        poked[0, :, r * 16 + 8, c * 16 + 8] += 5.0
        out = module.masked_forward(poked, mask)
        for a, b in zip(ref, out, strict=True):
            assert (a - b).abs().max() > 1e-4
    module.train()


def test_masked_positions_are_zero_after_every_layer(module, slices):
    x = slices[:4]
    torch.manual_seed(3)
    mask = module.random_mask(4)
    seen = []

    def check(mod, inputs, output):
        hidden = ~resize_active(~mask, output.shape[-2:])
        seen.append(type(mod).__name__)
        assert (output * hidden).abs().max().item() == 0.0, type(mod).__name__

    handles = [m.register_forward_hook(check) for m in module.backbone.modules()
               if isinstance(m, nn.Conv2d | nn.BatchNorm2d | nn.MaxPool2d | nn.ReLU)
               or type(m).__name__ == "BasicBlock"]
    try:
        with torch.no_grad():
            features = module.masked_forward(x, mask)
    finally:
        for h in handles:
            h.remove()
    assert {"Conv2d", "SparseBatchNorm2d", "MaxPool2d", "BasicBlock"} <= set(seen)
    assert [f.shape[-1] for f in features] == [16, 8, 4, 2]
    for f in features:
        assert (f * ~resize_active(~mask, f.shape[-2:])).abs().max() == 0
        assert f.abs().sum() > 0
    rec = module.reconstruct(x, mask)
    assert rec.shape == x.shape


def test_loss_counts_masked_patches_only(slices):
    x = slices[:2]
    torch.manual_seed(4)
    mask = random_mask(2, (4, 4), 0.6)
    pred = torch.randn_like(x)
    loss = spark_loss(pred, x, mask, 16)
    visible = ~pixel_mask(mask, 64).expand_as(x)
    other = torch.where(visible, torch.randn_like(x) * 10, pred)
    torch.testing.assert_close(spark_loss(other, x, mask, 16), loss)
    masked = torch.where(visible, pred, pred + 1.0)
    assert spark_loss(masked, x, mask, 16) > loss + 0.5
    # Perfect prediction of the per-patch normalised target gives zero loss.
    patches = x.reshape(2, 3, 4, 16, 4, 16)
    mean = patches.mean(dim=(1, 3, 5), keepdim=True)
    var = patches.var(dim=(1, 3, 5), keepdim=True)
    target = ((patches - mean) / (var + 1e-6).sqrt()).reshape_as(x)
    assert spark_loss(target, x, mask, 16).item() < 1e-8


def test_loss_decreases_with_configured_optimiser(slices):
    model = make_module(steps_per_epoch=30, lr=3e-2, warmup_epochs=0, epochs=1)
    opt = model.configure_optimizers()["optimizer"]
    x = slices[:4]
    fixed = torch.Generator().manual_seed(5)
    eval_masks = [model.random_mask(4, generator=fixed) for _ in range(2)]

    def probe() -> float:
        with torch.no_grad():
            return sum(spark_loss(model.reconstruct(x, m), x, m, 16).item() for m in eval_masks) / len(eval_masks)

    model.train()
    before = probe()
    torch.manual_seed(6)
    losses = []
    for step in range(25):
        model.apply_weight_decay(opt, step)
        loss = model.training_loss([x])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.05, losses
    assert losses[-1] < losses[0] - 0.1, losses
    after = probe()
    assert after < before - 0.1, (before, after)


def test_export_is_plain_torchvision_and_wrappers_are_transparent(slices):
    model = make_module()
    assert any(isinstance(m, SparseBatchNorm2d) for m in model.backbone.modules())
    # Train a little state into the BNs (running stats differ from defaults).
    with torch.no_grad():
        model.train()
        model.masked_forward(slices, model.random_mask(8))
    weights = model.export_backbone()
    reference = torchvision.models.resnet18()
    result = reference.load_state_dict(weights, strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and not result.unexpected_keys
    assert set(weights) == {k for k in torchvision.models.resnet18().state_dict() if not k.startswith("fc.")}
    reference.fc = nn.Identity()
    backbone = copy.deepcopy(model.backbone)
    for mode in (False, True):
        reference.train(mode)
        backbone.train(mode)
        with torch.no_grad():
            torch.testing.assert_close(backbone(slices), reference(slices), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(backbone.layer1[0].bn1.running_mean, reference.layer1[0].bn1.running_mean)


def test_weight_decay_follows_cosine():
    model = make_module(steps_per_epoch=10, epochs=5)  # 50 steps
    opt = model.configure_optimizers()["optimizer"]
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == pytest.approx(0.04) and plain["weight_decay"] == 0
    total = model.total_steps
    for step in (0, 1, 10, 25, 37, total - 1, total + 5):
        model.apply_weight_decay(opt, step)
        progress = min(1.0, step / (total - 1))
        expected = 0.2 + (0.04 - 0.2) * 0.5 * (1 + math.cos(math.pi * progress))
        assert decayed["weight_decay"] == pytest.approx(expected)
        assert plain["weight_decay"] == 0
    # The Lightning hook applies it at the trainer's global step.
    model._trainer = SimpleNamespace(optimizers=[opt], global_step=12)
    try:
        model.on_train_batch_start(None, 0)
    finally:
        model._trainer = None
    assert decayed["weight_decay"] == pytest.approx(0.2 - 0.16 * 0.5 * (1 + math.cos(math.pi * 12 / (total - 1))))


def test_views_one_normalised_view():
    config = make_pretrain_config(SETTINGS)
    transform = SparK.views(config, 0.1806, 0.1907)
    out = transform(torch.randint(0, 256, (1, 80, 80), dtype=torch.uint8))
    assert isinstance(out, list) and len(out) == 1
    assert out[0].shape == (3, 64, 64) and out[0].dtype == torch.float32


def test_rejects_bad_geometry():
    with pytest.raises(ValueError, match="input_size"):
        make_module(input_size=80)
    with pytest.raises(ValueError, match="patch_size"):
        make_module(spark={"patch_size": 24, "decoder_width": 64})


# --- official SparK, re-implemented compactly from keyu-tian/SparK@a63e386 (pretrain/) -------------
# Written from the official files, kept as close to them as a test allows: encoder.py (sparse conv,
# pooling and BN on a module-level active mask), spark.py (mask, densify, loss), decoder.py
# (UNetBlock, LightDecoder and its initialisation), utils/lamb.py (TheSameAsTimmLAMB),
# utils/lr_control.py (lr_wd_annealing, get_param_groups) and models/ (a timm ResNet whose forward
# returns layer1..layer4). The paper's SparK script (Wolfda95/SSL-MedicalImagining-CL-MAE@87a1627,
# Pre-Training/Masked_Autoencoder/) has the same code in all of these.

_cur_active: torch.Tensor | None = None  # encoder._cur_active: (B, 1, f, f), True = visible


def _get_active_ex_or_ii(h, w, returning_active_ex=True):
    h_repeat, w_repeat = h // _cur_active.shape[-2], w // _cur_active.shape[-1]
    active_ex = _cur_active.repeat_interleave(h_repeat, dim=2).repeat_interleave(w_repeat, dim=3)
    return active_ex if returning_active_ex else active_ex.squeeze(1).nonzero(as_tuple=True)


def _sp_conv_forward(self, x):
    x = super(type(self), self).forward(x)
    x *= _get_active_ex_or_ii(x.shape[2], x.shape[3], returning_active_ex=True)
    return x


def _sp_bn_forward(self, x):
    ii = _get_active_ex_or_ii(x.shape[2], x.shape[3], returning_active_ex=False)
    bhwc = x.permute(0, 2, 3, 1)
    nc = super(type(self), self).forward(bhwc[ii])
    bchw = torch.zeros_like(bhwc)
    bchw[ii] = nc
    return bchw.permute(0, 3, 1, 2)


class OfficialSparseConv2d(nn.Conv2d):
    forward = _sp_conv_forward


class OfficialSparseMaxPooling(nn.MaxPool2d):
    forward = _sp_conv_forward


class OfficialSparseBatchNorm2d(nn.BatchNorm1d):
    forward = _sp_bn_forward


def official_dense_model_to_sparse(m: nn.Module) -> nn.Module:
    oup = m
    if isinstance(m, nn.Conv2d):
        oup = OfficialSparseConv2d(m.in_channels, m.out_channels, kernel_size=m.kernel_size, stride=m.stride,
                                   padding=m.padding, dilation=m.dilation, groups=m.groups,
                                   bias=m.bias is not None, padding_mode=m.padding_mode)
        oup.weight.data.copy_(m.weight.data)
        if m.bias is not None:
            oup.bias.data.copy_(m.bias.data)
    elif isinstance(m, nn.MaxPool2d):
        oup = OfficialSparseMaxPooling(m.kernel_size, stride=m.stride, padding=m.padding, dilation=m.dilation,
                                       return_indices=m.return_indices, ceil_mode=m.ceil_mode)
    elif isinstance(m, nn.BatchNorm2d):
        oup = OfficialSparseBatchNorm2d(m.weight.shape[0], eps=m.eps, momentum=m.momentum, affine=m.affine,
                                        track_running_stats=m.track_running_stats)
        for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            getattr(oup, name).data.copy_(getattr(m, name).data)
    for name, child in m.named_children():
        oup.add_module(name, official_dense_model_to_sparse(child))
    return oup


class OfficialUNetBlock(nn.Module):
    def __init__(self, cin, cout, bn2d):
        super().__init__()
        self.up_sample = nn.ConvTranspose2d(cin, cin, kernel_size=4, stride=2, padding=1, bias=True)
        self.conv = nn.Sequential(
            nn.Conv2d(cin, cin, kernel_size=3, stride=1, padding=1, bias=False), bn2d(cin), nn.ReLU6(inplace=True),
            nn.Conv2d(cin, cout, kernel_size=3, stride=1, padding=1, bias=False), bn2d(cout),
        )

    def forward(self, x):
        return self.conv(self.up_sample(x))


class OfficialLightDecoder(nn.Module):
    def __init__(self, up_sample_ratio, width=768, sbn=False):
        super().__init__()
        self.width = width
        n = round(math.log2(up_sample_ratio))
        channels = [self.width // 2 ** i for i in range(n + 1)]
        bn2d = nn.SyncBatchNorm if sbn else nn.BatchNorm2d
        self.dec = nn.ModuleList([OfficialUNetBlock(cin, cout, bn2d) for (cin, cout) in zip(channels[:-1], channels[1:],
                                                                                             strict=True)])
        self.proj = nn.Conv2d(channels[-1], 3, kernel_size=1, stride=1, bias=True)

    def forward(self, to_dec):
        x = 0
        for i, _ in enumerate(self.dec):
            if i < len(to_dec) and to_dec[i] is not None:
                x = x + to_dec[i]
            x = self.dec[i](x)
        return self.proj(x)


class OfficialSparK(nn.Module):
    """spark.py's SparK (densify_norm='bn', sbn=False) around a sparse timm ResNet (``sp_cnn``)."""

    def __init__(self, sp_cnn, enc_feat_map_chs, input_size, dense_decoder, mask_ratio=0.6, downsample_raito=32):
        super().__init__()
        self.sparse_encoder = nn.Module()
        self.sparse_encoder.sp_cnn = sp_cnn
        self.downsample_raito = downsample_raito
        self.fmap_h, self.fmap_w = input_size // downsample_raito, input_size // downsample_raito
        self.mask_ratio = mask_ratio
        self.len_keep = round(self.fmap_h * self.fmap_w * (1 - mask_ratio))
        self.dense_decoder = dense_decoder
        self.hierarchy = len(enc_feat_map_chs)
        self.densify_norms, self.densify_projs, self.mask_tokens = nn.ModuleList(), nn.ModuleList(), nn.ParameterList()
        e_widths, d_width = list(enc_feat_map_chs), self.dense_decoder.width
        for i in range(self.hierarchy):
            e_width = e_widths.pop()
            p = nn.Parameter(torch.zeros(1, e_width, 1, 1))
            nn.init.trunc_normal_(p, mean=0, std=.02, a=-.02, b=.02)
            self.mask_tokens.append(p)
            self.densify_norms.append(OfficialSparseBatchNorm2d(e_width))
            if i == 0 and e_width == d_width:
                densify_proj = nn.Identity()
            else:
                kernel_size = 1 if i <= 0 else 3
                densify_proj = nn.Conv2d(e_width, d_width, kernel_size=kernel_size, stride=1,
                                         padding=kernel_size // 2, bias=True)
            self.densify_projs.append(densify_proj)
            d_width //= 2

    def mask(self, B, device, generator=None):
        h, w = self.fmap_h, self.fmap_w
        idx = torch.rand(B, h * w, generator=generator).argsort(dim=1)
        idx = idx[:, :self.len_keep].to(device)
        return torch.zeros(B, h * w, dtype=torch.bool, device=device).scatter_(dim=1, index=idx, value=True).view(
            B, 1, h, w)

    def encode(self, x):  # models/resnet.py: forward(x, hierarchical=True)
        cnn = self.sparse_encoder.sp_cnn
        x = cnn.maxpool(cnn.act1(cnn.bn1(cnn.conv1(x))))
        ls = []
        for layer in (cnn.layer1, cnn.layer2, cnn.layer3, cnn.layer4):
            x = layer(x)
            ls.append(x)
        return ls

    def forward(self, inp_bchw, active_b1ff=None):
        global _cur_active
        if active_b1ff is None:
            active_b1ff = self.mask(inp_bchw.shape[0], inp_bchw.device)
        self.last_active = active_b1ff
        _cur_active = active_b1ff
        r = self.downsample_raito
        active_b1hw = active_b1ff.repeat_interleave(r, 2).repeat_interleave(r, 3)
        masked_bchw = inp_bchw * active_b1hw
        fea_bcffs = self.encode(masked_bchw)
        fea_bcffs.reverse()
        cur_active = active_b1ff
        to_dec = []
        for i, bcff in enumerate(fea_bcffs):
            bcff = self.densify_norms[i](bcff)
            mask_tokens = self.mask_tokens[i].expand_as(bcff)
            bcff = torch.where(cur_active.expand_as(bcff), bcff, mask_tokens)
            bcff = self.densify_projs[i](bcff)
            to_dec.append(bcff)
            cur_active = cur_active.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
        rec_bchw = self.dense_decoder(to_dec)
        inp, rec = self.patchify(inp_bchw), self.patchify(rec_bchw)
        mean = inp.mean(dim=-1, keepdim=True)
        var = (inp.var(dim=-1, keepdim=True) + 1e-6) ** .5
        inp = (inp - mean) / var
        l2_loss = ((rec - inp) ** 2).mean(dim=2, keepdim=False)
        non_active = active_b1ff.logical_not().int().view(active_b1ff.shape[0], -1)
        return l2_loss.mul_(non_active).sum() / (non_active.sum() + 1e-8)

    def patchify(self, bchw):
        p = self.downsample_raito
        h, w = self.fmap_h, self.fmap_w
        B, C = bchw.shape[:2]
        bchw = bchw.reshape(shape=(B, C, h, p, w, p))
        bchw = torch.einsum('bchpwq->bhwpqc', bchw)
        return bchw.reshape(shape=(B, h * w, C * p ** 2))


class TheSameAsTimmLAMB(torch.optim.Optimizer):
    """utils/lamb.py (timm 0.5.4's Lamb), as main.py builds it: betas (0.9, 0.95), max_grad_norm 5."""

    def __init__(self, params, lr=1e-3, bias_correction=True, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01,
                 grad_averaging=True, max_grad_norm=2.0, trust_clip=False, always_adapt=False):
        super().__init__(params, dict(lr=lr, bias_correction=bias_correction, betas=betas, eps=eps,
                                      weight_decay=weight_decay, grad_averaging=grad_averaging,
                                      max_grad_norm=max_grad_norm, trust_clip=trust_clip, always_adapt=always_adapt))
        self.global_grad_norm = 0

    @torch.no_grad()
    def step(self, closure=None):
        device = self.param_groups[0]['params'][0].device
        one_tensor = torch.tensor(1.0, device=device)
        global_grad_norm = torch.zeros(1, device=device)
        for group in self.param_groups:
            for p in group['params']:
                if p.grad is not None:
                    global_grad_norm.add_(p.grad.pow(2).sum())
        global_grad_norm = torch.sqrt(global_grad_norm)
        self.global_grad_norm = global_grad_norm.item()
        max_grad_norm = torch.tensor(self.defaults['max_grad_norm'], device=device)
        clip_global_grad_norm = 1 / torch.where(global_grad_norm > max_grad_norm, global_grad_norm / max_grad_norm,
                                                one_tensor)
        for group in self.param_groups:
            beta1, beta2 = group['betas']
            beta3 = 1 - beta1 if group['grad_averaging'] else 1.0
            group['step'] = group.get('step', 0) + 1
            bias_correction1 = 1 - beta1 ** group['step'] if group['bias_correction'] else 1.0
            bias_correction2 = 1 - beta2 ** group['step'] if group['bias_correction'] else 1.0
            for p in group['params']:
                if p.grad is None:
                    continue
                grad = p.grad.mul_(clip_global_grad_norm)
                state = self.state[p]
                if len(state) == 0:
                    state['exp_avg'] = torch.zeros_like(p)
                    state['exp_avg_sq'] = torch.zeros_like(p)
                exp_avg, exp_avg_sq = state['exp_avg'], state['exp_avg_sq']
                exp_avg.mul_(beta1).add_(grad, alpha=beta3)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = (exp_avg_sq.sqrt() / math.sqrt(bias_correction2)).add_(group['eps'])
                update = (exp_avg / bias_correction1).div_(denom)
                weight_decay = group['weight_decay']
                if weight_decay != 0:
                    update.add_(p, alpha=weight_decay)
                if weight_decay != 0 or group['always_adapt']:
                    w_norm = p.norm(2.0)
                    g_norm = update.norm(2.0)
                    trust_ratio = torch.where(w_norm > 0, torch.where(g_norm > 0, w_norm / g_norm, one_tensor),
                                              one_tensor)
                    if group['trust_clip']:
                        trust_ratio = torch.minimum(trust_ratio, one_tensor)
                    update.mul_(trust_ratio)
                p.add_(update, alpha=-group['lr'])


def official_lr_wd_annealing(optimizer, peak_lr, wd, wd_end, cur_it, wp_it, max_it):
    wp_it = round(wp_it)
    if cur_it < wp_it:
        cur_lr = 0.005 * peak_lr + 0.995 * peak_lr * cur_it / wp_it
    else:
        ratio = (cur_it - wp_it) / (max_it - 1 - wp_it)
        cur_lr = 0.001 * peak_lr + 0.999 * peak_lr * (0.5 + 0.5 * math.cos(math.pi * ratio))
    ratio = cur_it / (max_it - 1)
    cur_wd = wd_end + (wd - wd_end) * (0.5 + 0.5 * math.cos(math.pi * ratio))
    for param_group in optimizer.param_groups:
        param_group['lr'] = cur_lr * param_group.get('lr_scale', 1)
        param_group['weight_decay'] = cur_wd * param_group.get('weight_decay_scale', 1)
    return cur_lr, cur_wd


def official_param_groups(model, nowd_keys=('cls_token', 'pos_embed', 'mask_token', 'gamma')):
    groups = {}
    for name, para in model.named_parameters():
        if not para.requires_grad:
            continue
        if len(para.shape) == 1 or name.endswith('.bias') or any(k in name for k in nowd_keys):
            wd_scale, group_name = 0., 'no_decay'
        else:
            wd_scale, group_name = 1., 'decay'
        groups.setdefault(group_name, {'params': [], 'names': [], 'weight_decay_scale': wd_scale, 'lr_scale': 1.})
        groups[group_name]['params'].append(para)
        groups[group_name]['names'].append(name)
    return groups


def official_spark(module: SparK, drop_path_rate: float = 0.0) -> OfficialSparK:
    """Official SparK (timm ResNet encoder) carrying ``module``'s current weights and buffers."""
    timm = pytest.importorskip("timm")
    cnn = timm.create_model(module.config.backbone, pretrained=False, num_classes=0, global_pool="",
                            drop_path_rate=drop_path_rate)
    cnn.load_state_dict(module.export_backbone())
    cnn.train(module.training)
    official = OfficialSparK(official_dense_model_to_sparse(cnn), module.encoder_channels, module.config.input_size,
                             OfficialLightDecoder(32, width=module.config.spark.decoder_width),
                             mask_ratio=module.mask_ratio)
    state = {k: v.view(1, -1, 1, 1) if k.startswith("mask_tokens.") else v
             for k, v in module.state_dict().items() if not k.startswith("backbone.")}
    missing, unexpected = official.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith("sparse_encoder.") for k in missing)
    return official.train(module.training)


def paper_module(steps_per_epoch: int = 10, **overrides) -> SparK:
    torch.manual_seed(0)
    return SparK(make_pretrain_config({"method": "spark", **overrides}), steps_per_epoch=steps_per_epoch)


def test_paper_preset_resolves_the_official_recipe():
    """Paper preset = official SparK as the paper's script runs it (docs/fidelity/spark.md)."""
    from timm.optim import Lamb

    from ctreduce.ssl.pretrain import _trainer_settings

    config = make_pretrain_config({"method": "spark"})
    assert (config.backbone, config.input_size, config.epochs, config.batch_size, config.warmup_epochs) == (
        "resnet50", 224, 1600, 32, 40)
    assert config.grad_clip == 5.0 and config.precision == "32-true" and config.decay_norm_and_bias is False
    s = config.spark
    assert (s.mask_ratio, s.patch_size, s.decoder_width, s.weight_decay_end, tuple(s.crop_scale)) == (
        0.6, 32, 768, 0.2, (0.67, 1.0))
    assert s.drop_path_rate == 0.05 and s.zero_init_last_bn
    assert tuple(s.input_mean) == (0.485, 0.456, 0.406) and tuple(s.input_std) == (0.229, 0.224, 0.225)
    trainer = _trainer_settings(config, SparK)
    assert trainer["gradient_clip_val"] == 5.0 and trainer["gradient_clip_algorithm"] == "norm"
    assert trainer["precision"] == "32-true"

    module = paper_module()
    assert module.summary_extra() == {"input_mean": [0.485, 0.456, 0.406], "input_std": [0.229, 0.224, 0.225]}
    out = module.configure_optimizers()
    opt = out["optimizer"]
    assert isinstance(opt, Lamb)
    decay, no_decay = opt.param_groups
    for group in (decay, no_decay):
        assert group["betas"] == (0.9, 0.95) and group["eps"] == 1e-6
        assert group["trust_clip"] is False and group["always_adapt"] is False  # no cap; no trust ratio at wd 0
        assert group["max_grad_norm"] is None  # clipped by the Trainer (gradient_clip_val 5), not twice
        assert group["lr"] == pytest.approx(2e-4 * 32 / 256 * 0.005)  # step 0 of the warm-up
    assert decay["weight_decay"] == pytest.approx(0.04) and no_decay["weight_decay"] == 0
    # The official groups: decayed = the same parameters (mask tokens: 1-D here, named 'mask_token' there).
    official = official_param_groups(official_spark(module))
    names = {id(p): n for n, p in module.named_parameters()}
    ours_no_decay = {names[id(p)].removeprefix("backbone.") for p in no_decay["params"]}
    theirs_no_decay = {n.removeprefix("sparse_encoder.sp_cnn.") for n in official["no_decay"]["names"]}
    assert ours_no_decay == theirs_no_decay
    assert len(decay["params"]) == len(official["decay"]["params"])
    # Drop path: timm's per-block rates for ResNet-50 at 0.05; the last BN of each branch starts at 0.
    timm = pytest.importorskip("timm")
    reference = timm.create_model("resnet50", pretrained=False, num_classes=0, global_pool="", drop_path_rate=0.05)
    expected = [b.drop_path.drop_prob if b.drop_path is not None else 0.0
                for layer in (reference.layer1, reference.layer2, reference.layer3, reference.layer4) for b in layer]
    rates = []
    for block in (b for layer in (module.backbone.layer1, module.backbone.layer2, module.backbone.layer3,
                                  module.backbone.layer4) for b in layer):
        found = [h.rate for h in block.bn3._forward_hooks.values() if type(h).__name__ == "DropPath"]
        rates.append(found[0] if found else 0.0)
        assert block.bn3.weight.abs().sum() == 0
    assert rates == pytest.approx(expected)


@pytest.mark.parametrize("foreach", [False, True])
def test_lamb_with_trainer_clipping_is_the_official_lamb(foreach):
    """timm's Lamb (ours) after clip_grad_norm_(5) (what gradient_clip_val=5 does) = official
    TheSameAsTimmLAMB(betas=(0.9, 0.95), max_grad_norm=5): no trust-ratio cap (ratios far above 10
    here), no trust ratio for the group without weight decay, Adam moments with beta2 0.95."""
    from ctreduce.ssl.base import lamb

    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(64, 32, generator=gen, dtype=torch.float64) * 50,  # ||w|| / ||update|| ~ 50
             torch.randn(16, 8, 3, 3, generator=gen, dtype=torch.float64),
             torch.randn(32, generator=gen, dtype=torch.float64) * 20]  # 1-D: no weight decay, no trust ratio
    grads = [[torch.randn(t.shape, generator=gen, dtype=torch.float64) * (1 + 3 * k) for t in start]
             for k in range(6)]  # global norms from ~80 up: clipped at 5 on every step

    def run(make, clip_outside):
        params = [nn.Parameter(t.clone()) for t in start]
        opt = make([{"params": params[:2], "weight_decay": 0.04}, {"params": params[2:], "weight_decay": 0.0}])
        for step_grads in grads:
            for p, g in zip(params, step_grads, strict=True):
                p.grad = g.clone()
            if clip_outside:
                torch.nn.utils.clip_grad_norm_(params, 5.0)
            opt.step()
        return params

    ours = run(lambda groups: lamb(groups, 0.01), clip_outside=True)
    if foreach:
        ours = run(lambda groups: _with_foreach(lamb(groups, 0.01)), clip_outside=True)
    official = run(lambda groups: TheSameAsTimmLAMB(groups, lr=0.01, betas=(0.9, 0.95), max_grad_norm=5.0),
                   clip_outside=False)
    # Up to torch's clip_grad_norm_ coefficient 5 / (||g|| + 1e-6) against the official 5 / ||g||.
    for a, b, w0 in zip(ours, official, start, strict=True):
        assert ((a - w0) - (b - w0)).norm() <= 1e-7 * (b - w0).norm()
    # The 1-D parameter moved by plain Adam steps (|step| <= lr), the weights by trust-scaled ones.
    assert (ours[2] - start[2]).abs().max() <= 6 * 0.01 + 1e-9
    assert (ours[0] - start[0]).abs().max() > 10 * 6 * 0.01


def _with_foreach(optimiser):
    for group in optimiser.param_groups:
        group["foreach"] = True
    return optimiser


def test_lr_schedule_is_the_official_one():
    module = paper_module(steps_per_epoch=10, epochs=5, warmup_epochs=2)  # 50 steps, 20 of warm-up
    out = module.configure_optimizers()
    opt, scheduler = out["optimizer"], out["lr_scheduler"]["scheduler"]
    peak = 2e-4 * 32 / 256
    probe = TheSameAsTimmLAMB([nn.Parameter(torch.zeros(1))])
    for step in range(50):
        lr, wd = official_lr_wd_annealing(probe, peak, 0.04, 0.2, step, 20, 50)
        assert opt.param_groups[0]["lr"] == pytest.approx(lr, rel=1e-9), step
        module.apply_weight_decay(opt, step)
        assert opt.param_groups[0]["weight_decay"] == pytest.approx(wd, rel=1e-9)
        opt.step()
        scheduler.step()


@pytest.mark.parametrize(("backbone", "width"), [("resnet50", 768), ("resnet18", 512), ("resnet18", 128)])
def test_densify_and_decoder_match_the_official_layout(backbone, width):
    """Module by module: official spark.py densify layers and decoder.py LightDecoder vs ours."""
    torch.manual_seed(0)
    ours = SparK(make_pretrain_config({"method": "spark", "backbone": backbone, "spark": {"decoder_width": width}}),
                 steps_per_epoch=1)
    official = OfficialSparK(nn.Identity(), ours.encoder_channels, 224, OfficialLightDecoder(32, width=width))
    theirs = {n: m for n, m in official.named_modules() if n and not n.startswith("sparse_encoder")}
    mine = {n: m for n, m in ours.named_modules() if n.startswith(("densify_", "dense_decoder", "mask_tokens"))}
    assert sorted(mine) == sorted(theirs)
    for name, ref in theirs.items():
        got = mine[name]
        if isinstance(ref, OfficialSparseBatchNorm2d):
            assert isinstance(got, SparseBatchNorm2d) and got.state is ours._active, name
        else:  # the same torch layer, or our counterpart of an official block (UNetBlock, LightDecoder)
            assert type(got).__name__ == type(ref).__name__.removeprefix("Official"), name
        for attr in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "num_features", "eps",
                     "momentum", "affine"):
            assert getattr(got, attr, None) == getattr(ref, attr, None), (name, attr)
        if isinstance(ref, nn.Conv2d | nn.ConvTranspose2d):
            assert (got.bias is None) == (ref.bias is None), name
    shapes = {k: tuple(v.shape) for k, v in official.state_dict().items() if not k.startswith("sparse_encoder")}
    ours_shapes = {k: tuple(v.view(1, -1, 1, 1).shape) if k.startswith("mask_tokens.") else tuple(v.shape)
                   for k, v in ours.state_dict().items() if not k.startswith("backbone.")}
    assert ours_shapes == shapes
    # Densify projections: 1x1 for the deepest scale (identity when the widths match), 3x3 for the others.
    expected = ["identity" if backbone == "resnet18" and width == 512 else (1, 1), (3, 3), (3, 3), (3, 3)]
    assert [p.kernel_size if isinstance(p, nn.Conv2d) else "identity" for p in ours.densify_projs] == expected
    # Initialisation as official: mask tokens in [-0.02, 0.02], decoder BNs 1/0, conv biases 0.
    assert all(t.abs().max() <= 0.02 for t in ours.mask_tokens)
    assert all(torch.equal(m.bias, torch.zeros_like(m.bias)) for m in ours.dense_decoder.modules()
               if isinstance(m, nn.Conv2d | nn.ConvTranspose2d) and m.bias is not None)


def test_mask_is_the_official_draw():
    model = make_module(input_size=96, spark={"patch_size": 32, "decoder_width": 64})
    official = OfficialSparK(nn.Identity(), model.encoder_channels, 96, OfficialLightDecoder(32, width=64))
    for seed in range(3):
        torch.manual_seed(seed)
        theirs = official.mask(5, "cpu")
        torch.manual_seed(seed)
        ours = model.random_mask(5)
        assert torch.equal(~ours, theirs[:, 0])
    # round(L * (1 - ratio)) patches stay visible, also where round() breaks a tie (L = 5, ratio 0.5).
    assert masked_count(5, 0.5) == 5 - round(5 * 0.5) == 3
    assert masked_count(49, 0.6) == 49 - 20


def test_one_step_matches_the_official_forward_and_update():
    """One Lightning step of ours (Trainer clipping, LAMB, schedules, sparse encoder with drop path, densify,
    decoder, loss) = the official forward, TheSameAsTimmLAMB step and lr_wd_annealing on the same weights,
    input and mask."""
    import pytorch_lightning as pl

    from ctreduce.ssl.pretrain import _trainer_settings

    config = make_pretrain_config({"method": "spark", "input_size": 96, "batch_size": 4, "epochs": 2,
                                   "warmup_epochs": 1, "lr": 1.0, "num_workers": 0,
                                   "spark": {"drop_path_rate": 0.3}})
    torch.manual_seed(0)
    module = SparK(config, steps_per_epoch=5)  # 10 steps, 5 of warm-up
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # fixed, non-trivial weights: BN affine and mask tokens away from their init
        for name, p in module.named_parameters():
            if p.ndim == 1:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1 + (1.0 if name.endswith("weight") else 0.0))
    # In float64, so that the comparison is not blurred by float32 rounding (Adam's first step divides
    # gradients of ~1e-6 by their own size plus eps); the values above are float32 numbers either way.
    module.double().train()
    x = torch.randn(4, 3, 96, 96, generator=gen).double()

    # The official model on the same weights; clip at half the official gradient norm so clipping acts.
    official = official_spark(module, drop_path_rate=0.3).double()
    probe = copy.deepcopy(official)
    torch.manual_seed(11)
    probe(x).backward()
    norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in probe.parameters() if p.grad is not None)).item()
    clip = norm / 2

    groups = official_param_groups(official)
    opt = TheSameAsTimmLAMB([{k: v for k, v in g.items() if k != "names"} for g in groups.values()],
                            lr=1.0, betas=(0.9, 0.95), max_grad_norm=clip, weight_decay=0.0)
    official_lr_wd_annealing(opt, 1.0, 0.04, 0.2, 0, 5, 10)
    torch.manual_seed(11)
    official_loss = official(x)
    opt.zero_grad()
    official_loss.backward()
    opt.step()
    assert opt.global_grad_norm > clip

    config = config.model_copy(update={"grad_clip": clip})
    module.config = config
    seen = {}

    class Seed(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            torch.manual_seed(11)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen["loss"] = outputs["loss"].detach()

    before = {k: v.detach().clone() for k, v in module.state_dict().items()}
    loader = torch.utils.data.DataLoader(list(x), batch_size=4, generator=torch.Generator())
    trainer = pl.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[Seed()], **_trainer_settings(config, SparK))
    trainer.fit(module, loader)

    torch.testing.assert_close(seen["loss"], official_loss.detach(), rtol=1e-10, atol=0)
    after = official_state(official)
    ours = {k: v.view(1, -1, 1, 1) if k.startswith("mask_tokens.") else v for k, v in module.state_dict().items()}
    checked = 0
    for key, value in ours.items():
        ref = after[key]
        if value.is_floating_point():
            delta, ref_delta = value - before[key].view_as(value), ref - before[key].view_as(ref)
            scale = max(ref_delta.norm().item(), 1e-12)
            assert (delta - ref_delta).norm().item() <= 1e-6 * scale + 1e-15, key
            checked += int(ref_delta.abs().max() > 0)
        else:
            assert torch.equal(value, ref), key
    assert checked > 100  # the step moved (almost) every parameter and BN statistic


def official_state(official: OfficialSparK) -> dict[str, torch.Tensor]:
    """The official model's state under our names (backbone.* for the sparse timm ResNet)."""
    out = {}
    for key, value in official.state_dict().items():
        if key.startswith("sparse_encoder.sp_cnn."):
            key = "backbone." + key.removeprefix("sparse_encoder.sp_cnn.")
        out[key] = value
    return out


def test_views_are_the_official_pipeline():
    config = make_pretrain_config({"method": "spark", "input_size": 64})
    transform = SparK.views(config, 0.1806, 0.1907)
    crop = transform.transforms[0].transforms[0]
    assert crop.interpolation == torchvision.transforms.InterpolationMode.BICUBIC
    assert tuple(crop.scale) == (0.67, 1.0)
    grey = torch.randint(0, 256, (1, 80, 80), dtype=torch.uint8)
    out = transform(grey)[0]
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    pixels = out * std[:, None, None] + mean[:, None, None]  # back to [0, 1]: the same grey on every channel
    torch.testing.assert_close(pixels[0], pixels[1], atol=1e-6, rtol=0)
    torch.testing.assert_close(pixels[0], pixels[2], atol=1e-6, rtol=0)
    assert torch.allclose(pixels * 255, (pixels * 255).round(), atol=1e-3)  # 8-bit after the crop, as PIL
    # Without spark.input_mean/std (cpu preset): the run's statistics on every channel.
    plain = SparK.views(make_pretrain_config(SETTINGS), 0.2, 0.25)(grey)[0]
    assert plain.shape == (3, 64, 64)
    torch.testing.assert_close(plain[0], plain[1])


def test_synchronised_batchnorms_keep_sparsity_weights_and_drop_path(slices):
    """Under DDP on GPUs (``lightning_setup.SyncBatchNorm`` calls ``synchronise_batchnorm``) every BN becomes a
    synchronised one, as official SparK's ``sbn``: sparse ones ``SparseSyncBatchNorm2d``, the decoder's
    ``SyncBatchNorm``. Without a process group a SyncBatchNorm normalises locally, so on CPU the masked pass is
    the plain module's to the bit; reverting gives the plain layers back. The multi-GPU run: benchmarks/gpu_check.py."""
    plain = make_module(spark={**SETTINGS["spark"], "drop_path_rate": 0.1})
    synced = copy.deepcopy(plain)
    synced.synchronise_batchnorm(True)
    norms = [m for m in synced.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms and all(isinstance(m, nn.SyncBatchNorm) for m in norms)
    sparse = [m for m in synced.modules() if isinstance(m, SparseSyncBatchNorm2d)]
    assert len(sparse) == sum(isinstance(m, SparseBatchNorm2d) for m in plain.modules())
    assert all(m.state is synced._active for m in sparse)
    assert synced.state_dict().keys() == plain.state_dict().keys()
    assert all(torch.equal(v, plain.state_dict()[k]) for k, v in synced.state_dict().items())
    assert [len(m._forward_hooks) for m in synced.backbone.modules() if isinstance(m, nn.SyncBatchNorm)] == [
        len(m._forward_hooks) for m in plain.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    x, mask = slices[:4], make_module().random_mask(4, generator=torch.Generator().manual_seed(0))
    plain.train(), synced.train()
    for drop_path_seed in (0, 1):
        torch.manual_seed(drop_path_seed)
        expected = plain.reconstruct(x, mask)
        torch.manual_seed(drop_path_seed)
        torch.testing.assert_close(synced.reconstruct(x, mask), expected, rtol=0, atol=0)
    torch.testing.assert_close(synced.state_dict(), plain.state_dict(), rtol=0, atol=0)  # same running stats
    synced.synchronise_batchnorm(False)
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in synced.modules())
    assert sum(isinstance(m, SparseBatchNorm2d) for m in synced.modules()) == len(sparse)
