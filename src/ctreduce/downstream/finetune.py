"""Downstream evaluation of a backbone: the paper's fine-tuning protocol, linear probe, kNN.

Fine-tuning (Wolf et al. 2024): torchvision ResNet initialised from the backbone, a new linear
head, Adam (lr 1e-4, weight decay 5e-4), batch 64, 70 epochs; the first 10 epochs train only
the head (BatchNorm layers stay trainable), then every layer. The epoch with the best
validation accuracy is kept and scored on the test split. Every seed is a full repetition.

Output folder::

    config.yaml                 the resolved settings
    seed<k>/model.pt            the selected epoch's weights (torchvision ResNet with the head)
    seed<k>/history.jsonl       per epoch: train loss, val accuracy, trainable parameters
    seed<k>/predictions.csv     test set: name, label, probability per class
    seed<k>/metrics.json        test metrics with bootstrap 95% intervals
    seed<k>/confusion.png, roc.png
    results.json                per seed and mean +- sd
    results.csv                 one line for the whole run
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import FinetuneConfig
from ..store import finetune as store_finetune
from ..store.finetune import FinetuneRun
from ..store.pretrain import PretrainRun
from .datasets import DownstreamData, ImageDataset, load_task
from .metrics import (
    bootstrap_ci,
    classification_metrics,
    mean_sd,
    save_confusion_matrix_png,
    save_roc_png,
)

IMAGENET_MEAN, IMAGENET_STD = 0.449, 0.226  # grey equivalent of ImageNet's per-channel statistics


class FinetuneError(ValueError):
    """Settings, data or initial weights that cannot be used; raised before any training."""


# --- model -------------------------------------------------------------------------------------


Stats = float | tuple[float, ...]  # one grey value, or one per channel of the 3 grey copies


def build_model(config: FinetuneConfig, n_classes: int) -> tuple[nn.Module, Stats, Stats]:
    """The ResNet with a new linear head, and the normalisation statistics to use (those of the
    pre-training run when initialised from one)."""
    import torchvision

    from ..reduction import deepnet

    init = config.init
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if init == "random":
        model = getattr(torchvision.models, config.backbone)(weights=None)
        features = model.fc.in_features
    elif init == "imagenet":
        if config.backbone == "resnet50":
            model = deepnet.torchvision_resnet50()
        else:
            try:
                model = getattr(torchvision.models, config.backbone)(weights="DEFAULT")
            except Exception as exc:
                raise FinetuneError(f"could not load ImageNet weights for {config.backbone} ({exc}); "
                                    "use --init random or a local state_dict file") from exc
            model.fc = nn.Identity()
        features = _feature_dim(model)
    else:
        path = Path(init)
        if path.is_dir():
            pretrained = PretrainRun(path)
            stats = pretrained.config()
            if stats.get("method") == "spark" and (stats.get("spark") or {}).get("input_mean"):
                # SparK normalises its inputs per channel (ImageNet statistics in the paper preset).
                mean, std = tuple(stats["spark"]["input_mean"]), tuple(stats["spark"]["input_std"])
            else:
                mean, std = stats.get("mean") or mean, stats.get("std") or std
            path = pretrained.backbone
        if not path.exists():
            raise FinetuneError(f"initial weights {path}: no such file (expected a pre-training run folder "
                                "with backbone.pt, a state_dict file, 'imagenet' or 'random')")
        try:
            model = deepnet.resnet_from_file(path)
        except ValueError as exc:
            raise FinetuneError(str(exc)) from exc
        features = _feature_dim(model)
    model.fc = nn.Linear(features, n_classes)
    if config.mean is not None and config.std is not None:
        mean, std = config.mean, config.std
    return model, mean, std


def _per_channel(value: Stats) -> list[float]:
    return [float(v) for v in value] if isinstance(value, (tuple, list)) else [float(value)] * 3


def _feature_dim(model: nn.Module) -> int:
    last = model.layer4[-1]
    return (last.conv3 if hasattr(last, "conv3") else last.conv2).out_channels


def set_trainable(model: nn.Module, phase: str) -> int:
    """``head+bn``: the head and every BatchNorm layer train (the paper's first epochs);
    ``head``: only the head (linear probe); ``all``: every layer. Returns trainable parameters."""
    for name, param in model.named_parameters():
        param.requires_grad = phase == "all" or name.startswith("fc.")
    if phase == "head+bn":
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                for param in module.parameters():
                    param.requires_grad = True
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def transforms(config: FinetuneConfig, mean: Stats, std: Stats, train: bool):
    from torchvision.transforms import v2

    steps = [v2.ToDtype(torch.float32, scale=True), v2.Resize((config.input_size, config.input_size), antialias=True)]
    if train and config.flips:
        steps += [v2.RandomHorizontalFlip(), v2.RandomVerticalFlip()]
    steps += [v2.Lambda(lambda x: x.expand(3, *x.shape[1:])), v2.Normalize(_per_channel(mean), _per_channel(std))]
    return v2.Compose(steps)


def _device(name: str) -> torch.device:
    from ..reduction.deepnet import resolve_device

    return torch.device(resolve_device(name))


# --- one seed ----------------------------------------------------------------------------------


@torch.no_grad()
def predict(model: nn.Module, loader, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    probs, labels = [], []
    for x, y in loader:
        probs.append(torch.softmax(model(x.to(device)), dim=1).cpu())
        labels.append(y)
    return torch.cat(probs).numpy().astype(np.float64), torch.cat(labels).numpy()


@torch.no_grad()
def features_of(model: nn.Module, loader, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    head, model.fc = model.fc, nn.Identity()
    model.eval()
    feats, labels = [], []
    for x, y in loader:
        feats.append(nn.functional.normalize(model(x.to(device)), dim=1).cpu())
        labels.append(y)
    model.fc = head
    return torch.cat(feats), torch.cat(labels)


def knn_probabilities(train_f: torch.Tensor, train_y: torch.Tensor, query: torch.Tensor, k: int,
                      n_classes: int, temperature: float = 0.07) -> np.ndarray:
    """Weighted kNN on cosine similarity (Wu et al. 2018): votes exp(sim / T) of the k nearest."""
    sims = query @ train_f.T
    k = min(k, train_f.shape[0])
    top, idx = sims.topk(k, dim=1)
    votes = torch.zeros(query.shape[0], n_classes)
    votes.scatter_add_(1, train_y[idx], (top / temperature).exp())
    return (votes / votes.sum(dim=1, keepdim=True)).numpy().astype(np.float64)


def run_seed(config: FinetuneConfig, data: DownstreamData, seed: int, out: Path) -> dict[str, Any]:
    torch.manual_seed(seed)
    np.random.seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    n_classes = len(data.classes)
    model, mean, std = build_model(config, n_classes)
    device = _device(config.device)
    model.to(device)
    generator = torch.Generator().manual_seed(seed)
    common = {"num_workers": config.num_workers, "persistent_workers": False}
    train_loader = torch.utils.data.DataLoader(ImageDataset(data.train, transforms(config, mean, std, True)),
                                               batch_size=config.batch_size, shuffle=True, generator=generator,
                                               **common)
    eval_sets = {name: torch.utils.data.DataLoader(ImageDataset(split, transforms(config, mean, std, False)),
                                                   batch_size=config.batch_size, shuffle=False, **common)
                 for name, split in (("train", data.train), ("val", data.val), ("test", data.test))}
    start = time.perf_counter()
    history: list[dict[str, Any]] = []
    if config.mode == "knn":
        train_f, train_y = features_of(model, eval_sets["train"], device)
        test_f, test_y = features_of(model, eval_sets["test"], device)
        prob = knn_probabilities(train_f, train_y, test_f, config.knn_k, n_classes)
        labels = test_y.numpy()
        best_epoch = None
    else:
        best_state, best_epoch, best_acc = None, -1, -1.0
        criterion = nn.CrossEntropyLoss()
        optimiser = None
        for epoch in range(config.epochs):
            if config.mode == "linear":
                phase = "head"
            else:
                phase = "head+bn" if epoch < config.head_only_epochs else "all"
            if optimiser is None or epoch == config.head_only_epochs:
                trainable = set_trainable(model, phase)
                optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.lr,
                                             weight_decay=config.weight_decay)
            model.train()
            if config.mode == "linear":
                for module in model.modules():  # a linear probe keeps the backbone's statistics
                    if isinstance(module, nn.BatchNorm2d):
                        module.eval()
            total, count = 0.0, 0
            for x, y in train_loader:
                x, y = x.to(device), y.to(device)
                loss = criterion(model(x), y)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                total += float(loss.detach()) * len(y)
                count += len(y)
            val_prob, val_y = predict(model, eval_sets["val"], device)
            val_acc = float((val_prob.argmax(1) == val_y).mean())
            history.append({"epoch": epoch, "train_loss": total / max(count, 1), "val_accuracy": val_acc,
                            "phase": phase, "trainable_parameters": trainable})
            if val_acc > best_acc:
                best_acc, best_epoch = val_acc, epoch
                best_state = copy.deepcopy({k: v.cpu() for k, v in model.state_dict().items()})
        model.load_state_dict(best_state)
        torch.save(best_state, out / store_finetune.MODEL)
        prob, labels = predict(model, eval_sets["test"], device)
    with (out / store_finetune.HISTORY).open("w") as fh:
        for row in history:
            fh.write(json.dumps(row) + "\n")
    save_predictions(out / store_finetune.PREDICTIONS, list(data.test.names), labels, prob, data.classes)
    return score(out, data.classes, labels, prob, positive_label=config.positive_label, bootstrap=config.bootstrap,
                 seed=seed, extra={"best_epoch": best_epoch, "seconds": round(time.perf_counter() - start, 2)})


def save_predictions(path: Path, names: list[str], labels: np.ndarray, prob: np.ndarray, classes: list[str]) -> None:
    import pandas as pd

    table = pd.DataFrame({"name": names, "label": labels})
    for k, cls in enumerate(classes):
        table[f"prob_{cls}"] = prob[:, k]
    table.to_csv(path, index=False)


def score(out: Path, classes: list[str], labels: np.ndarray, prob: np.ndarray, *, positive_label: int,
          bootstrap: int, seed: int, extra: dict[str, Any]) -> dict[str, Any]:
    """Test metrics with bootstrap 95% intervals and the confusion/ROC plots of one seed."""
    metrics = classification_metrics(labels, prob, positive_label=positive_label)
    intervals = {name: bootstrap_ci(labels, prob, name, n=bootstrap, seed=seed, positive_label=positive_label)
                 for name in ("accuracy", "auc", "f1")}
    save_confusion_matrix_png(np.asarray(metrics["confusion_matrix"]), classes, out / store_finetune.CONFUSION)
    save_roc_png(labels, prob, classes, out / store_finetune.ROC, positive_label=positive_label)
    result = {"seed": seed, **extra, **metrics, "ci95": intervals}
    (out / store_finetune.METRICS).write_text(json.dumps(result, indent=2, default=_plain))
    return result


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(type(value))


# --- the run -----------------------------------------------------------------------------------


def finetune(config: FinetuneConfig | None = None, **values: Any) -> dict[str, Any]:
    """Run the protocol for every seed; returns per-seed results and mean +- sd."""
    config = config if config is not None and not values else FinetuneConfig(
        **{**(config.model_dump() if config else {}), **values})
    if not config.out:
        raise FinetuneError("no output folder: pass --out DIR")
    if not config.task:
        raise FinetuneError("no task: pass --task (a folder, a COVID-CT root or a MedMNIST .npz)")
    try:
        data = load_task(config.task)
    except (FileNotFoundError, ValueError) as exc:
        raise FinetuneError(str(exc)) from exc
    build_model(config, len(data.classes))  # bad initial weights fail here, before training
    run = FinetuneRun(config.out)
    run.write_config(config.model_dump(mode="json"))
    per_seed = [run_seed(config, data, seed, run.seed_dir(seed)) for seed in config.seeds]
    info = {"task": data.name, "classes": list(data.classes), "init": config.init, "mode": config.mode,
            "seeds": list(config.seeds),
            "split_sizes": {k: len(getattr(data, k).labels) for k in ("train", "val", "test")}}
    return write_results(run.path, info, per_seed)


def write_results(out: Path, info: dict[str, Any], per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """results.json (per seed, mean +- sd) and the one-line results.csv of a run."""
    import pandas as pd

    summary = dict(info)
    for name in ("accuracy", "auc", "f1", "f1_macro"):
        values = [r[name] for r in per_seed if r.get(name) is not None and not np.isnan(r[name])]
        if values:
            summary[name] = mean_sd(values)
    summary["per_seed"] = per_seed
    (out / store_finetune.RESULTS).write_text(json.dumps(summary, indent=2, default=_plain))
    line = {k: info[k] for k in ("task", "init", "mode")} | {"seeds": len(per_seed)}
    for name in ("accuracy", "auc", "f1"):
        if name in summary:
            line[f"{name}_mean"], line[f"{name}_sd"] = summary[name]["mean"], summary[name]["sd"]
    pd.DataFrame([line]).to_csv(out / store_finetune.RESULTS_LINE, index=False)
    return summary
