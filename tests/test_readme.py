"""The README and the guides in ``docs/``, executed: every ``ctreduce`` command of their ``sh`` blocks and
the README's Python API block run on generated data, in document order, so that a documented command
cannot break unnoticed.

Each document runs in a scratch folder of its own, and each command as a user types it (the venv's
``ctreduce`` entry point, in that folder, so relative paths such as ``runs/hash6`` land there): a guide
creates what its commands read, as a reader following it would. Only three things change, all listed
here:

* the example data (``/data/...``) is replaced by small generated data (:data:`DATA`);
* options that size the machine are replaced (:data:`REPLACE_VALUES`, e.g. ``--devices 4`` -> 1);
* pretrain/finetune/evaluate get tiny settings appended (:data:`TINY_SETTINGS`: 1 epoch, ResNet-18, 32 px).

What a document assumes without creating it is made by :func:`prepare`: the runs ``compare`` names (the
document's own first reduce line with the method changed), the file of ``pretrain --config`` (the
document's ```yaml block that starts with ``# <file name>``), and a stand-in for torchvision's ImageNet
weights in a private ``$TORCH_HOME`` (this machine cannot download).

Every command must exit 0 without a traceback and write what it says it writes. A command the test
cannot run (an unknown sub-command, an absolute path with no generated stand-in) fails the test, unless
:data:`EXCEPTIONS` names it with a reason. Failures are collected and reported together, one per
document line, so one broken command does not hide the others. Links between the documents (files and
``#anchors``) are checked too.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCUMENTS = [README, *sorted((ROOT / "docs").glob("*.md"))]
CTREDUCE = str(Path(sys.executable).with_name("ctreduce"))
TIMEOUT_S = 300

# Machine-sized options: the documents' values on a 2-core CPU machine would only cost time.
REPLACE_VALUES = {"--workers": "2", "--devices": "1"}

# Appended to every command of the sub-command (explicit values override presets, YAML and the document's;
# a repeated option's last value wins).
TINY_SETTINGS = {
    "evaluate": ["--bootstrap", "20"],
    "pretrain": ["--epochs", "1", "--batch-size", "8", "backbone=resnet18", "input_size=32", "num_workers=0",
                 "swav.local_crop_size=16"],
    "finetune": ["epochs=1", "head_only_epochs=0", "backbone=resnet18", "input_size=32", "batch_size=8",
                 "num_workers=0", "bootstrap=20"],
}



def samples_cached() -> bool:
    from ctreduce.sample_data.real_ct import sample_paths

    return all(p.is_file() for p in sample_paths())


# Command lines of any document (comments stripped) that may be left unrun: the reason, and a check
# that says when they run anyway. Keep this small.
EXCEPTIONS: dict[str, tuple[str, Callable[[], bool]]] = {
    # The only command that needs the network: it runs when the sample CTs are already cached
    # (by `make demo` or the test suite's sample fixture), and is left out otherwise.
    "ctreduce samples": ("downloads the sample CTs from the package index", samples_cached),
}

# Lines of sh blocks that are not ctreduce commands: Makefile targets (what `make demo` and `make test`
# run is tested elsewhere) and installing by hand (what the Makefile does).
OTHER_LINES = ("make ", "pip install ")

# --- the documents ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    lineno: int  # 1-based line number in the document
    text: str  # the command without its trailing comment
    doc: Path = README

    def where(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.lineno}: `{self.text}`"


def fenced_blocks(language: str, doc: Path = README) -> list[tuple[int, list[str]]]:
    """(line number of the block's first line, its lines) for every ```language block of a document."""
    blocks, inside = [], None  # inside: (language, first line number, lines) of the open block
    for number, raw in enumerate(doc.read_text().splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("```"):
            if inside is None:
                inside = (stripped[3:].strip(), number + 1, [])
            else:
                if inside[0] == language:
                    blocks.append((inside[1], inside[2]))
                inside = None
        elif inside is not None:
            inside[2].append(raw)
    return blocks


def shell_lines(doc: Path = README) -> list[Line]:
    """Every command line of a document's sh blocks (continuations joined, comments stripped)."""
    lines = []
    for start, block in fenced_blocks("sh", doc):
        pending, first = "", 0
        for offset, raw in enumerate(block):
            if not pending:
                first = start + offset
            pending += raw.rstrip()
            if pending.endswith("\\"):
                pending = pending[:-1] + " "
                continue
            text = shlex.join(shlex.split(pending, comments=True))
            pending = ""
            if text:
                lines.append(Line(first, text, doc))
    return lines


def readme_commands(doc: Path = README) -> list[Line]:
    """The ctreduce command lines of a document's sh blocks, in order."""
    return [line for line in shell_lines(doc) if line.text.startswith("ctreduce ")]


def test_readme_has_the_documented_commands() -> None:
    """The parser finds the commands (else the test below would pass vacuously): the README's main ones,
    and together with the guides every sub-command this test checks; every sh line of every document is
    a ctreduce command, a Makefile target or an install line."""
    commands = readme_commands()
    subcommands = {shlex.split(c.text)[1] for c in commands}
    assert {"scan", "reduce", "export", "report", "compare", "pretrain", "finetune", "evaluate"} <= subcommands, (
        subcommands)
    everywhere = [c for doc in DOCUMENTS for c in readme_commands(doc)]
    assert set(CHECKS) <= {shlex.split(c.text)[1] for c in everywhere}, "a sub-command no document runs"
    others = [line.where() for doc in DOCUMENTS for line in shell_lines(doc)
              if not line.text.startswith("ctreduce ") and not line.text.startswith(OTHER_LINES)]
    assert not others, f"sh lines that are neither ctreduce commands nor make/pip lines (run them here): {others}"
    assert not set(EXCEPTIONS) - {c.text for c in everywhere}, "EXCEPTIONS names a command no document has"


def github_anchor(heading: str) -> str:
    """The #fragment GitHub gives a Markdown heading: lower case, punctuation but - and _ dropped,
    spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_between_documents_resolve() -> None:
    """Every relative link of the README and the guides names a file of the checkout and, with a
    #fragment, a heading of that file."""
    problems = []
    for doc in DOCUMENTS:
        text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)  # links are not read inside code blocks
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            path, _, fragment = target.partition("#")
            file = (doc.parent / path).resolve() if path else doc
            name = str(file.relative_to(ROOT)) if file.is_relative_to(ROOT) else str(file)
            if not file.exists():
                problems.append(f"{doc.relative_to(ROOT)}: link to {target}: no such file")
                continue
            headings = [github_anchor(h) for h in re.findall(r"^#+ (.+)$", file.read_text(), re.M)]
            if fragment and file.suffix == ".md" and fragment not in headings:
                problems.append(f"{doc.relative_to(ROOT)}: link to {target}: no heading #{fragment} in {name}")
    assert not problems, "\n".join(problems)


# --- generated stand-ins for the README's example data ------------------------------------------


def make_lidc(path: Path) -> None:
    """Six phantom CTs (DICOM, NIfTI, NRRD): Hash-6 keeps 15 of their 120 slices, enough for batch 8."""
    from ctreduce.sample_data.phantom import make_archive

    make_archive(path, n_volumes=6, n_slices=20, size=48, slice_thickness=5.0)


def make_covid_ct(path: Path) -> None:
    from ctreduce.downstream.synthetic import make_lesion_task

    make_lesion_task(path, format="covid_ct", n_per_class=5, size=32, n_slices=8)


def make_brain(path: Path) -> None:
    """Class sub-folders (a_without, b_with) of PNGs, as the paper's brain haemorrhage data."""
    from ctreduce.downstream.synthetic import make_lesion_task

    make_lesion_task(path, format="folder", n_per_class=5, size=32, n_slices=8)


def make_organsmnist(path: Path) -> None:
    """An OrganSMNIST-format file: its 11 classes in every split (the flag's class names need all 11;
    the synthetic lesion task has 2), 28x28 uint8 images, labels (N, 1) as MedMNIST ships them."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, per_class in {"train": 2, "val": 1, "test": 1}.items():
        labels = np.repeat(np.arange(11, dtype=np.uint8), per_class)[:, None]
        arrays[f"{split}_images"] = rng.integers(0, 256, (len(labels), 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = labels
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)


def make_second_collection(path: Path) -> None:
    """Another collection holding two of make_lidc's scans again (the same phantoms, DICOM and NIfTI):
    the same scan stored twice, for ``duplicates`` and ``--scope archive``."""
    from ctreduce.sample_data.phantom import make_archive

    make_archive(path, n_volumes=2, n_slices=20, size=48, slice_thickness=5.0)


# Document path -> generator writing its stand-in at the given path (called once, on first use).
DATA: dict[str, Callable[[Path], None]] = {
    "/data/LIDC-IDRI": make_lidc,
    "/data/NSCLC-Radiomics": make_second_collection,
    "/data/COVID-CT": make_covid_ct,
    "/data/medmnist/organsmnist.npz": make_organsmnist,
    "/data/brain": make_brain,
}


def imagenet_stand_in(torch_home: Path, backbone: str) -> None:
    """``--init imagenet`` loads torchvision's ImageNet weights through torch's download cache, and this
    machine cannot download them. A randomly initialised state_dict under the cache file name
    torchvision expects ($TORCH_HOME/hub/checkpoints/<name of the URL>) runs the same code path."""
    import torch
    import torchvision

    url = torchvision.models.get_model_weights(backbone).DEFAULT.url
    target = torch_home / "hub" / "checkpoints" / url.rsplit("/", 1)[-1]
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.save(torchvision.models.get_model(backbone).state_dict(), target)


class Sandbox:
    """A scratch folder: ``cwd`` for the commands, ``inputs`` for generated data (kept outside the
    outputs: an output folder inside an input tree is refused), ``env`` for every subprocess."""

    def __init__(self, root: Path) -> None:
        self.cwd = root / "cwd"
        self.inputs = root / "inputs"
        self.cwd.mkdir(parents=True)
        self.inputs.mkdir()
        self.env = {**os.environ, "TORCH_HOME": str(root / "torch"), "MPLBACKEND": "Agg"}
        self.env.pop("RAY_ADDRESS", None)
        self.ran: list[list[str]] = []  # argv of every command run here, in order

    def data(self, readme_path: str) -> Path:
        target = self.inputs / readme_path.lstrip("/")
        if not target.exists():
            DATA[readme_path](target)
        return target


# --- adapting and running one command ------------------------------------------------------------


def option(argv: list[str], *names: str) -> str | None:
    """The value of the last occurrence of an option (``--out X`` or ``--out=X``)."""
    value = None
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                value = argv[i + 1]
            elif arg.startswith(name + "="):
                value = arg.split("=", 1)[1]
    return value


FLAGS = ("--quiet", "--overwrite", "--allow-changed", "--allow-incomplete", "--allow-gaps", "--json", "--csv",
         "--verify", "--kept-only", "--resume", "--no-resume")


def positionals(argv: list[str]) -> list[str]:
    """Arguments after the sub-command that are neither options, option values nor key=value pairs."""
    out, skip = [], False
    for arg in argv[2:]:
        if skip:
            skip = False
        elif arg.startswith("-"):
            skip = "=" not in arg and arg not in FLAGS
        elif "=" not in arg:
            out.append(arg)
    return out


def adapt(line: Line, box: Sandbox) -> tuple[list[str], list[str]]:
    """The argv to run for a document's line, and the problems that prevent running it faithfully."""
    argv = shlex.split(line.text)
    problems = []
    for i, arg in enumerate(argv):
        if i > 0 and argv[i - 1] in REPLACE_VALUES:
            argv[i] = REPLACE_VALUES[argv[i - 1]]
        elif arg in DATA:
            argv[i] = str(box.data(arg))
        elif arg.startswith("/"):
            problems.append(f"uses {arg}, which this test does not generate: add a stand-in to DATA")
    argv += TINY_SETTINGS.get(argv[1], [])
    argv[0] = CTREDUCE
    return argv, problems


def run(argv: list[str], box: Sandbox) -> tuple[subprocess.CompletedProcess | None, list[str]]:
    try:
        proc = subprocess.run(argv, cwd=box.cwd, env=box.env, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return None, [f"did not finish in {TIMEOUT_S} s"]
    problems = []
    if proc.returncode != 0:
        problems.append(f"exit status {proc.returncode}")
    if "Traceback" in proc.stderr or "Traceback" in proc.stdout:
        problems.append("printed a traceback")
    return proc, problems


def describe(argv: list[str], proc: subprocess.CompletedProcess | None) -> str:
    text = f"\n    ran: {shlex.join(['ctreduce', *argv[1:]])}"
    if proc is not None:
        text += f"\n    stdout: ...{proc.stdout[-1200:]}\n    stderr: ...{proc.stderr[-2500:]}"
    return text


# --- what each command must have written ---------------------------------------------------------


def nonempty(path: Path) -> str | None:
    if not path.is_file():
        return f"{path.name} was not written ({path})"
    if path.stat().st_size == 0:
        return f"{path} is empty"
    return None


def check_scan(argv, box, proc) -> list[str]:
    if "--json" in argv:
        volumes = json.loads(proc.stdout)["volumes"]
        return [] if volumes and all(v["slices"] > 0 for v in volumes) else [f"volumes listed: {volumes}"]
    found = re.search(r"^(\d+) volume\(s\), (\d+) slices", proc.stdout, re.M)
    return [] if found and int(found[1]) > 0 else ["no volumes listed"]


def check_reduce(argv, box, proc) -> list[str]:
    out = box.cwd / option(argv, "--out", "-o")
    problems = [p for p in (nonempty(out / "manifest.parquet"), nonempty(out / "summary.json")) if p]
    if not problems:
        totals = json.loads((out / "summary.json").read_text())["totals"]
        if totals["volumes_reduced"] == 0 or totals["volumes_failed"]:
            problems.append(f"summary.json totals {totals}")
    if box.ran.count(argv) > 1 and "nothing to do" not in proc.stdout:  # the same command again
        problems.append("the rerun of a complete run did not say 'nothing to do'")
    return problems


def check_export(argv, box, proc) -> list[str]:
    from ctreduce.store.export import ExportStore

    out = box.cwd / option(argv, "--out", "-o")
    if problem := nonempty(out / "export.json"):
        return [problem]
    meta = json.loads((out / "export.json").read_text())
    slices = meta["slices"]
    if "--compact" in argv and "compacted" not in proc.stdout:
        return [f"--compact said nothing about compacting: {proc.stdout!r}"]
    if (option(argv, "--format") or (meta["format"] if "--compact" in argv else "png")) == "png":
        found = len(list((out / "images").glob("*.png")))
        return [] if found == slices > 0 else [f"{found} PNGs in {out / 'images'}, export.json says {slices}"]
    shards = sorted((out / "shards").glob("*.npy"))
    if not shards or (problem := next(filter(None, map(nonempty, shards)), None)):
        return [problem or f"no shards in {out / 'shards'}"]
    shape = ExportStore.open(out).array().shape
    size = int(option(argv, "--size") or 224)
    return [] if shape == (slices, size, size) and slices > 0 else [f"the npy export reads as {shape}"]


def check_report(argv, box, proc) -> list[str]:
    """The page states the run's totals and every volume's kept count, as its manifest records them."""
    import html

    import pandas as pd

    run_dir = box.cwd / positionals(argv)[0]
    target = option(argv, "--output", "-o")
    path = box.cwd / target if target else run_dir / "report.html"
    if problem := nonempty(path):
        return [problem]
    page = path.read_text()
    column = option(argv, "--column") or "kept"  # the decision column the page shows
    manifest = pd.read_parquet(run_dir / "manifest.parquet", columns=["volume_id", column])
    expected = [f"kept {int(manifest[column].sum())} of {len(manifest)} slices"]
    expected += [f"{n}. {html.escape(str(vid))} &mdash; kept {int(rows[column].sum())} of {len(rows)} "
                 for n, (vid, rows) in enumerate(manifest.groupby("volume_id", sort=False), 1)]
    problems = [f"{path.name} does not say {line!r}" for line in expected if line not in page]
    if str(path.relative_to(box.cwd)) not in proc.stdout:
        problems.append(f"the command did not print where the report is ({proc.stdout.strip()!r})")
    return problems


def check_compare(argv, box, proc) -> list[str]:
    names = [Path(p).name for p in positionals(argv)]
    missing = [n for n in names if n not in proc.stdout]
    return ([f"runs {missing} not in the table"] if missing else []) + (
        [] if "Jaccard" in proc.stdout else ["no Jaccard overlap printed"])


def check_samples(argv, box, proc) -> list[str]:
    paths = proc.stdout.split()
    return [] if len(paths) >= 2 and all(Path(p).is_file() for p in paths) else [f"printed {paths}"]


def check_pretrain(argv, box, proc) -> list[str]:
    import yaml

    out = option(argv, "--out", "-o")
    if out is None and option(argv, "--config"):
        out = yaml.safe_load((box.cwd / option(argv, "--config")).read_text()).get("out")
    out = box.cwd / out
    problems = [p for p in (nonempty(out / "backbone.pt"), nonempty(out / "summary.json")) if p]
    if not problems and json.loads((out / "summary.json").read_text()).get("epochs_completed", 0) < 1:
        problems.append("summary.json: no epoch completed")
    return problems


def check_finetune(argv, box, proc) -> list[str]:
    out = box.cwd / option(argv, "--out", "-o")
    if problem := nonempty(out / "results.json"):
        return [problem]
    seeds = (option(argv, "--seeds") or "0").split(",")
    missing = [s for s in seeds if not (out / f"seed{s}" / "predictions.csv").is_file()]
    results = json.loads((out / "results.json").read_text())
    return ([f"no predictions for seeds {missing}"] if missing else []) + (
        [] if "accuracy" in results else ["results.json has no accuracy"])


def check_evaluate(argv, box, proc) -> list[str]:
    """results.json and the printed metrics equal accuracy and ROC AUC computed here from every seed's
    saved predictions."""
    import pandas as pd
    import yaml
    from sklearn.metrics import roc_auc_score

    out = box.cwd / positionals(argv)[0]
    if problem := nonempty(out / "results.json"):
        return [problem]
    results = json.loads((out / "results.json").read_text())
    positive = yaml.safe_load((out / "config.yaml").read_text()).get("positive_label", 1)
    seeds = sorted(int(p.parent.name.removeprefix("seed")) for p in out.glob("seed*/predictions.csv"))
    problems = [] if seeds and [r["seed"] for r in results["per_seed"]] == seeds else [
        f"results.json has seeds {[r['seed'] for r in results['per_seed']]}, predictions for {seeds}"]
    accuracy, auc = [], []
    for seed in seeds:
        table = pd.read_csv(out / f"seed{seed}" / "predictions.csv")
        prob = table[[c for c in table.columns if c.startswith("prob_")]].to_numpy()
        accuracy.append(float((prob.argmax(axis=1) == table["label"].to_numpy()).mean()))
        auc.append(float(roc_auc_score(table["label"] == positive, prob[:, positive])))
    for name, values in (("accuracy", accuracy), ("auc", auc)):
        per_seed = [r[name] for r in results["per_seed"]]
        if not np.allclose(per_seed, values) or not np.isclose(results[name]["mean"], np.mean(values)):
            problems.append(f"results.json {name} {per_seed} (mean {results[name]['mean']}), predictions give {values}")
        if f"{name}: {np.mean(values):.3f}" not in proc.stdout:
            problems.append(f"printed {proc.stdout.strip()!r}, not {name} {np.mean(values):.3f}")
    return problems


def check_duplicates(argv, box, proc) -> list[str]:
    from ctreduce.store.curation import DuplicatesFolder

    found = DuplicatesFolder.open(box.cwd / option(argv, "--out", "-o"))
    return [] if found.meta["slices"] > 0 and len(found.slices) == found.meta["slices"] else [
        f"duplicates.json says {found.meta['slices']} slices, slices.parquet has {len(found.slices)}"]


def check_leakage(argv, box, proc) -> list[str]:
    counted = re.findall(r"^\s+(train|val|test)\s*: (\d+) of (\d+) images", proc.stdout, re.M)
    return [] if {s for s, _, n in counted if int(n) > 0} == {"train", "val", "test"} else [
        f"per-split counts not printed: {counted}"]


CHECKS = {"scan": check_scan, "reduce": check_reduce, "export": check_export, "report": check_report,
          "compare": check_compare, "samples": check_samples, "pretrain": check_pretrain,
          "finetune": check_finetune, "evaluate": check_evaluate, "duplicates": check_duplicates,
          "leakage": check_leakage}


# --- inputs a document assumes without creating them ---------------------------------------------


def prepare(argv: list[str], commands: list[Line], box: Sandbox) -> list[str]:
    """Create what a command reads but its document does not create; return problems."""
    problems = []
    if argv[1] == "compare":
        # The README compares runs/all and runs/ssim but never creates them: run the document's own
        # first reduce line with --out set to the missing run and --method to its name (a threshold in
        # Hamming bits means nothing to another method, so it is dropped; one worker: no process pool
        # to start for a set-up step).
        reduce_line = next((c for c in commands if shlex.split(c.text)[1] == "reduce"), None)
        for run_dir in positionals(argv):
            if (box.cwd / run_dir).exists():
                continue
            if reduce_line is None:
                problems.append(f"compares {run_dir}, which no reduce line of the document creates")
                continue
            base, base_problems = adapt(reduce_line, box)
            setup = _without(base, "--out", "--method", "--threshold", "-o", "--workers")
            setup += ["--out", run_dir, "--method", Path(run_dir).name, "--workers", "1", "--quiet"]
            proc, run_problems = run(setup, box)
            if base_problems or run_problems:
                problems.append(f"creating {run_dir}: {base_problems + run_problems}{describe(setup, proc)}")
    config = option(argv, "--config")
    if argv[1] == "pretrain" and config and not (box.cwd / config).exists():
        # A --config example needs a YAML file of the user's: the document shows it, in a ```yaml block
        # whose first line is "# <its name>".
        doc = commands[0].doc
        shown = [b for _, b in fenced_blocks("yaml", doc) if b and b[0].strip() == f"# {config}"]
        if shown:
            (box.cwd / config).write_text("\n".join(shown[0]) + "\n")
        else:
            problems.append(f"{doc.name} shows no ```yaml block starting with '# {config}'")
    if argv[1] == "finetune" and option(argv, "--init") == "imagenet":
        backbone = next((a.split("=", 1)[1] for a in reversed(argv) if a.startswith("backbone=")), "resnet50")
        imagenet_stand_in(Path(box.env["TORCH_HOME"]), backbone)
    return problems


def _without(argv: list[str], *names: str) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in names:
            skip = True
        elif not any(arg.startswith(n + "=") for n in names):
            out.append(arg)
    return out


# --- the tests ----------------------------------------------------------------------------------


@pytest.mark.parametrize("doc", [d for d in DOCUMENTS if readme_commands(d)], ids=lambda d: d.name)
def test_every_readme_command_runs(doc: Path, tmp_path) -> None:
    """Every ctreduce command of the document (the README, a guide), in order, on generated data: exit 0,
    no traceback, its outputs written. Later commands use earlier ones' outputs, as a reader following
    the document."""
    commands = readme_commands(doc)
    box = Sandbox(tmp_path)
    failures, ran, excepted = [], set(), set()
    for line in commands:
        argv, problems = adapt(line, box)
        subcommand = argv[1]
        if line.text in EXCEPTIONS and not EXCEPTIONS[line.text][1]():
            print(f"not run: {line.where()}: {EXCEPTIONS[line.text][0]}")
            excepted.add(line.lineno)
            continue
        if subcommand not in CHECKS:
            failures.append(f"{line.where()}\n    sub-command {subcommand!r} has no check in this test: add one")
            continue
        if problems:
            failures.append(f"{line.where()}\n    " + "; ".join(problems))
            continue
        start = time.perf_counter()
        problems = prepare(argv, commands, box)
        proc, run_problems = run(argv, box)
        box.ran.append(argv)
        print(f"{time.perf_counter() - start:6.1f} s  {line.where()}")  # shown by pytest -s or on failure
        ran.add(line.lineno)
        problems += run_problems
        if proc is not None and proc.returncode == 0:
            problems += CHECKS[subcommand](argv, box, proc)
        if problems:
            failures.append(f"{line.where()}\n    " + "; ".join(problems) + describe(argv, proc))
    # Every command ran or is an exception; the others are among the failures, with the reason.
    not_run = [c.where() for c in commands if c.lineno not in ran | excepted]
    if not_run:
        failures.append("commands not run: " + ", ".join(not_run))
    if failures:
        pytest.fail(f"{len(failures)} problem(s) with the {len(commands)} command(s) of {doc.relative_to(ROOT)}:\n\n"
                    + "\n\n".join(failures), pytrace=False)


# Appended to the README's API block: what its variables hold, for the test to compare with the files.
API_POSTLUDE = """
if "frame" in globals():
    frame.to_parquet("_readme_frame.parquet")
if "result" in globals():
    result.manifest.to_parquet("_readme_manifest.parquet")
"""


def _hash6_kept(u8: np.ndarray) -> list[bool]:
    """The paper's Hash-6 loop on imagehash's dHash, written out: the reference for the API's decisions."""
    import imagehash
    from PIL import Image

    codes = [int(str(imagehash.dhash(Image.fromarray(s))), 16) for s in u8]
    kept, remaining = [False] * len(codes), list(range(len(codes)))
    while remaining:
        ref = remaining.pop(0)
        kept[ref] = True
        remaining = [k for k in remaining if bin(codes[ref] ^ codes[k]).count("1") > 6]
    return kept


def test_readme_python_api_block(tmp_path) -> None:
    """The README's Python API example, with its paths replaced by generated data, runs in a fresh folder;
    what it returns and writes is what the README says: reduce_volume's Hash-6 decisions, the run's
    manifest and summary, the npy export of the kept slices."""
    import pandas as pd

    from ctreduce.io.intensity import Intensity

    blocks = ["\n".join(block) for _, block in fenced_blocks("python") if "import ctreduce" in "\n".join(block)]
    assert blocks, "README has no ```python block with `import ctreduce`"
    from ctreduce.sample_data.phantom import make_phantom, write_nifti, write_nrrd

    box = Sandbox(tmp_path)
    volumes = {}
    for code in blocks:
        for readme_path in DATA:
            if f'"{readme_path}"' in code:
                code = code.replace(f'"{readme_path}"', repr(str(box.data(readme_path))))
        assert not re.findall(r'"(/[^"]*)"', code), "API block uses absolute paths this test does not generate"
        code = re.sub(r"\bworkers=\d+", "workers=2", code)
        for name in re.findall(r'read_volume\("([^"]+)"\)', code):  # a volume of the reader's: a phantom
            hu, spacing = make_phantom(n_slices=12, size=48, slice_thickness=2.5, seed=7)
            (write_nifti if ".nii" in name else write_nrrd)(hu, spacing, box.cwd / name)
            volumes[name] = box.cwd / name
        script = box.cwd / "readme_api.py"
        script.write_text(code + "\n" + API_POSTLUDE)
        proc = subprocess.run([sys.executable, str(script)], cwd=box.cwd, env=box.env, capture_output=True,
                              text=True, timeout=TIMEOUT_S)
        assert proc.returncode == 0, f"README Python block failed:\n{code}\n{proc.stderr[-3000:]}"
    text = "\n".join(blocks)
    if "reduce_volume(" in text:  # one row per slice of the volume read, decided as the paper's Hash-6
        frame = pd.read_parquet(box.cwd / "_readme_frame.parquet")
        from ctreduce import read_volume

        (path,) = volumes.values()
        hu = read_volume(path).hu
        assert frame["slice_index"].tolist() == list(range(len(hu))) and len(hu) == 12
        assert frame["kept"].tolist() == _hash6_kept(Intensity().to_uint8(hu))
    runs = re.findall(r'ctreduce\.reduce\([^,]+, "([^"]+)"', text)
    for name in runs:
        assert nonempty(box.cwd / name / "manifest.parquet") is None, f"API reduce wrote no manifest in {name}"
        manifest = pd.read_parquet(box.cwd / name / "manifest.parquet")
        assert len(manifest) == 6 * 20 and manifest["volume_id"].nunique() == 6  # make_lidc's archive
        totals = json.loads((box.cwd / name / "summary.json").read_text())["totals"]
        assert (totals["slices"], totals["kept"]) == (len(manifest), int(manifest["kept"].sum()))
        returned = pd.read_parquet(box.cwd / "_readme_manifest.parquet")
        columns = ["volume_id", "slice_index", "kept", "dhash"]
        assert returned[columns].values.tolist() == manifest[columns].values.tolist()
    from ctreduce.store.export import ExportStore

    for run_name, name in re.findall(r'ctreduce\.export\("([^"]+)", "([^"]+)"', text):
        assert nonempty(box.cwd / name / "export.json") is None, f"API export wrote nothing in {name}"
        manifest = pd.read_parquet(box.cwd / run_name / "manifest.parquet")
        kept = manifest[manifest["kept"]]
        store = ExportStore.open(box.cwd / name)
        index = store.index
        assert index[["volume_id", "slice_index"]].values.tolist() == kept[["volume_id", "slice_index"]].values.tolist()
        size = int(re.search(r"size=(\d+)", text)[1])
        assert store.array().shape == (len(kept), size, size)
