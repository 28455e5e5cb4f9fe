"""Property tests of the file names the tool writes (``store.files``): what ``encoded_name`` and
``hidden_sibling`` promise in their docstrings, beyond ``test_store_names.py``.

- a name that was not shortened decodes back to its id (percent-encoding is injective);
- a shortened name is the start of the full encoding (never cut inside a %XX), '+', the 128-bit
  BLAKE2b of the id, the suffix; '+' never occurs in a full encoding, so the two kinds never meet;
- the file system accepts every name, and distinct ids never overwrite each other's files;
- the full id is recoverable from the export's index beside each name, also for shortened names;
- names are the same in another interpreter (no per-process hash seed);
- a lock and its holder notes fit beside any folder name; distinct folders get distinct locks.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import quote, unquote, unquote_to_bytes

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ctreduce.store.export import ExportStore, ExportWriter
from ctreduce.store.export_formats import png_name
from ctreduce.store.files import NAME_MAX, encoded_name, hidden_sibling
from ctreduce.store.lock import FolderLock

# Valid unicode ids, often long (one folder, many series) and sharing prefixes; '/' and dots as in paths.
PIECES = st.text(max_size=30) | st.sampled_from(["é" * 120, "a" * 250, "€" * 90, ".", "..", "+", "%", "%2E", "~"])
IDS = st.lists(PIECES, min_size=1, max_size=4).map("/".join) | st.text(st.characters(codec="utf-8"), max_size=300)
# and ids holding the lone surrogates os.fsdecode makes of undecodable bytes (encoded_name's surrogatepass)
ANY_IDS = IDS | st.text(st.characters(codec="utf-8") | st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF),
                        max_size=300)
SUFFIXES = st.sampled_from(["", ".png", "__0000.png", "__123456.png"])


def utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def full_encoding(text: str) -> str:
    """The docstring's encoding, written out: ``quote`` with nothing safe, a leading dot as %2E."""
    encoded = quote(text, safe="", errors="surrogatepass")
    return "%2E" + encoded[1:] if encoded.startswith(".") else encoded


@settings(max_examples=400)
@given(text=ANY_IDS, suffix=SUFFIXES)
def test_a_name_is_its_ids_encoding_or_the_encodings_start_and_the_ids_digest(text, suffix):
    name = encoded_name(text, suffix)
    assert name.endswith(suffix) and len(name.encode()) <= NAME_MAX
    stem = name[: len(name) - len(suffix)]
    encoding = full_encoding(text)
    if text == "":
        assert stem == "+"  # the empty id still gets a name, one no other id gets
    elif len(encoding) + len(suffix) <= NAME_MAX:  # fits: the encoding itself, which decodes to the id
        assert stem == encoding and "+" not in stem
        assert unquote(stem, errors="surrogatepass") == text
    else:  # too long: the encoding's start, never cut inside a %XX, '+', the BLAKE2b-128 of the id
        head, digest = stem.rsplit("+", 1)
        assert "+" not in head and encoding.startswith(head) and "%" not in head[-2:]
        assert digest == hashlib.blake2b(utf8(text), digest_size=16).hexdigest()
        assert len(head) >= NAME_MAX - len(suffix) - len(digest) - 1 - 2  # as much of the id as fits
        assert utf8(text).startswith(unquote_to_bytes(head))  # so it decodes to the start of the id


def _write_png_export(out: Path, ids: list[str], slices: int) -> None:
    """An export with ``slices`` 2 x 2 images per id, written as ``ctreduce export`` writes one."""
    with ExportWriter(out, "png", size=None, overwrite=False) as writer:
        for k, volume_id in enumerate(ids):
            records = [{"volume_id": volume_id, "slice_index": s, "z_mm": float(s), "source": f"src{k}"}
                       for s in range(slices)]
            u8 = np.full((slices, 2, 2), k % 256, np.uint8)
            writer.add_volume(writer.format.encode(writer.stage, u8, records), records)
        writer.commit({"run_dir": "-"})


@settings(max_examples=25)
@given(ids=st.lists(IDS, min_size=1, max_size=5, unique=True), slices=st.integers(1, 2))
def test_every_id_gets_its_own_file_and_the_index_gives_back_the_full_id(ids, slices):
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "png"
        _write_png_export(out, ids, slices)  # ENAMETOOLONG or a '/' in a name would raise here
        store = ExportStore.open(out)  # checks that the images and the index agree
        files = sorted((out / "images").iterdir())
        assert len(files) == len(ids) * slices  # no two ids share a file
        index = store.index
        assert index["volume_id"].tolist() == [v for v in ids for _ in range(slices)]  # the full ids, in order
        for row in index.itertuples():
            path = out / row.file
            assert path.parent == out / "images" and len(os.fsencode(path.name)) <= NAME_MAX
            assert path.name == png_name(row.volume_id, row.slice_index)  # the name follows from the full id
            assert np.asarray(store.slices()[row.row]).max() == ids.index(row.volume_id) % 256


_NAMES_ELSEWHERE = """
import json, sys
from ctreduce.store.files import encoded_name, hidden_sibling
from pathlib import Path
ids = json.loads(sys.stdin.read())
print(json.dumps([[encoded_name(t, ".png"), hidden_sibling(Path("/x") / t.replace("/", "_")[:80], "lock").name]
                  for t in ids]))
"""


@settings(max_examples=2)
@given(ids=st.lists(IDS.filter(lambda t: t.replace("/", "_")[:80] not in ("", ".", "..")), min_size=30,
                    max_size=60))
def test_names_are_the_same_in_another_interpreter(ids):
    env = dict(os.environ, PYTHONHASHSEED=str(len(ids) + 7))
    proc = subprocess.run([sys.executable, "-c", _NAMES_ELSEWHERE], input=json.dumps(ids), capture_output=True,
                          text=True, env=env, check=True)
    here = [[encoded_name(t, ".png"), hidden_sibling(Path("/x") / t.replace("/", "_")[:80], "lock").name] for t in ids]
    assert json.loads(proc.stdout) == here


FOLDER_NAMES = st.text(st.characters(codec="utf-8", exclude_characters="/\0"), min_size=1, max_size=255).filter(
    lambda n: n not in (".", "..") and len(n.encode()) <= NAME_MAX)


@settings(max_examples=30)
@given(name=FOLDER_NAMES | st.sampled_from(["é" * 127, "a" * 255, "€" * 85]))
def test_a_lock_and_its_holder_note_fit_beside_any_folder(name):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / name
        with FolderLock.beside(folder, "export folder X"):  # the lock file and the note are created here
            written = sorted(os.listdir(tmp))
            assert len(written) == 2 and all(len(os.fsencode(n)) <= NAME_MAX for n in written)
            assert all(n.startswith(".") for n in written)
        assert os.listdir(tmp) == []  # both removed on leaving


@settings(max_examples=200)
@given(prefix=st.text(st.characters(codec="utf-8", exclude_characters="/\0"), min_size=60, max_size=120),
       tails=st.lists(st.text(st.characters(codec="utf-8", exclude_characters="/\0"), max_size=8), min_size=2,
                      max_size=5, unique=True),
       tag=st.sampled_from(["partial", "lock", "old"]))
def test_distinct_folders_get_distinct_hidden_siblings(prefix, tails, tag):
    names = [prefix + tail for tail in tails if len((prefix + tail).encode()) <= NAME_MAX]
    siblings = [hidden_sibling(Path("/x") / n, tag).name for n in names]
    assert len(set(siblings)) == len(siblings)
    assert all(s == hidden_sibling(Path("/x") / n, tag).name for n, s in zip(names, siblings, strict=True))
