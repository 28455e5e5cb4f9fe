"""The laws of the paper views' random parameters: over 10,000 draws, the crop boxes, rotation angles, jitter
factors and order, blur sigmas, flips, gamma and noise levels of the MoCo and SwAV ``paper`` views follow the laws of
the paper's pipelines (torchvision's samplers, Pillow's blur radius, its GaussNoise), by scipy's KS and binomial tests;
and for the same draws the views make torchvision's images.

The draws are sampled without making pixels: :func:`walk` asks each step's ``make_params`` (which its ``forward``
calls) in the view's order, flipping the coins of ``RandomApply`` and the flips as their ``forward`` does; the first
tests prove that it draws exactly what the views draw. Seeds are fixed, so the tests are deterministic; a level of
1e-5 for every test keeps a false alarm negligible should a library change its random streams.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")
pytest.importorskip("lightly")
pytest.importorskip("pytorch_lightning")
stats = pytest.importorskip("scipy.stats")

import torchvision.transforms as T  # noqa: E402
from torchvision.transforms import v2  # noqa: E402

from ctreduce.config import make_pretrain_config  # noqa: E402
from ctreduce.io.intensity import Intensity  # noqa: E402
from ctreduce.sample_data.phantom import make_phantom  # noqa: E402
from ctreduce.ssl.augment import (  # noqa: E402
    LogUniformGaussianNoise,
    RandomGamma,
    RotatedResizedCrop,
    SeparableGaussianBlur,
    ct_view,
    moco_view,
    rotated_window,
)
from ctreduce.ssl.moco import MoCoV2  # noqa: E402
from ctreduce.ssl.swav import SwAV  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ALPHA = 1e-5  # every test's level: a false alarm is negligible, a planted wrong law still fails by far
N = 10000  # draws per law
SIZE = 512  # the slices' size: the crop box is drawn on it
MEAN, STD = 0.1806, 0.1907
RATIO = (3 / 4, 4 / 3)  # torchvision's default aspect ratios, the paper's


# --- sampling the draws ------------------------------------------------------------------------------------------


def walk(step: Any, flat: list[torch.Tensor], out: dict[str, Any]) -> dict[str, Any]:
    """The parameters ``step`` draws for an input ``flat``, in the order of its ``forward``, under the name of each
    step's class: its ``make_params``, or None where a coin (``RandomApply``'s, a flip's) left it out."""
    if isinstance(step, v2.Compose):
        for inner in step.transforms:
            walk(inner, flat, out)
    elif isinstance(step, v2.RandomApply):
        if torch.rand(1) >= step.p:  # RandomApply.forward's coin
            for inner in step.transforms:
                out[type(inner).__name__] = None
        else:
            for inner in step.transforms:
                walk(inner, flat, out)
    elif isinstance(step, (v2.RandomHorizontalFlip, v2.RandomVerticalFlip)):
        out[type(step).__name__] = None if torch.rand(1) >= step.p else step.make_params(flat)
    elif hasattr(step, "make_params"):
        assert type(step).__name__ not in out, "one step of each kind per view"
        out[type(step).__name__] = step.make_params(flat)
    return out


def sample(view: Any, n: int, seed: int) -> list[dict[str, Any]]:
    torch.manual_seed(seed)
    flat = [torch.zeros(1, SIZE, SIZE, dtype=torch.uint8)]  # its size is all the crop asks
    return [walk(view, flat, {}) for _ in range(n)]


def plain(params: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if params is None else {k: v.tolist() if isinstance(v, torch.Tensor) else v for k, v in params.items()}


def moco_views() -> list[Any]:
    return MoCoV2.views(make_pretrain_config({"preset": "paper", "method": "moco"}), MEAN, STD).transforms


def swav_views() -> list[Any]:
    return SwAV.views(make_pretrain_config({"preset": "paper", "method": "swav"}), MEAN, STD).transforms


@pytest.fixture(scope="module")
def moco() -> list[dict[str, Any]]:
    return sample(moco_views()[0], N, seed=1)


@pytest.fixture(scope="module")
def swav_global() -> list[dict[str, Any]]:
    return sample(swav_views()[0], N, seed=2)


@pytest.fixture(scope="module")
def swav_local() -> list[dict[str, Any]]:
    return sample(swav_views()[-1], N, seed=3)


def seeded(seed: int, draw: Any, *args: Any) -> tuple[Any, torch.Tensor]:
    """What ``draw(*args)`` gives from the random state ``seed``, and the state it leaves."""
    torch.manual_seed(seed)
    result = draw(*args)
    return result, torch.get_rng_state()


# --- make_params is what forward draws ---------------------------------------------------------------------------


def noise_draws(noise: LogUniformGaussianNoise, x: torch.Tensor) -> tuple[dict[str, Any], torch.Tensor | None]:
    """The noise's parameters, then its pixels' normal draws when the coin adds noise."""
    params = noise.make_params([x])
    return params, None if params["sigma"] is None else torch.randn(x.shape)


def test_our_steps_draw_in_forward_exactly_their_make_params():
    """The same random numbers in the same order: forward from a state leaves the state make_params leaves (the noise
    draws its pixels after them), and its image is the one those parameters make."""
    x8 = torch.randint(0, 256, (1, 40, 40), dtype=torch.uint8)
    x = x8.float() / 255
    x3 = x.expand(3, -1, -1)
    crop, gamma = RotatedResizedCrop(24, (0.2, 1.0), 180.0, 0.5), RandomGamma(p=0.5)
    blur, noise = SeparableGaussianBlur(11, (0.1, 2.0)), LogUniformGaussianNoise()
    for seed in range(40):
        out, after = seeded(seed, crop, x8)
        p, after_params = seeded(seed, crop.make_params, [x8])
        assert torch.equal(after, after_params)
        box = (p["top"], p["left"], p["height"], p["width"])
        window = x8[..., box[0]:box[0] + box[2], box[1]:box[1] + box[3]] if p["angle"] is None else \
            rotated_window(x8, p["angle"], *box)
        window = v2.functional.to_dtype(window, torch.float32, scale=True)
        assert torch.equal(out, v2.functional.resize(window, [24, 24], antialias=True))

        out, after = seeded(seed, gamma, x)
        p, after_params = seeded(seed, gamma.make_params, [x])
        assert torch.equal(after, after_params)
        assert torch.equal(out, x if p["gamma"] is None else x ** p["gamma"])

        out, after = seeded(seed, blur, x)
        p, after_params = seeded(seed, blur.make_params, [x])
        assert torch.equal(after, after_params)
        assert torch.allclose(out, v2.functional.gaussian_blur(x, [11, 11], [p["sigma"]] * 2), atol=1e-5)

        out, after = seeded(seed, noise, x3)
        (p, pixels), after_params = seeded(seed, noise_draws, noise, x3)
        assert torch.equal(after, after_params)
        assert torch.equal(out, x3 if pixels is None else (x3 + pixels * p["sigma"]).clamp(0, 1))


def view_draws(view: Any, x: torch.Tensor, shape: tuple[int, ...]) -> dict[str, Any]:
    """The walk of ``view``, then the normal draws of the noise's pixels (of ``shape``) when it adds noise."""
    walked = walk(view, [x], {})
    if (walked.get("LogUniformGaussianNoise") or {}).get("sigma") is not None:
        torch.randn(shape)
    return walked


@pytest.mark.parametrize("views", [moco_views, swav_views])
def test_the_walk_draws_what_the_paper_views_draw(views):
    """Every make_params a view's forward calls, with its result, and the random state it leaves (plus the noise's
    pixels, its last draw) are the walk's: the laws below are the views' own."""
    x = torch.randint(0, 256, (1, 64, 64), dtype=torch.uint8)
    for view in (views()[0], views()[-1]):  # MoCo: two alike views; SwAV: a global and a local crop
        called: dict[str, Any] = {}
        leaves = [s for s in walk_steps(view) if hasattr(s, "make_params")]
        for step in leaves:
            step.make_params = recording(step, called)
        for seed in range(15):
            called.clear()
            out, after = seeded(seed, view, x)
            in_forward = dict(called)  # the walk calls them too
            walked, after_walk = seeded(seed, view_draws, view, x, out.shape)
            assert {k: plain(v) for k, v in walked.items() if v is not None} == in_forward
            assert "Normalize" in in_forward and any(k.endswith("ResizedCrop") for k in in_forward)  # recorded
            assert torch.equal(after, after_walk)


def walk_steps(step: Any) -> list[Any]:
    if isinstance(step, (v2.Compose, v2.RandomApply)):
        return [leaf for inner in step.transforms for leaf in walk_steps(inner)]
    return [step]


def recording(step: Any, called: dict[str, Any]) -> Any:
    make_params = type(step).make_params.__get__(step)

    def record(flat: list[Any]) -> dict[str, Any]:
        params = make_params(flat)
        called[type(step).__name__] = plain(params)
        return params

    return record


# --- the same images as torchvision's steps ------------------------------------------------------------------


class ReferenceBlur(torch.nn.Module):
    """The blur's draw, made by torchvision's 2-D Gaussian kernel of ``kernel_size``."""

    def __init__(self, blur: SeparableGaussianBlur) -> None:
        super().__init__()
        self.blur = blur

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sigma, size = self.blur.make_params([x])["sigma"], self.blur.kernel_size
        return v2.functional.gaussian_blur(x, [size, size], [sigma, sigma])


class ReferenceNoise(torch.nn.Module):
    """The noise's draws, added as the paper's GaussNoise adds them."""

    def __init__(self, noise: LogUniformGaussianNoise) -> None:
        super().__init__()
        self.noise = noise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sigma = self.noise.make_params([x])["sigma"]
        return x if sigma is None else (x + torch.randn(x.shape) * sigma).clamp(0, 1)


def reference(step: Any) -> Any:
    """``step`` made by torchvision: the rotated crop as RandomRotation of the whole slice then RandomResizedCrop,
    the blur and the noise as above; the random draws are the same, in the same order."""
    if isinstance(step, v2.Compose):
        return v2.Compose([reference(inner) for inner in step.transforms])
    if isinstance(step, v2.RandomApply):
        return v2.RandomApply([reference(inner) for inner in step.transforms], p=step.p)
    if isinstance(step, RotatedResizedCrop):
        rotate = [v2.RandomApply([step.rotation], p=step.p)] if step.p > 0 else []
        return v2.Compose([v2.ToDtype(torch.float32, scale=True), *rotate, step.crop])
    if isinstance(step, SeparableGaussianBlur):
        return ReferenceBlur(step)
    if isinstance(step, LogUniformGaussianNoise):
        return ReferenceNoise(step)
    return step


@pytest.mark.parametrize("angle", [37.3, -121.0, 90.0, 180.0, 269.9])
def test_a_rotated_window_of_a_slice_not_square_is_torchvisions_rotation_there(angle):
    """The padding reaches every rotated pixel when height and width differ."""
    x = torch.randint(1, 256, (1, 64, 100), dtype=torch.uint8)  # no 0: the fill is seen where it is
    whole = v2.functional.rotate(x, angle, interpolation=v2.InterpolationMode.NEAREST, fill=0)
    for top, left, height, width in ((0, 0, 64, 100), (5, 60, 59, 40), (30, 2, 20, 90)):
        window = rotated_window(x, angle, top, left, height, width)
        assert (window != whole[..., top:top + height, left:left + width]).float().mean() < 0.003


def test_a_rotated_window_of_a_slice_of_3600_px_is_exact():
    """Flat indices into the padded slice beyond 2**24 (float32's exact integers) are computed in float64: turned
    by 180 and 90 degrees, the window is the flipped and transposed slice's, pixel for pixel."""
    x = (torch.arange(3600 * 3600, dtype=torch.int64) % 251).to(torch.uint8).view(1, 3600, 3600)
    box = (3, 5, 16, 24)  # its source: the slice's far corner, flat index ~2.2e7 in the padded slice
    expected = {180.0: x.flip(-2, -1), 90.0: x.transpose(-2, -1).flip(-2)}
    for angle, turned in expected.items():
        assert torch.equal(rotated_window(x, angle, *box), turned[..., 3:19, 5:29])


@pytest.mark.parametrize("view", [moco_view(96, (0.2, 1.0), MEAN, STD), ct_view(96, (0.1, 0.33), MEAN, STD),
                                  moco_view(96, (0.2, 1.0), MEAN, STD, blur_p=1.0, blur_sigma=(0.5, 2.0))])
def test_views_are_torchvisions_images_draw_for_draw(view):
    """A view and the same view made by torchvision's steps from one random state: the state advances alike and
    the images agree within 2 grey levels of 255 on average (in fact to float rounding, and the rotation's rare
    half-pixel ties)."""
    hu, _ = make_phantom(n_slices=6, size=192, slice_thickness=2.5, seed=4)
    slices = torch.from_numpy(Intensity.parse("minmax").to_uint8(hu))[:, None]
    torchvisions = reference(view)
    worst = 0.0
    for seed in range(60):
        ours, after = seeded(seed, view, slices[seed % len(slices)])
        theirs, after_theirs = seeded(seed, torchvisions, slices[seed % len(slices)])
        assert torch.equal(after, after_theirs) and ours.shape == theirs.shape == (3, 96, 96)
        worst = max(worst, float((ours - theirs).abs().mean()) * STD * 255)  # grey levels, before normalising
    assert worst < 2
    assert worst < 0.05  # in fact


# --- the laws ------------------------------------------------------------------------------------------------------


def follows(values: Any, law: Any, what: str) -> None:
    """One-sample KS test of ``values`` against the CDF or scipy distribution ``law``."""
    p = stats.kstest(np.asarray(values, dtype=float), law.cdf if hasattr(law, "cdf") else law).pvalue
    assert p > ALPHA, f"{what}: KS p = {p:.2g}"


def alike(values: Any, reference: Any, what: str) -> None:
    """Two-sample KS test: ``values`` and the paper sampler's ``reference`` have one law."""
    p = stats.ks_2samp(np.asarray(values, dtype=float), np.asarray(reference, dtype=float)).pvalue
    assert p > ALPHA, f"{what}: two-sample KS p = {p:.2g}"


def coin(hits: list[bool], p: float, what: str) -> None:
    result = stats.binomtest(sum(hits), len(hits), p)
    assert result.pvalue > ALPHA, f"{what}: {sum(hits)} of {len(hits)} for p = {p}, binomial p = {result.pvalue:.2g}"


def uniform(lo: float, hi: float) -> Any:
    return stats.uniform(loc=lo, scale=hi - lo)


class ResizedCropLaw:
    """torchvision's RandomResizedCrop sampler on a square image, analytically: an area fraction ``a`` uniform in
    ``scale`` and a log aspect ratio ``l`` uniform in log ``RATIO``, kept when the box fits (its sides, rounded to
    pixels, at most SIZE: |l| <= -log a + 2 log(1 + 1 / (2 SIZE))); up to 10 tries, then the whole image
    (``fallback``, its probability). The kept pairs' marginal CDFs, on a grid."""

    def __init__(self, scale: tuple[float, float]) -> None:
        a = np.linspace(*scale, 2001)
        self.log_ratio = np.linspace(math.log(RATIO[0]), math.log(RATIO[1]), 2001)
        fits = np.abs(self.log_ratio)[None, :] <= -np.log(a)[:, None] + 2 * math.log1p(1 / (2 * SIZE))
        self.area, self.fits = a, fits
        self.fallback = (1 - fits.mean()) ** 10
        self.area_cdf = np.cumsum(fits.sum(1)) / fits.sum()
        self.ratio_cdf = np.cumsum(fits.sum(0)) / fits.sum()

    def area_law(self, x: np.ndarray) -> np.ndarray:
        return np.interp(x, self.area, self.area_cdf, left=0.0, right=1.0)

    def ratio_law(self, x: np.ndarray) -> np.ndarray:
        return np.interp(x, self.log_ratio, self.ratio_cdf, left=0.0, right=1.0)


def boxes(draws: list[dict[str, Any]], name: str) -> np.ndarray:
    return np.array([[d[name][k] for k in ("top", "left", "height", "width")] for d in draws], dtype=float)


def paper_boxes(scale: tuple[float, float], seed: int) -> np.ndarray:
    """The paper's sampler: torchvision's (v1) RandomResizedCrop.get_params on a 512 px slice."""
    torch.manual_seed(seed)
    image = torch.zeros(1, SIZE, SIZE)
    return np.array([T.RandomResizedCrop.get_params(image, list(scale), list(RATIO)) for _ in range(N)], dtype=float)


@pytest.mark.parametrize(("draws", "name", "scale"), [("moco", "RotatedResizedCrop", (0.2, 1.0)),
                                                     ("swav_global", "RandomResizedCrop", (0.9, 1.0)),
                                                     ("swav_local", "RandomResizedCrop", (0.1, 0.33))])
def test_crop_boxes_follow_torchvisions_resized_crop_law(request, draws, name, scale):
    """Area fraction, log aspect ratio and position of the crop box: the paper sampler's law (two-sample), and the
    analytic one: uniform area and log ratio kept where the box fits, the whole slice after 10 misfits."""
    ours, paper = boxes(request.getfixturevalue(draws), name), paper_boxes(scale, seed=11)
    for b, who in ((ours, "ours"), (paper, "paper")):
        assert (b[:, 2:] >= 1).all() and (b[:, :2] >= 0).all() and (b[:, :2] + b[:, 2:] <= SIZE).all(), who
    area = ours[:, 2] * ours[:, 3] / SIZE**2
    log_ratio = np.log(ours[:, 3] / ours[:, 2])
    alike(area, paper[:, 2] * paper[:, 3] / SIZE**2, f"{name} area fraction")
    alike(log_ratio, np.log(paper[:, 3] / paper[:, 2]), f"{name} log aspect ratio")

    law = ResizedCropLaw(scale)
    whole = area == 1.0
    coin(list(whole), law.fallback, f"{name} falls back to the whole slice")
    follows(area[~whole], law.area_law, f"{name} area fraction")
    follows(log_ratio[~whole], law.ratio_law, f"{name} log aspect ratio")
    jitter = np.random.default_rng(0).random((len(ours), 2))  # uniform offsets -> uniform in [0, 1)
    for axis, what in ((0, "top"), (1, "left")):
        follows((ours[:, axis] + jitter[:, axis]) / (SIZE - ours[:, 2 + axis] + 1), uniform(0, 1), f"{name} {what}")


def test_moco_rotation_coin_and_angle(moco):
    """RandomApply(RandomRotation(180), p=0.5): half the views rotated, angle uniform in [-180, 180], as the paper's
    torchvision sampler."""
    angles = [d["RotatedResizedCrop"]["angle"] for d in moco]
    coin([a is not None for a in angles], 0.5, "rotation")
    angles = [a for a in angles if a is not None]
    follows(angles, uniform(-180, 180), "rotation angle")
    torch.manual_seed(12)
    alike(angles, [T.RandomRotation.get_params([-180.0, 180.0]) for _ in range(N)], "rotation angle")


def paper_jitter(seed: int, ranges: list[Any]) -> list[tuple[Any, ...]]:
    torch.manual_seed(seed)
    return [T.ColorJitter.get_params(*ranges) for _ in range(N)]


@pytest.mark.parametrize(("draws", "p", "ranges"), [
    ("moco", 1.0, [(0.6, 1.4), (0.6, 1.4), (0.6, 1.4), (-0.1, 0.1)]),  # ColorJitter(0.4, 0.4, 0.4, 0.1) always
    ("swav_global", 0.8, [(0.6, 1.4), (0.6, 1.4), None, None]),  # brightness/contrast 0.4, p = 0.8
    ("swav_local", 0.8, [(0.6, 1.4), (0.6, 1.4), None, None]),
])
def test_colour_jitter_factors_uniform_in_random_order(request, draws, p, ranges):
    """The jitter's coin, brightness and contrast factors uniform in [0.6, 1.4], and which of the two comes first
    fair (on a grey slice saturation and hue change nothing): the laws of the paper's ColorJitter sampler."""
    jitter = [d["ColorJitter"] for d in request.getfixturevalue(draws)]
    coin([j is not None for j in jitter], p, "jitter applied")
    jitter = [j for j in jitter if j is not None]
    paper = paper_jitter(13, ranges)
    for k, (key, r) in enumerate(zip(("brightness", "contrast", "saturation", "hue"), ranges, strict=True)):
        values = [j[f"{key}_factor"] for j in jitter]
        if r is None:
            assert all(v is None for v in values), key
            continue
        follows(values, uniform(*r), f"{key} factor")
        alike(values, [q[k + 1] for q in paper], f"{key} factor")
    orders = [j["fn_idx"].tolist() for j in jitter]
    coin([o.index(0) < o.index(1) for o in orders], 0.5, "brightness before contrast")
    counts = np.unique(np.array(orders), axis=0, return_counts=True)[1]
    assert len(counts) == 24 and stats.chisquare(counts).pvalue > ALPHA, "all 24 orders alike"


@pytest.mark.parametrize("draws", ["moco", "swav_global", "swav_local"])
def test_blur_coin_and_sigma_uniform(request, draws):
    """RandomApply(GaussianBlur, p=0.5) with sigma uniform in [0.1, 2] (the paper's Pillow radius,
    ``random.uniform(0.1, 2.0)``, and SwAV's)."""
    blur = [d["SeparableGaussianBlur"] for d in request.getfixturevalue(draws)]
    coin([b is not None for b in blur], 0.5, "blur applied")
    follows([b["sigma"] for b in blur if b is not None], uniform(0.1, 2.0), "blur sigma")


def test_moco_flips_and_noise(moco):
    """Horizontal and vertical flips p = 0.5 each; the paper's GaussNoise: p = 0.5 and a variance log-uniform in
    [1e-5, 1e-4] (``exp(U(log 1e-5, log 1e-4))``)."""
    for flip in ("RandomHorizontalFlip", "RandomVerticalFlip"):
        coin([d[flip] is not None for d in moco], 0.5, flip)
    sigma = [d["LogUniformGaussianNoise"]["sigma"] for d in moco]
    coin([s is not None for s in sigma], 0.5, "noise applied")
    follows([2 * math.log(s) for s in sigma if s is not None], uniform(math.log(1e-5), math.log(1e-4)),
            "log noise variance")


def test_gamma_coin_and_log_uniform_gamma(moco, swav_global, swav_local):
    """RandomGamma: the coin p, gamma log-uniform in its range; off in both paper views (the paper has none)."""
    for p in (0.3, 0.5):
        draws = sample(RandomGamma((0.7, 1.4), p=p), N, seed=14)
        gamma = [d["RandomGamma"]["gamma"] for d in draws]
        coin([g is not None for g in gamma], p, "gamma applied")
        follows([math.log(g) for g in gamma if g is not None], uniform(math.log(0.7), math.log(1.4)), "log gamma")
    assert all("RandomGamma" not in d for d in moco)
    assert all(d["RandomGamma"]["gamma"] is None for d in swav_global + swav_local)
    assert all(f not in d for d in swav_global for f in ("RandomHorizontalFlip", "LogUniformGaussianNoise"))
