"""The npy export as immutable shards plus versioned indexes: growth, changed volumes, compaction, resume."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import ctreduce
from ctreduce.cli import app
from ctreduce.exporting import from_run
from ctreduce.io.intensity import Intensity
from ctreduce.sample_data.phantom import make_phantom, write_dicom_series
from ctreduce.store.export import ExportError, ExportParts, ExportStore
from ctreduce.store.export_formats import resize_pad

SIZE = 24


def add_series(root: Path, seeds: range, n: int = 8) -> None:
    for seed in seeds:
        hu, spacing = make_phantom(n_slices=n, size=32, slice_thickness=2.5, seed=seed)
        write_dicom_series(hu, spacing, root / f"s{seed:02d}", seed=seed)


def shard_files(export: Path) -> dict[str, tuple[bytes, int, int]]:
    """Each shard's bytes, inode and modification time: a rewritten file differs in one of them."""
    return {p.name: (p.read_bytes(), p.stat().st_ino, p.stat().st_mtime_ns)
            for p in sorted((export / "shards").glob("*.npy"))}


def assert_export_is_the_kept_slices(export: Path, run: Path) -> None:
    """The export's current version holds exactly the run's kept slices, in manifest order, as read now."""
    store = ExportStore.open(export)
    kept = pd.read_parquet(run / "manifest.parquet").query("kept")
    assert store.index[["volume_id", "slice_index"]].values.tolist() == \
        kept[["volume_id", "slice_index"]].values.tolist()
    slices = store.slices()
    for k, row in enumerate(store.index.itertuples()):
        volume = ctreduce.read_volume(run.parent / "in" / row.volume_id.split("/")[-1])
        u8 = Intensity.parse("minmax").to_uint8(volume.hu[[row.slice_index]])[0]
        np.testing.assert_array_equal(slices[k], resize_pad(u8, SIZE))


@pytest.fixture
def grown(tmp_path):
    """A one-pass npy export of 6 series; then 3 series added and the same command run again."""
    add_series(tmp_path / "in", range(6))
    run = tmp_path / "run"
    ctreduce.reduce(tmp_path / "in", run, export="npy", export_size=SIZE)
    before = shard_files(run / "export")
    first = ExportStore.open(run / "export")
    add_series(tmp_path / "in", range(6, 9))
    result = ctreduce.reduce(tmp_path / "in", run, export="npy", export_size=SIZE)
    return run, before, first, result


def test_growth_adds_shards_and_leaves_the_earlier_ones_untouched(grown):
    run, before, first, result = grown
    after = shard_files(run / "export")
    assert set(before) < set(after)
    assert all(after[name] == before[name] for name in before)  # bytes, inode and mtime: never rewritten
    store = ExportStore.open(run / "export")
    assert (first.version, store.version, result.summary["export"]["version"]) == (1, 2, 2)
    new = set(store.index.loc[~store.index["shard"].isin(set(before)), "volume_id"])
    assert new == {f"in/s{seed:02d}" for seed in range(6, 9)}  # only the added series were written
    assert_export_is_the_kept_slices(run / "export", run)
    # The earlier version still reads, unchanged: its shards are all kept.
    again = ExportStore.open(run / "export", version=1)
    pd.testing.assert_frame_equal(again.index, first.index)
    np.testing.assert_array_equal(again.array(), first.array())
    # Nothing changed: no new version, no file written.
    ctreduce.reduce(run.parent / "in", run, export="npy", export_size=SIZE)
    assert ExportStore.open(run / "export").version == 2 and shard_files(run / "export") == after


def test_ctreduce_export_grows_by_reading_only_the_new_volumes(grown, tmp_path, monkeypatch):
    run, *_ = grown
    out = tmp_path / "exported"
    add_series(tmp_path / "older", range(6))
    shutil.rmtree(tmp_path / "in")
    shutil.copytree(tmp_path / "older", tmp_path / "in")  # the run as it was before it grew
    old_run = tmp_path / "old-run"
    ctreduce.reduce(tmp_path / "in", old_run)
    ctreduce.export(old_run, out, format="npy", size=SIZE)
    before = shard_files(out)
    add_series(tmp_path / "in", range(6, 9))
    ctreduce.reduce(tmp_path / "in", old_run)
    read = []
    real = from_run.load
    monkeypatch.setattr(from_run, "load", lambda source, *a: read.append(source.volume_id)
                        or real(source, *a))
    meta = ctreduce.export(old_run, out, format="npy", size=SIZE)  # no --overwrite: it grows
    assert sorted(read) == [f"in/s{seed:02d}" for seed in range(6, 9)]
    assert meta["version"] == 2 and meta["reused"] == len(ExportStore.open(out, version=1).index)
    after = shard_files(out)
    assert all(after[name] == before[name] for name in before) and len(after) == len(before) + 3
    assert_export_is_the_kept_slices(out, old_run)


def test_a_changed_volume_is_dropped_from_the_new_version(grown, tmp_path):
    run, *_ = grown
    old = ExportStore.open(run / "export")
    changed = "in/s02"
    old_shard = set(old.index.loc[old.index["volume_id"] == changed, "shard"])
    hu, spacing = make_phantom(n_slices=8, size=32, slice_thickness=2.5, seed=42)
    shutil.rmtree(tmp_path / "in" / "s02")
    write_dicom_series(hu, spacing, tmp_path / "in" / "s02", seed=2)
    shutil.rmtree(tmp_path / "in" / "s04")  # and one left the archive
    before = shard_files(run / "export")
    ctreduce.reduce(tmp_path / "in", run, export="npy", export_size=SIZE)
    store = ExportStore.open(run / "export")
    assert store.version == old.version + 1
    assert not set(store.index["shard"]) & old_shard  # the changed volume's old rows are dead
    assert "in/s04" not in set(store.index["volume_id"])
    after = shard_files(run / "export")
    assert all(after[name] == before[name] for name in before)  # dead rows stay in their shards, untouched
    assert_export_is_the_kept_slices(run / "export", run)


def test_compact_rewrites_only_the_shards_with_dead_rows_and_reads_the_same(tmp_path):
    add_series(tmp_path / "in", range(5), n=12)
    run, out = tmp_path / "run", tmp_path / "export"
    ctreduce.reduce(tmp_path / "in", run, threshold=4)
    ctreduce.export(run, out, format="npy", size=SIZE)
    first = ExportStore.open(out)
    shutil.rmtree(tmp_path / "in" / "s01")  # a volume that left: its shard is all dead
    ctreduce.reduce(tmp_path / "in", run, threshold=12, overwrite=True)  # fewer kept: some rows dead
    meta = ctreduce.export(run, out, format="npy", size=SIZE)
    assert meta["reused"] == meta["slices"]  # every row held by version 1: nothing read, nothing written
    grown = ExportStore.open(out)
    live = grown.index.groupby("shard")["shard_row"].count()
    total = {name: np.load(out / "shards" / name, mmap_mode="r").shape[0] for name in shard_files(out)}
    partial = {name for name, n in live.items() if n < total[name]}
    whole = {name for name, n in live.items() if n == total[name]}
    assert partial and whole  # the case this test is about: both kinds of shard
    before = shard_files(out)
    expected = grown.array()
    result = CliRunner().invoke(app, ["export", "--compact", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"{len(partial)} shard(s) rewritten, {len(total) - len(live)} removed" in result.output
    compacted = ExportStore.open(out)
    np.testing.assert_array_equal(compacted.array(), expected)
    pd.testing.assert_frame_equal(compacted.index.drop(columns=["shard", "shard_row"]),
                                  grown.index.drop(columns=["shard", "shard_row"]))
    after = shard_files(out)
    assert all(after[name] == before[name] for name in whole)  # shards without dead rows: untouched
    assert not set(after) & (set(total) - whole)  # the others are gone, rewritten into new shards
    assert all(np.load(out / "shards" / n, mmap_mode="r").shape[0] == c
               for n, c in compacted.index.groupby("shard")["shard_row"].count().items())
    with pytest.raises(ExportError, match="no version 1"):
        ExportStore.open(out, version=1)  # it named a shard that is gone
    assert first.version == 1 and compacted.version == 3


def test_an_interrupted_one_pass_export_resumes_without_rewriting_its_shards(tmp_path, monkeypatch):
    add_series(tmp_path / "in", range(5))
    run = tmp_path / "run"
    real = ExportParts.write
    written: list[str] = []

    def write_then_stop(self, volume_id, slice_indices, u8):
        if len(written) == 3:
            raise KeyboardInterrupt
        written.append(volume_id)
        real(self, volume_id, slice_indices, u8)

    monkeypatch.setattr(ExportParts, "write", write_then_stop)
    with pytest.raises(KeyboardInterrupt):
        ctreduce.reduce(tmp_path / "in", run, export="npy", export_size=SIZE)
    staged = next(p for p in run.glob(".export*partial"))
    before = shard_files(staged)
    assert len(before) == 3 and not (run / "export").exists()  # no export yet, the written shards kept
    monkeypatch.setattr(ExportParts, "write", real)
    ctreduce.reduce(tmp_path / "in", run, export="npy", export_size=SIZE)
    after = shard_files(run / "export")
    assert all(after[name] == before[name] for name in before) and len(after) == 5
    assert ExportStore.open(run / "export").version == 1 and not staged.exists()
    assert not (run / "export" / "pending").exists() and not (run / "export-parts").exists()
    assert_export_is_the_kept_slices(run / "export", run)


def test_a_one_pass_export_stores_each_kept_slice_once(tmp_path):
    add_series(tmp_path / "in", range(6))
    run = tmp_path / "run"
    ctreduce.reduce(tmp_path / "in", run, export="npy", export_size=SIZE)
    pixels = len(ExportStore.open(run / "export").index) * SIZE * SIZE
    arrays = [p for p in run.rglob("*.npy")]
    assert all(p.parent == run / "export" / "shards" for p in arrays)  # no second copy anywhere
    stored = sum(p.stat().st_size for p in arrays)
    assert pixels <= stored <= 1.3 * pixels


def test_a_pretraining_run_records_the_export_version_it_trained_on(grown, tmp_path):
    from ctreduce.config import make_pretrain_config
    from ctreduce.ssl.pretrain import pretrain

    run, _, first, _ = grown
    export = run / "export"
    summary = pretrain(make_pretrain_config({
        "preset": "cpu", "backbone": "resnet18", "input_size": 16, "batch_size": 4, "epochs": 1, "max_steps": 1,
        "num_workers": 0, "method": "moco", "data": str(export), "out": str(tmp_path / "pre")}))
    recorded = summary["export"]
    assert recorded["version"] == ExportStore.open(export).version == 2
    assert recorded["slices"] == summary["dataset_slices"] == len(ExportStore.open(export, version=2).index)
    assert recorded["slices"] > len(first.index)  # it trained on the grown export, not the first version


def test_an_npy_export_of_the_older_layout_is_refused_with_what_to_do(tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    (old / "export.json").write_text('{"schema": 2, "complete": true, "format": "npy", "size": 8, "slices": 3}')
    pd.DataFrame({"row": [0, 1, 2]}).to_parquet(old / "index.parquet")
    np.save(old / "slices.npy", np.zeros((3, 8, 8), np.uint8))
    with pytest.raises(ExportError, match="written by an older ctreduce .*export it again with --overwrite"):
        ExportStore.open(old)


def test_compact_is_refused_where_it_cannot_work(tmp_path):
    add_series(tmp_path / "in", range(2))
    ctreduce.reduce(tmp_path / "in", tmp_path / "run")
    ctreduce.export(tmp_path / "run", tmp_path / "png")
    runner = CliRunner()
    missing = runner.invoke(app, ["export", "--out", str(tmp_path / "png")])
    assert missing.exit_code == 2 and "give the RUN folder to export (or --compact" in missing.output
    png = runner.invoke(app, ["export", "--compact", "--out", str(tmp_path / "png")])
    assert png.exit_code == 2 and "a png export is written whole; only an npy export is compacted" in png.output
    none = runner.invoke(app, ["export", "--compact", "--out", str(tmp_path / "nothing")])
    assert none.exit_code == 2 and "no such export folder" in none.output
