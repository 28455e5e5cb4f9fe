"""COVID-CT (UCSD-AI4H/COVID-CT) in the layout of its public release, with its official split lists."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .data import SPLITS, DownstreamData, Split, read_images
from .spec import DataError

COVID_FOLDERS = {"COVID": "CT_COVID", "NonCOVID": "CT_NonCOVID"}


def _read_list(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"{path}: split file missing (COVID-CT layout: Data-split/COVID/trainCT_COVID.txt, ...)")
    names = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines()]
    names = [n for n in names if n]
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise DataError(f"{path}: lists {n!r} more than once")
        seen.add(n)
    return names


def load_covid_ct(root: str | Path, *, covid_label: int = 0, name: str = "covid_ct",
                  skipped: list[dict[str, str]] | None = None) -> DownstreamData:
    """COVID-CT as released by UCSD-AI4H (github.com/UCSD-AI4H/COVID-CT):

    ``root/Images-processed/CT_COVID/*`` and ``CT_NonCOVID/*`` (unzipped), with the official
    split lists ``root/Data-split/COVID/{train,val,test}CT_COVID.txt`` and
    ``root/Data-split/NonCOVID/{train,val,test}CT_NonCOVID.txt`` (one file name per line; the
    official sizes are 425/118/203). Exactly the listed images are loaded; a listed name missing
    on disk is an error (matched case-insensitively if the exact name is absent), as is a name in
    two splits. Labels as in the paper: COVID 0, NonCOVID 1; ``covid_label=1`` swaps them.
    """
    if covid_label not in (0, 1):
        raise DataError(f"covid_label must be 0 or 1, got {covid_label!r}")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: COVID-CT root folder not found")
    image_root = root / "Images-processed"
    labels = {"COVID": covid_label, "NonCOVID": 1 - covid_label}
    folders: dict[str, Path] = {}
    for group, folder_name in COVID_FOLDERS.items():
        folder = image_root / folder_name
        if not folder.is_dir():
            zipped = image_root / f"{folder_name}.zip"
            hint = f"; unzip {zipped} there first" if zipped.exists() else " (expected the unzipped release folder)"
            raise DataError(f"{folder}: image folder missing{hint}")
        folders[group] = folder
    parts: dict[str, tuple[list[Path], list[int], list[str]]] = {s: ([], [], []) for s in SPLITS}
    owner: dict[str, str] = {}
    for group, folder in folders.items():
        on_disk = {p.name: p for p in folder.iterdir() if p.is_file()}
        lowered = {n.lower(): p for n, p in on_disk.items()}
        for split in SPLITS:
            list_path = root / "Data-split" / group / f"{split}CT_{group}.txt"
            missing = []
            for file_name in _read_list(list_path):
                path = on_disk.get(file_name) or lowered.get(file_name.lower())
                if path is None:
                    missing.append(file_name)
                    continue
                key = f"{folder.name}/{path.name}"
                if key in owner:
                    raise DataError(f"{list_path}: {file_name!r} is also listed in the {owner[key]} split")
                owner[key] = split
                parts[split][0].append(path)
                parts[split][1].append(labels[group])
                parts[split][2].append(key)
            if missing:
                more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
                raise DataError(f"{list_path}: {len(missing)} listed image(s) not found in {folder}: "
                                f"{', '.join(repr(m) for m in missing[:3])}{more}")
    splits = {s: Split(read_images(paths, skipped), np.asarray(lab, dtype=np.int64), names)
              for s, (paths, lab, names) in parts.items()}
    classes = ["COVID", "NonCOVID"] if covid_label == 0 else ["NonCOVID", "COVID"]
    data = DownstreamData(splits["train"], splits["val"], splits["test"], classes, name, str(root),
                          notes=["official Data-split lists"])
    return data.validate()
