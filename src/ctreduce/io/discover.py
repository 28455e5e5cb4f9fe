"""Find the volumes under input paths and read them: the one entry point for every format."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from itertools import chain
from pathlib import Path
from stat import S_ISREG
from typing import Any, Protocol

import numpy as np

from . import dicom, single
from .dicom_header import settled
from .volume import Volume, VolumeError, VolumeSource, hu_array

# Files that are never volumes; listed as skipped with this reason, not parsed.
_NOT_VOLUMES = {
    ".txt", ".md", ".json", ".xml", ".csv", ".tsv", ".html", ".pdf", ".py", ".yaml", ".yml",
    ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".zip", ".gz", ".tar", ".parquet",
}
# Pixel-data companions of header files (.mhd -> .raw, .nhdr -> .raw.gz, ...).
_DATA_FILES = {".raw", ".zraw", ".img"}


@dataclass
class ScanResult:
    """Volumes found (in deterministic input order) and everything skipped, with reasons.

    Every file reached is accounted for once: in a volume, under ``skipped`` (``path``, ``reason``;
    a skipped series also lists its files under ``paths``) or in an error (``volume_id``,
    ``source``, ``error``, and the files of the failed volume under ``paths``).
    """

    volumes: list[VolumeSource] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    headers: HeaderCache = field(default_factory=dict)  # every DICOM candidate's header or reason
    stats: dict[str, tuple[int, int]] = field(default_factory=dict)  # every file walked: (size, mtime_ns)
    digest: str = ""  # of the walk (``Listing.digest``)
    headers_read: int = 0  # DICOM headers read from disk (not found in the header cache)
    # With ``scan(slices=...)``: what the scan's one read of each file gave, for the volumes whose every
    # slice it read (keyed by the volume's first path; ids may still change to be unique)
    read: dict[str, ReadSlices] = field(default_factory=dict)


@dataclass(frozen=True)
class ReadSlices:
    """What the scan computed from the pixels of one volume's slices, in slice order: the bytes its
    ``SliceFunction`` returned per slice, and each file's (size, mtime_ns) at the walk, before it was read."""

    features: np.ndarray  # (slices, nbytes) uint8
    stats: np.ndarray  # (slices, 2) int64


class SliceFunction(Protocol):
    """What a scan computes from each single-frame slice as it reads its header (picklable: it runs in the
    scan's worker processes): a fixed number of bytes from the slice's HU values."""

    nbytes: int

    def __call__(self, hu: np.ndarray) -> np.ndarray: ...


# path -> (size, mtime_ns, header or the reason the file is not usable DICOM)
HeaderCache = dict[str, tuple[int, int, "dicom.DicomHeader | str"]]


@dataclass
class _Seen:
    """Real paths already reached, over all inputs, mapped to the path that reached them first."""

    folders: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)


@dataclass
class Listing:
    """Every file under the inputs with its size and mtime (one ``stat`` each), before any is read.

    ``digest`` covers every path, size, mtime and skip reason, so equal digests mean that no file
    was added, removed, replaced or touched: a complete run can be recognised from it alone.
    """

    roots: list[tuple[Path, list[str], list[dict[str, Any]]]]  # (input, files, skipped) per input
    stats: dict[str, tuple[int, int]]  # path -> (size, mtime_ns)
    digest: str


def walk(inputs: Sequence[str | os.PathLike]) -> Listing:
    """List (and stat) every file under ``inputs``; FileNotFoundError for a missing input."""
    seen = _Seen()
    stats: dict[str, tuple[int, int]] = {}
    roots = []
    for raw in inputs:
        root = Path(raw)
        if not root.exists():
            raise FileNotFoundError(f"{root}: no such file or folder")
        if not _is_utf8(str(root)):
            raise ValueError(f"{printable(str(root))}: the name is not valid UTF-8 (bytes shown as \\xNN); rename it")
        skipped: list[dict[str, Any]] = []
        files = _collect(root, seen, skipped, stats)
        if not files and not skipped:
            skipped.append({"path": str(root), "reason": "empty folder"})
        roots.append((root, files, skipped))
    digest = hashlib.sha1()
    for root, files, skipped in roots:  # a line at a time: the listing's lines together held ~0.3 KB a file
        digest.update(f"input {root}".encode())
        for line in chain((f"{p}\0{stats[p][0]}\0{stats[p][1]}" for p in files),
                          (f"skip {s['path']}\0{s['reason']}" for s in skipped)):
            digest.update(b"\n" + line.encode())
    return Listing(roots, stats, digest.hexdigest())


def _collect(root: Path, seen: _Seen, skipped: list[dict[str, Any]],
             stats: dict[str, tuple[int, int]]) -> list[str]:
    """The files under ``root`` (or ``root`` itself) not reached before, in sorted order; their
    (size, mtime_ns) go to ``stats``.

    Symlinked folders are followed once: a folder or file reached again (a second link, an
    overlapping input such as ``/tree /tree/patient000``) or a link back to one of its own
    ancestors (a loop) is listed under ``skipped``, as are empty files, broken links and
    anything that is not a regular file (a FIFO would block the reader).
    """
    files: list[str] = []  # strings, not Paths: a Path costs ~20 us to make, 5x a stat

    def add_file(path: str, real: str, entry: os.DirEntry | None = None, reached_by_name: bool = False) -> None:
        """``reached_by_name``: a plain file in a folder listed once (no other path reaches it but a link, or an
        input naming the file), so it is not recorded: the parent then holds no string per file for this."""
        first = seen.files.get(real)
        if first is None and not reached_by_name:
            folder, name = os.path.split(real)
            if folder in seen.folders:  # its folder is listed (or being listed): the file is reached there
                first = os.path.join(seen.folders[folder], name)
            else:
                seen.files[real] = path
        if first is not None:
            skipped.append({"path": path, "reason": f"same file as {first}, already scanned"})
            return
        try:
            stat = entry.stat() if entry is not None else os.stat(path)
        except OSError as exc:
            reason = f"broken symbolic link to {os.readlink(path)}" if os.path.islink(path) else exc.strerror
            skipped.append({"path": path, "reason": reason or type(exc).__name__})
            return
        if not S_ISREG(stat.st_mode):
            skipped.append({"path": path, "reason": "not a regular file"})
        elif stat.st_size == 0:
            skipped.append({"path": path, "reason": "empty file (0 bytes)"})
        else:
            files.append(path)
            stats[path] = (stat.st_size, stat.st_mtime_ns)

    def visit(folder: str, ancestors: frozenset[str]) -> None:
        real = os.path.realpath(folder)
        if real in ancestors:
            skipped.append({"path": folder, "reason": f"symbolic link loop: leads back to {real}, "
                            "a folder that contains it"})
            return
        if real in seen.folders:
            skipped.append({"path": folder, "reason": f"same folder as {seen.folders[real]}, already scanned"})
            return
        seen.folders[real] = folder
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            skipped.append({"path": folder, "reason": f"cannot list folder ({exc.strerror or exc})"})
            return
        folders = []
        prefix = real if real.endswith(os.sep) else real + os.sep
        for entry in entries:
            if not _is_utf8(entry.name):  # every output (manifest, journal, names) holds text: say it here, once
                skipped.append({"path": printable(entry.path),
                                "reason": "name is not valid UTF-8 (its bytes shown as \\xNN): rename it to reduce it"})
            elif _is_dir(entry):
                folders.append(entry.path)
            elif entry.is_symlink():  # realpath only for links: it costs a system call per path component
                add_file(entry.path, os.path.realpath(entry.path), entry)
            else:
                add_file(entry.path, prefix + entry.name, entry, reached_by_name=True)
        for sub in folders:
            visit(sub, ancestors | {real})

    if root.is_dir():
        visit(str(root), frozenset())
    else:
        add_file(str(root), os.path.realpath(root))
    return files


def _is_utf8(name: str) -> bool:
    """False for a name with bytes that are not UTF-8 (Python holds them as surrogates, which no text file
    or Parquet column can store)."""
    try:
        name.encode()
    except UnicodeEncodeError:
        return False
    return True


def printable(path: str) -> str:
    """``path`` as text any output can hold: bytes that are not UTF-8 shown as ``\\xNN``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows symbolic links
    except OSError:
        return False


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
    header_cache: HeaderCache | None = None,
    listing: Listing | None = None,
    slices: SliceFunction | None = None,
    progress: Callable[[int], None] | None = None,
) -> ScanResult:
    """Find every volume under ``inputs`` (files or folders) from headers alone.

    DICOM files are grouped by SeriesInstanceUID across each input; only series whose Modality
    equals ``modality`` are kept (``"any"`` keeps all). Series that cannot be ordered (duplicate
    positions, missing slices unless ``allow_gaps``) are returned under ``errors``. An exception
    while reading one file or one series never stops the scan: it becomes that file's skip
    reason or that series' error. A file reached twice (links, overlapping inputs) counts once,
    for the first input that reaches it.
    Raises FileNotFoundError for an input path that does not exist. With ``workers`` > 1 the
    DICOM headers are read in parallel (reading them is most of a scan's time). A file whose size
    and mtime equal its entry in ``header_cache`` (the ``headers`` of an earlier scan) is not read.
    ``listing``: the ``walk`` of these inputs when the caller already has it.
    ``slices``: each DICOM file not in the cache is opened once, for its header and its pixels, and
    ``slices`` computed from the slice's HU values there; a volume whose every slice was so read (the
    same HU dtype kind, the same position as scanned) gets the results under ``read``.
    ``progress`` is called with 1 for every file read (not for those the cache holds).
    """
    result = ScanResult()
    want = modality.upper()
    listing = listing if listing is not None else walk(inputs)
    roots: list[tuple[Path, ScanResult, list[str]]] = []
    for root, files, skipped in listing.roots:
        part = ScanResult(skipped=list(skipped))  # this input's single-file volumes and skips, in order
        base = root if root.is_dir() else root.parent
        candidates: list[str] = []  # the walk's strings: a Path a file costs ~0.4 KB more, held to the end
        for name in files:
            try:
                if not _add_single_file(part, base, name):
                    candidates.append(name)
            except Exception as exc:
                reason = str(exc).removeprefix(f"{name}: ") if isinstance(exc, VolumeError) else _describe(exc)
                part.skipped.append({"path": name, "reason": reason})
        roots.append((base, part, candidates))
    # One pass (and one worker pool) over the DICOM candidates of every input.
    every = [path for _, _, candidates in roots for path in candidates]
    headers_or_reasons, result.headers_read, computed = _read_headers(every, listing.stats, workers, header_cache,
                                                                      result.headers, slices, progress)
    read = iter(headers_or_reasons)
    for base, part, candidates in roots:
        result.volumes += part.volumes
        result.skipped += part.skipped
        headers: list[dicom.DicomHeader] = []
        for name in candidates:
            header = next(read)
            if isinstance(header, str):
                result.skipped.append({"path": name, "reason": header})
            else:
                headers.append(header)
        _add_series(result, base, headers, want, allow_gaps)
    if computed is not None:
        result.read = _read_volumes(result.volumes, every, computed, listing.stats)
    _make_ids_unique(result)
    result.stats, result.digest = listing.stats, listing.digest
    return result


def _add_single_file(result: ScanResult, base: Path, file: str) -> bool:
    """Add a file that is not DICOM (a volume or a skip); False for a DICOM candidate. Told apart by name, as
    text: a ``Path`` a file costs ~20 us, and its parts stay in the interpreter's table of interned strings."""
    name = os.path.basename(file).lower()
    written = os.path.splitext(os.path.basename(file))[1].rstrip(".")  # as ``Path.suffix`` has it
    suffix = written.lower()
    if name.endswith(single.NIFTI_SUFFIXES):
        path = Path(file)
        vid = _volume_id(base, path.with_name(single._strip_suffix(path, single.NIFTI_SUFFIXES)))
        result.volumes.append(single.nifti_source(path, vid))
    elif name.endswith(single.SITK_SUFFIXES):
        path = Path(file)
        vid = _volume_id(base, path.with_name(single._strip_suffix(path, single.SITK_SUFFIXES)))
        result.volumes.append(single.sitk_source(path, vid))
    elif suffix in _DATA_FILES or name.endswith(".raw.gz"):
        result.skipped.append({"path": file, "reason": "pixel-data file of a header file"})
    elif suffix in _NOT_VOLUMES or name.startswith("."):
        result.skipped.append({"path": file, "reason": f"not a volume format ({written or name})"})
    else:
        return False
    return True


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _header_or_reason(path: str) -> dicom.DicomHeader | str:
    try:
        return dicom.read_header(path)
    except VolumeError as exc:
        return str(exc).removeprefix(f"{path}: ")
    except Exception as exc:  # read_header converts everything; this keeps a worker alive regardless
        return _describe(exc)


def _read_once(path: str, slices: SliceFunction) -> tuple[dicom.DicomHeader | str, bytes | None]:
    """A file's header (or reason) and, for a single-frame slice whose pixels could be read, one record:
    its HU dtype kind (1 integer, 2 float), its position along its own normal (NaN without geometry:
    float64) and ``slices`` of its HU values."""
    header, pixels = dicom.read_once(path)
    if pixels is None or isinstance(header, str):
        return header, None
    try:
        arr, lut, (slope, intercept) = pixels
        hu = lut if lut is not None else hu_array(arr[None], np.array([slope]), np.array([intercept]),
                                                  in_place=True)[0]
        z = float("nan")
        if header.position is not None and header.orientation is not None:
            z = sum(p * n for p, n in zip(header.position, dicom._unit_normal(header.orientation), strict=True))
        kind = 2 if hu.dtype.kind == "f" else 1
        return header, bytes([kind]) + np.float64(z).tobytes() + np.ascontiguousarray(slices(hu), np.uint8).tobytes()
    except Exception:  # the volume's worker reads the file again and says what is wrong
        return header, None


_RECORD = 9  # bytes of a ``_read_once`` record before ``slices``'s own


def _read_volumes(volumes: list[VolumeSource], paths: list[str], computed: list[bytes | None],
                  stats: dict[str, tuple[int, int]]) -> dict[str, ReadSlices]:
    """``ReadSlices`` of each single-frame DICOM volume whose every slice was read by the scan, with one HU
    dtype kind (as ``read_series`` would make one array of them) and where its header placed it."""
    row = {p: k for k, p in enumerate(paths) if computed[k] is not None}
    out: dict[str, ReadSlices] = {}
    for source in volumes:
        if source.format != "dicom" or source.frames or not all(p in row for p in source.paths):
            continue
        records = np.frombuffer(b"".join(computed[row[p]] for p in source.paths),  # type: ignore[misc]
                                dtype=np.uint8).reshape(source.n_slices, -1)
        kinds = records[:, 0]
        z = records[:, 1:_RECORD].copy().view(np.float64)[:, 0]
        moved = np.abs(z - np.asarray(source.z_mm)) > dicom.DUPLICATE_TOL_MM  # as ``read_series`` checks it
        if kinds.min() != kinds.max() or moved.any():
            continue  # read again by its worker, which says what is wrong or makes one array of them
        out[source.paths[0]] = ReadSlices(records[:, _RECORD:].copy(),
                                          np.array([stats[p] for p in source.paths], dtype=np.int64))
    return out


# The libraries that read each format (``VolumeSource.format``): ~0.2 s of CPU to import each
_READERS = {"dicom": ("pydicom.filereader", "pydicom.pixels"), "nifti": ("nibabel",), "sitk": ("SimpleITK",)}


def preload_readers(formats: Iterable[str]) -> None:
    """Import the readers of these formats in this process, before it forks workers: they then start with
    them, where each would import them again (~0.2 s of CPU a worker and a format)."""
    for name in {f.partition("-")[0] for f in formats}:
        for module in _READERS.get(name, ()):
            importlib.import_module(module)


def _read_headers(paths: list[str], known: dict[str, tuple[int, int]], workers: int, cache: HeaderCache | None,
                  seen: HeaderCache, slices: SliceFunction | None = None,
                  progress: Callable[[int], None] | None = None
                  ) -> tuple[list[dicom.DicomHeader | str], int, list[bytes | None] | None]:
    """Each file's header, or the reason it is not usable DICOM; in input order. A file whose size
    and mtime (``known``, from the walk) equal its ``cache`` entry is not read again; every result
    is added to ``seen``. Also returns how many were read from disk, and with ``slices`` each file's
    ``_read_once`` record (None for a file not read now or without one)."""
    stats = [known[p] for p in paths]
    results: list[dicom.DicomHeader | str | None] = [None] * len(paths)
    misses = []
    for k, (path, stat) in enumerate(zip(paths, stats, strict=True)):
        hit = cache.get(path) if cache else None
        if hit is not None and hit[:2] == stat:
            results[k] = hit[2]
        else:
            misses.append(k)
    todo = [paths[k] for k in misses]
    job = _header_or_reason if slices is None else partial(_read_once, slices=slices)
    read = []
    if workers <= 1 or len(todo) < 64:
        for path in todo:
            read.append(job(path))
            if progress is not None:
                progress(1)
    else:
        from ..core.workers import pool

        preload_readers(["dicom"])
        with pool(workers) as executor:
            chunks = executor.map(job, todo, chunksize=max(16, min(512, len(todo) // (8 * workers))))
            for path, one in zip(todo, chunks, strict=True):
                header = one[0] if slices is not None else one
                if not isinstance(header, str):
                    settled(header, path)
                read.append(one)
                if progress is not None:
                    progress(1)
    computed: list[bytes | None] | None = None
    if slices is not None:
        computed = [None] * len(paths)
        for k, (header, record) in zip(misses, read, strict=True):
            results[k], computed[k] = header, record
    else:
        for k, header in zip(misses, read, strict=True):
            results[k] = header
    for path, stat, header in zip(paths, stats, results, strict=True):
        seen[path] = (*stat, header)
    return results, len(todo), computed  # type: ignore[return-value]


def _add_series(result: ScanResult, base: Path, headers: list[dicom.DicomHeader], want: str,
                allow_gaps: bool) -> None:
    groups = dicom.group_series(headers)
    folders = {key: os.path.commonpath([str(Path(h.path).parent) for h in members])
               for key, members in groups.items()}
    # Single-frame series sharing a folder get the end of their UID in their id; a multi-frame
    # file is named by its own path.
    per_folder = Counter(folder for (_, multiframe), folder in folders.items() if not multiframe)
    for (uid, multiframe), members in groups.items():
        paths = [h.path for h in members]
        source = multiframe or folders[(uid, multiframe)]
        modality = members[0].modality
        if want != "ANY" and modality != want:
            result.skipped.append({
                "path": source,
                "reason": f"series {uid} has modality {modality or 'unknown'} "
                f"({len(members)} files), not {want}; use --modality any to include it",
                "paths": paths,
            })
            continue
        vid = _volume_id(base, Path(source))
        if not multiframe and per_folder[source] > 1:
            vid = f"{vid}#{uid[-12:]}"
        try:
            if multiframe:
                result.volumes.append(dicom.order_frames(vid, members[0], allow_gaps=allow_gaps))
            else:
                placed, left_out = dicom.place_slices(members, allow_gaps=allow_gaps)
                result.volumes.append(dicom.order_series(vid, placed, allow_gaps=allow_gaps, left_out=left_out))
                result.skipped += [{"path": path, "reason": f"left out of series {uid} ({reason})"}
                                   for path, reason in left_out]
        except Exception as exc:
            error = str(exc) if isinstance(exc, VolumeError) else f"{source}: {_describe(exc)}"
            result.errors.append({"volume_id": vid, "source": source, "error": error, "paths": paths})


def _make_ids_unique(result: ScanResult) -> None:
    """Give every volume and every failed volume its own id (``~2``, ``~3``... on collisions).

    Volumes are numbered first, so a failing series never changes the id of a good volume.
    """
    seen: set[str] = set()

    def unique(vid: str) -> str:
        k, candidate = 1, vid
        while candidate in seen:
            k += 1
            candidate = f"{vid}~{k}"
        seen.add(candidate)
        return candidate

    result.volumes = [dataclasses.replace(v, volume_id=unique(v.volume_id)) for v in result.volumes]
    for error in result.errors:
        error["volume_id"] = unique(error["volume_id"])


def load(source: VolumeSource, slices: Sequence[int] | None = None, *, allow_gaps: bool | None = None) -> Volume:
    """Read the pixel data of a scanned volume; raises VolumeError naming the file and reason.

    With ``slices`` (indices in anatomical order), the Volume holds only those slices, in that
    order; a single-frame DICOM series then reads only their files (an export of the ~10% of
    slices a reduction keeps reads ~10% of the series).
    ``allow_gaps``: a slice of a DICOM series whose pixels cannot be read is left out instead of
    failing the volume; it is named in the warnings and its index is missing from
    ``Volume.slice_index``. Default: as the series was scanned (``source.allow_gaps``) for a whole
    volume, never for ``slices`` (an export gets exactly the slices it asks for, or an error).
    """
    if slices is not None:
        index = [int(i) for i in slices]
        if any(not 0 <= i < source.n_slices for i in index):
            raise VolumeError(f"{source.source}: slice index out of range 0..{source.n_slices - 1}")
        if source.format == "dicom" and not source.frames:
            subset = dataclasses.replace(
                source, paths=tuple(source.paths[i] for i in index), n_slices=len(index),
                sop_uids=tuple(source.sop_uids[i] for i in index) if source.sop_uids else (),
                z_mm=tuple(source.z_mm[i] for i in index) if source.z_mm else ())
            volume = load(subset, allow_gaps=bool(allow_gaps))
            return dataclasses.replace(volume, slice_index=np.asarray(index, dtype=np.int64)[volume.slice_index])
        whole = load(source)
        if any(i >= whole.n_slices for i in index):
            raise VolumeError(f"{source.source}: has {whole.n_slices} slices now, {source.n_slices} when scanned")
        return dataclasses.replace(whole, hu=whole.hu[index], z_mm=whole.z_mm[index],
                                   slice_sources=tuple(whole.slice_sources[i] for i in index),
                                   slice_index=np.asarray(index, dtype=np.int64))
    try:
        if source.format == "dicom":
            gaps = source.allow_gaps if allow_gaps is None else allow_gaps
            volume = dicom.read_frames(source) if source.frames else dicom.read_series(source, allow_gaps=gaps)
        else:
            volume = {"nifti": single.read_nifti, "sitk": single.read_sitk}[source.format](source)
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
    """Read one volume: a NIfTI/NRRD/MHA/... file or a folder holding exactly one DICOM series.

    ``allow_gaps``: a series with missing slices is read, and a slice that cannot be placed or read
    is left out (named in ``Volume.warnings``) instead of failing the volume.
    """
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

