"""Typed configuration shared by the CLI, the Python API and experiment files (same names).

Nothing here imports torch: the CLI checks every setting with these models first, so a mistyped one is
one line (``ctreduce.core.validation``) in a fraction of a second, not after torch loads. Pre-training methods
register here (:func:`register_pretrain_method`) with their settings; their training code is in ``ctreduce.ssl``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import InitErrorDetails

from .core.devices import DEVICE_PATTERN
from .core.dhash import is_dhash
from .core.plugins import load_plugins
from .core.validation import SettingsError, checked, choice, merge, not_one_of, one_line

SELECTORS = ("all", "every-n")
# The paper's fixed input statistics of grey slices on [0, 1] (of LIDC), used for ALL and every reduced subset.
PAPER_GREY_MEAN, PAPER_GREY_STD = 0.1806, 0.1907
AtLeastOne = Annotated[int, Field(ge=1)]
# torchvision ResNets a backbone can be (ctreduce.backbones builds them; DeepNet adds an EfficientNet).
RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
EFFICIENTNET_LITE0 = "efficientnet-lite0"
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
PRECISIONS = ("auto", "32-true", "16-mixed", "bf16-mixed")
OPTIMIZERS = ("lars", "sgd", "lamb", "adamw")

def _devices(value: int | str) -> int | str:
    """A device count: N >= 1, -1 or "auto" (every GPU); digits given as text become the number."""
    if isinstance(value, str) and value.lstrip("-").isdigit():
        value = int(value)
    if value != "auto" and not (isinstance(value, int) and (value >= 1 or value == -1)):
        raise ValueError(f"devices must be a number >= 1, -1 or 'auto', got {value!r}")
    return value


@dataclass(frozen=True)
class Cli:
    """How a setting appears on the command line where that differs from its field: other option names
    (``flags``), another type taken there (``type``: the text a validator parses), or not at all (``hidden``).
    ``ctreduce.cli`` builds the options of ``reduce`` from the fields, their defaults and descriptions."""

    flags: tuple[str, ...] = ()
    type: Any = None
    hidden: bool = False


class ReduceConfig(BaseModel):
    """How every volume is reduced: plain typed settings, no algorithm behind them.

    What the names mean is the method registry's business: ``ctreduce.reduction.plan.resolve``
    checks the method, intensity policy and thresholds against it and fills the measure's default
    threshold (``threshold=None``), before any volume is read. Each description is the option's help on
    the command line (``ctreduce reduce --help``), whose options are built from these fields.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: str = Field("hash", description="all, every-n, hash, ssim, mi or deepnet.")
    threshold: float | None = Field(None, description="Redundancy threshold in the measure's unit (hash: Hamming "
                                                      "bits, default 6; ssim/mi/deepnet: similarity).")
    thresholds: Annotated[tuple[float, ...] | None, Cli(type=str | None)] = Field(
        None, description="Sweep: comma-separated thresholds, one kept@<t> column each.")
    target_fraction: float | None = Field(None, description="Choose the threshold (every-n: N) whose kept fraction "
                                                            "over the whole dataset is closest to this, e.g. 0.10.")
    every_n: Annotated[AtLeastOne, Cli(flags=("--n",))] = Field(10, description="N for every-n.")
    intensity: str = Field("minmax", description="minmax | window:WL,WW | range:LO,HI")
    hash_kind: Annotated[str, Cli(flags=("--hash",))] = Field("dhash", description="dhash, phash, ahash or whash.")
    hash_size: int = Field(8, description="Hash side length (8 -> 64 bits).")
    ssim_size: int = Field(128, description="ssim: slices are resized to this square size.")
    mi_bins: int = Field(64, description="mi: bins of the joint histogram.")
    backbone: str = Field("resnet50", description="deepnet: resnet50, efficientnet-lite0 or a state_dict file.")
    device: str = Field("auto", description="ssim/deepnet: auto, cpu or cuda.")
    batch_size: AtLeastOne = Field(64, description="ssim/mi/deepnet: slices per batch.")
    modality: str = Field("CT", description="DICOM modality to keep; 'any' keeps all.")
    allow_gaps: bool = Field(False, description="Reduce DICOM series with missing slices anyway.")
    # archive: the greedy rule again over every volume's kept slices
    scope: str = Field("volume", description="volume (the paper: each volume alone) or archive (then the same rule "
                                             "across volumes: no near-duplicate pair anywhere; hash only).")

    @field_validator("thresholds", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return tuple(float(t) for t in value.split(",") if t.strip())
        except ValueError:
            raise ValueError(f"--thresholds must be comma-separated numbers, got {value!r}") from None

    @field_validator("method")
    @classmethod
    def _spelling(cls, value: str) -> str:
        value = value.lower().replace("_", "-")
        return "every-n" if value in ("everyn", "every") else value

    @field_validator("target_fraction")
    @classmethod
    def _fraction(cls, value: float | None) -> float | None:
        if value is not None and not 0 < value <= 1:
            raise ValueError(f"target_fraction must be in (0, 1], got {value}")
        return value

    @model_validator(mode="after")
    def _selectors(self) -> ReduceConfig:
        if self.method in SELECTORS:
            if self.threshold is not None or self.thresholds:
                raise ValueError(f"method {self.method!r} takes no threshold")
            if self.target_fraction is not None and self.method == "all":
                raise ValueError("method 'all' keeps every slice; it takes no target fraction")
        elif self.thresholds is not None and not self.thresholds:
            raise ValueError("thresholds is empty")
        if self.scope not in ("volume", "archive"):
            raise ValueError(f"scope must be 'volume' or 'archive', got {self.scope!r}")
        if self.scope == "archive" and (self.method != "hash" or not is_dhash(self.hash_kind, self.hash_size)):
            raise ValueError("scope 'archive' compares slices of different volumes by their 64-bit dHash: it "
                             "needs --method hash with the default dhash of size 8")
        if self.scope == "archive" and (self.target_fraction is not None or self.thresholds):
            raise ValueError("scope 'archive' takes one threshold, not a sweep or a target fraction")
        return self


class RunOptions(BaseModel):
    """How ``reduce`` runs, not what it keeps: workers, the run folder's handling, the one-pass export.

    ``ctreduce.reduce`` takes these as keyword arguments beside the ReduceConfig fields; each description is
    the option's help on the command line (``ctreduce reduce --help``), whose options are built from these fields.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    workers: int = Field(1, description="Volumes processed in parallel.")
    backend: str = Field("local", description="local (process pool) or ray.")
    ray_address: str | None = Field(None, description="Ray cluster address (default: RAY_ADDRESS, else a local Ray).")
    overwrite: bool = Field(False, description="Replace a previous run with other settings.")
    csv: Annotated[bool, Cli(flags=("--csv",))] = Field(False, description="Also write manifest.csv.")
    export: str | None = Field(None, description="Also export the kept slices in the same pass: npy or png (each "
                                                 "volume is read once).")
    export_size: Annotated[int, Cli(flags=("--size",))] = Field(224, description="--export npy: side of the square "
                                                                                 "slices.")
    export_out: Path | None = Field(None, description="--export: the export folder (default OUT/export).")
    verify: Annotated[bool, Cli(flags=("--verify",))] = Field(
        False, description="Read every slice of the finished volumes again and reduce again those whose pixels "
                           "changed (a rerun otherwise trusts files whose size and time are unchanged).")
    # The command line shows a progress bar unless --quiet.
    progress: Annotated[bool, Cli(hidden=True)] = Field(False, description="A progress bar on stderr.")

    @field_validator("workers")
    @classmethod
    def _at_least_one(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"--workers must be >= 1, got {value}")
        return value

    @field_validator("backend")
    @classmethod
    def _backend(cls, value: str) -> str:
        if value not in ("local", "ray"):
            raise ValueError(f"unknown backend {value!r}; choose 'local' or 'ray'")
        return value


# --- pre-training --------------------------------------------------------------------------------


class Optimiser(NamedTuple):
    """A method's optimiser where ``optimizer``, ``lr`` and ``weight_decay`` are None: its kind, its learning rate
    at a global batch of 256 (scaled linearly with the batch) and its weight decay."""

    kind: str
    lr_at_256: float
    weight_decay: float


@dataclass(frozen=True)
class PretrainMethod:
    """One pre-training method as the settings know it, registered by name (:func:`register_pretrain_method`):
    everything here is checked before torch loads; the training itself is ``implementation``.

    ``settings``: the model of the method's own settings (``<name>.*``: ``swav.n_prototypes=300``).
    ``implementation``: its ``ctreduce.ssl.base.SSLMethod`` subclass (the LightningModule, with its ``views``),
    or ``"module:Class"``, imported by ``ctreduce.ssl.pretrain`` only when a run starts.
    ``presets``: per preset name, the settings a run of this method starts from (top-level ones and its own
    section); ``section_presets``: per preset name, its own section's values wherever the section is recorded.
    """

    name: str
    settings: type[BaseModel]
    implementation: str | type
    optimiser: Optimiser
    presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    section_presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


_METHODS: dict[str, PretrainMethod] = {}
DEFAULT_METHOD = "swav"  # the paper's


def register_pretrain_method(method: PretrainMethod) -> PretrainMethod:
    """Add ``method`` to the registry: ``ctreduce pretrain --method NAME`` and its ``NAME.*`` settings then work.
    ValueError for a registration that cannot work (a taken name, an unknown optimiser or preset)."""
    name = method.name
    if not name.isidentifier() or name != name.lower():
        raise ValueError(f"pre-training method name {name!r}: use a lower-case Python identifier")
    if name in PretrainConfig.model_fields or _METHODS.get(name, method) != method:
        raise ValueError(f"pre-training method name {name!r} is taken")
    if not (isinstance(method.settings, type) and issubclass(method.settings, BaseModel)):
        raise ValueError(f"pre-training method {name!r}: settings must be a pydantic model class")
    if method.optimiser.kind not in OPTIMIZERS:
        raise ValueError(f"pre-training method {name!r}: " + not_one_of("optimiser", method.optimiser.kind, OPTIMIZERS))
    unknown = sorted({*method.presets, *method.section_presets} - set(PRESETS))
    if unknown:
        raise ValueError(f"pre-training method {name!r}: " + not_one_of("preset", unknown[0], PRESETS))
    _METHODS[name] = method
    return method


def pretrain_methods() -> dict[str, PretrainMethod]:
    """Every registered pre-training method, by name: the built-in ones, then the plug-ins'
    (``ctreduce.core.plugins``, loaded here the first time)."""
    load_plugins()
    return dict(_METHODS)


def pretrain_method(name: str) -> PretrainMethod:
    """The registration of method ``name``; :class:`SettingsError` when there is none."""
    methods = pretrain_methods()
    if name not in methods:
        raise SettingsError(not_one_of("method", name, methods))
    return methods[name]


def _sections(method: str, given: Any) -> list[str]:
    """The method sections a run records, in registry order: every built-in method's (config.yaml has always held
    them, and a rerun and an experiment's cache compare it), the run's method's and any given."""
    methods = pretrain_methods()
    return [name for name in methods if name in BUILT_IN_METHODS or name == method or name in given]


# Preset defaults of the settings every method shares (each method adds its own: ``PretrainMethod.presets``);
# "cpu" is a short real pre-training that finishes in minutes on a laptop.
PRESETS: dict[str, dict[str, Any]] = {
    # The paper normalised every data set with the same fixed statistics (of LIDC), so ALL and the
    # reduced subsets see identical inputs.
    "paper": {"mean": PAPER_GREY_MEAN, "std": PAPER_GREY_STD},
    "cpu": {
        "backbone": "resnet18",
        "epochs": 5,
        "batch_size": 32,
        "input_size": 64,
        "warmup_epochs": 1,
        "num_workers": 2,
        "decay_norm_and_bias": False,  # the common modern recipe; statistics computed per export
    },
}


class PretrainConfig(BaseModel):
    """One pre-training run. ``preset`` fills the defaults; explicit values override them.

    Each registered method's own settings are a section named after it (``config.swav``, ``config.moco``),
    validated by its settings model."""

    model_config = ConfigDict(extra="allow")  # the method sections; any other key is refused below

    method: str = DEFAULT_METHOD
    data: str = ""
    out: str = ""
    preset: str = "paper"
    backbone: str = "resnet50"
    epochs: AtLeastOne = 800
    batch_size: AtLeastOne = 128
    input_size: AtLeastOne = 224
    lr: float | None = None  # None: the method's default for the preset
    weight_decay: float | None = None
    warmup_epochs: int = 10
    optimizer: str | None = None  # None: the method's (PretrainMethod.optimiser)
    devices: int | str = "auto"
    num_nodes: AtLeastOne = 1
    accelerator: str = "auto"
    strategy: str = "auto"  # "auto": ddp when several devices or nodes
    precision: str = "auto"  # "auto": 16-mixed on GPU, 32 on CPU
    num_workers: Annotated[int, Field(ge=0)] = 4
    views_on: str = "auto"  # the views made by the loader's workers, on the device from batches, or auto (GPU: device)
    seed: int = 0
    mean: float | None = None  # None: computed from the training data (paper preset: PAPER_GREY_MEAN)
    std: float | None = None  # (paper preset: PAPER_GREY_STD)
    # Weight decay (and LARS/LAMB scaling) for norm layers and biases too; set by the preset per method.
    decay_norm_and_bias: bool = True
    grad_clip: float | None = None  # global gradient-norm clipping before each step; None: off
    max_steps: int = -1
    log_every_n_steps: int = 10
    collapse_patience: int = 3

    @classmethod
    def sections(cls) -> dict[str, type[BaseModel]]:
        """The settings model of each method section (``describe`` names their keys)."""
        return {name: method.settings for name, method in pretrain_methods().items()}

    @model_validator(mode="wrap")
    @classmethod
    def _method_sections(cls, data: Any, handler: Any) -> PretrainConfig:
        """Validate the method sections with their models (errors keyed ``swav.n_prototypes``), refuse any key
        that is neither a setting nor a registered method, and report every mistake together."""
        if not isinstance(data, dict):
            return handler(data)
        models = cls.sections()
        own = {k: v for k, v in data.items() if k in cls.model_fields}
        errors: list[InitErrorDetails] = []
        for name in _sections(str(own.get("method", DEFAULT_METHOD)).lower(), data):
            try:
                own[name] = models[name].model_validate(data.get(name) or {})
            except ValidationError as exc:
                errors += _details(exc, (name,))
        try:
            model = handler(own)
        except ValidationError as exc:
            errors = _details(exc) + errors
        errors += [InitErrorDetails(type="extra_forbidden", loc=(key,), input=value) for key, value in data.items()
                   if key not in cls.model_fields and key not in models]
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        return model

    @field_validator("method")
    @classmethod
    def _known_ssl_method(cls, value: str) -> str:
        return choice(value.lower(), tuple(pretrain_methods()), "method")

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str) -> str:
        return choice(value, PRESETS, "preset")

    @field_validator("backbone", "optimizer", "accelerator", "precision", "views_on")
    @classmethod
    def _known_name(cls, value: str | None, info: ValidationInfo) -> str | None:
        options = {"backbone": RESNETS, "optimizer": OPTIMIZERS, "accelerator": ACCELERATORS,
                   "precision": PRECISIONS, "views_on": ("auto", "loader", "device")}[info.field_name]
        return value if value is None else choice(value, options, info.field_name)

    @field_validator("devices")
    @classmethod
    def _known_devices(cls, value: int | str) -> int | str:
        return _devices(value)

    def missing(self) -> str:
        """What a run still needs before it can start ("" when nothing): the data and the run folder."""
        if not self.data:
            return "no training data: pass --data EXPORT_DIR (written by 'ctreduce export')"
        if not self.out:
            return "no run folder: pass --out RUN_DIR"
        return ""


def _details(exc: ValidationError, prefix: tuple[str, ...] = ()) -> list[InitErrorDetails]:
    """The errors of ``exc`` again, their keys under ``prefix``: to be raised together in one ValidationError."""
    return [InitErrorDetails(type=e["type"], loc=(*prefix, *e["loc"]), input=e["input"],
                             **({"ctx": e["ctx"]} if "ctx" in e else {})) for e in exc.errors()]


# --- the built-in methods ------------------------------------------------------------------------

class SwavSettings(BaseModel):
    """SwAV (Caron et al. 2020) as in the paper: 2 global + 6 local crops, 500 prototypes (bias-free,
    as the official ``nn.Linear(128, K, bias=False)``). Sources of every value: docs/paper-fidelity.md (SwAV)."""

    model_config = ConfigDict(extra="forbid")

    n_prototypes: int = 500
    projection_hidden_dim: int = 2048
    projection_dim: int = 128
    temperature: float = 0.1
    sinkhorn_epsilon: float = 0.05
    sinkhorn_iterations: int = 3
    freeze_prototypes_steps: int = 313  # counted in optimiser steps, not epochs
    queue_length: int = 0  # 0 = no queue (the paper's setting)
    queue_start_epoch: int = 15  # the queue is filled from this epoch on and used once full
    global_crops: int = 2  # the codes (Sinkhorn) come from these crops only
    global_crop_scale: tuple[float, float] = (0.9, 1.0)
    local_crops: int = 6
    local_crop_size: int = 96
    local_crop_scale: tuple[float, float] = (0.10, 0.33)
    # Views. The paper's ColorJitter(0.4, 0.4, 0.2, 0.2) p=0.8 and RandomGrayscale(0.2) on grey slices
    # reduce to brightness and contrast jitter (saturation, hue and grayscale leave grey pixels as they are).
    jitter: tuple[float, float] = (0.4, 0.4)  # brightness, contrast
    jitter_p: float = 0.8
    gamma_p: float = 0.0  # random gamma (0.7-1.4): not in the paper; the cpu preset uses 0.3
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)


Probability = Annotated[float, Field(ge=0.0, le=1.0)]


class MocoSettings(BaseModel):
    """MoCo v2 as the paper ran it (Wolfda95/SSL-MedicalImagining-CL-MAE: moco2_module.py and
    moco_data_module.py; sources per setting in docs/paper-fidelity.md (MoCo)): momentum key encoder,
    queue of negatives, a linear head (the published command has no ``--use_mlp``) and the
    paper's CT views, in the paper script's order: rotation, crop, jitter, blur, flips, noise."""

    model_config = ConfigDict(extra="forbid")

    mlp_head: bool = False  # True: MoCo v2's MLP head (Linear, ReLU, Linear); False: one Linear (paper)
    projection_hidden_dim: int = 2048  # hidden width of the MLP head (the linear head has none)
    projection_dim: int = 128
    queue_length: int = 65536
    queue_cap_to_data: bool = False  # True: at most the number of training slices (cpu preset)
    momentum: Probability = 0.999
    temperature: float = 0.07
    rotation_degrees: float = 180.0  # uniform angle in [-d, d] degrees, before the crop (nearest, fill 0)
    rotation_p: Probability = 0.5
    crop_scale: tuple[float, float] = (0.2, 1.0)
    # brightness, contrast, saturation, hue as torchvision's ColorJitter; on grey slices the
    # saturation and hue factors change nothing, brightness and contrast act in random order
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    jitter_p: Probability = 1.0  # the paper's script jitters every view (MoCo v2's code: 0.8)
    gamma_p: Probability = 0.0  # random gamma 0.7-1.4 (not in the paper)
    blur_p: Probability = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # pixels of the cropped view
    hflip: bool = True
    vflip: bool = True
    noise_p: Probability = 0.5
    noise_var: tuple[float, float] = (1e-5, 1e-4)  # variance, log-uniform, on [0, 1]; clamped to [0, 1]


class SparkSettings(BaseModel):
    """SparK (Tian et al. 2023): sparse masked modelling for CNNs, laid out as the official code
    (keyu-tian/SparK ``pretrain/``). Sources of every value: docs/paper-fidelity.md (SparK)."""

    model_config = ConfigDict(extra="forbid")

    mask_ratio: float = 0.6
    patch_size: int = 32
    decoder_width: int = 768  # official LightDecoder width (stride-32 stage); halves per stage
    weight_decay_end: float = 0.2
    crop_scale: tuple[float, float] = (0.67, 1.0)
    # Stochastic depth on each residual branch, linear in the block index up to this rate (timm's rule);
    # official SparK pre-trains ResNet-50 with 0.05 (paper preset).
    drop_path_rate: float = 0.0
    zero_init_last_bn: bool = True  # last BN of each residual branch starts at 0 (timm's ResNet init, official)
    # Per-channel input normalisation; None: the run's mean/std on all three channels. The paper's
    # SparK script (official SparK) normalises with ImageNet's, which the paper preset sets.
    input_mean: tuple[float, float, float] | None = None
    input_std: tuple[float, float, float] | None = None



register_pretrain_method(PretrainMethod(
    "swav", SwavSettings, "ctreduce.ssl.swav:SwAV",
    Optimiser("lars", 0.15 * 256 / 128, 1e-6),  # published command: lr 0.15 at batch 128
    # LARS (LARC trust 0.001, momentum 0.9) with wd 1e-6 on every parameter, as the official code and the paper's
    # script; lr 0.15 at batch 128 (linear scaling with the global batch).
    presets={"paper": {"optimizer": "lars", "weight_decay": 1e-6, "decay_norm_and_bias": True}},
    section_presets={"cpu": {"n_prototypes": 64, "projection_hidden_dim": 256, "projection_dim": 64,
                             "freeze_prototypes_steps": 20, "local_crop_size": 32, "local_crops": 2, "gamma_p": 0.3}},
))
register_pretrain_method(PretrainMethod(
    "moco", MocoSettings, "ctreduce.ssl.moco:MoCoV2",
    Optimiser("sgd", 0.015 * 256 / 128, 1e-4),  # paper: lr 0.015 at batch 128
    # no warm-up and full precision, as the paper's script and the official code
    presets={"paper": {"warmup_epochs": 0, "precision": "32-true"}},
    # MoCo v2's MLP head; the queue capped to the (small) export, a multiple of the batch
    section_presets={"cpu": {"mlp_head": True, "projection_hidden_dim": 256, "projection_dim": 64,
                             "queue_length": 1024, "queue_cap_to_data": True}},
))
register_pretrain_method(PretrainMethod(
    "spark", SparkSettings, "ctreduce.ssl.spark:SparK",
    Optimiser("lamb", 2e-4, 0.04),
    # official SparK as run by the paper's script (--bs=32 --ep=1600): Tian et al.'s schedule, fp32 as the official
    # loop, ImageNet input normalisation as its data pipeline, drop path 0.05 as its ResNet-50
    # (docs/paper-fidelity.md)
    presets={"paper": {"epochs": 1600, "batch_size": 32, "warmup_epochs": 40, "decay_norm_and_bias": False,
                       "grad_clip": 5.0, "precision": "32-true",
                       "spark": {"drop_path_rate": 0.05, "input_mean": (0.485, 0.456, 0.406),
                                 "input_std": (0.229, 0.224, 0.225)}}},
    section_presets={"cpu": {"patch_size": 16, "decoder_width": 128}},
))
# Recorded in every run (``_sections``); a plug-in's section only in its own runs.
BUILT_IN_METHODS = tuple(_METHODS)


def make_pretrain_config(values: dict[str, Any] | None = None, *, yaml_file: str | None = None) -> PretrainConfig:
    """Preset defaults (the shared ones, then each recorded method section's, then the run's method's), then a
    YAML file, then explicit values; unknown keys and values are one :class:`SettingsError` line."""
    import yaml

    merged: dict[str, Any] = {}
    if yaml_file is not None:
        try:
            with open(yaml_file) as fh:
                loaded = yaml.safe_load(fh) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise SettingsError(f"{yaml_file}: cannot read the settings file ({one_line(exc)})") from None
        if not isinstance(loaded, dict):
            raise SettingsError(f"{yaml_file}: expected a mapping of settings")
        merged = loaded
    merged = merge(merged, values or {})
    preset = merged.get("preset", "paper")
    if preset not in PRESETS:
        raise SettingsError(not_one_of("preset", preset, PRESETS))
    try:
        methods = pretrain_methods()
    except ValueError as exc:  # a plug-in that cannot be loaded
        raise SettingsError(str(exc)) from None
    method = str(merged.get("method", DEFAULT_METHOD)).lower()
    sections = {name: methods[name].section_presets.get(preset, {}) for name in _sections(method, merged)}
    run = methods[method].presets.get(preset, {}) if method in methods else {}
    return checked(PretrainConfig, merge(PRESETS[preset], sections, run, merged))


# --- downstream evaluation -----------------------------------------------------------------------

FINETUNE_MODES = ("finetune", "linear", "knn")
# What they mean: ctreduce.downstream.protocol (the paper's notebooks, per task)
FINETUNE_SCHEDULES = ("paper", "constant")
FINETUNE_NORMALISATIONS = ("task", "train", "pretraining", "imagenet", "paper:covid", "paper:brain",
                           "paper:organsmnist")
FINETUNE_TRANSFORMS = ("task", "paper-covid", "paper-brain", "paper-organsmnist", "hv", "none")


class FinetuneConfig(BaseModel):
    """The paper's protocol (70 epochs, Adam 1e-4, wd 5e-4, batch 64, 10 head-only epochs) as its notebooks ran
    it: ``schedule``, ``normalisation`` and ``transforms`` (``ctreduce.downstream.protocol``).

    ``head_only_epochs`` above ``epochs`` trains the head only for all ``epochs`` (:attr:`head_only`,
    :meth:`notes`): a short run keeps the default schedule's first phase instead of failing on it."""

    model_config = ConfigDict(extra="forbid")

    task: dict[str, Any] = {}
    out: str = ""
    init: str = "imagenet"  # random | imagenet | RUN_DIR (with backbone.pt) | any ResNet state_dict file
    backbone: str = "resnet50"
    mode: str = "finetune"
    epochs: AtLeastOne = 70
    head_only_epochs: Annotated[int, Field(ge=0)] = 10
    lr: float = 1e-4
    weight_decay: float = 5e-4
    batch_size: AtLeastOne = 64
    input_size: AtLeastOne = 224
    schedule: str = "paper"  # paper: lr, then lr x 0.2 after the unfreezing epoch; constant: lr throughout
    normalisation: str = "task"  # task | train | pretraining | imagenet | paper:covid|brain|organsmnist
    transforms: str = "task"  # task | paper-covid | paper-brain | paper-organsmnist | hv | none
    seeds: tuple[int, ...] = (0,)
    num_workers: Annotated[int, Field(ge=0)] = 2
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    devices: int | str = 1  # per machine: N (DDP when > 1, gloo on CPU), -1 or "auto" (every GPU)
    precision: str = "auto"  # "auto": 16-mixed on GPU, 32-true on CPU; or 32-true, 16-mixed, bf16-mixed
    resume: bool = True  # a rerun into the same --out continues (finished seeds kept, the others from last.ckpt)
    knn_k: AtLeastOne = 20
    positive_label: Annotated[int, Field(ge=0)] = 1
    bootstrap: Annotated[int, Field(ge=0)] = 1000
    mean: float | None = None  # both set: these grey statistics, whatever ``normalisation`` says
    std: float | None = None

    @field_validator("mode", "precision", "backbone", "schedule", "normalisation", "transforms")
    @classmethod
    def _known_name(cls, value: str, info: ValidationInfo) -> str:
        options = {"mode": FINETUNE_MODES, "precision": PRECISIONS, "backbone": (*RESNETS, EFFICIENTNET_LITE0),
                   "schedule": FINETUNE_SCHEDULES, "normalisation": FINETUNE_NORMALISATIONS,
                   "transforms": FINETUNE_TRANSFORMS}[info.field_name]
        return choice(value, options, info.field_name)

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not DEVICE_PATTERN.fullmatch(value.strip().lower()):
            raise ValueError(f"device {value!r} is not one of auto, cpu, cuda, cuda:N, mps")
        return value

    @field_validator("devices")
    @classmethod
    def _known_devices(cls, value: int | str) -> int | str:
        return _devices(value)

    @field_validator("seeds")
    @classmethod
    def _some_seeds(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value:
            raise ValueError("seeds is empty")
        return value

    @property
    def head_only(self) -> int:
        """The head-only epochs this run trains: ``head_only_epochs``, at most ``epochs``."""
        return min(self.head_only_epochs, self.epochs)

    def notes(self) -> list[str]:
        """Settings this run adjusts, one line each (printed at the start, recorded in results.json)."""
        if self.head_only_epochs > self.epochs and self.mode != "knn":
            return [f"head_only_epochs {self.head_only_epochs} is more than epochs {self.epochs}: the head alone "
                    f"is trained for all {self.epochs} epoch(s) (head_only_epochs={self.epochs})"]
        return []
