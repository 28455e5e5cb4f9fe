"""The fine-tuning protocol: outputs, head-only schedule, best epoch, resume, DDP, linear probe, kNN, init, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from PIL import Image

from ctreduce.config import FinetuneConfig
from ctreduce.downstream.evaluate import EvaluateError, evaluate_run
from ctreduce.downstream.finetune import FinetuneError, build_model, finetune, normalisation, transforms
from ctreduce.downstream.module import FinetuneModule, knn_probabilities, trainable_names
from ctreduce.downstream.synthetic import make_lesion_task
from ctreduce.tasks.load import load_task
from ctreduce.tasks.medmnist import _ORGAN_LABELS

TINY = {"backbone": "resnet18", "input_size": 32, "batch_size": 8, "num_workers": 0, "bootstrap": 20}


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("task") / "lesion"
    make_lesion_task(root, n_per_class=10, size=32, format="folder")
    return {"format": "folder", "root": str(root)}


def brightness_task(root: Path, *, per_split: dict[str, int], invert_val: bool = False) -> dict:
    """Class ``dark`` (grey ~60) against ``bright`` (~190), 32 px with noise: a network separates them in an
    epoch or two. ``invert_val``: the validation split is labelled the other way round."""
    rng = np.random.default_rng(0)
    rows = ["path,split,label"]
    for split, n in per_split.items():
        for label, (name, level) in enumerate((("dark", 60), ("bright", 190))):
            for i in range(n):
                path = root / name / f"{split}{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.clip(rng.normal(level, 25, (32, 32)), 0, 255).astype(np.uint8)).save(path)
                shown = ("bright", "dark")[label] if invert_val and split == "val" else name
                rows.append(f"{path.relative_to(root)},{split},{shown}")
    (root / "split.csv").write_text("\n".join(rows) + "\n")
    return {"format": "folder", "root": str(root), "split_csv": "split.csv"}


def history_of(out: Path, seed: int = 0) -> list[dict]:
    return [json.loads(x) for x in (out / f"seed{seed}" / "history.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def init_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("init") / "backbone.pt"
    state = {k: v for k, v in torchvision.models.resnet18().state_dict().items() if not k.startswith("fc.")}
    torch.save(state, path)
    return path


def test_outputs_for_every_seed_and_the_summary(task, tmp_path):
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, roc_auc_score

    out = tmp_path / "ft"
    summary = finetune(task=task, out=str(out), init="random", epochs=2, head_only_epochs=1, seeds=(0, 1), **TINY)
    data = load_task(task)
    config = FinetuneConfig(task=task, out=str(out), init="random", **TINY)
    per_seed = {}
    for seed in (0, 1):
        folder = out / f"seed{seed}"
        history = history_of(out, seed)
        assert [(h["epoch"], h["phase"]) for h in history] == [(0, "head+bn"), (1, "all")]
        # predictions.csv: the test split in order, with softmax probabilities
        table = pd.read_csv(folder / "predictions.csv")
        assert table["name"].tolist() == list(data.test.names) and table["label"].tolist() == data.test.labels.tolist()
        prob = table[["prob_a_without", "prob_b_with"]].to_numpy()
        assert np.allclose(prob.sum(axis=1), 1.0)
        # model.pt (the best validation epoch) gives these probabilities again
        model, init_norm = build_model(config, 2)
        norm = normalisation(config, data, init_norm)  # the task's own, as the run used
        model.load_state_dict(torch.load(folder / "model.pt"))
        x = torch.stack([transforms(config, norm, train=False)(torch.from_numpy(im)[None]) for im in data.test.images])
        with torch.no_grad():
            again = torch.softmax(model.eval()(x), dim=1).numpy()
        assert np.allclose(again, prob, atol=1e-5)
        # metrics.json: the metrics of those predictions (sklearn), its interval around it, the best epoch
        metrics = json.loads((folder / "metrics.json").read_text())
        labels, pred = table["label"].to_numpy(), prob.argmax(axis=1)
        assert metrics["accuracy"] == pytest.approx(accuracy_score(labels, pred))
        assert metrics["auc"] == pytest.approx(roc_auc_score(labels, prob[:, 1]))
        assert metrics["f1"] == pytest.approx(f1_score(labels, pred, pos_label=1, zero_division=0))
        assert metrics["confusion_matrix"] == confusion_matrix(labels, pred, labels=[0, 1]).tolist()
        assert metrics["ci95"]["auc"]["low"] <= metrics["auc"] <= metrics["ci95"]["auc"]["high"]
        val = [h["val_accuracy"] for h in history]
        assert metrics["best_epoch"] == int(np.argmax(val)) and metrics["seed"] == seed
        for image in ("confusion.png", "roc.png"):
            with Image.open(folder / image) as png:
                assert png.format == "PNG" and min(png.size) > 100
        assert not (folder / "checkpoints").exists()  # model.pt holds the best epoch
        assert len(pd.read_csv(next((folder / "logs" / "csv").rglob("metrics.csv")))) > 0
        per_seed[seed] = metrics
    # results.json: mean and sample sd over the seeds, the split sizes, the set-up; results.csv its one line
    accuracies = [per_seed[s]["accuracy"] for s in (0, 1)]
    assert summary["accuracy"] == {"mean": pytest.approx(np.mean(accuracies)),
                                   "sd": pytest.approx(np.std(accuracies, ddof=1)), "n": 2}
    assert summary["split_sizes"] == {k: len(getattr(data, k).labels) for k in ("train", "val", "test")}
    assert summary["epochs"] == 2 and summary["head_only_epochs"] == 1 and summary["notes"] == []
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(summary))
    run = json.loads((out / "run.json").read_text())
    assert run["trainer"] == summary["trainer"] == {"accelerator": "cpu", "devices": 1, "strategy": "auto",
                                                    "precision": "32-true"}
    threads = run["threads"]
    assert 1 <= threads["torch_threads"] <= threads["cores"] and threads["loader_workers"] == 0
    line = pd.read_csv(out / "results.csv").iloc[0]
    assert line["seeds"] == 2 and line["mode"] == "finetune" and line["init"] == "random"
    assert line["accuracy_mean"] == pytest.approx(summary["accuracy"]["mean"])
    assert line["auc_sd"] == pytest.approx(summary["auc"]["sd"])


def test_epochs_below_the_head_only_epochs_train_the_head_only_and_say_so(task, tmp_path):
    """epochs=1 with the paper's default head_only_epochs=10: the head alone for that epoch, in one recorded note."""
    config = FinetuneConfig(task=task, out=str(tmp_path / "ft"), init="random", epochs=1, **TINY)
    assert config.head_only_epochs == 10 and config.head_only == 1
    summary = finetune(config)
    assert [h["phase"] for h in history_of(tmp_path / "ft")] == ["head+bn"]
    assert summary["head_only_epochs"] == 1 and summary["notes"] == [
        "head_only_epochs 10 is more than epochs 1: the head alone is trained for all 1 epoch(s) (head_only_epochs=1)"]
    assert json.loads((tmp_path / "ft" / "results.json").read_text())["notes"] == summary["notes"]


def test_head_only_epochs_keep_the_backbone_fixed(task, tmp_path, init_file):
    out = tmp_path / "ft"
    finetune(task=task, out=str(out), init=str(init_file), epochs=1, head_only_epochs=1, **TINY)
    start = torch.load(init_file)
    trained = torch.load(out / "seed0" / "model.pt")
    convs = [k for k in start if "conv" in k or "downsample.0" in k]
    assert convs and all(torch.equal(start[k], trained[k]) for k in convs)
    assert not torch.equal(start["bn1.weight"], trained["bn1.weight"])  # BatchNorm stays trainable
    history = [json.loads(x) for x in (out / "seed0" / "history.jsonl").read_text().splitlines()]
    assert [h["phase"] for h in history] == ["head+bn"]


def test_schedule_unfreezes_after_the_head_only_epochs(task, tmp_path):
    out = tmp_path / "ft"
    finetune(task=task, out=str(out), init="random", epochs=3, head_only_epochs=1, **TINY)
    history = [json.loads(x) for x in (out / "seed0" / "history.jsonl").read_text().splitlines()]
    assert [h["phase"] for h in history] == ["head+bn", "all", "all"]
    assert history[0]["trainable_parameters"] < history[1]["trainable_parameters"]


def test_trainable_parameters_per_phase():
    module = FinetuneModule(torchvision.models.resnet18(num_classes=2), 2)
    model = module.model
    head = sum(p.numel() for p in model.fc.parameters())
    bn = sum(p.numel() for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters())
    assert module.trainable_parameters("head") == head
    assert module.trainable_parameters("head+bn") == head + bn
    assert module.trainable_parameters("all") == sum(p.numel() for p in model.parameters())
    assert trainable_names(model, "head") == {"fc.weight", "fc.bias"}
    with pytest.raises(ValueError, match="phase"):
        trainable_names(model, "bn")


def test_linear_probe_changes_only_the_head(task, tmp_path, init_file):
    out = tmp_path / "lin"
    summary = finetune(task=task, out=str(out), init=str(init_file), mode="linear", epochs=2, head_only_epochs=0,
                       precision="bf16-mixed", **TINY)  # mixed precision: on CPU with bfloat16
    start, trained = torch.load(init_file), torch.load(out / "seed0" / "model.pt")
    assert all(torch.equal(start[k], trained[k]) for k in start)
    torch.manual_seed(0)  # as the run seeds seed 0 before building the model: the head it started from
    initial = build_model(FinetuneConfig(init=str(init_file), **TINY), 2)[0].fc.weight
    assert not torch.allclose(trained["fc.weight"], initial)
    assert summary["trainer"]["precision"] == "bf16-mixed"


def test_knn_separates_a_separable_task(tmp_path):
    spec = brightness_task(tmp_path / "task", per_split={"train": 6, "val": 2, "test": 5})
    summary = finetune(task=spec, out=str(tmp_path / "knn"), init="random", mode="knn", knn_k=3, **TINY)
    assert summary["accuracy"]["mean"] == 1.0 and summary["auc"]["mean"] == 1.0
    assert summary["per_seed"][0]["best_epoch"] is None and not (tmp_path / "knn" / "seed0" / "model.pt").exists()


def test_knn_votes_pick_the_class_lightly_picks():
    from lightly.utils.benchmarking import knn_predict

    gen = torch.Generator().manual_seed(0)
    bank = torch.nn.functional.normalize(torch.randn(40, 8, generator=gen), dim=1)
    labels = torch.randint(0, 3, (40,), generator=gen)
    query = torch.nn.functional.normalize(torch.randn(15, 8, generator=gen), dim=1)
    prob = knn_probabilities(bank, labels, query, k=7, n_classes=3, temperature=0.1)
    assert np.allclose(prob.sum(axis=1), 1.0)
    expected = knn_predict(query, bank.T, labels, num_classes=3, knn_k=7, knn_t=0.1)[:, 0]
    assert prob.argmax(axis=1).tolist() == expected.tolist()


def test_best_epoch_is_the_best_validation_epoch_not_the_lowest_training_loss(tmp_path):
    # Validation labels the other way round: the better the network learns, the worse it scores on them.
    spec = brightness_task(tmp_path / "task", per_split={"train": 8, "val": 4, "test": 4}, invert_val=True)
    out = tmp_path / "ft"
    summary = finetune(task=spec, out=str(out), init="random", epochs=5, head_only_epochs=0,
                       **{**TINY, "transforms": "none"})
    history = history_of(out)
    val = [h["val_accuracy"] for h in history]
    loss = [h["train_loss"] for h in history]
    best = summary["per_seed"][0]["best_epoch"]
    assert best == int(np.argmax(val))  # the first epoch reaching the maximum, as ModelCheckpoint's strict ">"
    assert int(np.argmin(loss)) > best and val[-1] < val[best]  # the case this test is about
    # model.pt is that epoch's model: it scores that epoch's validation accuracy, not the last epoch's.
    config = FinetuneConfig(task=spec, out=str(out), init="random", **{**TINY, "transforms": "none"})  # as it ran
    data = load_task(spec)
    model, init_norm = build_model(config, 2)
    norm = normalisation(config, data, init_norm)
    model.load_state_dict(torch.load(out / "seed0" / "model.pt"))
    x = torch.stack([transforms(config, norm, train=False)(torch.from_numpy(im)[None]) for im in data.val.images])
    with torch.no_grad():
        acc = float((model.eval()(x).argmax(1).numpy() == data.val.labels).mean())
    assert acc == pytest.approx(val[best])


def test_rerun_continues_an_interrupted_seed_from_its_last_checkpoint(task, tmp_path, monkeypatch):
    out = tmp_path / "ft"
    real = FinetuneModule.on_train_epoch_start

    def crash_in_second_epoch(self):
        if self.current_epoch == 1:
            raise RuntimeError("simulated crash")
        real(self)

    monkeypatch.setattr(FinetuneModule, "on_train_epoch_start", crash_in_second_epoch)
    settings = dict(task=task, out=str(out), init="random", epochs=3, head_only_epochs=1, seeds=(0,), **TINY)
    with pytest.raises(RuntimeError, match="simulated crash"):
        finetune(**settings)
    first = history_of(out)
    assert [h["epoch"] for h in first] == [0]
    assert torch.load(out / "seed0" / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 0
    monkeypatch.setattr(FinetuneModule, "on_train_epoch_start", real)
    summary = finetune(**{**settings, "seeds": (0, 1)})  # seeds: not a setting of what one seed computes
    history = history_of(out)
    assert [h["epoch"] for h in history] == [0, 1, 2] and history[0] == first[0]
    assert [h["phase"] for h in history] == ["head+bn", "all", "all"]
    assert summary["per_seed"][0]["resumed"] and not summary["per_seed"][1]["resumed"]
    again = finetune(**{**settings, "seeds": (0, 1)})  # everything finished: read back, nothing trained
    assert again["per_seed"] == summary["per_seed"]


def test_other_settings_in_the_same_folder_are_refused_unless_starting_over(task, tmp_path):
    out = tmp_path / "ft"
    settings = dict(task=task, out=str(out), init="random", epochs=1, head_only_epochs=0, **TINY)
    finetune(**settings)
    with pytest.raises(FinetuneError, match=r"other settings \(lr\).*--no-resume"):
        finetune(**{**settings, "lr": 1e-3})
    (out / "seed0" / "stale.txt").write_text("from the first run")
    summary = finetune(**{**settings, "lr": 1e-3, "resume": False})
    assert not (out / "seed0" / "stale.txt").exists() and summary["accuracy"]["n"] == 1


@pytest.mark.parametrize(("run_config", "mean", "std"), [
    ("mean: 0.25\nstd: 0.2\n", [0.25] * 3, [0.2] * 3),
    # SparK normalises per channel (ImageNet statistics in the paper preset): fine-tuning follows it.
    ("method: spark\nmean: 0.25\nstd: 0.2\nspark: {input_mean: [0.485, 0.456, 0.406], "
     "input_std: [0.229, 0.224, 0.225]}\n", [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
])
def test_init_from_a_pretraining_run_folder_uses_its_statistics(task, tmp_path, init_file, monkeypatch, run_config,
                                                                mean, std):
    run = tmp_path / "pretrain"
    run.mkdir()
    (run / "backbone.pt").write_bytes(init_file.read_bytes())
    (run / "config.yaml").write_text(run_config)
    seen = []  # per channel: sum and count of every value the network is trained on in the epoch
    real = FinetuneModule.training_step

    def recording(self, batch, batch_idx):
        seen.append((batch[0].sum(dim=(0, 2, 3)).double(), batch[0][:, 0].numel()))
        return real(self, batch, batch_idx)

    monkeypatch.setattr(FinetuneModule, "training_step", recording)
    out = tmp_path / "ft"
    summary = finetune(task=task, out=str(out), init=str(run), epochs=1, head_only_epochs=1,
                       **{**TINY, "transforms": "none", "normalisation": "pretraining"})
    assert summary["per_seed"][0]["normalisation"]["mean"] == mean
    pixels = np.concatenate([im.ravel() for im in load_task(task).train.images]).astype(np.float64) / 255
    trained_mean = (sum(s for s, _ in seen) / sum(n for _, n in seen)).numpy()
    assert trained_mean == pytest.approx((pixels.mean() - np.array(mean)) / np.array(std), rel=1e-5)


def test_bad_inputs_fail_before_training(task, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_text("not a checkpoint")
    with pytest.raises(FinetuneError, match="bad.pt"):
        finetune(task=task, out=str(tmp_path / "o1"), init=str(bad), **TINY)
    torch.save({"weight": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(FinetuneError, match="not a torchvision ResNet"):
        finetune(task=task, out=str(tmp_path / "o2"), init=str(tmp_path / "other.pt"), **TINY)
    with pytest.raises(FinetuneError, match="no such file"):
        finetune(task=task, out=str(tmp_path / "o3"), init=str(tmp_path / "missing"), **TINY)
    empty = tmp_path / "onecls"
    (empty / "a_without").mkdir(parents=True)
    (empty / "b_with").mkdir()
    with pytest.raises(FinetuneError):
        finetune(task={"format": "folder", "root": str(empty)}, out=str(tmp_path / "o4"), init="random", **TINY)
    assert not any((tmp_path / name).exists() for name in ("o1", "o2", "o3", "o4"))


def test_evaluate_recomputes_the_saved_metrics(task, tmp_path):
    out = tmp_path / "ft"
    first = finetune(task=task, out=str(out), init="random", epochs=1, head_only_epochs=0, **TINY)
    again = evaluate_run(out, bootstrap=20)
    assert again["accuracy"] == first["accuracy"] and again["auc"] == first["auc"]
    assert np.isclose(again["per_seed"][0]["f1"], first["per_seed"][0]["f1"])
    # what the seed recorded of its training stays: everything but the metrics evaluate recomputes
    assert sorted(set(first["per_seed"][0]) - set(again["per_seed"][0])) == []
    assert again["per_seed"][0]["lr_by_epoch"] == first["per_seed"][0]["lr_by_epoch"] == [1e-4]
    assert again["per_seed"][0]["transforms"] == first["per_seed"][0]["transforms"]
    with pytest.raises(EvaluateError, match="no config.yaml"):
        evaluate_run(tmp_path)


def test_evaluate_scores_the_positive_label_it_is_given(tmp_path):
    """``ctreduce evaluate --positive-label 0``: AUC and F1 of class 0, as sklearn's pos_label=0 computes them."""
    from sklearn.metrics import f1_score, roc_auc_score
    from typer.testing import CliRunner

    from ctreduce.cli import app
    from ctreduce.downstream.evaluate import save_predictions
    from ctreduce.store.finetune import FinetuneRun

    rng = np.random.default_rng(3)
    labels = np.array([0] * 12 + [1] * 8)
    p1 = np.clip(0.35 + 0.3 * labels + rng.normal(0, 0.2, labels.size), 0.01, 0.99)
    prob = np.stack([1 - p1, p1], axis=1)
    out = tmp_path / "ft"
    config = FinetuneConfig(task={"format": "folder", "root": "-"}, out=str(out))
    FinetuneRun(out).prepare(config.model_dump(mode="json"), resume=True)
    (out / "seed0").mkdir()
    save_predictions(out / "seed0", [f"i{k}" for k in range(labels.size)], labels, prob,
                     ["a", "b"])
    pred = prob.argmax(axis=1)
    runner = CliRunner()
    scored = {}
    for positive in (0, 1):
        result = runner.invoke(app, ["evaluate", str(out), "--bootstrap", "20", "--positive-label", str(positive)])
        assert result.exit_code == 0, result.output
        scored[positive] = json.loads((out / "seed0" / "metrics.json").read_text())
        assert scored[positive]["positive_label"] == positive
        assert scored[positive]["auc"] == pytest.approx(roc_auc_score(labels == positive, prob[:, positive]))
        assert scored[positive]["f1"] == pytest.approx(f1_score(labels, pred, pos_label=positive))
        assert json.loads((out / "results.json").read_text())["f1"]["mean"] == pytest.approx(scored[positive]["f1"])
        assert f"f1: {scored[positive]['f1']:.3f}" in result.output
    assert scored[0]["f1"] != pytest.approx(scored[1]["f1"])
    default = runner.invoke(app, ["evaluate", str(out), "--bootstrap", "20"])  # the run's own: positive_label 1
    assert default.exit_code == 0 and json.loads((out / "seed0" / "metrics.json").read_text())["f1"] == scored[1]["f1"]
    wrong = runner.invoke(app, ["evaluate", str(out), "--positive-label", "2"])
    assert wrong.exit_code == 2 and "positive_label 2 is not a class of a 2-class problem" in wrong.output


def organsmnist_npz(path: Path, per_class: dict[str, int]) -> Path:
    """A tiny MedMNIST-format file: every one of OrganSMNIST's 11 classes in every split, 28x28 uint8."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in per_class.items():
        labels = np.repeat(np.arange(len(_ORGAN_LABELS), dtype=np.uint8), n)[:, None]  # (N, 1) as MedMNIST
        arrays[f"{split}_images"] = rng.integers(0, 256, (len(labels), 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = labels
    np.savez(path, **arrays)
    return path


def test_cli_finetune_on_a_medmnist_npz_then_evaluate(tmp_path):
    npz = organsmnist_npz(tmp_path / "organsmnist.npz", {"train": 2, "val": 1, "test": 1})
    ctreduce = str(Path(sys.executable).with_name("ctreduce"))
    out = tmp_path / "ft"
    proc = subprocess.run([ctreduce, "finetune", "--task", str(npz), "--init", "random", "--out", str(out),
                           "epochs=1", "head_only_epochs=0", "backbone=resnet18", "input_size=32", "batch_size=8",
                           "num_workers=0", "bootstrap=10"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["classes"] == _ORGAN_LABELS and results["split_sizes"] == {"train": 22, "val": 11, "test": 11}
    (out / "results.json").unlink()  # evaluate then names the task from the saved spec
    proc = subprocess.run([ctreduce, "evaluate", str(out), "--bootstrap", "10"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "accuracy:" in proc.stdout and "auc:" in proc.stdout
    again = json.loads((out / "results.json").read_text())
    assert again["task"] == str(npz) and again["accuracy"] == results["accuracy"]


def test_cli_finetune_on_two_cpu_devices_runs_ddp(task, tmp_path):
    ctreduce = str(Path(sys.executable).with_name("ctreduce"))
    out = tmp_path / "ddp"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT")}
    proc = subprocess.run([ctreduce, "finetune", "--task", task["root"], "--init", "random", "--out", str(out),
                           "--devices", "2", "device=cpu", "epochs=2", "head_only_epochs=1", "backbone=resnet18",
                           "input_size=32", "batch_size=4", "num_workers=0", "bootstrap=10"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("accuracy:") == 1  # rank 0 reports
    results = json.loads((out / "results.json").read_text())
    assert results["trainer"]["devices"] == 2 and results["trainer"]["strategy"] == "ddp"
    assert [h["epoch"] for h in history_of(out)] == [0, 1]
    # Each of the two processes trained on half of every epoch's batches (DistributedSampler).
    csv = pd.read_csv(next((out / "seed0" / "logs" / "csv").rglob("metrics.csv")))
    assert csv["step"].max() + 1 == 2 * -(-results["split_sizes"]["train"] // 2 // 4)


@pytest.mark.parametrize("schedule", ["paper", "constant"])
def test_the_module_trains_as_a_plain_loop_of_the_papers_protocol(task, tmp_path, schedule):
    """Same seed, same batches: the module under the trainer ends where a plain PyTorch loop of the protocol does.
    ``paper``, as the notebooks ran: one Adam over every parameter (``Adam(self.parameters())``), the backbone
    frozen for the head-only epoch, then every layer at 1e-4 for the unfreezing epoch and at 2e-5 after it, Adam's
    state kept. ``constant``: the head and BatchNorm with their own Adam, then every layer with a new Adam at 1e-4."""
    from ctreduce.downstream.datasets import ImageDataset
    from ctreduce.downstream.finetune import fit_best
    from ctreduce.lightning_setup import resolve

    config = FinetuneConfig(task=task, init="random", **{**TINY, "transforms": "none"})
    data = load_task(task)

    def fresh() -> tuple[torch.nn.Module, dict]:
        torch.manual_seed(0)
        model, norm = build_model(config, 2)
        loaders = {name: torch.utils.data.DataLoader(ImageDataset(split, transforms(config, norm, train=False)),
                                                     batch_size=8, shuffle=name == "train",
                                                     generator=torch.Generator().manual_seed(0))
                   for name, split in (("train", data.train), ("val", data.val))}
        return model, loaders

    model, loaders = fresh()
    # (phase, learning rate, a new Adam over every parameter at the start of the epoch)
    plan = {"paper": [("head+bn", 1e-4, False), ("all", 1e-4, False), ("all", 2e-5, False)],
            "constant": [("head+bn", 1e-4, False), ("all", 1e-4, True), ("all", 1e-4, False)]}[schedule]
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=5e-4)
    for phase, lr, new in plan:
        names = trainable_names(model, phase)
        for name, param in model.named_parameters():
            param.requires_grad = name in names
        if new:
            optimiser = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=5e-4)
        for group in optimiser.param_groups:
            group["lr"] = lr
        model.train()
        for x, y in loaders["train"]:
            optimiser.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimiser.step()
    model2, loaders2 = fresh()
    module = FinetuneModule(model2, 2, lr=1e-4, weight_decay=5e-4, head_only_epochs=1, schedule=schedule)
    fit_best(module, loaders2["train"], loaders2["val"], tmp_path, resolve(accelerator="cpu", devices=1,
                                                                            precision="32-true"), epochs=3)
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    expected = model.state_dict()
    assert last.keys() == {f"model.{k}" for k in expected}
    for key, value in expected.items():
        assert torch.allclose(last[f"model.{key}"].float(), value.float(), atol=1e-6), key
