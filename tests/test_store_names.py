"""File names the tool writes: derived from volume ids and user text, always within 255 bytes,
distinct for distinct ids, stable, never hidden, never a path; a long name never fails a volume."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_store import assert_export_is_the_manifest, cli

import ctreduce
from ctreduce.sample_data.phantom import make_phantom, write_nifti
from ctreduce.store.export import ExportStore
from ctreduce.store.export_formats import png_name
from ctreduce.store.files import NAME_MAX, encoded_name, hidden_sibling

# ids as archives produce them: any text (non-ASCII, '/', dots, spaces), often long, often sharing a
# long prefix (one folder, many series), sometimes holding the lone surrogates os.fsdecode makes
# of undecodable bytes
PIECES = st.text(min_size=0, max_size=40) | st.sampled_from(["é" * 120, "a" * 250, ".", "..", "/", "+", "%2E", "~"])
IDS = st.lists(PIECES, min_size=1, max_size=4).map("/".join) | st.text(
    st.characters(codec="utf-8") | st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF), max_size=300)
SUFFIXES = st.sampled_from(["", ".png", "__0000.png", "__123456.png", ".parquet"])


def nbytes(name: str) -> int:
    return len(name.encode("utf-8", "surrogatepass"))


@settings(max_examples=400, deadline=None)
@given(text=IDS, suffix=SUFFIXES)
def test_an_encoded_name_is_a_short_plain_file_name(text, suffix):
    name = encoded_name(text, suffix)
    assert nbytes(name) <= NAME_MAX
    assert name.endswith(suffix) and "/" not in name and "\0" not in name
    assert not name.startswith(".") and name not in ("", ".", "..")
    assert name.isascii()
    assert encoded_name(text, suffix) == name  # stable: a function of the text alone


@settings(max_examples=300, deadline=None)
@given(texts=st.lists(IDS, min_size=2, max_size=8, unique=True), suffix=SUFFIXES)
def test_distinct_ids_get_distinct_names(texts, suffix):
    names = [encoded_name(t, suffix) for t in texts]
    assert len(set(names)) == len(names)


@settings(max_examples=200, deadline=None)
@given(prefix=st.text(min_size=100, max_size=200), tails=st.lists(st.text(max_size=20), min_size=2, max_size=6,
                                                                   unique=True))
def test_long_ids_that_differ_only_at_the_end_stay_distinct(prefix, tails):
    names = [encoded_name(prefix * 3 + tail, "__0001.png") for tail in tails]
    assert len(set(names)) == len(names) and all(nbytes(n) <= NAME_MAX for n in names)


def test_names_are_stable_across_versions():
    assert png_name("archive/CT 1", 3) == "archive%2FCT%201__0003.png"
    assert png_name(".hidden", 0) == "%2Ehidden__0000.png"
    # too long: the start of the encoding (never cut inside a %XX), '+', a digest of the whole id
    assert png_name("é" * 120 + "/p1", 7) == "%C3%A9" * 35 + "+3ef8244d47a845d2b46b42ae7ad2d02c__0007.png"


@settings(max_examples=100, deadline=None)
@given(name=st.text(st.characters(codec="utf-8", exclude_characters="/\0"), min_size=1, max_size=255).filter(
    lambda n: n not in (".", "..") and len(n.encode()) <= NAME_MAX), tag=st.sampled_from(["partial", "lock", "old"]))
def test_a_hidden_sibling_fits_whatever_the_folder_name(name, tag):
    sibling = hidden_sibling(Path("/x") / name, tag)
    assert sibling.parent == Path("/x") and sibling.name.startswith(".") and sibling.name.endswith(f".{tag}")
    assert len(os.fsencode(sibling.name)) <= NAME_MAX
    assert len(os.fsencode(hidden_sibling(Path("/x") / name, tag, spare=32).name)) <= NAME_MAX - 32


@pytest.fixture
def long_archive(tmp_path) -> Path:
    """A folder named with 120 'é' (240 bytes, legal) holding two volumes."""
    root = tmp_path / "archive"
    for i in range(2):
        hu, spacing = make_phantom(n_slices=6, size=32, slice_thickness=5.0, seed=i)
        write_nifti(hu, spacing, root / ("é" * 120) / f"p{i}.nii.gz")
    return root


def test_a_long_folder_name_never_fails_a_reduction_or_an_export(long_archive, tmp_path):
    run = tmp_path / "run"
    cli("reduce", long_archive, "--out", run, "--method", "all", "--export", "png", "--quiet")
    store = ExportStore.open(run / "export")
    assert sorted(store.index["volume_id"].unique()) == [f"archive/{'é' * 120}/p{i}" for i in range(2)]
    assert len(store.index) == 12 and all(len(Path(f).name) <= NAME_MAX for f in store.index["file"])
    assert_export_is_the_manifest(run, run / "export")
    proc = cli("export", run, "--out", tmp_path / "png", "--quiet")
    assert "exported 12 slices of 2 volume(s)" in proc.stdout
    assert ExportStore.open(tmp_path / "png").meta["errors"] == []
    assert_export_is_the_manifest(run, tmp_path / "png")


def test_a_long_output_folder_name_gets_its_staging_lock_and_temporary_files(long_archive, tmp_path):
    run = tmp_path / ("r" * 250)
    out = tmp_path / ("o" * 250)
    ctreduce.reduce(long_archive, run, method="all")
    cli("export", run, "--out", out, "--format", "npy", "--size", "16", "--quiet")
    cli("export", run, "--out", out, "--format", "npy", "--size", "16", "--quiet", "--overwrite")
    assert ExportStore.open(out).meta["slices"] == 12
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["archive", run.name, out.name])
