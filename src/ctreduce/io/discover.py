"""Find the volumes under input paths and read them: the one entry point for every format."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import dicom, single
from .volume import Volume, VolumeError, VolumeSource

# Files that are never volumes; listed as skipped with this reason, not parsed.
_NOT_VOLUMES = {
    ".txt", ".md", ".json", ".xml", ".csv", ".tsv", ".html", ".pdf", ".py", ".yaml", ".yml",
    ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".zip", ".gz", ".tar", ".parquet",
}
# Pixel-data companions of header files (.mhd -> .raw, .nhdr -> .raw.gz, ...).
_DATA_FILES = {".raw", ".zraw", ".img"}


@dataclass
class ScanResult:
    """Volumes found (in deterministic input order) and everything skipped, with reasons."""

    volumes: list[VolumeSource] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"path", "reason"}
    errors: list[dict[str, str]] = field(default_factory=list)  # {"volume_id", "source", "error"}


def _walk(root: Path) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        files.extend(Path(dirpath) / f for f in sorted(filenames))
    return files


def _volume_id(root: Path, path: Path) -> str:
    rel = path.relative_to(root) if path != root else Path(path.name)
    prefix = root.name if root.is_dir() else ""
    return str(Path(prefix) / rel).replace(os.sep, "/").strip("/") or root.name


def scan(
    inputs: Sequence[str | os.PathLike],
    *,
    modality: str = "CT",
    allow_gaps: bool = False,
    workers: int = 1,
) -> ScanResult:
    """Find every volume under ``inputs`` (files or folders) from headers alone.

    DICOM files are grouped by SeriesInstanceUID across each input; only series whose Modality
    equals ``modality`` are kept (``"any"`` keeps all). Series that cannot be ordered (duplicate
    positions, missing slices unless ``allow_gaps``) are returned under ``errors``.
    Raises FileNotFoundError for an input path that does not exist. With ``workers`` > 1 the
    DICOM headers are read in parallel (reading them is most of a scan's time).
    """
    result = ScanResult()
    want = modality.upper()
    seen_ids: set[str] = set()
    for raw in inputs:
        root = Path(raw)
        if not root.exists():
            raise FileNotFoundError(f"{root}: no such file or folder")
        files = [root] if root.is_file() else _walk(root)
        if not files:
            result.skipped.append({"path": str(root), "reason": "empty folder"})
            continue
        base = root if root.is_dir() else root.parent
        candidates: list[Path] = []
        for path in files:
            name = path.name.lower()
            try:
                if single.has_suffix(path, single.NIFTI_SUFFIXES):
                    vid = _volume_id(base, path.with_name(single._strip_suffix(path, single.NIFTI_SUFFIXES)))
                    result.volumes.append(single.nifti_source(path, vid))
                elif single.has_suffix(path, single.SITK_SUFFIXES):
                    vid = _volume_id(base, path.with_name(single._strip_suffix(path, single.SITK_SUFFIXES)))
                    result.volumes.append(single.sitk_source(path, vid))
                elif path.suffix.lower() in _DATA_FILES or name.endswith(".raw.gz"):
                    result.skipped.append({"path": str(path), "reason": "pixel-data file of a header file"})
                elif path.suffix.lower() in _NOT_VOLUMES or name.startswith("."):
                    result.skipped.append({"path": str(path), "reason": f"not a volume format ({path.suffix or name})"})
                else:
                    candidates.append(path)
            except VolumeError as exc:
                result.skipped.append({"path": str(path), "reason": str(exc).removeprefix(f"{path}: ")})
        headers: list[dicom.DicomHeader] = []
        for path, header in zip(candidates, _read_headers(candidates, workers), strict=True):
            if isinstance(header, str):
                result.skipped.append({"path": str(path), "reason": header})
            else:
                headers.append(header)
        _add_series(result, base, headers, want, allow_gaps)
    _make_ids_unique(result.volumes, seen_ids)
    return result


def _header_or_reason(path: Path) -> dicom.DicomHeader | str:
    try:
        return dicom.read_header(path)
    except VolumeError as exc:
        return str(exc).removeprefix(f"{path}: ")


def _read_headers(paths: list[Path], workers: int) -> list[dicom.DicomHeader | str]:
    """Each file's header, or the reason it is not usable DICOM; in input order."""
    if workers <= 1 or len(paths) < 64:
        return [_header_or_reason(p) for p in paths]
    import multiprocessing as mp
    import sys
    from concurrent.futures import ProcessPoolExecutor

    # fork unless torch is loaded (forking an initialised torch is unsafe).
    method = "fork" if "fork" in mp.get_all_start_methods() and "torch" not in sys.modules else "spawn"
    with ProcessPoolExecutor(workers, mp_context=mp.get_context(method)) as pool:
        return list(pool.map(_header_or_reason, paths, chunksize=max(16, len(paths) // (8 * workers))))


def _add_series(result: ScanResult, base: Path, headers: list[dicom.DicomHeader], want: str,
                allow_gaps: bool) -> None:
    series = dicom.group_series(headers)
    by_folder: dict[str, int] = {}
    for members in series.values():
        folder = os.path.commonpath([str(Path(h.path).parent) for h in members])
        by_folder[folder] = by_folder.get(folder, 0) + 1
    for uid, members in series.items():
        folder = os.path.commonpath([str(Path(h.path).parent) for h in members])
        modality = members[0].modality
        if want != "ANY" and modality != want:
            result.skipped.append({
                "path": folder,
                "reason": f"series {uid} has modality {modality or 'unknown'} "
                f"({len(members)} files), not {want}; use --modality any to include it",
            })
            continue
        vid = _volume_id(base, Path(folder))
        if by_folder[folder] > 1:
            vid = f"{vid}#{uid[-12:]}"
        try:
            result.volumes.append(dicom.order_series(vid, members, allow_gaps=allow_gaps))
        except VolumeError as exc:
            result.errors.append({"volume_id": vid, "source": folder, "error": str(exc)})


def _make_ids_unique(volumes: list[VolumeSource], seen: set[str]) -> None:
    import dataclasses

    for i, vol in enumerate(volumes):
        vid, k = vol.volume_id, 1
        while vid in seen:
            k += 1
            vid = f"{vol.volume_id}~{k}"
        seen.add(vid)
        if vid != vol.volume_id:
            volumes[i] = dataclasses.replace(vol, volume_id=vid)


def load(source: VolumeSource) -> Volume:
    """Read the pixel data of a scanned volume; raises VolumeError naming the file and reason."""
    reader = {"dicom": dicom.read_series, "nifti": single.read_nifti, "sitk": single.read_sitk}
    try:
        volume = reader[source.format](source)
    except VolumeError:
        raise
    except MemoryError as exc:
        raise VolumeError(f"{source.source}: out of memory reading {source.n_slices} slices") from exc
    except Exception as exc:
        raise VolumeError(f"{source.source}: {type(exc).__name__}: {exc}") from exc
    if volume.n_slices == 0:
        raise VolumeError(f"{source.source}: volume has no slices")
    return volume


def read_volume(path: str | os.PathLike, *, modality: str = "any", allow_gaps: bool = False) -> Volume:
    """Read one volume: a NIfTI/NRRD/MHA/... file or a folder holding exactly one DICOM series."""
    found = scan([path], modality=modality, allow_gaps=allow_gaps)
    if found.errors:
        raise VolumeError(found.errors[0]["error"])
    if len(found.volumes) != 1:
        detail = "; ".join(f"{s['path']}: {s['reason']}" for s in found.skipped[:3])
        raise VolumeError(
            f"{path}: expected one volume, found {len(found.volumes)}"
            + (f" (skipped: {detail})" if detail else "")
        )
    return load(found.volumes[0])

