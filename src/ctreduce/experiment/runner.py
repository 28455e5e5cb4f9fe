"""``ctreduce experiment CONFIG.yaml``: the paper's whole grid, cached stage by stage.

For every cell (pre-training dataset x reduction x SSL method x downstream task) the runner
executes reduce -> export -> pretrain -> finetune. Every stage lives in
``OUT/cache/<stage>/<key>/`` where the key hashes the stage's settings and its upstream keys,
and is marked finished by ``done.json`` (the folder's layout is :mod:`ctreduce.store.experiment`'s);
a rerun (after a crash, or with one more cell) runs only what is missing and never recomputes or
deletes a finished stage. Reduction and pre-training
also resume inside a stage. Results: ``OUT/results.csv``, ``OUT/results.md`` (the paper's
table) and ``OUT/plots/*.png``.

Every training stage of one invocation runs with the same torch thread count, chosen once at the start
(:func:`grid_threads`) and recorded per cell; the speed-up compares pre-training CPU seconds, beside the
images each cell saw, so that cells are compared on the work done, not on how busy the machine was.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from ..config import FinetuneConfig, ReduceConfig, make_pretrain_config
from ..core.devices import ThreadPolicy, thread_policy
from ..core.validation import checked, describe
from ..store.experiment import (
    ARCHIVE,
    EXPORT,
    LEAKAGE,
    RUN,
    TASK,
    ExperimentFolder,
    done,
    mark_done,
    write_pretrain_settings,
)
from ..store.export import ExportError, ExportStore
from ..store.finetune import FinetuneRun
from ..store.places import check_output_place
from ..store.pretrain import PretrainRun
from ..store.run import RunFolder
from .table import plot_results, results_markdown, speedups

EXPORT_FORMAT = "npy"  # what each reduction is exported as for pre-training: one memory-mapped array


class ExperimentError(ValueError):
    """The experiment file is unusable; raised before any stage runs."""


class DatasetSpec(BaseModel):
    """A pre-training archive: real paths, the sample CTs, and/or a generated phantom archive."""

    model_config = ConfigDict(extra="forbid")

    name: str
    inputs: list[str] = []
    samples: bool = False
    phantom: dict[str, Any] | None = None  # make_archive arguments: n_volumes, n_slices, size, ...

    @field_validator("phantom")
    @classmethod
    def _phantom_arguments(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            from ..sample_data.phantom import make_archive

            _check_arguments(make_archive, value)
        return value


class ReductionSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    settings: dict[str, Any] = {}  # ReduceConfig fields: method, threshold, target_fraction, ...

    @field_validator("settings")
    @classmethod
    def _reduce_settings(cls, value: dict[str, Any]) -> dict[str, Any]:
        from ..reduction.plan import resolve

        resolve(checked(ReduceConfig, value))
        return value


class SSLSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    settings: dict[str, Any] = {}  # PretrainConfig fields (preset, method, epochs, ...)
    reductions: list[str] | None = None  # None: every reduction

    @field_validator("settings")
    @classmethod
    def _pretrain_settings(cls, value: dict[str, Any]) -> dict[str, Any]:
        _set_by_the_experiment(value, {"data": "each reduction's export", "out": "the stage's cache folder"})
        make_pretrain_config({**value, "data": "-", "out": "-"})
        return value


class TaskSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    data: dict[str, Any] = {}  # load_task spec: format + its arguments
    synthetic: dict[str, Any] | None = None  # make_lesion_task arguments (generates the data)
    positive_label: int = 1
    finetune: dict[str, Any] = {}  # FinetuneConfig fields for this task only (over the experiment's 'finetune')

    @field_validator("finetune")
    @classmethod
    def _finetune_settings(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _finetune_settings(value)

    @model_validator(mode="after")
    def _data_spec(self) -> TaskSpec:
        """The spec the loader will get is well formed; its files need not exist yet."""
        from ..tasks.spec import check_task_spec

        if self.synthetic is None:
            if not self.data:
                raise ValueError(f"task {self.name!r} needs 'data' (a load_task spec) or 'synthetic'")
            check_task_spec(self.data)
        else:
            from ..downstream.synthetic import make_lesion_task

            _check_arguments(make_lesion_task, self.synthetic)
            check_task_spec(synthetic_task_spec(self, "-"))
        return self


def synthetic_task_spec(task: TaskSpec, root: str) -> dict[str, Any]:
    """The load_task spec of a synthetic task generated in ``root``; ``data`` adds loader arguments."""
    from ..downstream.synthetic import make_lesion_task
    from ..tasks.spec import medmnist_file

    bound = inspect.signature(make_lesion_task).bind(root, **(task.synthetic or {}))
    bound.apply_defaults()
    arguments = bound.arguments
    if arguments["format"] == "medmnist":  # one .npz named by flag and size, not a folder
        return {"format": "medmnist", "path": str(Path(root) / medmnist_file(arguments["flag"], arguments["size"])),
                **task.data}
    return {"format": arguments["format"], "root": root, **task.data}


class ExperimentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "experiment"
    out: str = "experiments/out"
    datasets: list[DatasetSpec]
    reductions: list[ReductionSpec]
    ssl: list[SSLSpec]
    tasks: list[TaskSpec]
    finetune: dict[str, Any] = {}  # FinetuneConfig fields shared by every task
    export_size: int | None = None  # None: the SSL input size
    seeds: list[int] = [0]
    workers: int = 1
    # Reuse a cached reduction whose sources changed since (recorded in results.md); default: stop.
    allow_changed: bool = False

    @field_validator("datasets", "reductions", "ssl", "tasks")
    @classmethod
    def _non_empty(cls, value: list) -> list:
        if not value:
            raise ValueError("must list at least one entry")
        names = [v.name for v in value]
        if len(set(names)) != len(names):
            raise ValueError(f"names must be unique, got {names}")
        return value

    @field_validator("finetune")
    @classmethod
    def _finetune_settings(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _finetune_settings(value)

    @model_validator(mode="after")
    def _references(self) -> ExperimentConfig:
        known = {r.name for r in self.reductions}
        for spec in self.ssl:
            unknown = set(spec.reductions or []) - known
            if unknown:
                raise ValueError(f"ssl {spec.name!r} names unknown reductions {sorted(unknown)}; "
                                 f"known: {sorted(known)}")
        return self


def _check_arguments(generator: Callable[..., Any], arguments: dict[str, Any]) -> None:
    """``generator(folder, **arguments)`` accepts these keywords (values are checked when it runs)."""
    parameters = list(inspect.signature(generator).parameters)
    try:
        inspect.signature(generator).bind("-", **arguments)
    except TypeError as exc:
        raise ValueError(f"{generator.__name__}: {exc}; it takes {parameters[1:]}") from None


def _finetune_settings(value: dict[str, Any]) -> dict[str, Any]:
    """Fine-tuning settings of an experiment or of one of its tasks: FinetuneConfig's, less what the runner sets."""
    _set_by_the_experiment(value, {"task": "each task", "init": "each pre-training run",
                                   "out": "the stage's cache folder", "seeds": "the experiment's 'seeds'",
                                   "positive_label": "each task's 'positive_label'"})
    checked(FinetuneConfig, {**value, "task": {"format": "folder", "root": "-"}, "out": "-", "init": "random"})
    return value


def _set_by_the_experiment(settings: dict[str, Any], owners: dict[str, str]) -> None:
    """Keys the runner fills in itself: a value here would be ignored or clash with it."""
    clashes = [f"{key} (set from {owner})" for key, owner in owners.items() if key in settings]
    if clashes:
        raise ValueError(f"remove {', '.join(clashes)}: the experiment sets them")


def load_experiment(path: str | Path) -> ExperimentConfig:
    """Read and validate an experiment file: every dataset, reduction, pre-training, task and
    fine-tuning setting, without touching any data (paths need not exist yet, keys must be right)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ExperimentError(f"{path}: cannot read the experiment file ({exc})") from exc
    try:
        config = ExperimentConfig(**(data or {}))
    except ValidationError as exc:
        raise ExperimentError(f"{path}: {describe(exc, ExperimentConfig)}") from None
    except TypeError as exc:
        raise ExperimentError(f"{path}: expected a mapping of settings ({exc})") from exc
    out = Path(config.out)
    if not out.is_absolute():  # relative to the experiment file, so it runs from anywhere
        config = config.model_copy(update={"out": str((path.parent / out).resolve())})
    return config


def _pretrain_in_own_process(config: Any, folder: Path) -> dict[str, Any]:
    """Several devices: Lightning's "ddp" launcher re-runs the command line once per device, so the
    stage runs as its own ``ctreduce pretrain`` command (re-running the whole experiment per device
    would race the stages)."""
    import subprocess
    import sys

    settings = write_pretrain_settings(folder, config.model_dump(mode="json"))
    done = subprocess.run([sys.executable, "-m", "ctreduce.cli", "pretrain", "--config", str(settings)])
    summary = PretrainRun(config.out).summary()
    if done.returncode or summary.get("status") != "finished":
        raise ValueError(f"ctreduce pretrain --config {settings} exited {done.returncode} "
                         f"(status {summary.get('status', 'unknown')}); its output is above")
    return summary


def _key(*parts: Any) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


# Stage keys hash the resolved settings, not the file's spelling: an omitted setting whose default
# changes, or a preset that changes, gives a new key; equivalent spellings share one.
def _reduce_identity(settings: dict[str, Any]) -> dict[str, Any]:
    from ..reduction.plan import identity, resolve

    return identity(resolve(ReduceConfig(**settings)))


def _pretrain_identity(settings: dict[str, Any]) -> dict[str, Any]:
    return make_pretrain_config({**settings, "data": "-", "out": "-"}).model_dump(mode="json",
                                                                                  exclude={"data", "out"})


def _finetune_identity(settings: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    # Where and how fast it runs is not what it computes: a cell cached on one machine is reused on another.
    config = FinetuneConfig(**settings, task=spec, init="-", out="-")
    return config.model_dump(mode="json", exclude={"init", "out", "device", "devices", "num_workers", "resume"})


class Runner:
    """Plans every cell of a validated configuration (:func:`load_experiment`), then runs the missing stages."""

    def __init__(self, config: ExperimentConfig, log=print) -> None:
        self.config = config
        self.out = Path(config.out)
        self.folder = ExperimentFolder(self.out)
        self.log = log

    # -- planning ---------------------------------------------------------------------------------
    def cells(self) -> list[tuple[DatasetSpec, ReductionSpec, SSLSpec]]:
        return [(d, r, s) for d in self.config.datasets for r in self.config.reductions for s in self.config.ssl
                if s.reductions is None or r.name in s.reductions]

    # -- stages -----------------------------------------------------------------------------------
    def _stage(self, stage: str, key: str, run, description: str) -> Path:
        folder = self.folder.stage(stage, key)
        if done(folder) is not None:
            return folder
        folder.mkdir(parents=True, exist_ok=True)
        self.log(f"[{stage}] {description}")
        start = time.perf_counter()
        try:
            info = run(folder) or {}
        except ValueError as exc:  # settings that only fail on this cell's data (e.g. batch > slices)
            raise ExperimentError(f"[{stage}] {description}: {exc}") from exc
        mark_done(folder, {"seconds": round(time.perf_counter() - start, 2), "description": description, **info})
        return folder

    def dataset_inputs(self, spec: DatasetSpec) -> list[str]:
        inputs = list(spec.inputs)
        if spec.samples:
            from ..sample_data.real_ct import fetch

            inputs += [str(p) for p in fetch(quiet=True)]
        if spec.phantom is not None:
            key = _key("phantom", spec.phantom)

            def generate(folder: Path) -> dict[str, Any]:
                from ..sample_data.phantom import make_archive

                make_archive(folder / ARCHIVE, **spec.phantom)
                return {}

            inputs.append(str(self._stage("data", key, generate, f"phantom archive {spec.phantom}") / ARCHIVE))
        if not inputs:
            raise ExperimentError(f"dataset {spec.name!r} has no inputs, samples or phantom")
        return inputs

    def reduce(self, dataset: DatasetSpec, reduction: ReductionSpec, size: int) -> tuple[Path, str]:
        from ..exporting.onepass import reduce
        from ..reduction.plan import kept_known_per_volume, resolve

        inputs = self.dataset_inputs(dataset)
        key = _key("reduce", inputs, _reduce_identity(reduction.settings))
        # One pass: the export the first cell needs is written while reducing (not possible when a target
        # fraction decides the kept slices only at the end).
        fused = kept_known_per_volume(resolve(ReduceConfig(**reduction.settings)))

        def run(folder: Path) -> dict[str, Any]:
            summary = reduce(inputs, folder / RUN, workers=self.config.workers,
                             **({"export": EXPORT_FORMAT, "export_size": size} if fused else {}),
                             **reduction.settings).summary
            if summary["totals"]["volumes_failed"]:
                self.log(f"  {summary['totals']['volumes_failed']} volume(s) failed; see {folder / RUN}")
            return {"kept": summary["totals"]["kept"], "slices": summary["totals"]["slices"]}

        folder = self._stage("reduce", key, run, f"{dataset.name} / {reduction.name}")
        check = RunFolder(folder / RUN).check_sources()
        if check.changed or check.unchecked:
            if not self.config.allow_changed:
                raise ExperimentError(f"[reduce] {dataset.name} / {reduction.name}: {check.message(folder / RUN)}"
                                      " (in an experiment file: allow_changed: true)")
            self.log(f"  warning: {len(check.changed)} volume(s) changed since reduced; allow_changed is set")
        return folder, key

    def export(self, reduce_folder: Path, reduce_key: str, size: int) -> tuple[Path, str]:
        from ..exporting.from_run import export

        key = _key("export", reduce_key, size)

        def run(folder: Path) -> dict[str, Any]:
            try:  # written in the reduce pass: link it, nothing is read again
                fused = ExportStore.open(RunFolder(reduce_folder / RUN).default_export)
                if fused.format == EXPORT_FORMAT and fused.meta.get("size") == size:
                    fused.clone(folder / EXPORT)
                    return {"slices": fused.meta["slices"], "fused": True}
            except ExportError:
                pass
            # The stage owns its folder: an export left complete by a crash before done.json is replaced.
            meta = export(reduce_folder / RUN, folder / EXPORT, format=EXPORT_FORMAT, size=size, overwrite=True,
                          allow_changed=self.config.allow_changed)
            return {"slices": meta["slices"]}

        return self._stage("export", key, run, f"export {size}px"), key

    def pretrain(self, export_folder: Path, export_key: str, ssl: SSLSpec) -> tuple[Path, str]:
        from ..ssl.pretrain import pretrain

        key = _key("pretrain", export_key, _pretrain_identity(ssl.settings))

        def run(folder: Path) -> dict[str, Any]:
            config = make_pretrain_config({**ssl.settings, "data": str(export_folder / EXPORT),
                                           "out": str(folder / RUN)})
            if config.devices == 1 and config.num_nodes == 1:
                summary = pretrain(config)
            else:
                summary = _pretrain_in_own_process(config, folder)
            return {"wall_time_s": summary["wall_time_s"], "images_seen": summary["images_seen"]}

        return self._stage("pretrain", key, run, f"pretrain {ssl.name}"), key

    def task_spec(self, task: TaskSpec) -> dict[str, Any]:
        if task.synthetic is None:
            return task.data
        from ..downstream.synthetic import make_lesion_task

        key = _key("task", task.synthetic)

        def generate(folder: Path) -> dict[str, Any]:
            make_lesion_task(folder / TASK, **task.synthetic)
            return {}

        folder = self._stage("data", key, generate, f"synthetic task {task.name}")
        return synthetic_task_spec(task, str(folder / TASK))

    def finetune(self, init: str, init_key: str, task: TaskSpec) -> Path:
        from ..downstream.finetune import LeakageWarning, finetune

        spec = self.task_spec(task)
        settings = {**self.config.finetune, **task.finetune, "seeds": tuple(self.config.seeds),
                    "positive_label": task.positive_label}
        key = _key("finetune", init_key, _finetune_identity(settings, spec))

        def run(folder: Path) -> dict[str, Any]:
            config = FinetuneConfig(**settings, task=spec, init=init, out=str(folder / RUN))
            for note in config.notes():  # also in the run's results.json
                self.log(f"  note: {note}")
            with warnings.catch_warnings():  # the leakage stage reports leaks in one line of the log
                warnings.simplefilter("ignore", LeakageWarning)
                finetune(config)
            return {}

        return self._stage("finetune", key, run, f"finetune {task.name} from {init_key}")

    # -- the grid ---------------------------------------------------------------------------------
    def check_tasks(self) -> None:
        """Load every downstream task once: a missing class or an empty split fails here."""
        from ..tasks.load import load_task

        for task in self.config.tasks:
            try:
                load_task(self.task_spec(task))
            except (FileNotFoundError, ValueError) as exc:
                raise ExperimentError(f"task {task.name!r}: {exc}") from exc

    def check_place(self) -> None:
        """The experiment's folder is never inside its data: the archives and the tasks' files."""
        from ..tasks.spec import task_paths

        inputs = [p for d in self.config.datasets for p in d.inputs]
        inputs += [p for t in self.config.tasks if t.synthetic is None for p in task_paths(t.data)]
        try:
            check_output_place(self.out, inputs)
        except ValueError as exc:
            raise ExperimentError(str(exc)) from exc

    def run(self) -> pd.DataFrame:
        self.check_place()
        self.out.mkdir(parents=True, exist_ok=True)
        self.check_tasks()
        self.folder.write_config(self.config.model_dump(mode="json"))
        threads = grid_threads()
        rows = []
        with threads.handed_on():  # every stage's thread policy takes this count (CTREDUCE_THREADS)
            for dataset, reduction, ssl in self.cells():
                rows.append(self._run_cell(dataset, reduction, ssl))
        table = pd.DataFrame(rows)
        table = speedups(table)
        self.write(table, threads)
        return table

    def _run_cell(self, dataset: DatasetSpec, reduction: ReductionSpec, ssl: SSLSpec) -> dict[str, Any]:
        size = self.config.export_size or make_pretrain_config(dict(ssl.settings)).input_size
        reduce_folder, reduce_key = self.reduce(dataset, reduction, size)
        export_folder, export_key = self.export(reduce_folder, reduce_key, size)
        pretrain_folder, pretrain_key = self.pretrain(export_folder, export_key, ssl)
        row = self._cell_row(dataset, reduction, ssl, reduce_folder, pretrain_folder)
        for task in self.config.tasks:
            metrics = FinetuneRun(self.finetune(str(pretrain_folder / RUN), pretrain_key, task) / RUN).results()
            for name, label in (("auc", "AUC"), ("f1", "F1"), ("accuracy", "ACC")):
                stat = metrics.get(name) or {}
                row[f"{task.name} {label}"] = stat.get("mean")
                row[f"{task.name} {label} sd"] = stat.get("sd")
            row.update(self.leakage(export_folder, export_key, task))
            # Synthetic task slices and the archive's phantoms are drawn from one anatomy (other seeds): they
            # match by dHash without being the same images.
            row[f"{task.name} phantom anatomy"] = task.synthetic is not None and dataset.phantom is not None
        return row

    def leakage(self, export_folder: Path, export_key: str, task: TaskSpec) -> dict[str, int]:
        """Test images of ``task`` within the dHash threshold of a pre-training slice of the export
        (``ctreduce leakage``), and test images also in the training split: they inflate the metrics.
        Cached like every stage; the warning is logged when it is computed."""
        from ..curate.leakage import find_leakage

        spec = self.task_spec(task)

        def run(folder: Path) -> dict[str, Any]:
            found = find_leakage(export_folder / EXPORT, spec)
            found.write(folder / LEAKAGE)
            summary = found.summary()
            test, in_train = summary["leaked"]["test"], summary["test_in_train"]
            if test or in_train:
                self.log(f"warning: {task.name}: {test} of {summary['images']['test']} test images are near-duplicates "
                         f"of pre-training slices, {in_train} of training images (threshold {summary['threshold']} "
                         "bits); their metrics are optimistic")
            return summary

        folder = self._stage("leakage", _key("leakage", export_key, spec), run,
                             f"leakage of {task.name} against export {export_key}")
        summary = done(folder)
        return {f"{task.name} test leaks": summary["leaked"]["test"],
                f"{task.name} test in train": summary["test_in_train"],
                f"{task.name} test images": summary["images"]["test"]}

    def _cell_row(self, dataset: DatasetSpec, reduction: ReductionSpec, ssl: SSLSpec, reduce_folder: Path,
                  pretrain_folder: Path) -> dict[str, Any]:
        summary = RunFolder(reduce_folder / RUN).summary()
        target = summary.get("target", {})
        pre = PretrainRun(pretrain_folder / RUN).summary()
        return {
            "dataset": dataset.name,
            "reduction": reduction.name,
            "method": summary["config"]["method"],
            "threshold": target.get("threshold", target.get("every_n", summary["config"].get("threshold"))),
            "kept_slices": summary["totals"]["kept"],
            "kept_fraction": summary["totals"]["kept_fraction"],
            "ssl": ssl.name,
            "epochs": pre["epochs_completed"],
            "images_seen": pre["images_seen"],
            "pretrain_cpu_s": pre.get("cpu_time_s"),  # absent in runs cached before it was recorded
            "pretrain_s": pre["wall_time_s"],
            "threads": (pre.get("threads") or {}).get("torch_threads"),
        }

    def write(self, table: pd.DataFrame, threads: ThreadPolicy) -> None:
        self.folder.write_results(table, results_markdown(table, [t.name for t in self.config.tasks], threads))
        plot_results(table, [t.name for t in self.config.tasks], self.folder.plots)


def grid_threads() -> ThreadPolicy:
    """The torch threads of every training stage of one run, chosen once at its start (the free cores then, or
    ``CTREDUCE_THREADS``): chosen per stage, one cell got 2 threads and the next 1, as the stage before had left
    the machine, and their times compared the machine's load instead of the reduction."""
    return thread_policy(0, accelerator="cpu")


def run_experiment(path: str | Path, log=print) -> pd.DataFrame:
    return Runner(load_experiment(path), log=log).run()
