"""Every shipped experiment file validates without its data; a misspelt key in any section does not."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ctreduce.experiment.runner import ExperimentError, load_experiment

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.y*ml"))


def test_configs_are_shipped():
    assert {p.name for p in CONFIGS} >= {"paper.yaml", "quick.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_validates_without_its_data(path):
    config = load_experiment(path)  # paper.yaml's /data/... paths do not exist here
    assert config.datasets and config.reductions and config.ssl and config.tasks


MISSPELT = {"reductions": "threshhold", "ssl": "epoch", "tasks": "pth", "finetune": "epoch", "datasets": "n_volume"}


def _add_misspelt_key(data: dict, section: str) -> None:
    key = MISSPELT[section]
    if section == "finetune":
        data["finetune"][key] = 1
        return
    entry = data[section][0]
    if section in ("reductions", "ssl"):
        entry["settings"][key] = 1
    elif section == "tasks":
        (entry.get("data") or entry["synthetic"])[key] = 1
    else:
        (entry.get("phantom") or entry)[key] = 1


@pytest.mark.parametrize("section", list(MISSPELT))
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_a_misspelt_key_is_refused(path, section, tmp_path):
    data = yaml.safe_load(path.read_text())
    _add_misspelt_key(data, section)
    copy = tmp_path / path.name
    copy.write_text(yaml.safe_dump(data))
    with pytest.raises(ExperimentError, match=f"{section}.*{MISSPELT[section]}"):
        load_experiment(copy)


def test_settings_the_experiment_sets_itself_are_refused(tmp_path):
    data = yaml.safe_load((Path(__file__).parents[1] / "configs" / "quick.yaml").read_text())
    data["finetune"]["seeds"] = [3]
    data["ssl"][0]["settings"]["data"] = "/elsewhere"
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ExperimentError, match=r"seeds \(set from the experiment's 'seeds'\)") as info:
        load_experiment(path)
    assert "data (set from each reduction's export)" in str(info.value)


def test_overrides_are_dotted_keys_with_yaml_values():
    from ctreduce.core.validation import parse_overrides

    values = parse_overrides(["swav.n_prototypes=64", "lr=1e-3", " epochs = 3", "data=", "optimizer=null",
                              "spark.input_mean=[0.5, 0.5, 0.5]", "swav.n_prototypes=32"])
    assert values == {"swav": {"n_prototypes": 32}, "lr": 0.001, "epochs": 3, "data": "", "optimizer": None,
                      "spark": {"input_mean": [0.5, 0.5, 0.5]}}
    with pytest.raises(ValueError, match="expected key=value, got 'epochs'"):
        parse_overrides(["epochs"])
    with pytest.raises(ValueError, match=r"cannot read the setting 'lr=\[1,'"):
        parse_overrides(["lr=[1,"])


def test_preset_file_and_values_merge_nested_settings(tmp_path):
    from ctreduce.config import make_pretrain_config

    path = tmp_path / "s.yaml"
    path.write_text("method: spark\nspark: {patch_size: 16}\nepochs: 7\n")
    config = make_pretrain_config({"spark": {"mask_ratio": 0.5}, "epochs": 3}, yaml_file=str(path))
    assert (config.spark.patch_size, config.spark.mask_ratio, config.epochs) == (16, 0.5, 3)
    assert config.spark.input_mean == (0.485, 0.456, 0.406)  # the paper preset's SparK value, kept by the merge


def test_the_paper_grid_is_configured_as_the_paper_ran():
    """512 px exports (the paper's crops are cut from 512 px slices), one device (its global batch and learning
    rate), and fine-tuning as the notebooks ran it, the brain task with Brain.ipynb's constants and pipeline."""
    config = load_experiment(Path(__file__).parents[1] / "configs" / "paper.yaml")
    assert config.export_size == 512
    assert {spec.name: spec.settings["devices"] for spec in config.ssl} == {"SwAV": 1, "MoCo": 1, "SparK": 1}
    assert {k: config.finetune[k] for k in ("schedule", "normalisation", "transforms", "lr", "head_only_epochs")} \
        == {"schedule": "paper", "normalisation": "task", "transforms": "task", "lr": 0.0001, "head_only_epochs": 10}
    brain = next(task for task in config.tasks if task.name == "Brain")
    assert brain.finetune == {"normalisation": "paper:brain", "transforms": "paper-brain"}


def test_a_tasks_own_finetune_settings_are_checked(tmp_path):
    data = yaml.safe_load((Path(__file__).parents[1] / "configs" / "paper.yaml").read_text())
    data["tasks"][0]["finetune"] = {"normalisation": "paper:lidc"}
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ExperimentError, match="normalisation"):
        load_experiment(path)
    data["tasks"][0]["finetune"] = {"seeds": [4]}
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ExperimentError, match="seeds"):
        load_experiment(path)
