"""Peak memory of ``ctreduce.read_volume``: this checkout against an earlier commit.

Target: reading a volume raises the process's peak RSS above the interpreter's (measured after the
imports and a warm-up read of a tiny volume of the same format) by no more than 2x the volume's
int16 size. Each case runs in its own process: the peak is reset (``/proc/self/clear_refs``, else
``ru_maxrss`` is the peak since start-up), the volume is read, and VmHWM (the peak resident set,
file pages of a memory map included) is compared with the resident set before the read. The HU of
both checkouts are compared (dtype and a digest of the values).

    python benchmarks/bench_read_memory.py [--slices 600] [--size 512] [--ref ee6644a]

Cases: int16 NIfTI in HU (.nii, .nii.gz), NIfTI stored as uint16 with an intercept (scaled),
float32 NIfTI, int16 NRRD and MHA (SimpleITK), and a DICOM series (uint16 + RescaleIntercept).
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from machine import cpu_model, load_line  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CHILD = r"""
import gc, hashlib, json, re, resource, sys
sys.path.insert(0, sys.argv[1])
import numpy as np, nibabel, pydicom, SimpleITK  # noqa: F401  (the interpreter's baseline includes them)
from ctreduce.io.discover import read_volume

def status(key):
    match = re.search(key + r":\s+(\d+)", open("/proc/self/status").read())
    return int(match.group(1)) * 1024 if match else None

read_volume(sys.argv[3])  # warm-up: lazily imported readers and codecs
gc.collect()
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # peak RSS := current RSS
    reset = True
except OSError:
    reset = False
before = status("VmRSS")
volume = read_volume(sys.argv[2])
peak = status("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
hu = np.ascontiguousarray(volume.hu)
digest = hashlib.sha1(hu.tobytes()).hexdigest()
print(json.dumps({"before": before, "peak": peak, "dtype": str(hu.dtype), "shape": list(hu.shape), "digest": digest,
                  "z": hashlib.sha1(volume.z_mm.tobytes()).hexdigest(), "reset": reset}))
"""


def write_cases(root: Path, n: int, size: int) -> dict[str, tuple[Path, Path]]:
    """(volume, tiny volume of the same kind) per case, written once."""
    import nibabel as nib

    from ctreduce.sample_data.phantom import make_phantom, write_dicom_series, write_nifti, write_nrrd

    done = root / f".complete-{n}-{size}"
    cases = {
        "nifti int16 (.nii)": "vol.nii", "nifti int16 (.nii.gz)": "vol.nii.gz",
        "nifti uint16 + intercept": "scaled.nii", "nifti float32": "float.nii",
        "nrrd int16 (SimpleITK)": "vol.nrrd", "mha int16 (SimpleITK)": "vol.mha", "dicom series": "dicom",
    }
    paths = {name: (root / "big" / f, root / "tiny" / f) for name, f in cases.items()}
    if done.exists():
        return paths
    for kind, (slices, px) in {"big": (n, size), "tiny": (4, 16)}.items():
        hu, spacing = make_phantom(n_slices=slices, size=px, slice_thickness=1.0, seed=1)
        folder = root / kind
        write_nifti(hu, spacing, folder / "vol.nii")
        write_nifti(hu, spacing, folder / "vol.nii.gz")
        affine = np.diag([spacing[2], spacing[1], spacing[0], 1.0])
        stored = np.transpose((hu.astype(np.int32) + 1024).astype(np.uint16), (2, 1, 0))
        scaled = nib.Nifti1Image(stored, affine)
        scaled.header.set_data_dtype(np.uint16)
        scaled.header.set_slope_inter(1.0, -1024.0)
        nib.save(scaled, str(folder / "scaled.nii"))
        del stored, scaled
        nib.save(nib.Nifti1Image(np.transpose(hu, (2, 1, 0)).astype(np.float32) + 0.5, affine),
                 str(folder / "float.nii"))
        write_nrrd(hu, spacing, folder / "vol.nrrd")
        write_nrrd(hu, spacing, folder / "vol.mha")
        write_dicom_series(hu, spacing, folder / "dicom")
        del hu
    done.touch()
    return paths


def old_source(ref: str, where: Path) -> Path:
    """The ``src`` folder of commit ``ref``, extracted once (``git archive``: no worktree is added)."""
    target = where / ref
    if not (target / "src").is_dir():
        data = subprocess.run(["git", "-C", str(REPO), "archive", ref, "src"], capture_output=True,
                              check=True).stdout
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            tar.extractall(target, filter="data")
    return target / "src"


def measure(src: Path, path: Path, tiny: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(src), str(path), str(tiny)], capture_output=True,
                         text=True)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=600)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--ref", default="ee6644a", help="commit to compare with (default: before this work)")
    parser.add_argument("--data", type=Path, default=Path(".cache/bench-read-memory"))
    args = parser.parse_args(argv)
    print("ctreduce read_volume peak-memory benchmark")
    print(f"machine   {cpu_model()} | {load_line()}")
    cases = write_cases(args.data, args.slices, args.size)
    int16_mib = args.slices * args.size * args.size * 2 / 2**20
    print(f"volume    {args.slices} x {args.size} x {args.size} ({int16_mib:.0f} MiB as int16); growth of the "
          "peak RSS over the RSS before the read, in MiB and in units of the int16 size (target <= 2.00x)")
    sources = {"this checkout": REPO / "src", f"ref {args.ref}": old_source(args.ref, (args.data / "ref").resolve())}
    print(f"{'case':26} {'dtype':8} " + " ".join(f"{name:>22}" for name in sources) + "  same HU")
    for name, (path, tiny) in cases.items():
        results = {label: measure(src, path, tiny) for label, src in sources.items()}
        cells = []
        for r in results.values():
            growth = (r["peak"] - r["before"]) / 2**20
            cells.append(f"{growth:8.0f} MiB = {growth / int16_mib:5.2f}x")
        first, *rest = results.values()
        same = all(r["digest"] == first["digest"] and r["dtype"] == first["dtype"] and r["z"] == first["z"]
                   for r in rest)
        print(f"{name:26} {first['dtype']:8} " + " ".join(f"{c:>22}" for c in cells) + f"  {'yes' if same else 'NO'}")
    print(f"after: {load_line()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
