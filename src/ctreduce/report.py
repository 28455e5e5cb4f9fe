"""A self-contained HTML report of a run folder: what was kept, overall and per volume.

``write_report(run_dir, out_html)`` reads ``manifest.parquet`` and ``summary.json`` of a run
folder (layout: ``ctreduce.store.run``) and writes one HTML file with every image embedded as a
base64 data URI (thumbnails as PNG, charts as SVG drawn by ``core.charts``, with no plotting library), so
it opens offline and can be mailed or archived. The dataset summary and
its figures cover all volumes; thumbnail strips and distance plots are drawn for the first
``max_volumes`` volumes only (each read again from its source), which keeps the file small and
quick to open for archives of thousands of volumes.
"""

from __future__ import annotations

import base64
import html
import io
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from .core.charts import Chart
from .io.discover import load
from .io.intensity import Intensity
from .io.volume import Volume, VolumeError, VolumeSource
from .store.places import check_output_place
from .store.run import SCORE_COLUMNS, VOLUMES, RunFolder, RunFolderError

KEPT_COLOUR = (46, 158, 62)
DROPPED_COLOUR = (214, 52, 52)
STRIP_MAX_WIDTH = 960  # px; wider strips wrap onto further rows
PALETTE_COLOURS = 64  # every image is a palette PNG: a third of the size of RGB and indistinguishable
MAX_ERRORS_LISTED = 100
SWEEP_COLUMN = re.compile(r"^kept@(.+)$")

_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222; margin: 24px auto;
       max-width: 1000px; padding: 0 16px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 28px 0 8px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
h3 { font-size: 15px; margin: 0 0 2px; word-break: break-all; }
table { border-collapse: collapse; margin: 8px 0; }
td, th { padding: 2px 10px 2px 0; text-align: left; vertical-align: top; }
th { font-weight: 600; color: #555; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.meta, .note { color: #666; font-size: 13px; margin: 2px 0 6px; word-break: break-all; }
.figs { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
.volume { margin: 18px 0; padding: 10px 12px; border: 1px solid #e3e3e3; border-radius: 6px; }
.volume img { display: block; max-width: 100%; height: auto; margin: 6px 0; }
.unreadable { color: #a11; background: #fdecec; padding: 6px 10px; border-radius: 4px; }
.errors li { word-break: break-all; }
.more { background: #fff8e1; padding: 6px 10px; border-radius: 4px; }
.legend span { display: inline-block; width: 10px; height: 10px; margin: 0 4px 0 10px; vertical-align: middle; }
"""

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>{css}</style>
</head>
<body>
<h1>{title}</h1>
<p class="meta">{run_dir}</p>
{body}
</body>
</html>
"""

_VOLUME = """<section class="volume" id="volume-{number}">
<h3>{number}. {volume_id} &mdash; kept {kept} of {slices} ({percent})</h3>
<p class="meta">{source}{z_range}</p>
{strip}
{plot}
</section>
"""


def write_report(run_dir: str | os.PathLike, out_html: str | os.PathLike, *, max_volumes: int = 50,
                 thumbs_per_volume: int = 48, thumb_px: int = 48, column: str = "kept",
                 allow_changed: bool = False) -> Path:
    """Write the HTML report of the run folder ``run_dir`` to ``out_html`` (a folder: its ``report.html``);
    returns its path.

    ``column`` is the boolean manifest column that says which slices were kept (``kept``, or a
    threshold-sweep column such as ``kept@6``). Per volume, at most ``thumbs_per_volume`` slices
    of ``thumb_px`` pixels are shown (all kept slices when they fit, evenly spaced dropped ones
    filling the rest). A volume that can no longer be read gets a message instead of thumbnails.
    Sources that changed since they were reduced stop the report (RunFolderError naming them)
    unless ``allow_changed``: thumbnails of other pixels than those reduced would mislead.
    """
    if max_volumes < 0 or thumbs_per_volume < 1 or thumb_px < 8:
        raise ValueError("need max_volumes >= 0, thumbs_per_volume >= 1 and thumb_px >= 8")
    run_dir = Path(run_dir)
    out = Path(out_html)
    if out.is_dir():  # as cp into a folder
        out = out / "report.html"
    run = RunFolder.open(run_dir)
    check_output_place(out, run.inputs(), file=True)  # never into the archive (the run folder is fine)
    manifest = run.manifest()
    if column not in manifest.columns or manifest[column].dtype != bool:
        choices = ", ".join(c for c in manifest.columns if manifest[c].dtype == bool)
        raise ValueError(f"{column!r} is not a boolean manifest column; choose one of: {choices}")
    summary: dict[str, Any] = run.summary()

    groups = {vid: rows for vid, rows in manifest.groupby("volume_id", sort=False)}
    shown = list(groups)[:max_volumes]
    if shown and not allow_changed:
        check = run.check_sources(shown)
        if check.changed or check.unchecked:
            raise RunFolderError(check.message(run_dir))
    sources, sources_error = _sources(run) if shown else ({}, "")
    intensity = Intensity.parse(manifest["intensity"].iloc[0]) if len(manifest) else Intensity()

    parts = [_dataset_section(manifest, summary, groups, column)]
    parts.append(_duplicates_section(run_dir, sources, intensity, thumb_px))
    parts.append(f"<h2>Volumes</h2>\n{_legend(column)}")
    if len(groups) > len(shown):
        parts.append(f'<p class="more">Showing the first {len(shown)} of {len(groups)} volumes; '
                     f"{len(groups) - len(shown)} more are not shown. "
                     "Use --max-volumes (max_volumes in Python) to show more.</p>")
    for number, vid in enumerate(shown, 1):
        source = sources.get(vid)
        problem = sources_error or ("" if source else f"not listed in {VOLUMES}")
        parts.append(_volume_section(number, groups[vid], source, problem, column, intensity,
                                     thumbs_per_volume, thumb_px))

    page = _PAGE.format(title="ctreduce report", css=_CSS, run_dir=_esc(run_dir.resolve()), body="\n".join(parts))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out


# --- the same scan stored twice ------------------------------------------------------------------

_PAIRS_SHOWN = 5  # volume pairs drawn side by side; the table lists them all
_PAIR_SLICES = 8  # matched slices drawn per pair


def _duplicates_section(run_dir: Path, sources: dict[str, VolumeSource], intensity: Intensity,
                        thumb_px: int) -> str:
    """Volume pairs where most slices of one have a near-duplicate in the other (``ctreduce
    duplicates`` on this run), the first few drawn side by side: matched slices of one volume above
    their nearest slices in the other."""
    from .curate.duplicates import DEFAULT_MIN_SHARE, DEFAULT_THRESHOLD, HashesUnavailable, find_duplicates

    title = "<h2>Same scan stored twice?</h2>"
    try:
        found = find_duplicates([run_dir])
    except HashesUnavailable as exc:
        return f'{title}\n<p class="note">{_esc(exc)}</p>'
    meta, pairs = found.meta, found.volume_pairs
    text = (f"<p>{meta['slices_with_duplicate']:,} of {meta['slices']:,} slices have a near-duplicate "
            f"(dHash within {DEFAULT_THRESHOLD} bits) in another volume; {len(pairs)} volume pair(s) where at least "
            f"{DEFAULT_MIN_SHARE:.0%} of one volume's slices are matched in the other "
            "(<code>ctreduce duplicates</code> writes every slice's nearest match).</p>")
    if not len(pairs):
        return f"{title}\n{text}"
    rows = "\n".join(
        f"<tr><td>{_esc(r.volume_a)}</td><td class=num>{r.matched_a}/{r.slices_a} ({r.share_a:.0%})</td>"
        f"<td>{_esc(r.volume_b)}</td><td class=num>{r.matched_b}/{r.slices_b} ({r.share_b:.0%})</td></tr>"
        for r in pairs.itertuples())
    out = [title, text, "<table><tr><th>volume a</th><th>matched in b</th><th>volume b</th><th>matched in a</th>"
           f"</tr>\n{rows}\n</table>"]
    slices = found.slices
    for r in pairs.head(_PAIRS_SHOWN).itertuples():
        a, b = (r.volume_a, r.volume_b) if r.share_a >= r.share_b else (r.volume_b, r.volume_a)
        matched = slices[(slices["volume_id"] == a) & (slices["nearest_volume_id"] == b)]
        if matched.empty:  # every matched slice of a is nearer to a slice of a third volume
            continue
        picked = matched.iloc[np.unique(np.linspace(0, len(matched) - 1, min(_PAIR_SLICES, len(matched)))
                                        .round().astype(int))]
        try:
            strips = [_matched_strip(sources[vid], picked[col].to_numpy(int), intensity, thumb_px)
                      for vid, col in ((a, "slice_index"), (b, "nearest_slice_index"))]
        except Exception as exc:  # one unreadable volume never fails the report
            out.append(f'<p class="unreadable">{_esc(a)} / {_esc(b)}: no thumbnails ({_esc(exc)})</p>')
            continue
        distances = ", ".join(str(int(d)) for d in picked["distance"])
        out.append(f'<div class="volume"><h3>{_esc(a)} (above) and {_esc(b)} (below)</h3>'
                   f'<p class="meta">Hamming distances of the pairs shown: {distances} bits</p>'
                   + "".join(_img(s, f"matched slices of {a} and {b}") for s in strips) + "</div>")
    return "\n".join(out)


def _matched_strip(source: VolumeSource, index: np.ndarray, intensity: Intensity, thumb_px: int) -> bytes:
    volume = load(source, index)
    return _strip_png(volume, intensity.to_uint8(volume.hu), np.ones(len(index), bool), index, thumb_px)


# --- dataset summary -----------------------------------------------------------------------------


def _dataset_section(manifest: pd.DataFrame, summary: dict[str, Any], groups: dict[str, pd.DataFrame],
                     column: str) -> str:
    """Totals, settings, errors, the kept-fraction histogram and any threshold sweep."""
    slices, kept = len(manifest), int(manifest[column].sum())
    config = summary.get("config", {})
    first = manifest.iloc[0] if slices else {}
    method = first.get("method", config.get("method", "?"))
    threshold = first.get("threshold", config.get("threshold", "?"))
    intensity = first.get("intensity", config.get("intensity", "?"))
    params = first.get("params", "")
    totals = summary.get("totals", {})
    errors = summary.get("errors", [])

    rows = [("Volumes", f"{len(groups)}"),
            ("Slices", f"kept {kept} of {slices} slices ({_percent(kept, slices)})"),
            ("Method", f"{method}, threshold {_number(threshold)}, intensity {intensity}"),
            ("Errors", f"{len(errors)}")]
    if params:
        rows.insert(3, ("Parameters", str(params)))
    if column != "kept":
        rows.insert(2, ("Kept column", column))
    if summary.get("skipped"):
        rows.append(("Skipped files", f"{len(summary['skipped'])} (not volumes)"))
    if totals.get("volumes_pending"):
        rows.append(("Incomplete", f"{totals['volumes_pending']} volumes not reduced yet"))
    table = "\n".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in rows)
    out = [f"<h2>Dataset</h2>\n<table>\n{table}\n</table>"]

    if errors:
        items = "\n".join(f"<li><b>{_esc(e.get('volume_id') or e.get('source', '?'))}</b>: "
                          f"{_esc(e.get('error', ''))}</li>" for e in errors[:MAX_ERRORS_LISTED])
        more = (f'<p class="note">{len(errors) - MAX_ERRORS_LISTED} more errors in summary.json</p>'
                if len(errors) > MAX_ERRORS_LISTED else "")
        out.append(f'<h3>Errors</h3>\n<ul class="errors">\n{items}\n</ul>{more}')

    figures = []
    if groups:
        fractions = np.array([rows_[column].mean() for rows_ in groups.values()])
        figures.append(_svg_img(_fraction_histogram(fractions, column), "histogram of the kept fraction per volume"))
    sweep = _sweep(manifest)
    if sweep is not None:
        if len(sweep) > 1:
            figures.append(_svg_img(_sweep_plot(sweep), "kept fraction per threshold"))
        figures.append(_sweep_table(sweep))
    if figures:
        out.append('<div class="figs">\n' + "\n".join(figures) + "\n</div>")
    return "\n".join(out)


def _sweep(manifest: pd.DataFrame) -> pd.DataFrame | None:
    """Kept slices and fraction per threshold when the manifest has ``kept@<threshold>`` columns.

    The run's own threshold is marked; it comes from its ``kept@`` column, or from ``kept`` when
    the sweep has no column for it.
    """
    labels = {c: m.group(1) for c in manifest.columns if (m := SWEEP_COLUMN.match(c))}
    if not labels:
        return None
    run = float(manifest["threshold"].iloc[0]) if len(manifest) else float("nan")
    if run not in {_float(label) for label in labels.values()}:
        labels = {"kept": f"{run:g}", **labels}
    table = pd.DataFrame([{"column": c, "label": label, "threshold": _float(label), "run": _float(label) == run,
                           "kept": int(manifest[c].sum()), "fraction": float(manifest[c].mean())}
                          for c, label in labels.items()])
    return table.sort_values(["threshold", "column"], na_position="last", ignore_index=True)


def _sweep_table(sweep: pd.DataFrame) -> str:
    """The threshold sweep as a small HTML table (the run's own threshold marked)."""
    body = "\n".join(
        f'<tr><td class="num">{_esc(r.label)}{" (run)" if r.run else ""}</td>'
        f'<td class="num">{r.kept}</td><td class="num">{100 * r.fraction:.1f}%</td></tr>'
        for r in sweep.itertuples())
    return ('<table class="sweep">\n<tr><th>Threshold</th><th>Kept slices</th><th>Kept fraction</th></tr>\n'
            f"{body}\n</table>")


# --- one volume ----------------------------------------------------------------------------------


def _volume_section(number: int, rows: pd.DataFrame, source: VolumeSource | None, problem: str, column: str,
                    intensity: Intensity, thumbs_per_volume: int, thumb_px: int) -> str:
    """Title line, thumbnail strip (or why there is none) and distance plot of one volume."""
    rows = rows.sort_values("slice_index")
    kept_mask = rows[column].to_numpy(bool)
    slices, kept = len(rows), int(kept_mask.sum())
    z = rows["z_mm"].to_numpy(float)
    z_range = f" &middot; z {z[0]:.1f} to {z[-1]:.1f} mm" if slices and np.isfinite(z[[0, -1]]).all() else ""
    vid = str(rows["volume_id"].iloc[0])
    where = source.source if source is not None else str(rows["source"].iloc[0])

    strip = ""
    if source is not None and not problem:
        try:
            strip = _img(_volume_strip(source, rows, kept_mask, intensity, thumbs_per_volume, thumb_px),
                         f"{vid}: slices along z, kept ones framed green")
        except Exception as exc:  # one unreadable volume never fails the report
            problem = str(exc) if isinstance(exc, VolumeError) else f"{type(exc).__name__}: {exc}"
    if problem:
        strip = f'<p class="unreadable">Volume could not be read, no thumbnails: {_esc(problem)}</p>'

    score_name = next((c for c in SCORE_COLUMNS if c in rows.columns), None)
    distance = rows[score_name].to_numpy(float) if score_name else np.full(len(rows), np.nan)
    if np.isfinite(distance).any():
        threshold = float(rows["threshold"].iloc[0])
        plot = _svg_img(_distance_plot(rows["slice_index"].to_numpy(int), distance, kept_mask, threshold, column,
                                   f'{rows["method"].iloc[0]} {score_name}'),
                    f"{vid}: score to leader along the slices")
    else:
        plot = f'<p class="note">No scores to plot (method {_esc(rows["method"].iloc[0])}).</p>'
    return _VOLUME.format(number=number, volume_id=_esc(vid), kept=kept, slices=slices,
                          percent=_percent(kept, slices), source=_esc(where), z_range=z_range,
                          strip=strip, plot=plot)


def _volume_strip(source: VolumeSource, rows: pd.DataFrame, kept: np.ndarray, intensity: Intensity,
                  thumbs_per_volume: int, thumb_px: int) -> bytes:
    """Read the volume again and draw its thumbnail strip as PNG; raises VolumeError when it changed."""
    volume = load(source)  # a slice left out unread (--allow-gaps) has no row: compare the indices
    if not np.array_equal(volume.slice_index, rows["slice_index"].to_numpy(int)):
        raise VolumeError(f"{source.source}: it now has {volume.n_slices} readable slices but the manifest lists "
                          f"{len(rows)}; the files changed since the run")
    picked = pick_slices(kept, thumbs_per_volume)
    index = rows["slice_index"].to_numpy(int)[picked]
    return _strip_png(volume, intensity.to_uint8(volume.hu[picked]), kept[picked], index, thumb_px)


def _strip_png(volume: Volume, u8: np.ndarray, kept: np.ndarray, index: np.ndarray, thumb_px: int) -> bytes:
    """``thumbnail_strip`` of these slices of ``volume`` as PNG, each slice at its physical aspect."""
    _, row_mm, col_mm = volume.spacing
    aspect = (volume.hu.shape[1] * row_mm) / (volume.hu.shape[2] * col_mm)
    return _png(thumbnail_strip(u8, kept, index, thumb_px, aspect if np.isfinite(aspect) and aspect > 0 else 1.0))


def pick_slices(kept: np.ndarray, limit: int) -> np.ndarray:
    """Positions of at most ``limit`` slices to show, ascending.

    Every kept slice is shown when they fit, evenly spaced dropped slices filling the remaining
    room; when more than ``limit`` slices are kept, ``limit`` slices evenly spaced over the volume.
    """
    n = len(kept)
    if n <= limit:
        return np.arange(n)
    kept_at = np.flatnonzero(kept)
    if len(kept_at) > limit:
        return np.linspace(0, n - 1, limit).round().astype(int)
    dropped_at = np.flatnonzero(~kept)
    room = limit - len(kept_at)
    fill = dropped_at[np.linspace(0, len(dropped_at) - 1, room).round().astype(int)] if room else dropped_at[:0]
    return np.sort(np.concatenate([kept_at, fill]))


def thumbnail_strip(images: np.ndarray, kept: np.ndarray, index: np.ndarray, thumb_px: int,
                    aspect: float = 1.0) -> Image.Image:
    """One RGB image of uint8 slices (n, rows, cols) in a grid along z, each labelled with its index.

    Kept slices get a green frame; dropped ones are dimmed with a thin red frame. ``aspect`` is
    the physical height / width of a slice, used to fit each slice into a ``thumb_px`` square.
    """
    frame, gap, label_h = 2, 3, 12
    cell_w, cell_h = thumb_px + 2 * frame + gap, thumb_px + 2 * frame + label_h
    n = len(images)
    per_row = max(1, min(n, STRIP_MAX_WIDTH // cell_w))
    n_rows = -(-n // per_row)
    strip = Image.new("RGB", (per_row * cell_w - gap, n_rows * cell_h), "white")
    draw = ImageDraw.Draw(strip)
    font = ImageFont.load_default()
    w = thumb_px if aspect <= 1 else max(1, round(thumb_px / aspect))
    h = thumb_px if aspect >= 1 else max(1, round(thumb_px * aspect))
    for i, (image, is_kept, k) in enumerate(zip(images, kept, index, strict=True)):
        x, y = (i % per_row) * cell_w, (i // per_row) * cell_h
        small = np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR))
        if not is_kept:
            small = (small * 0.5 + 110).astype(np.uint8)
        colour = KEPT_COLOUR if is_kept else DROPPED_COLOUR
        width = frame if is_kept else 1
        draw.rectangle([x + frame - width, y + frame - width, x + frame + thumb_px - 1 + width,
                        y + frame + thumb_px - 1 + width], fill=colour)
        draw.rectangle([x + frame, y + frame, x + frame + thumb_px - 1, y + frame + thumb_px - 1], fill="black")
        strip.paste(Image.fromarray(small).convert("RGB"),
                    (x + frame + (thumb_px - w) // 2, y + frame + (thumb_px - h) // 2))
        draw.text((x + frame + thumb_px // 2, y + 2 * frame + thumb_px + 1), str(int(k)), anchor="mt", font=font,
                  fill=(40, 40, 40) if is_kept else (150, 150, 150))
    return strip


# --- figures -------------------------------------------------------------------------------------


def _fraction_histogram(fractions: np.ndarray, column: str) -> Chart:
    edges = np.linspace(0, 1, 21)
    counts, _ = np.histogram(fractions, bins=edges)
    chart = Chart(460, 240, (0.0, 1.0), (0.0, max(1.0, counts.max() * 1.05)),
                  f"kept fraction per volume ({column})", "volumes", integer_y=True)
    chart.bars(edges.tolist(), counts.tolist(), "#4a7fb5")
    return chart


def _sweep_plot(sweep: pd.DataFrame) -> Chart:
    known = sweep.dropna(subset=["threshold"])
    lo, hi = float(known["threshold"].min()), float(known["threshold"].max())
    pad = 0.05 * ((hi - lo) or 1.0)
    chart = Chart(360, 240, (lo - pad, hi + pad), (0.0, 1.02), "threshold", "kept fraction")
    chart.line(known["threshold"].tolist(), known["fraction"].tolist(), "#4a7fb5")
    run = known[known["run"]]
    chart.points(run["threshold"].tolist(), run["fraction"].tolist(), "#d98c1f", label="this run", radius=3.5)
    return chart


def _distance_plot(index: np.ndarray, distance: np.ndarray, kept: np.ndarray, threshold: float,
                   column: str, method: str) -> Chart:
    dropped = np.isfinite(distance)
    lo, hi = min(distance[dropped].min(), threshold), max(distance[dropped].max(), threshold)
    span = hi - lo or 1.0
    chart = Chart(960, 190, (index[0] - 0.5, index[-1] + 0.5), (lo - 0.25 * span, hi + 0.1 * span),
                  "slice index (inferior to superior)", method, margins=(64, 190, 10, 40))
    chart.points(index[dropped].tolist(), distance[dropped].tolist(), _hex(DROPPED_COLOUR),
                 label="dropped: score to leader")
    chart.level(threshold, "#888", label=f"threshold {threshold:g}")
    chart.ticks(index[kept].tolist(), _hex(KEPT_COLOUR), label=column)  # below the scores: room was left
    return chart


# --- helpers -------------------------------------------------------------------------------------


def _sources(run: RunFolder) -> tuple[dict[str, VolumeSource], str]:
    """The run's volumes by id, or an explanation when they cannot be read."""
    try:
        return {s.volume_id: s for s in run.sources()}, ""
    except Exception as exc:
        return {}, f"cannot read {run.path / VOLUMES}: {type(exc).__name__}: {exc}"


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.quantize(colors=PALETTE_COLOURS).save(buffer, format="PNG")
    return buffer.getvalue()


def _img(png: bytes, alt: str) -> str:
    width, height = Image.open(io.BytesIO(png)).size
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" width="{width}" height="{height}" alt="{_esc(alt)}">'


def _svg_img(chart: Chart, alt: str) -> str:
    """A chart as an image (not inline SVG: its text and ids stay out of the page's)."""
    data = base64.b64encode(chart.svg().encode("utf-8")).decode("ascii")
    return (f'<img src="data:image/svg+xml;base64,{data}" width="{chart.width}" height="{chart.height}" '
            f'alt="{_esc(alt)}">')


def _legend(column: str) -> str:
    return (f'<p class="note legend">Thumbnails along z, slice index below each.'
            f'<span style="background:rgb{KEPT_COLOUR}"></span>{_esc(column)}'
            f'<span style="background:rgb{DROPPED_COLOUR}"></span>dropped (dimmed)</p>')


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _percent(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "n/a"


def _float(text: str) -> float:
    """A sweep label as a number; NaN when it is none (such columns are listed last)."""
    try:
        return float(text)
    except ValueError:
        return float("nan")


def _number(value: Any) -> Any:
    return f"{value:g}" if isinstance(value, float) else value
