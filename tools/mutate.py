"""Mutation testing of ctreduce, one module at a time, driven by the `make check` tier (mutmut 3).

    python tools/mutate.py src/ctreduce/reduction/leader.py            # one module (always rerun)
    python tools/mutate.py                                             # every module changed since its run
    python tools/mutate.py --retest src/ctreduce/reduction/leader.py   # only its recorded survivors, after new tests
    python tools/mutate.py --list                                      # modules, recorded scores, changed or not

Each module runs in its own scratch folder (.mutation/work/<module>, not committed) whose
pyproject.toml mutates that module only; mutmut copies the sources there, maps every `make check`
test to the functions it calls, and runs each mutant against the tests that call the mutated
function. The result is recorded in .mutation/scores.json (committed) with the module's git blob
hash, so `make mutate` without a module reruns only modules whose content changed.

Score: killed (a test failed, or the mutant made a test time out) over all mutants less those listed
as equivalent in .mutation/equivalent.json (a mutant that no test can tell apart from the original,
with the reason; each entry also holds the mutated line, so an entry that no longer describes its
mutant is not counted). Surviving and untested mutants are printed with their diffs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STATE = ROOT / ".mutation"
SCORES = STATE / "scores.json"
EQUIVALENT = STATE / "equivalent.json"
WORK = STATE / "work"
# What the tests read besides src/ and tests/ (README commands, configs, benchmarks' docs).
LINKED = ("src", "tests", "README.md", "configs", "docs", "benchmarks", "Makefile", ".ci")
# The value types, reading, storing, reducing (but the DeepNet backbone), exporting, curating, downstream metrics,
# the fine-tuning protocol and the views made on the device.
PACKAGES = ("core", "io", "store", "reduction", "exporting", "curate")
SINGLE = ("src/ctreduce/downstream/metrics.py", "src/ctreduce/downstream/protocol.py",
          "src/ctreduce/ssl/batch_views.py")
EXCLUDED = ("src/ctreduce/reduction/deepnet.py",)
KILLED = {1, 3, 36, 24, -24, 152, 255, -9, -11}  # mutmut exit codes: a test failed, timed out or crashed
SURVIVED = {0}
NO_TESTS = {5, 33}


def modules() -> list[str]:
    """Every module under mutation testing, as repository-relative paths."""
    found = [str(p.relative_to(ROOT)) for pkg in PACKAGES for p in sorted((ROOT / "src/ctreduce" / pkg).glob("*.py"))]
    found += list(SINGLE)
    # __init__.py files hold docstrings and re-exports (pyproject's do_not_mutate leaves them out too).
    return [m for m in found if m not in EXCLUDED and not m.endswith("/__init__.py") and (ROOT / m).stat().st_size > 0]


def dotted(module: str) -> str:
    return module.removeprefix("src/").removesuffix(".py").replace("/", ".")


def blob(module: str) -> str:
    """The module's git blob hash (the same for the same content, committed or not)."""
    return subprocess.run(["git", "hash-object", module], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()


def load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def scratch(module: str) -> Path:
    """A fresh folder for ``module``: links to the sources and tests, a pyproject.toml mutating only it."""
    folder = WORK / dotted(module)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for name in LINKED:
        if (ROOT / name).exists():
            (folder / name).symlink_to(ROOT / name)
    text = (ROOT / "pyproject.toml").read_text()
    text, n = re.subn(r"(?ms)^only_mutate = \[.*?\]$", f"only_mutate = [{json.dumps(module)}]", text)
    if n != 1:
        sys.exit("pyproject.toml: [tool.mutmut] has no 'only_mutate = [...]' to narrow to one module")
    (folder / "pyproject.toml").write_text(text)
    return folder


def run(module: str, children: int, names: list[str] | None = None) -> tuple[Path, dict[str, int | None]]:
    """Mutate ``module`` and test every mutant (or only ``names``); the scratch folder and exit codes."""
    folder = scratch(module)
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    # Tests import the mutated copy (mutmut puts mutants/src first); subprocesses they start (the CLI)
    # run the unmutated package, so only in-process tests can kill a mutant.
    targets = names or [f"{dotted(module)}.*"]
    command = [sys.executable, "-m", "mutmut", "run", "--max-children", str(children), *targets]
    print(f"== {module}: mutmut run on {len(names) if names else 'every'} mutant(s) (in {folder.relative_to(ROOT)})",
          flush=True)
    proc = subprocess.run(command, cwd=folder, env=env)
    meta = folder / "mutants" / (module + ".meta")
    if proc.returncode != 0 or not meta.exists():
        sys.exit(f"{module}: mutmut failed (exit {proc.returncode}); see its output above")
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    return folder, {name: codes[name] for name in names} if names else codes


def show(folder: Path, name: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "mutmut", "show", name], cwd=folder, capture_output=True, text=True)
    return proc.stdout.strip()


def added_line(diff: str) -> str:
    """The mutated line of a mutmut diff (its first added line, stripped)."""
    return next((line[1:].strip() for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")),
                "")


def summarise(module: str, folder: Path, codes: dict[str, int | None], base: dict | None = None) -> dict:
    """The module's record from the exit codes of its mutants; with ``base`` (a retest of its survivors),
    the mutants killed or found equivalent before are kept."""
    equivalent = load(EQUIVALENT)
    counts = {"mutants": len(codes), "killed": 0, "survived": 0, "no_tests": 0, "other": 0, "equivalent": 0}
    if base is not None:
        counts.update(mutants=base["mutants"], killed=base["killed"], equivalent=base["equivalent"])
    survivors, stale = [], []
    for name, code in sorted(codes.items()):
        if code in KILLED:
            counts["killed"] += 1
            continue
        diff = show(folder, name)
        entry = equivalent.get(name)
        if entry is not None and entry["line"] == added_line(diff):
            counts["equivalent"] += 1
            continue
        if entry is not None:
            stale.append(name)
        kind = "survived" if code in SURVIVED else "no_tests" if code in NO_TESTS else "other"
        counts[kind] += 1
        survivors.append({"mutant": name, "status": kind if kind != "other" else f"exit {code}", "diff": diff})
    counted = counts["mutants"] - counts["equivalent"]
    record = {"blob": blob(module), "date": datetime.date.today().isoformat(), **counts,
              "score": round(counts["killed"] / counted, 4) if counted else 1.0,
              "survivors": [s["mutant"] for s in survivors]}
    for s in survivors:
        print(f"\n-- {s['mutant']} ({s['status']})\n{s['diff']}")
    for name in stale:
        print(f"\n!! {name}: listed as equivalent, but its mutated line changed; review .mutation/equivalent.json")
    print(f"\n{module}: {counts['killed']} killed of {counted} non-equivalent mutants ({record['score']:.1%}); "
          f"{counts['equivalent']} equivalent, {len(survivors)} not killed")
    return record


def record(module: str, result: dict) -> None:
    scores = load(SCORES)
    scores[module] = result
    SCORES.parent.mkdir(exist_ok=True)
    SCORES.write_text(json.dumps(dict(sorted(scores.items())), indent=1) + "\n")


def stale(scores: dict) -> list[str]:
    return [m for m in modules() if scores.get(m, {}).get("blob") != blob(m)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("module", nargs="?", help="a module path such as src/ctreduce/reduction/hamming_index.py")
    parser.add_argument("--list", action="store_true", help="print the modules, recorded scores and staleness")
    parser.add_argument("--retest", action="store_true",
                        help="test only the module's recorded survivors again (its content unchanged, tests added)")
    parser.add_argument("--max-children", type=int, default=2, help="mutants tested in parallel (default 2)")
    args = parser.parse_args()
    scores = load(SCORES)
    if args.list:
        out_of_date = set(stale(scores))
        for m in modules():
            s = scores.get(m)
            figure = f"{s['killed']}/{s['mutants'] - s['equivalent']} = {s['score']:.1%}" if s else "not run"
            print(f"{m:45s} {figure:22s} {'changed since' if m in out_of_date and s else ''}")
        return
    if args.retest and not args.module:
        parser.error("--retest needs a module")
    if args.module:
        module = str(Path(args.module).resolve().relative_to(ROOT)) if Path(args.module).exists() else args.module
        if module not in modules():
            sys.exit(f"{args.module}: not a module under mutation testing; they are:\n  " + "\n  ".join(modules()))
        targets = [module]
    else:
        targets = stale(scores)
        if not targets:
            print("every module's recorded mutation run is up to date (python tools/mutate.py --list)")
            return
        print(f"{len(targets)} module(s) changed since their recorded run: {', '.join(targets)}")
    if args.retest:
        (module,) = targets
        base = scores.get(module)
        if base is None or base["blob"] != blob(module):
            sys.exit(f"{module}: changed since its recorded run (or never run): run it whole")
        if base["survivors"]:
            folder, codes = run(module, args.max_children, base["survivors"])
            record(module, summarise(module, folder, codes, base))
        return
    for module in targets:  # one at a time; each is recorded as soon as it finishes
        record(module, summarise(module, *run(module, args.max_children)))


if __name__ == "__main__":
    main()
