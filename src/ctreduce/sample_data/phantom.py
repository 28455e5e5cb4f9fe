"""Synthetic CT phantoms and writers for DICOM, NIfTI and NRRD/MHA.

The phantom is a crude thorax/upper abdomen in Hounsfield units: air, a body with a fat rim,
two lungs with texture and vessels, a heart, a liver, the aorta and a vertebral column with
intervertebral discs. It serves as test and benchmark data and as synthetic data for
pre-training and downstream tasks (``lesion=True`` adds a lung nodule).

Anatomy is defined on a fixed craniocaudal template in physical millimetres and the scanned
range is centred on it, so every shape changes smoothly with the slice position z = k * thickness:
thin slices are near-duplicates and thick slices differ more, the redundancy that slice
reduction exploits.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from pathlib import Path

import numpy as np

HU_MIN, HU_MAX = -1024, 3071
FOV_MM = 350.0
TEMPLATE_MM = 300.0  # craniocaudal length of the anatomy template; 0 = inferior end
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"

AIR, FAT, SOFT, LIVER, BLOOD, LUNG, CSF, NODULE = -1000, -100, 40, 60, 45, -850, 15, 40
DISC, CANCELLOUS, CORTEX = 80, 700, 1100


def _profile(p: np.ndarray | float, lo: float, hi: float, skew: float = 1.0) -> np.ndarray:
    """Radius factor in [0, 1] of an ellipsoid-like organ spanning [lo, hi] mm along z.

    ``skew`` < 1 moves the widest cross-section towards ``lo`` (lungs are widest at the base).
    """
    s = np.clip((np.asarray(p, dtype=np.float64) - lo) / (hi - lo), 0.0, 1.0) ** skew
    return 2.0 * np.sqrt(s * (1.0 - s))


def _paint(img: np.ndarray, coords: np.ndarray, cx: float, cy: float, a: float, b: float,
           value: float | np.ndarray) -> None:
    """Blend ``value`` into ``img`` inside the ellipse (cx, cy, a, b), all in mm.

    ``coords`` are the ascending pixel-centre positions shared by rows and columns.
    Edges get a one-pixel partial-volume ramp so that a radius changing with z changes the
    image continuously instead of in whole-pixel steps. Only the ellipse's bounding box is
    touched, which keeps small structures cheap. ``value`` may be a full-slice array.
    """
    # Python floats keep the arithmetic in float32 (NumPy scalars would promote to float64).
    cx, cy, a, b = float(cx), float(cy), float(a), float(b)
    if a <= 0.0 or b <= 0.0:
        return
    if not isinstance(value, np.ndarray):
        value = float(value)
    ps = float(coords[1] - coords[0])
    c0, c1 = np.searchsorted(coords, [cx - a - ps, cx + a + ps])
    r0, r1 = np.searchsorted(coords, [cy - b - ps, cy + b + ps])
    if c0 >= c1 or r0 >= r1:
        return
    q = ((coords[c0:c1] - cx) / a) ** 2 + ((coords[r0:r1, None] - cy) / b) ** 2
    # Approximate signed distance to the outline in mm, turned into a coverage fraction.
    weight = np.clip(0.5 + (1.0 - np.sqrt(q)) * (min(a, b) / ps), 0.0, 1.0)
    if isinstance(value, np.ndarray):
        value = value[r0:r1, c0:c1]
    region = img[r0:r1, c0:c1]
    region += weight * (value - region)


def make_phantom(n_slices: int = 64, size: int = 128, slice_thickness: float = 2.5,
                 pixel_spacing: float | None = None, noise_hu: float = 10.0, seed: int = 0,
                 lesion: bool = False) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Return (hu, spacing): hu int16 array (n_slices, size, size) in Hounsfield units,
    slices ordered inferior->superior; spacing = (slice_thickness, row_mm, col_mm).

    Rows run anterior -> posterior and columns patient right -> left (radiological display).
    ``seed`` drives both the noise and a mild per-"patient" variation of the anatomy. With
    ``lesion`` a round nodule (+40 HU, radius 3-8 mm) is placed in the lateral half of a lung,
    on a slice where that lung is wide.
    """
    if n_slices < 1 or size < 2 or slice_thickness <= 0:
        raise ValueError("need n_slices >= 1, size >= 2 and slice_thickness > 0")
    ps = FOV_MM / size if pixel_spacing is None else float(pixel_spacing)
    rng = np.random.default_rng(seed)

    # Per-patient anatomy, drawn before anything optional so the noise stream never depends
    # on ``lesion``.
    a0, b0 = 150.0 * rng.uniform(0.9, 1.1), 105.0 * rng.uniform(0.9, 1.1)
    rim = rng.uniform(8.0, 18.0)
    body_phase = rng.uniform(0.0, 2.0 * np.pi)
    z_shift = rng.uniform(-10.0, 10.0)
    lung_dx, lung_dy = rng.uniform(-5.0, 5.0, size=2)
    heart_dx, heart_dy = rng.uniform(-8.0, 8.0, size=2)
    liver_dx, liver_dy = rng.uniform(-8.0, 8.0, size=2)
    disc_phase = rng.uniform(0.0, 30.0)
    # Lung texture: plane waves with 15-40 mm wavelength, so the texture also varies along z.
    n_waves = 3
    wave_k = 2.0 * np.pi / rng.uniform(15.0, 40.0, size=n_waves)
    wave_dir = rng.normal(size=(n_waves, 3))
    wave_dir /= np.linalg.norm(wave_dir, axis=1, keepdims=True)
    wave_vec = wave_dir * wave_k[:, None]
    wave_phase = rng.uniform(0.0, 2.0 * np.pi, size=n_waves)
    # Vessels: per lung, fractional positions that rotate slowly with z.
    n_vessels = 6
    ves_frac = rng.uniform(0.2, 0.75, size=(2, n_vessels))
    ves_angle = rng.uniform(0.0, 2.0 * np.pi, size=(2, n_vessels))
    ves_twist = rng.uniform(-1.0, 1.0, size=(2, n_vessels)) * 2.0 * np.pi / 200.0
    ves_radius = rng.uniform(1.0, 2.5, size=(2, n_vessels))
    lesion_u = rng.uniform(size=5)

    z = np.arange(n_slices) * float(slice_thickness)
    p = z - z[-1] / 2.0 + TEMPLATE_MM / 2.0 + z_shift  # template position of each slice
    # Pixel centres in mm: columns run to patient left, rows to posterior.
    coords = ((np.arange(size) - (size - 1) / 2.0) * ps).astype(np.float32)
    # cos(kx*x + ky*y + c) = cos(kx*x)cos(ky*y + c) - sin(kx*x)sin(ky*y + c): the texture is a
    # rank-2*n_waves matrix product, far cheaper than evaluating cosines on the whole slice.
    kx_x = np.outer(wave_vec[:, 0], coords)
    tex_cols = np.concatenate([np.cos(kx_x), np.sin(kx_x)]).astype(np.float32)

    a = a0 * (1.0 + 0.04 * np.sin(2.0 * np.pi * p / 400.0 + body_phase))
    b = b0 * (1.0 + 0.04 * np.cos(2.0 * np.pi * p / 500.0 + body_phase))
    lung_w = _profile(p, 120.0, 310.0, skew=0.6)
    heart_w = _profile(p, 110.0, 215.0)
    liver_w = _profile(p, -30.0, 150.0)
    # Vertebral bodies every 30 mm with discs in between; tanh keeps the transition smooth.
    bone = 0.5 + 0.5 * np.tanh(3.0 * (np.cos(2.0 * np.pi * (p - disc_phase) / 30.0) + 0.6))

    # Lung centres and semi-axes per slice; index 0 = right lung (image left), 1 = left lung.
    side = np.array([-1.0, 1.0])
    lung_cx = side * 0.5 * a0 + lung_dx
    lung_cy = -0.05 * b0 + lung_dy
    lung_ax = np.array([0.36, 0.32])[:, None] * a0 * lung_w
    lung_by = 0.7 * b0 * lung_w

    nodule = None
    if lesion:
        # The scan is centred at mid-thorax (template 140-160 mm), so some slice has lung.
        candidates = np.flatnonzero(lung_w >= 0.6 * lung_w.max())
        k = candidates[min(int(lesion_u[0] * candidates.size), candidates.size - 1)]
        s = int(lesion_u[1] < 0.5)
        theta = (lesion_u[2] - 0.5) * np.pi  # lateral half of the lung, clear of the heart
        r = 0.5 * np.sqrt(lesion_u[3])
        nodule = (
            z[k],
            lung_cx[s] + side[s] * r * np.cos(theta) * lung_ax[s, k],
            lung_cy + r * np.sin(theta) * lung_by[k],
            3.0 + 5.0 * lesion_u[4],
        )

    spine_cy = 0.62 * b0
    out = np.empty((n_slices, size, size), dtype=np.int16)
    img = np.empty((size, size), dtype=np.float32)
    for k in range(n_slices):
        img.fill(AIR)
        _paint(img, coords, 0.0, 0.0, a[k], b[k], FAT)
        _paint(img, coords, 0.0, 0.0, a[k] - rim, b[k] - rim, SOFT)
        _paint(img, coords, -0.33 * a0 + liver_dx, -0.05 * b0 + liver_dy, 0.5 * a0 * liver_w[k],
               0.7 * b0 * liver_w[k], LIVER)
        _paint(img, coords, 20.0, spine_cy - 32.0, 11.0, 11.0, BLOOD)  # aorta
        if lung_w[k] > 0.0:
            row_phase = np.outer(coords, wave_vec[:, 1]) + (wave_vec[:, 2] * z[k] + wave_phase)
            tex_rows = np.concatenate([np.cos(row_phase), -np.sin(row_phase)], axis=1)
            lung_hu = LUNG + 12.0 * (tex_rows.astype(np.float32) @ tex_cols)
            for s in range(2):
                cx, ax, by = lung_cx[s], lung_ax[s, k], lung_by[k]
                _paint(img, coords, cx, lung_cy, ax, by, lung_hu)
                angle = ves_angle[s] + ves_twist[s] * z[k]
                # Vessels shrink with the lung so they stay inside it near base and apex.
                for f, t, rv in zip(ves_frac[s], angle, ves_radius[s] * lung_w[k], strict=True):
                    vx, vy = cx + f * ax * np.cos(t), lung_cy + f * by * np.sin(t)
                    _paint(img, coords, vx, vy, rv, rv, BLOOD)
        _paint(img, coords, 0.12 * a0 + heart_dx, -0.3 * b0 + heart_dy, 45.0 * heart_w[k],
               38.0 * heart_w[k], BLOOD)
        # Vertebra: body (cortical ring around cancellous bone, or disc), arch, canal, process.
        _paint(img, coords, 0.0, spine_cy, 17.0, 15.0, DISC + bone[k] * (CORTEX - DISC))
        _paint(img, coords, 0.0, spine_cy, 14.0, 12.0, DISC + bone[k] * (CANCELLOUS - DISC))
        _paint(img, coords, 0.0, spine_cy + 24.0, 12.0, 11.0, CORTEX)
        _paint(img, coords, 0.0, spine_cy + 24.0, 7.0, 7.0, CSF)
        _paint(img, coords, 0.0, spine_cy + 42.0, 4.0, 9.0, CORTEX)
        if nodule is not None and abs(z[k] - nodule[0]) < nodule[3]:
            rz = float(np.sqrt(nodule[3] ** 2 - (z[k] - nodule[0]) ** 2))
            _paint(img, coords, nodule[1], nodule[2], rz, rz, NODULE)
        if noise_hu > 0:
            img += noise_hu * rng.standard_normal(img.shape, dtype=np.float32)
        np.rint(img, out=img)
        np.clip(img, HU_MIN, HU_MAX, out=img)
        out[k] = img
    return out, (float(slice_thickness), ps, ps)


def _unique_uid() -> str:
    """A random UID of always 64 characters, so that two series of one shape have files of one size
    (``generate_uid()`` alone draws a number that is shorter one time in ten)."""
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[secrets.token_hex(16)])


def write_dicom_series(hu: np.ndarray, spacing: Sequence[float], folder: str | Path, *,
                       series_uid: str | None = None, modality: str = "CT",
                       shuffle_names: bool = True, seed: int = 0, patient_id: str = "PHANTOM",
                       rescale_intercept: float = -1024.0,
                       transfer_syntax: str | None = None) -> list[Path]:
    """Write one single-frame CT Image Storage file per slice; return the paths in slice order.

    Slice k sits at z = k * thickness. To exercise readers, InstanceNumber runs opposite to
    the position (as on scanners that number from the head) and, with ``shuffle_names``, the
    file names follow a seeded permutation that never sorts in anatomical order. Stored values
    are unsigned 16-bit: stored = hu - rescale_intercept. ``transfer_syntax`` None means
    Explicit VR Little Endian; compressed syntaxes are encoded with ``Dataset.compress``
    (RLE Lossless works with pydicom alone).
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian

    hu = np.asarray(hu)
    if hu.ndim != 3:
        raise ValueError(f"expected a (slices, rows, cols) array, got shape {hu.shape}")
    stored = np.rint(hu.astype(np.float64) - rescale_intercept)
    if stored.min() < 0 or stored.max() > 65535:
        raise ValueError("hu - rescale_intercept does not fit unsigned 16-bit stored values")
    stored = stored.astype(np.uint16)
    syntax = UID(transfer_syntax or ExplicitVRLittleEndian)
    if syntax == ExplicitVRBigEndian:
        raise ValueError("big endian transfer syntax is not supported")

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n, rows, cols = stored.shape
    thickness, row_mm, col_mm = (float(v) for v in spacing)
    order = np.arange(n)
    if shuffle_names:
        order = np.random.default_rng(seed).permutation(n)
        if n > 1 and np.all(np.diff(order) > 0):
            order = order[::-1]
    series_uid = series_uid or _unique_uid()
    study_uid = _unique_uid()
    frame_uid = _unique_uid()
    x0, y0 = -(cols - 1) / 2.0 * col_mm, -(rows - 1) / 2.0 * row_mm

    paths = []
    for k in range(n):
        path = folder / f"IM{order[k]:04d}.dcm"
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = _unique_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian if syntax.is_compressed else syntax
        ds = FileDataset(path, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = CT_IMAGE_STORAGE
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.PatientID = patient_id
        ds.PatientName = patient_id
        ds.Modality = modality
        ds.Manufacturer = "ctreduce phantom"
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        ds.SeriesNumber = 1
        ds.InstanceNumber = n - k
        z = k * thickness
        ds.ImagePositionPatient = [x0, y0, z]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceLocation = z
        ds.SliceThickness = thickness
        ds.PixelSpacing = [row_mm, col_mm]
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = rescale_intercept
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        if syntax.is_compressed:
            ds.compress(syntax, stored[k], generate_instance_uid=False)
        else:
            ds.PixelData = stored[k].tobytes()
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_nifti(hu: np.ndarray, spacing: Sequence[float], path: str | Path) -> Path:
    """Write an int16 NIfTI-1 file (.nii or .nii.gz) with data[i, j, k] = hu[k, j, i].

    The affine is diag(col_mm, row_mm, thickness), so the third voxel axis points superior.
    """
    import nibabel as nib

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    thickness, row_mm, col_mm = (float(v) for v in spacing)
    data = np.ascontiguousarray(np.transpose(np.asarray(hu, dtype=np.int16), (2, 1, 0)))
    img = nib.Nifti1Image(data, np.diag([col_mm, row_mm, thickness, 1.0]))
    img.header.set_data_dtype(np.int16)
    img.header.set_zooms((col_mm, row_mm, thickness))
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))
    return path


def write_nrrd(hu: np.ndarray, spacing: Sequence[float], path: str | Path) -> Path:
    """Write the volume with SimpleITK (.nrrd, .mha, .mhd, ...): origin 0, identity direction."""
    import SimpleITK as sitk

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    thickness, row_mm, col_mm = (float(v) for v in spacing)
    image = sitk.GetImageFromArray(np.asarray(hu))  # array order (z, y, x)
    image.SetSpacing((col_mm, row_mm, thickness))
    image.SetOrigin((0.0, 0.0, 0.0))
    image.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    sitk.WriteImage(image, str(path))
    return path


def make_archive(root: str | Path, n_volumes: int = 3,
                 formats: Sequence[str] = ("dicom", "nifti", "nrrd"), n_slices: int = 40,
                 size: int = 64, slice_thickness: float = 2.5, seed: int = 0) -> list[Path]:
    """Write ``n_volumes`` phantoms (seed + i) cycling through ``formats``; return their paths.

    Volume i goes to ``root/patient{i:03d}/series/`` (DICOM, the folder is returned),
    ``root/patient{i:03d}.nii.gz`` or ``root/patient{i:03d}.nrrd``.
    """
    root = Path(root)
    unknown = set(formats) - {"dicom", "nifti", "nrrd"}
    if unknown or not formats:
        raise ValueError(f"formats must be a non-empty subset of dicom/nifti/nrrd, got {formats}")
    paths = []
    for i in range(n_volumes):
        hu, spacing = make_phantom(n_slices, size, slice_thickness, seed=seed + i)
        fmt, name = formats[i % len(formats)], f"patient{i:03d}"
        if fmt == "dicom":
            folder = root / name / "series"
            write_dicom_series(hu, spacing, folder, seed=seed + i, patient_id=name)
            paths.append(folder)
        elif fmt == "nifti":
            paths.append(write_nifti(hu, spacing, root / f"{name}.nii.gz"))
        else:
            paths.append(write_nrrd(hu, spacing, root / f"{name}.nrrd"))
    return paths
