"""finetune records (and warns about) test images that sit in the backbone's pre-training data."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from test_downstream_finetune import TINY, brightness_task, init_file  # noqa: F401  (fixture)

from ctreduce.downstream.finetune import LeakageWarning, finetune
from ctreduce.store.export import ExportWriter
from ctreduce.tasks.load import load_task


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> dict:
    """Noise images: every image has its own dHash (the synthetic lesion slices share theirs)."""
    return brightness_task(tmp_path_factory.mktemp("noise"), per_split={"train": 6, "val": 3, "test": 4})


def pretrain_run_on(images: list[np.ndarray], folder, backbone) -> str:
    """A pre-training run folder whose data is an npy export of ``images`` (as 'ctreduce pretrain' leaves)."""
    export = folder / "export"
    with ExportWriter(export, "npy", size=32, overwrite=False) as writer:
        writer.allocate(len(images))
        records = [{"volume_id": "v", "slice_index": k, "z_mm": float(k), "source": "x"} for k in range(len(images))]
        writer.add_volume(writer.format.encode(writer.stage, np.stack(images), records), records)
        writer.commit({"run_dir": "-"})
    run = folder / "pretrain"
    run.mkdir()
    (run / "backbone.pt").write_bytes(backbone.read_bytes())
    (run / "config.yaml").write_text(f"data: {export}\nmean: 0.25\nstd: 0.2\n")
    return str(run)


def test_test_images_in_the_pretraining_data_are_counted_and_warned(task, init_file, tmp_path):  # noqa: F811
    data = load_task(task)
    leaked = [np.asarray(im) for im in data.test.images[:3]]
    run = pretrain_run_on(leaked, tmp_path, init_file)
    with pytest.warns(LeakageWarning, match="3 of"):
        summary = finetune(task=task, out=str(tmp_path / "ft"), init=run, epochs=1, head_only_epochs=0, **TINY)
    leak = summary["leakage"]
    assert leak["leaked"]["test"] == 3 and leak["images"]["test"] == len(data.test.images)
    args = [f"{k}={v}" for k, v in TINY.items()] + ["epochs=1", "head_only_epochs=0"]
    spec = tmp_path / "task.yaml"
    spec.write_text(f"format: folder\nroot: {task['root']}\nsplit_csv: {task['split_csv']}\n")
    proc = subprocess.run([sys.executable, "-m", "ctreduce.cli", "finetune", "--task", str(spec), "--out",
                           str(tmp_path / "cli"), "--init", run, *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert f"test images within 6 bits of a pre-training slice: 3 of {len(data.test.images)}" in proc.stdout
    assert "warning: some test images also sit in the pre-training data" in proc.stderr


def test_other_anatomy_is_not_a_leak(task, init_file, tmp_path):  # noqa: F811
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 256, (32, 32), dtype=np.uint8) for _ in range(4)]
    run = pretrain_run_on(noise, tmp_path, init_file)
    summary = finetune(task=task, out=str(tmp_path / "ft"), init=run, epochs=1, head_only_epochs=0, **TINY)
    assert summary["leakage"]["leaked"]["test"] == 0
