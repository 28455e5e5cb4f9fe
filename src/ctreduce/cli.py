"""The ``ctreduce`` command. Heavy libraries are imported inside commands to keep start-up fast.

Exit status: 0 when every volume was processed, 1 when any failed (after doing the rest),
2 for unusable arguments (missing paths, conflicting run folder, bad settings) and for a command whose
optional extra is not installed (one line naming it).
"""

from __future__ import annotations

import errno
import functools
import inspect
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .core.extras import missing_extra
from .curate import cli as curate_cli

if TYPE_CHECKING:
    from pydantic import BaseModel


def _blank_flag_types(command: typer.core.TyperCommand | typer.core.TyperGroup, ctx: typer.Context) -> None:
    """Typer's rich help prints a value type beside every option, ``<bool>`` beside flags too, which take no
    value (``--help``, ``--overwrite``): a flag's metavar, when set, is what that column shows."""
    for param in command.get_params(ctx):
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""


class _Commands(typer.core.TyperGroup):
    def get_command(self, ctx: typer.Context, cmd_name: str) -> typer.core.TyperCommand | typer.core.TyperGroup | None:
        command = _BUILT_ON_USE[cmd_name]() if cmd_name in _BUILT_ON_USE else super().get_command(ctx, cmd_name)
        if command is not None:
            _blank_flag_types(command, ctx)
        return command

    def format_help(self, ctx: typer.Context, formatter) -> None:
        _blank_flag_types(self, ctx)
        super().format_help(ctx, formatter)

    def invoke(self, ctx: typer.Context):
        """A command that needs an extra that is not installed (torch for pre-training, say) says which one in
        one line and exits 2, where Python would print a traceback."""
        try:
            return super().invoke(ctx)
        except ModuleNotFoundError as exc:
            missing = missing_extra(exc, f"ctreduce {ctx.invoked_subcommand}")
            if missing is None:
                raise
            _fail(str(missing))


app = typer.Typer(cls=_Commands, add_completion=False, no_args_is_help=True,
                  help="Reduce CT archives to their dissimilar slices before self-supervised pre-training.")


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _terminate_as_interrupt() -> None:
    """SIGTERM (a job scheduler, ``kill``) stops a run like Ctrl-C: finished volumes are recorded,
    workers end, and the same command resumes."""
    import signal

    def interrupt(signum, frame):
        raise KeyboardInterrupt("terminated")

    signal.signal(signal.SIGTERM, interrupt)


@app.command()
def scan(
    inputs: Annotated[list[Path], typer.Argument(help="Files or folders (DICOM trees, NIfTI, NRRD, MHA...).")],
    modality: Annotated[str, typer.Option(help="Keep DICOM series of this modality; 'any' keeps all.")] = "CT",
    allow_gaps: Annotated[bool, typer.Option(help="Accept DICOM series with missing slices.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List the volumes found and every file or series skipped, with the reason."""
    from .io.discover import scan as do_scan
    from .store.files import dumps

    try:
        found = do_scan(inputs, modality=modality, allow_gaps=allow_gaps)
    except (FileNotFoundError, ValueError) as exc:  # a missing input, a name no output can hold
        _fail(str(exc))
    if not found.volumes and not found.errors:  # as reduce says it: nothing to list is a usage mistake
        reasons = "; ".join(f"{s['path']}: {s['reason']}" for s in found.skipped[:5])
        _fail(f"no volumes found in {', '.join(map(str, inputs))}" + (f" ({reasons})" if reasons else ""))
    if as_json:
        volumes = [{"volume_id": v.volume_id, "format": v.format, "source": v.source,
                    "slices": v.n_slices, "rows": v.rows, "cols": v.cols, "spacing_mm": list(v.spacing),
                    "modality": v.modality, "warnings": list(v.warnings), "paths": list(v.paths)}
                   for v in found.volumes]
        typer.echo(dumps({"volumes": volumes, "skipped": found.skipped, "errors": found.errors}))
    else:
        typer.echo(f"{'volume':40} {'format':6} {'slices':>6} {'size':>9}  {'spacing z/y/x mm':18} modality")
        for v in found.volumes:
            spacing = "/".join("?" if s != s else f"{s:.2f}" for s in v.spacing)
            typer.echo(f"{v.volume_id:40} {v.format:6} {v.n_slices:6d} {v.rows:4d}x{v.cols:<4d}  "
                       f"{spacing:18} {v.modality or '-'}")
        typer.echo(f"{len(found.volumes)} volume(s), {sum(v.n_slices for v in found.volumes)} slices")
        for s in found.skipped:
            typer.echo(f"skipped {s['path']}: {s['reason']}")
        for e in found.errors:
            typer.echo(f"error {e['volume_id']}: {e['error']}", err=True)
    if found.errors:
        raise typer.Exit(1)


def _options_of(*models: type[BaseModel]) -> list[inspect.Parameter]:
    """One option per field of ``models``: its name (or ``Cli.flags``), type (or ``Cli.type``), default and
    description as help, so that a setting is declared once, in ``ctreduce.config``, for the API and here."""
    from .config import Cli

    params = []
    for model in models:
        for name, info in model.model_fields.items():
            cli = next((m for m in info.metadata if isinstance(m, Cli)), Cli())
            if not cli.hidden:
                kind = cli.type if cli.type is not None else info.annotation
                params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=info.default,
                                                annotation=Annotated[kind, typer.Option(*cli.flags,
                                                                                        help=info.description)]))
    return params


def reduce(
    inputs: Annotated[list[Path], typer.Argument(help="Files or folders to reduce.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder for manifest and summary.")],
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
    **settings: Any,
) -> None:
    """Reduce every volume; write DIR/manifest.parquet and DIR/summary.json (resumable)."""
    from pydantic import ValidationError

    from .config import ReduceConfig, RunOptions
    from .exporting.onepass import reduce as do_reduce
    from .store.files import DiskFull
    from .store.lock import LockHeld

    try:  # in the order a mistake is reported: how it runs, then what it keeps
        options = RunOptions(progress=not quiet, **{k: v for k, v in settings.items() if k in RunOptions.model_fields})
        config = ReduceConfig(**{k: v for k, v in settings.items() if k in ReduceConfig.model_fields})
    except ValidationError as exc:
        _fail("; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors()))
    _terminate_as_interrupt()
    try:
        result = do_reduce(inputs, out, config=config, **options.model_dump())
    except (FileNotFoundError, ValueError, LockHeld) as exc:  # before any volume is read
        _fail(str(exc))
    except DiskFull as exc:
        _fail(str(exc.strerror or exc), code=1)
    except KeyboardInterrupt as exc:
        typer.echo(f"\n{exc}; run the same command again to finish", err=True)
        raise typer.Exit(130) from None
    summary = result.summary
    totals = summary["totals"]
    if summary.get("rerun", {}).get("unchanged"):
        typer.echo(f"nothing to do: the run is complete and no input file changed (checked in "
                   f"{summary['rerun']['seconds']:.1f} s); its results:")
    for vid, what in summary.get("inputs_changed", {}).items():
        typer.echo(f"note: the inputs of {vid} changed since the last run ({what}); reduced it again", err=True)
    if summary.get("inputs_moved"):
        typer.echo(f"note: {len(summary['inputs_moved'])} volume(s) moved or touched with unchanged content; "
                   "their results were kept", err=True)
    if "inputs_verified" in summary:
        verified = summary["inputs_verified"]
        typer.echo(f"verified {verified['volumes']} finished volume(s) slice by slice: "
                   f"{len(verified['changed'])} changed and reduced again")
    for error in summary["errors"]:
        typer.echo(f"error: {error['error']}", err=True)
    if summary["skipped"]:
        typer.echo(f"{len(summary['skipped'])} file(s)/series skipped, reasons in summary.json")
    unread = sum("left out of the series, slice" in w for v in summary["volumes"] for w in v.get("warnings", []))
    if unread:
        typer.echo(f"note: {unread} slice(s) could not be read and were left out of their series (--allow-gaps); "
                   "each is named in the volume's warnings in summary.json", err=True)
    typer.echo(
        f"{totals['volumes_reduced']} volume(s) reduced, {totals['volumes_failed']} failed; "
        f"kept {totals['kept']} of {totals['slices']} slices ({totals['kept_fraction']:.1%}) "
        f"in {summary['timings']['total_s']:.1f} s"
    )
    for t, fraction in summary.get("sweep", {}).items():
        typer.echo(f"  threshold {t}: kept fraction {fraction:.1%}")
    if "scope" in summary:
        typer.echo(f"scope archive: {summary['scope']['dropped_across_volumes']} of the "
                   f"{summary['scope']['kept_by_volumes']} slices kept per volume were near-duplicates of a slice "
                   f"of another volume and were dropped")
    if "target" in summary:
        chosen = {k: v for k, v in summary["target"].items() if k in ("threshold", "every_n")}
        typer.echo(f"target fraction {summary['target']['target_fraction']:g}: chosen "
                   + ", ".join(f"{k} {v:g}" for k, v in chosen.items())
                   + f", kept fraction {summary['target']['kept_fraction']:.1%}")
    typer.echo(f"manifest: {out / 'manifest.parquet'}\nsummary:  {out / 'summary.json'}")
    if "export" in summary:
        typer.echo(f"export:   {summary['export']['path']} ({summary['export']['slices']} slices, "
                   f"{summary['export']['format']})")
        for error in summary["export"].get("errors", []):
            typer.echo(f"error: {error['error']}", err=True)
    if totals["volumes_failed"] or summary.get("export", {}).get("errors"):
        raise typer.Exit(1)


@functools.cache
def _reduce_command() -> typer.core.TyperCommand:
    """``reduce`` with an option per setting of ``ReduceConfig`` and ``RunOptions`` between --out and --quiet."""
    from .config import ReduceConfig, RunOptions

    inputs, out, quiet = list(inspect.signature(reduce, eval_str=True).parameters.values())[:3]
    reduce.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inputs, out, *_options_of(ReduceConfig, RunOptions), quiet.replace(kind=inspect.Parameter.KEYWORD_ONLY)])
    single = typer.Typer(add_completion=False)
    single.command()(reduce)
    return typer.main.get_command(single)  # type: ignore[return-value]


# Built when used (``_Commands.get_command``): their options come from the settings models, and pydantic
# loads with them, not when every other command starts. Registered here for their place in the help.
_BUILT_ON_USE = {"reduce": _reduce_command}
app.command("reduce")(lambda: None)


@app.command()
def export(
    run_dir: Annotated[Path | None, typer.Argument(help="Run folder written by 'ctreduce reduce' (not needed with "
                                                        "--compact alone).")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Export folder.")] = ...,
    format: Annotated[str, typer.Option("--format", help="png (folder of images), npy (shards of memory-mappable "
                                                         "arrays) or a plug-in's format.")] = "png",
    size: Annotated[int, typer.Option(help="npy: side of the square slices (aspect kept by padding).")] = 224,
    intensity: Annotated[str | None, typer.Option(help="Override the run's intensity policy.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing export in --out, whole (an npy export of "
                                                 "the same run and settings grows instead).")] = False,
    allow_changed: Annotated[bool, typer.Option(help="Export even if sources changed since they were reduced "
                                                     "(recorded in export.json).")] = False,
    allow_incomplete: Annotated[bool, typer.Option(help="Export an interrupted run's finished volumes "
                                                        "(recorded in export.json).")] = False,
    workers: Annotated[int, typer.Option(help="Volumes read and written in parallel (same output).")] = 1,
    backend: Annotated[str, typer.Option(help="local (process pool) or ray (Ray tasks; same output).")] = "local",
    ray_address: Annotated[str | None, typer.Option(help="Ray cluster address (default: RAY_ADDRESS or a "
                                                         "local Ray).")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
    compact: Annotated[bool, typer.Option(help="npy: then rewrite the shards that hold rows no longer in the "
                                               "export (changed or removed volumes), and only those.")] = False,
) -> None:
    """Write the kept slices as 8-bit PNGs or memory-mappable uint8 shards plus an index.

    A new export is written beside OUT and moved into place when complete: OUT holds a whole
    export or none. An npy export of the same run and settings grows in place by new shards and a
    new index version; its earlier shards are never rewritten (--compact drops dead rows)."""
    from .exporting.from_run import export as do_export
    from .store.export import compact as do_compact
    from .store.files import OutputError
    from .store.lock import LockHeld

    _terminate_as_interrupt()
    if run_dir is None and not compact:
        _fail("give the RUN folder to export (or --compact to compact the export in --out)")
    try:
        summary = None if run_dir is None else do_export(
            run_dir, out, format=format, size=size, intensity=intensity, overwrite=overwrite,
            allow_changed=allow_changed, allow_incomplete=allow_incomplete, workers=workers,
            progress=not quiet, backend=backend, ray_address=ray_address)
        compacted = do_compact(out) if compact else None
    except (ValueError, LockHeld) as exc:
        _fail(str(exc))
    except OutputError as exc:  # a full disk, an output that cannot be written
        _fail(str(exc.strerror or exc), code=1)
    except KeyboardInterrupt as exc:
        typer.echo(f"\n{str(exc) or 'interrupted'}; {out} is as it was; run the same command again", err=True)
        raise typer.Exit(130) from None
    if compacted is not None:
        typer.echo(f"compacted {out}: version {compacted['version']}, {compacted['rewritten']} shard(s) rewritten, "
                   f"{compacted['removed']} removed, {compacted['slices']} slices")
    if summary is None:
        return
    for error in summary["errors"]:
        typer.echo(f"error: {error['error']}", err=True)
    version = f", version {summary['version']}" if summary.get("version") else ""
    typer.echo(f"exported {summary['slices']} slices of {summary['volumes']} volume(s) to {out} "
               f"({format}{version}) in {summary['seconds']:.1f} s")
    if summary["errors"]:
        raise typer.Exit(1)


@app.command()
def compare(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run folders of 'ctreduce reduce'.")],
    csv: Annotated[Path | None, typer.Option(help="Also write the table to this CSV file.")] = None,
) -> None:
    """Compare runs side by side: kept fraction, kept per volume, overlap (Jaccard), wall time."""
    import pandas as pd

    from .reduction.compare import compare_runs

    try:
        table, overlap = compare_runs(run_dirs)
    except ValueError as exc:
        _fail(str(exc))
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.float_format", "{:.3f}".format):
        typer.echo(table.to_string(index=False))
        typer.echo("\nJaccard overlap of kept slices:")
        typer.echo(overlap.to_string())
    if csv is not None:
        table.to_csv(csv, index=False)


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="Run folder written by 'ctreduce reduce'.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="HTML file to write, or a folder to write "
                                                "report.html into (default: DIR/report.html).")] = None,
    max_volumes: Annotated[int, typer.Option(help="Volumes shown with thumbnails and plots, in manifest order; "
                                                  "the dataset summary always covers all volumes.")] = 50,
    thumbs: Annotated[int, typer.Option(help="At most N thumbnails per volume; kept slices first.")] = 48,
    thumb_px: Annotated[int, typer.Option(help="Thumbnail size in pixels.")] = 48,
    column: Annotated[str, typer.Option(help="Manifest column of kept slices, e.g. kept@8 from a sweep.")] = "kept",
    allow_changed: Annotated[bool, typer.Option(help="Show thumbnails even if sources changed since they "
                                                     "were reduced.")] = False,
) -> None:
    """Write one self-contained HTML report: summary, histogram, thumbnails along z, scores."""
    from .report import write_report

    target = output or run_dir / "report.html"
    try:
        path = write_report(run_dir, target, max_volumes=max_volumes, thumbs_per_volume=thumbs,
                            thumb_px=thumb_px, column=column, allow_changed=allow_changed)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    except OSError as exc:  # the report file cannot be written there (a file in the way, permissions, disk full)
        _fail(f"{exc.filename or target}: cannot write the report ({exc.strerror or exc})",
              code=1 if exc.errno == errno.ENOSPC else 2)
    typer.echo(f"report: {path}")


@app.command()
def pretrain(
    overrides: Annotated[list[str] | None, typer.Argument(help="More settings as key=value, dotted for "
                                                               "nested ones: swav.n_prototypes=300 lr=0.3")] = None,
    method: Annotated[str | None, typer.Option(help="swav, moco, spark or a plug-in's method.")] = None,
    data: Annotated[Path | None, typer.Option(help="Export folder (ctreduce export: npy or png).")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Run folder.")] = None,
    preset: Annotated[str | None, typer.Option(help="paper (the paper's settings) or cpu (a short real run).")] = None,
    backbone: Annotated[str | None, typer.Option(help="resnet18, resnet34, resnet50, resnet101, resnet152.")] = None,
    epochs: Annotated[int | None, typer.Option()] = None,
    batch_size: Annotated[int | None, typer.Option(help="Per device.")] = None,
    devices: Annotated[str | None, typer.Option(help="Number of devices, or auto.")] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    config: Annotated[Path | None, typer.Option("--config", help="YAML file of settings.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a run with other settings in --out.")] = False,
) -> None:
    """Self-supervised pre-training (SwAV, MoCo v2, SparK) on an export; resumable run folder."""
    from .config import make_pretrain_config
    from .core.validation import SettingsError, parse_overrides

    values = {k: v for k, v in {"method": method, "data": None if data is None else str(data),
                                 "out": None if out is None else str(out), "preset": preset, "backbone": backbone,
                                 "epochs": epochs, "batch_size": batch_size, "seed": seed}.items() if v is not None}
    if devices is not None:
        values["devices"] = int(devices) if devices.lstrip("-").isdigit() else devices
    try:  # every setting is checked before torch is imported: a mistake is one line at once
        values = {**parse_overrides(overrides or []), **values}
        settings = make_pretrain_config(values, yaml_file=None if config is None else str(config))
    except SettingsError as exc:
        _fail(str(exc))
    if settings.missing():
        _fail(settings.missing())
    from .ssl.pretrain import PretrainError, TrainingStopped, launched_rank
    from .ssl.pretrain import pretrain as do_pretrain

    try:
        summary = do_pretrain(settings, overwrite=overwrite)
    except TrainingStopped as exc:
        _fail(str(exc), code=1)
    except PretrainError as exc:
        _fail(str(exc))
    if launched_rank() != 0:  # under strategy "ddp" every device runs this command; rank 0 reports
        return
    if summary.get("already_finished"):
        typer.echo(f"nothing to do: {settings.out} holds this run, finished ({summary['epochs_completed']} epochs); "
                   "--overwrite trains it again")
    else:
        typer.echo(f"{summary['method']} {summary['backbone']}: {summary['epochs_completed']} epochs, "
                   f"{summary['images_seen']} images in {summary['wall_time_s']:.1f} s")
    typer.echo(f"backbone: {Path(settings.out) / 'backbone.pt'}\nsummary:  {Path(settings.out) / 'summary.json'}")


def _echo_metrics(summary: dict) -> None:
    for name in ("auc", "f1", "accuracy"):
        if name in summary:
            stat = summary[name]
            sd = "" if stat["sd"] is None else f" +- {stat['sd']:.3f}"
            typer.echo(f"{name}: {stat['mean']:.3f}{sd}")


@app.command()
def finetune(
    task: Annotated[str, typer.Option(help="Labelled data: an image folder (class sub-folders), a COVID-CT "
                                           "root, a MedMNIST .npz, or a YAML task spec.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")],
    init: Annotated[str, typer.Option(help="random | imagenet | RUN_DIR (pre-training) | state_dict file.")] = (
        "imagenet"),
    mode: Annotated[str, typer.Option(help="finetune (paper), linear (frozen backbone) or knn.")] = "finetune",
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds, one full repetition each.")] = "0",
    devices: Annotated[str | None, typer.Option(help="Devices on this machine: N (DDP when > 1; gloo on CPU), "
                                                     "-1 or auto (every GPU). Batch size is per device.")] = None,
    precision: Annotated[str | None, typer.Option(help="auto (16-mixed on GPU, 32-true on CPU), 32-true, "
                                                       "16-mixed or bf16-mixed.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run in --out (finished seeds kept, the "
                                              "others from their last checkpoint); --no-resume starts over.")] = True,
    overrides: Annotated[list[str] | None, typer.Argument(help="More settings as key=value (epochs=70 "
                                                               "backbone=resnet18 input_size=224 ...).")] = None,
) -> None:
    """Fine-tune and score a backbone with the paper's protocol (AUC, F1, ACC, mean +- sd)."""
    from .config import FinetuneConfig
    from .core.validation import checked, parse_overrides
    from .tasks.spec import task_spec_for

    options = {k: v for k, v in {"devices": devices, "precision": precision}.items() if v is not None}
    try:
        seed_list = tuple(int(s) for s in seeds.split(",") if s.strip())
    except ValueError:
        _fail(f"--seeds must be comma-separated whole numbers, got {seeds!r}")
    try:  # every setting is checked before torch is imported: a mistake is one line at once
        values = {**parse_overrides(overrides or []), **options, "task": task_spec_for(task), "out": str(out),
                  "init": init, "mode": mode, "resume": resume, "seeds": seed_list}
        config = checked(FinetuneConfig, values)
    except ValueError as exc:  # SettingsError, or an unreadable task spec file (DataError)
        _fail(str(exc))
    from .downstream.finetune import FinetuneError, LeakageWarning
    from .downstream.finetune import finetune as do_finetune
    from .lightning_setup import launched_rank

    if launched_rank() == 0:
        for note in config.notes():
            typer.echo(f"note: {note}", err=True)
    try:
        with warnings.catch_warnings():  # leaks are reported below, in words, not as a Python warning
            warnings.simplefilter("ignore", LeakageWarning)
            summary = do_finetune(config)
    except FinetuneError as exc:
        _fail(str(exc))
    if launched_rank() != 0:  # under DDP every device runs this command; rank 0 reports
        return
    threads = summary["threads"]
    typer.echo(f"threads: {threads['torch_threads']} torch, {threads['loader_workers']} loader worker(s) "
               f"({threads['source']})")
    _echo_metrics(summary)
    if "leakage" in summary:
        leak = summary["leakage"]
        typer.echo(f"test images within {leak['threshold']} bits of a pre-training slice: {leak['leaked']['test']} of "
                   f"{leak['images']['test']}; of a training image: {leak['test_in_train']}")
        if leak["leaked"]["test"] or leak["test_in_train"]:
            typer.echo("warning: some test images also sit in the pre-training data or the training split; their "
                       "metrics are optimistic ('ctreduce leakage' lists them)", err=True)
    typer.echo(f"results: {out / 'results.json'}")


@app.command()
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="Folder written by 'ctreduce finetune'.")],
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples for the 95% intervals.")] = 1000,
    positive_label: Annotated[int | None, typer.Option(help="Class index scored as positive by AUC and F1 "
                                                            "(binary tasks; default: the run's positive_label).")
                              ] = None,
) -> None:
    """Recompute metrics, intervals and plots from a fine-tuning run's saved test predictions."""
    from .downstream.evaluate import evaluate_run

    try:
        summary = evaluate_run(run_dir, bootstrap=bootstrap, positive_label=positive_label)
    except ValueError as exc:  # EvaluateError, or a positive label that is no class of the task
        _fail(str(exc))
    _echo_metrics(summary)


@app.command()
def experiment(
    config: Annotated[Path, typer.Argument(help="Experiment YAML (see configs/quick.yaml, configs/paper.yaml).")],
) -> None:
    """Run reduce -> export -> pretrain -> finetune for every cell; cached, resumable; writes the table."""
    from .experiment.runner import ExperimentError, run_experiment

    try:
        table = run_experiment(config, log=lambda line: typer.echo(line))
    except ExperimentError as exc:
        _fail(str(exc))
    typer.echo(f"{len(table)} cell(s) done")


@app.command()
def samples() -> None:
    """Download the two real sample chest CTs into the cache and print their paths."""
    from .sample_data.real_ct import SamplesUnavailable, fetch

    try:
        paths = fetch()
    except SamplesUnavailable as exc:
        _fail(str(exc), code=1)
    for path in paths:
        typer.echo(str(path))


app.command(name="duplicates")(curate_cli.duplicates)
app.command(name="leakage")(curate_cli.leakage)


def main() -> None:
    app(prog_name="ctreduce")


if __name__ == "__main__":
    sys.exit(main())
