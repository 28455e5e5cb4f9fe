"""``ctreduce duplicates`` and ``ctreduce leakage``: plain functions that ``ctreduce.cli`` registers
as commands (``app.command(name="duplicates")(duplicates)``). Heavy imports stay inside them.

Exit status: 0 when the search ran (found duplicates or leaks are results, not errors), 1 when
task images could not be read (the search ran without them, they are listed) or the disk is full, 2 for unusable
arguments (missing or old run folders, unreadable task, an output inside an input).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

_SHOWN = 10  # volume pairs printed; the table in --out has all


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def duplicates(
    runs: Annotated[list[Path], typer.Argument(help="Run folders of 'ctreduce reduce' (one or more).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for slices.parquet, volume_pairs.parquet "
                                                          "and duplicates.json.")],
    threshold: Annotated[int, typer.Option(help="Near-duplicate: dHash Hamming distance <= this many bits.")] = 6,
    min_share: Annotated[float, typer.Option(help="Report a volume pair when at least this share of one "
                                                  "volume's slices has a near-duplicate in the other.")] = 0.5,
    kept_only: Annotated[bool, typer.Option(help="Search only the kept slices (default: every slice).")] = False,
) -> None:
    """Near-duplicate slices across volumes (same scan stored twice), from the manifests' hashes."""
    from ..store.files import OutputError
    from ..store.places import check_output_place
    from .duplicates import archive_inputs, find_duplicates

    try:
        check_output_place(out, archive_inputs(runs))  # before the search
        result = find_duplicates(runs, threshold=threshold, min_share=min_share, kept_only=kept_only)
        result.write(out)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    except OutputError as exc:  # a full disk: one line, exit 1
        _fail(str(exc.strerror or exc), code=1)
    meta, pairs = result.meta, result.volume_pairs
    for note in meta["repeated"]:
        typer.echo(f"note: {note}; searched once", err=True)
    typer.echo(f"{meta['slices']} slices of {meta['volumes']} volumes; {meta['slices_with_duplicate']} have a "
               f"slice of another volume within {threshold} bits ({meta['seconds']:.1f} s)")
    typer.echo(f"{len(pairs)} volume pair(s) where >= {min_share:.0%} of one volume's slices are matched")
    for row in pairs.head(_SHOWN).itertuples():
        typer.echo(f"  {row.run_a}:{row.volume_a} ({row.matched_a}/{row.slices_a} = {row.share_a:.0%})  <->  "
                   f"{row.run_b}:{row.volume_b} ({row.matched_b}/{row.slices_b} = {row.share_b:.0%})")
    if len(pairs) > _SHOWN:
        typer.echo(f"  ... {len(pairs) - _SHOWN} more in {out / 'volume_pairs.parquet'}")
    typer.echo(f"tables: {out}")


def leakage(
    pretrain: Annotated[Path, typer.Option(help="Pre-training data: a run folder (its kept slices) or an "
                                                "export folder (its images).")],
    task: Annotated[str, typer.Option(help="Downstream task: COVID-CT root, MedMNIST .npz, image folder or "
                                           "task spec file (as 'ctreduce finetune --task').")],
    threshold: Annotated[int, typer.Option(help="Leak: dHash Hamming distance <= this many bits.")] = 6,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Folder for images.parquet and "
                                                                 "leakage.json.")] = None,
) -> None:
    """Task images (train/val/test) with a near-duplicate in the pre-training data, and test images in train."""
    from ..store.files import OutputError
    from ..store.places import check_output_place
    from ..tasks.spec import task_paths, task_spec_for
    from .leakage import find_leakage, leakage_inputs

    try:
        spec = task_spec_for(task)
        if out is not None:  # before the search
            check_output_place(out, leakage_inputs(pretrain, task_paths(spec)))
        result = find_leakage(pretrain, spec, threshold=threshold)
        if out is not None:
            result.write(out)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    except OutputError as exc:  # a full disk: one line, exit 1
        _fail(str(exc.strerror or exc), code=1)
    meta = result.meta
    typer.echo(f"{meta['task']} against {meta['pretrain_slices']} pre-training slices ({meta['pretrain_kind']} "
               f"{meta['pretrain']}), threshold {threshold} bits ({meta['seconds']:.1f} s):")
    for split, counts in meta["splits"].items():
        typer.echo(f"  {split:5}: {counts['leaked']} of {counts['images']} images within {threshold} bits of a "
                   "pre-training slice")
    typer.echo(f"  val in train: {meta['val_in_train']}; test in train: {meta['test_in_train']}")
    if meta["splits"]["test"]["leaked"] or meta["test_in_train"]:
        typer.echo("warning: test images also appear in the pre-training data or the training split; "
                   "metrics on them are optimistic", err=True)
    if out is not None:
        typer.echo(f"tables: {out}")
    if result.unreadable:
        typer.echo(f"error: {len(result.unreadable)} task image(s) could not be read and were left out:", err=True)
        for item in result.unreadable:
            typer.echo(f"  {item['error']}", err=True)
        raise typer.Exit(1)
