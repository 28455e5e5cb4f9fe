"""The experiment's results table (``OUT/results.md``), its speed-ups and plots, from the grid's rows.

The table says what its numbers compare: the speed-up is a ratio of pre-training CPU seconds, shown
beside the images each cell saw and the threads it ran with; leak counts carry a mark where the task's
images and the pre-training archive are both phantoms, which share one anatomy.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..core.devices import ThreadPolicy


def speedups(table: pd.DataFrame) -> pd.DataFrame:
    """Pre-training speed-up of each cell against the ALL reduction of the same dataset and SSL: the ratio of
    CPU seconds (comparable where thread counts differ, unlike wall seconds); none without them."""
    table = table.copy()
    base = table[table["method"] == "all"].set_index(["dataset", "ssl"])["pretrain_cpu_s"]
    table["speedup_vs_all"] = [
        base.get((d, s)) / t if (d, s) in base.index and pd.notna(base.get((d, s))) and pd.notna(t) and t else None
        for d, s, t in zip(table["dataset"], table["ssl"], table["pretrain_cpu_s"], strict=True)
    ]
    return table


def results_markdown(table: pd.DataFrame, tasks: list[str], threads: ThreadPolicy) -> str:
    """The paper's table: reduction, kept slices, pre-training work (images seen, CPU and wall seconds, threads)
    and speed-up, metrics per task; the legend says what the speed-up and the leak counts compare."""
    header = ["Dataset", "Reduction", "SSL", "Kept slices", "Kept %", "Images seen", "CPU s", "Wall s", "Threads",
              "Speed-up"]
    for task in tasks:
        header += [f"{task} AUC", f"{task} F1", f"{task} ACC", f"{task} test leaks"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def fmt(mean, sd) -> str:
        if mean is None or pd.isna(mean):
            return "-"
        return f"{mean:.3f} ± {sd:.3f}" if sd is not None and not pd.isna(sd) else f"{mean:.3f}"

    def number(value, digits: int = 1) -> str:
        return "-" if value is None or pd.isna(value) else f"{value:.{digits}f}"

    for _, row in table.iterrows():
        cells = [row["dataset"], row["reduction"], row["ssl"], str(int(row["kept_slices"])),
                 f"{100 * row['kept_fraction']:.1f}", str(int(row["images_seen"])), number(row["pretrain_cpu_s"]),
                 number(row["pretrain_s"]), number(row["threads"], 0),
                 "-" if pd.isna(row.get("speedup_vs_all")) else f"{row['speedup_vs_all']:.1f}x"]
        for task in tasks:
            for label in ("AUC", "F1", "ACC"):
                cells.append(fmt(row.get(f"{task} {label}"), row.get(f"{task} {label} sd")))
            cells.append(_leaks(row, task))
        lines.append("| " + " | ".join(cells) + " |")
    legend = ["Speed-up: the ALL cell's pre-training CPU seconds (same dataset and SSL) over this cell's; compare it "
              "with the ratio of images seen. CPU s (every thread of the training process) and Wall s are the "
              "pre-training's."]
    counts = sorted({int(t) for t in table["threads"].dropna()})
    if len(counts) > 1:
        legend.append(f"Threads: the cells ran with {', '.join(map(str, counts))} torch threads (some were cached "
                      "from an earlier run): compare CPU seconds, not wall seconds.")
    elif counts:
        this_run = counts[0] == threads.torch_threads
        chosen = f", chosen once at the start of the run ({threads.source})" if this_run else ""
        legend.append(f"Threads: every cell's training ran with {counts[0]} torch thread(s){chosen}.")
    legend.append("Test leaks: test images within 6 bits (dHash) of a pre-training slice, and in brackets of a "
                  "training image (`ctreduce leakage`); metrics on leaked images are optimistic.")
    if any(table.get(f"{task} phantom anatomy", pd.Series(dtype=bool)).any() for task in tasks):
        legend.append("† The task's images are synthetic phantom slices and the pre-training archive holds phantom "
                      "volumes: every phantom has the same anatomy (other seeds, noise and nodules), so held-out "
                      "slices match pre-training slices by dHash without being the same images.")
    return "\n".join(lines) + "\n\n" + "\n\n".join(legend) + "\n"


def _leaks(row: pd.Series, task: str) -> str:
    if pd.isna(row.get(f"{task} test leaks", float("nan"))):
        return "-"
    mark = "†" if row.get(f"{task} phantom anatomy") is True else ""
    return (f"{int(row[f'{task} test leaks'])}/{int(row[f'{task} test images'])}{mark} "
            f"({int(row[f'{task} test in train'])})")


def plot_results(table: pd.DataFrame, tasks: list[str], folder: Path) -> None:
    """AUC against kept fraction per task, and pre-training time per reduction."""
    from matplotlib.figure import Figure

    folder.mkdir(parents=True, exist_ok=True)
    for task in tasks:
        column = f"{task} AUC"
        if column not in table:
            continue
        fig = Figure(figsize=(5, 3.5))
        ax = fig.subplots()
        for ssl, group in table.groupby("ssl"):
            ax.errorbar(group["kept_fraction"], group[column], yerr=group[f"{column} sd"].fillna(0), fmt="o",
                        capsize=3, label=ssl)
            for _, row in group.iterrows():
                ax.annotate(row["reduction"], (row["kept_fraction"], row[column]), fontsize=7,
                            xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel("kept fraction of slices")
        ax.set_ylabel("test AUC")
        ax.set_title(task)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(folder / f"auc_vs_kept_{_slug(task)}.png", dpi=120)
    fig = Figure(figsize=(5, 3.5))
    ax = fig.subplots()
    labels = [f"{r.reduction}\n{r.ssl}" for r in table.itertuples()]
    ax.bar(range(len(table)), table["pretrain_s"])
    ax.set_xticks(range(len(table)), labels, fontsize=7)
    ax.set_ylabel("pre-training wall time (s)")
    fig.tight_layout()
    fig.savefig(folder / "pretrain_time.png", dpi=120)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_")
