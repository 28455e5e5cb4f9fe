"""Near-duplicates across volumes: a real scan stored twice is found, other anatomy is not."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ctreduce.core.dhash import BITS, codes_from_hex
from ctreduce.curate.duplicates import HashesUnavailable, find_duplicates, manifest_codes
from ctreduce.reduction.archive import VolumeCodes, archive_greedy
from ctreduce.reduction.hamming_index import brute_pairs
from ctreduce.store.curation import CurateFolderError, DuplicatesFolder


def write_small_ct(sample: Path, out: Path) -> Path:
    """A real sample CT at 128 x 128 (every 4th pixel): real anatomy, quick to reduce."""
    import SimpleITK as sitk

    from ctreduce.sample_data.phantom import write_nrrd

    image = sitk.ReadImage(str(sample))
    hu = sitk.GetArrayFromImage(image)[:, ::4, ::4]
    col, row, thickness = image.GetSpacing()
    return write_nrrd(hu, (thickness, row * 4, col * 4), out)


@pytest.fixture(scope="module")
def runs(sample_volumes, tmp_path_factory) -> tuple[Path, Path]:
    """Run A: lung1 and lung2 (two patients, method hash). Run B: lung1 again under another name
    and folder (method all: every manifest records the dHash)."""
    import ctreduce

    root = tmp_path_factory.mktemp("dups")
    lung1 = write_small_ct(sample_volumes[0], root / "a" / "lung1.nrrd")
    write_small_ct(sample_volumes[1], root / "a" / "lung2.nrrd")
    (root / "b").mkdir()
    shutil.copy(lung1, root / "b" / "series_copy.nrrd")
    ctreduce.reduce(root / "a", root / "run_a", method="hash")
    ctreduce.reduce(root / "b", root / "run_b", method="all")
    return root / "run_a", root / "run_b"


def test_a_volume_stored_twice_is_found_as_a_pair(runs):
    result = find_duplicates(runs)
    pairs = result.volume_pairs
    assert len(pairs) == 1, pairs
    row = pairs.iloc[0]
    assert (row.run_a, row.volume_a, row.run_b, row.volume_b) == ("run_a", "a/lung1", "run_b", "b/series_copy")
    assert row.share_a == row.share_b == 1.0 and row.matched_a == row.slices_a == row.matched_b
    copies = result.slices[result.slices["volume_id"] == "b/series_copy"]
    assert (copies["distance"] == 0).all() and (copies["nearest_volume_id"] == "a/lung1").all()


def test_different_anatomy_is_not_matched(runs):
    slices = find_duplicates(runs).slices
    lung2 = slices[slices["volume_id"] == "a/lung2"]
    assert len(lung2) and lung2["distance"].isna().all() and lung2["nearest_volume_id"].isna().all()


def test_nearest_slice_in_another_volume_equals_brute_force(runs):
    result = find_duplicates(runs, threshold=9)
    slices = result.slices
    codes = codes_from_hex(slices["dhash"].tolist())
    volume = (slices["run"] + ":" + slices["volume_id"]).to_numpy()
    d = np.bitwise_count(codes[:, None] ^ codes[None, :]).astype(np.int64)
    d[volume[:, None] == volume[None, :]] = BITS + 1  # same volume: not a candidate
    nearest = np.argmin(d, axis=1)  # ties: first in run and manifest order
    within = d[np.arange(len(d)), nearest] <= 9
    assert within.any() and not within.all()
    np.testing.assert_array_equal(slices["distance"].notna().to_numpy(), within)
    np.testing.assert_array_equal(slices.loc[within, "distance"].to_numpy(dtype=np.int64),
                                  d[np.arange(len(d)), nearest][within])
    got = (slices["nearest_run"] + ":" + slices["nearest_volume_id"] + "#"
           + slices["nearest_slice_index"].astype(str))[within]
    want = pd.Series(volume[nearest] + "#" + slices["slice_index"].to_numpy()[nearest].astype(str))[within]
    assert got.tolist() == want.tolist()


def test_kept_only_searches_the_kept_slices(runs):
    result = find_duplicates(runs, kept_only=True)
    assert result.slices["kept"].all() and result.meta["kept_only"]
    assert len(result.volume_pairs) == 1  # lung1's kept slices all have their copy in run B


def test_output_folder_round_trip(runs, tmp_path):
    result = find_duplicates(runs)
    folder = DuplicatesFolder.open(result.write(tmp_path / "dups"))
    pd.testing.assert_frame_equal(folder.slices, result.slices)
    pd.testing.assert_frame_equal(folder.volume_pairs, result.volume_pairs)
    assert folder.meta["threshold"] == 6 and folder.meta["volume_pairs"] == 1
    result.write(tmp_path / "dups")  # its own earlier output is replaced
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(CurateFolderError, match="other files"):
        result.write(tmp_path / "other")
    with pytest.raises(CurateFolderError, match="duplicates.json"):
        DuplicatesFolder.open(tmp_path / "other")


def _strip_hashes(run: Path, out: Path, *, keep_hash: bool) -> Path:
    shutil.copytree(run, out)
    manifest = pd.read_parquet(out / "manifest.parquet").drop(columns=["dhash"])
    if not keep_hash:
        manifest = manifest.drop(columns=["hash"])
        meta = json.loads((out / "run.json").read_text())
        meta["settings"]["method"] = "all"
        (out / "run.json").write_text(json.dumps(meta))
    manifest.to_parquet(out / "manifest.parquet", index=False)
    return out


def test_manifests_without_dhash_column(runs, tmp_path):
    # an older hash run (dhash, 8 x 8): its hash column is the same 64-bit dHash
    older = _strip_hashes(runs[0], tmp_path / "older_hash", keep_hash=True)
    frame, codes = manifest_codes(older)
    np.testing.assert_array_equal(codes, manifest_codes(runs[0])[1])
    # an older run of another method records none: a clear error asking for a rerun
    none = _strip_hashes(runs[0], tmp_path / "older_all", keep_hash=False)
    with pytest.raises(HashesUnavailable, match="rerun"):
        find_duplicates([none])


def _naive_archive_greedy(codes: np.ndarray, threshold: int) -> tuple[np.ndarray, np.ndarray]:
    """The paper's loop over the concatenated order, pair by pair."""
    kept, leader = np.zeros(len(codes), bool), np.arange(len(codes))
    remaining = list(range(len(codes)))
    while remaining:
        ref, others = remaining[0], remaining[1:]
        kept[ref] = True
        remaining = []
        for k in others:
            if int(np.bitwise_count(codes[ref] ^ codes[k])) <= threshold:
                leader[k] = ref
            else:
                remaining.append(k)
    return kept, leader


def test_archive_greedy_drops_the_copy_and_equals_the_paper_loop(runs):
    volumes = []
    for run in runs:
        frame, codes = manifest_codes(run, kept_only=True)
        for vid, rows in frame.groupby("volume_id", sort=False).indices.items():
            volumes.append(VolumeCodes(vid, frame["slice_index"].to_numpy()[rows], codes[rows]))
    table = archive_greedy(volumes, 6)
    copy = table[table["volume_id"] == "b/series_copy"]
    lung1 = table[table["volume_id"] == "a/lung1"]
    assert lung1["kept"].all() and table[table["volume_id"] == "a/lung2"]["kept"].all()
    # run B (method all) keeps every slice: the ones lung1 kept are dropped for their leader in
    # lung1 (the same slice, distance 0), the others for a leader in lung1 or in the copy
    same = copy["slice_index"].isin(lung1["slice_index"])
    assert (~copy.loc[same, "kept"]).all() and (copy.loc[same, "leader_volume"] == "a/lung1").all()
    assert (copy.loc[same, "leader_slice"] == copy.loc[same, "slice_index"]).all()
    codes = np.concatenate([v.codes for v in volumes])
    kept, leader = _naive_archive_greedy(codes, 6)
    np.testing.assert_array_equal(table["kept"].to_numpy(), kept)
    np.testing.assert_array_equal(table["leader_slice"].to_numpy(), table["slice_index"].to_numpy()[leader])
    i, j, _ = brute_pairs(codes[kept], 6)
    assert len(i) == 0  # no near-duplicate pair left anywhere


def test_archive_greedy_on_random_structured_codes():
    rng = np.random.default_rng(3)
    centres = rng.integers(0, 2**63, 30, dtype=np.int64).astype(np.uint64)
    volumes, all_codes = [], []
    for v in range(12):
        codes = centres[rng.integers(0, 30, 25)] ^ (np.uint64(1) << rng.integers(0, 64, 25).astype(np.uint64))
        volumes.append(VolumeCodes(f"v{v}", np.arange(25) * 2, codes))
        all_codes.append(codes)
    table = archive_greedy(volumes, 4)
    kept, leader = _naive_archive_greedy(np.concatenate(all_codes), 4)
    np.testing.assert_array_equal(table["kept"].to_numpy(), kept)
    np.testing.assert_array_equal(table["leader_volume"].to_numpy(), table["volume_id"].to_numpy()[leader])
    with pytest.raises(ValueError, match="ascending"):
        VolumeCodes("x", np.array([2, 1]), np.zeros(2, np.uint64))


def test_duplicates_command(runs, tmp_path):
    import typer
    from typer.testing import CliRunner

    from ctreduce.curate.cli import duplicates

    app = typer.Typer()
    app.command()(duplicates)
    result = CliRunner().invoke(app, [str(runs[0]), str(runs[1]), "--out", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    assert "1 volume pair(s)" in result.output and "b/series_copy" in result.output
    assert DuplicatesFolder.open(tmp_path / "d").meta["volume_pairs"] == 1
    missing = CliRunner().invoke(app, [str(tmp_path / "nope"), "--out", str(tmp_path / "e")])
    assert missing.exit_code == 2 and "no manifest" in missing.output


def test_a_run_given_twice_is_searched_once(runs, tmp_path):
    import typer
    from typer.testing import CliRunner

    from ctreduce.curate.cli import duplicates

    once = find_duplicates([runs[0]])
    alias = tmp_path / "alias"
    alias.symlink_to(runs[0], target_is_directory=True)
    for again in (runs[0], runs[0].parent / "." / runs[0].name, alias):
        twice = find_duplicates([runs[0], again])
        assert twice.meta["repeated"] == [f"{again} is the same folder as {runs[0]}"]
        pd.testing.assert_frame_equal(twice.slices, once.slices)
        pd.testing.assert_frame_equal(twice.volume_pairs, once.volume_pairs)
        assert twice.meta["volumes"] == once.meta["volumes"] == 2
    app = typer.Typer()
    app.command()(duplicates)
    result = CliRunner().invoke(app, [str(runs[0]), str(alias), "--out", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    assert f"note: {alias} is the same folder as {runs[0]}; searched once" in result.output
    assert "0 volume pair(s)" in result.output


def _literal_archive_greedy(codes: list[int], threshold: int) -> tuple[list[bool], list[int], list[int]]:
    """Walk the slices in order; drop one within the threshold of a slice kept so far (its leader: the
    first such), else keep it."""
    kept, leader, distance, leaders = [], [], [], []
    for k, code in enumerate(codes):
        near = [(j, (code ^ codes[j]).bit_count()) for j in leaders if (code ^ codes[j]).bit_count() <= threshold]
        kept.append(not near)
        leader.append(near[0][0] if near else k)
        distance.append(near[0][1] if near else 0)
        if not near:
            leaders.append(k)
    return kept, leader, distance


@st.composite
def walks(draw) -> tuple[list[int], list[int]]:
    """Codes that wander a few bits at a time from a few starting points (chains: a near b, b near c,
    a far from c, as neighbouring slices are), cut into volumes."""
    current = draw(st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=3))
    codes = []
    for chain, bits in draw(st.lists(st.tuples(st.integers(0, 2), st.sets(st.integers(0, 63), max_size=4)),
                                     min_size=1, max_size=40)):
        chain %= len(current)
        for bit in bits:
            current[chain] ^= 1 << bit
        codes.append(current[chain])
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(codes) - 1)), max_size=5)))
    return codes, [c for c in cuts if c < len(codes)]


@settings(max_examples=300, deadline=None)
@given(walk=walks(), threshold=st.integers(0, 8))
def test_archive_greedy_is_the_literal_loop_over_kept_leaders(walk, threshold):
    codes, cuts = walk
    volumes = [VolumeCodes(f"v{k}", np.arange(len(part)) * 3 + k, np.array(part, dtype=np.uint64))
               for k, part in enumerate(np.split(np.array(codes, dtype=object), cuts))]
    table = archive_greedy(volumes, threshold)
    kept, leader, distance = _literal_archive_greedy(codes, threshold)
    assert table["kept"].tolist() == kept
    assert table["leader_volume"].tolist() == table["volume_id"].to_numpy()[leader].tolist()
    assert table["leader_slice"].tolist() == table["slice_index"].to_numpy()[leader].tolist()
    assert table["distance"].tolist() == distance


def test_a_full_disk_while_writing_the_tables_is_one_line(runs, tmp_path, monkeypatch):
    import errno

    import typer
    from typer.testing import CliRunner

    from ctreduce.curate.cli import duplicates

    def full(self, path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", full)
    app = typer.Typer()
    app.command()(duplicates)
    result = CliRunner().invoke(app, [str(runs[0]), "--out", str(tmp_path / "d")])
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines() == [
        f"error: disk full writing {tmp_path / 'd' / 'slices.parquet'} (No space left on device); free some space "
        "and run the same command again: finished work is kept"]
