"""A picture of a run: metrics.jsonl -> training_curves.png, one panel per metric, runs overlaid.

    python -m utils.plot RUN_DIR                                  # -> RUN_DIR/training_curves.png
    python -m utils.plot out/dpo out/ipo --output dpo_vs_ipo.png  # several runs in one picture

Every step draws its own picture at the end of training (utils/run.py `finish`). Panels come from
the keys the file holds, so a new metric gets a panel without a change here: `train/x` and
`eval/x` share the panel `x` (solid and dashed); step 3's keys carry no split and are training
curves. `loss` comes first, then learning rates, then the rest in the order the file names them.
Bookkeeping is left out, since it says how fast the machine ran, not what the model learned:
wall-clock stamps and timings (`time`, `time/*`), cumulative counters (`count/*`), device memory
(`memory/*`), throughput (`tokens_per_s`) and the epoch index. Step 3's `phase/*` (seconds of
each part of a round, generated tokens per second) are drawn: where a round's time goes is what a
user tunes.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

METRICS = "metrics.jsonl"
PICTURE = "training_curves.png"
SPLITS = ("train", "eval")
BOOKKEEPING_NAMES = {"step", "time", "epoch", "tokens_per_s"}
BOOKKEEPING_FAMILIES = ("time/", "count/", "memory/")
COLUMNS = 4
LOG_SPAN = 100  # positive values spanning more than this factor get a log axis
LEGEND_INCHES = 0.5  # the strip above the panels that holds the legend


class MetricsError(ValueError):
    """A run folder without a readable metrics.jsonl."""


@dataclass
class Run:
    label: str
    path: Path                                      # its metrics.jsonl
    keys: list[str]                                 # every metric key, in the order the file first names it
    series: dict[str, dict[int, float]]             # key -> {step: value}


def split_key(key: str) -> tuple[str, str]:
    """`eval/accuracy` -> ("eval", "accuracy"); a key without a split prefix (step 3) is a training curve."""
    for split in SPLITS:
        if key.startswith(split + "/"):
            return split, key[len(split) + 1:]
    return "train", key


def is_bookkeeping(name: str) -> bool:
    return name in BOOKKEEPING_NAMES or name.startswith(BOOKKEEPING_FAMILIES)


def panels(keys: Iterable[str]) -> list[str]:
    """Panel titles, in drawing order, for metric keys: each title is a metric name without its
    split, as metrics.jsonl spells it."""
    names: list[str] = []
    for key in keys:
        name = split_key(key)[1]
        if not is_bookkeeping(name) and name not in names:
            names.append(name)

    def place(name: str) -> int:
        return 0 if name == "loss" else 1 if name.rsplit("/", 1)[-1] == "lr" else 2

    return sorted(names, key=place)  # stable: within each place, the file's order


def read_run(path: str | Path) -> Run:
    """A run folder (or its metrics.jsonl). A step logged twice keeps its last value: a resumed run
    appends the steps after its checkpoint again. Non-finite values are left out: one inf would
    flatten the whole axis."""
    given = Path(path)
    file = given if given.is_file() else given / METRICS
    if not file.is_file():
        raise MetricsError(f"{given}: no {METRICS} (is it a step's --output_dir?)")
    keys: list[str] = []
    series: dict[str, dict[int, float]] = {}
    with open(file, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise MetricsError(f"{file}:{n}: not a JSON line ({e.msg})") from None
            step = row.get("step")
            if not isinstance(step, (int, float)):
                raise MetricsError(f"{file}:{n}: no \"step\"")
            for key, value in row.items():
                if key == "step" or not isinstance(value, (int, float)):
                    continue
                if key not in series:
                    keys.append(key)
                    series[key] = {}
                if math.isfinite(value):
                    series[key][int(step)] = float(value)
    return Run(str(file.parent), file, keys, series)


def draw(runs: list[Run], output: str | Path) -> list[str]:
    """Draw `runs` (each a colour; training solid, evaluation dashed with markers) into one PNG at
    `output`; returns the panel titles. Agg, matplotlib's file renderer: no display needed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    titles = panels(k for run in runs for k in run.keys)
    assert titles, "draw() needs at least one metric to draw"
    cols = min(COLUMNS, len(titles))
    rows = math.ceil(len(titles) / cols)
    width, height = 4.0 * cols, 2.8 * rows + LEGEND_INCHES
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    # fixed margins: a layout engine measures every tick label and doubles the drawing time
    margins = {"left": 0.6 / width, "right": 1 - 0.2 / width, "bottom": 0.5 / height,
               "top": 1 - (LEGEND_INCHES + 0.3) / height, "wspace": 0.35, "hspace": 0.55}
    axes = fig.subplots(rows, cols, squeeze=False, gridspec_kw=margins).ravel()
    style = {"train": {"linestyle": "-"}, "eval": {"linestyle": "--", "marker": "o", "markersize": 3}}
    legend: dict[tuple[int, int], tuple[str, Line2D]] = {}
    for ax, title in zip(axes, titles):
        drawn: list[float] = []
        for i, run in enumerate(runs):
            for key in run.keys:
                split, name = split_key(key)
                points = sorted(run.series[key].items())
                if name != title or not points:
                    continue
                steps, values = zip(*points)
                drawn += values
                # a lone point draws no line: mark it
                marker = {"marker": "o", "markersize": 3} if len(points) == 1 else {}
                ax.plot(steps, values, color=f"C{i % 10}", linewidth=1.2, **{**style[split], **marker})
                legend.setdefault((i, SPLITS.index(split)), (
                    f"{run.label} ({split})", Line2D([], [], color=f"C{i % 10}", linewidth=1.2, **style[split])))
        if drawn and min(drawn) > 0 and max(drawn) > LOG_SPAN * min(drawn):
            ax.set_yscale("log")  # e.g. a perplexity falling from 400 to 1: on a linear axis the end is flat
        else:
            ax.yaxis.set_major_locator(MaxNLocator(5))  # fewer tick labels: text is most of the drawing time
        ax.xaxis.set_major_locator(MaxNLocator(5, integer=True))
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    for ax in axes[len(titles):]:
        ax.set_visible(False)
    entries = [legend[k] for k in sorted(legend)]  # each run's training curve, then its evaluation
    fig.legend([e[1] for e in entries], [e[0] for e in entries], loc="upper center", ncols=min(len(entries), 4),
               fontsize=9, frameon=False)
    fig.savefig(output, dpi=100)
    return titles


def picture_of_run(run_dir: str | Path) -> str:
    """A finished step's picture: RUN_DIR/training_curves.png from its metrics.jsonl. Returns the
    line to print; a run with nothing to draw gets no picture, and says so."""
    run = read_run(run_dir)
    if not panels(run.keys):
        return f"[plot] {run.path} holds no metrics to draw: no {PICTURE}"
    output = run.path.parent / PICTURE
    titles = draw([run], output)
    return f"[plot] {output}: {len(titles)} panels"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m utils.plot", description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help=f"a step's --output_dir (or its {METRICS})")
    parser.add_argument("--output", help=f"the PNG to write (default: RUN_DIR/{PICTURE} for one run, "
                                         f"./{PICTURE} for several)")
    args = parser.parse_args(argv)
    try:
        runs = [read_run(r) for r in args.runs]
    except MetricsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    empty = [r.path for r in runs if not panels(r.keys)]
    if empty:
        print(f"error: {empty[0]} holds no metrics to draw", file=sys.stderr)
        return 2
    output = Path(args.output) if args.output else runs[0].path.parent / PICTURE if len(runs) == 1 else Path(PICTURE)
    output.parent.mkdir(parents=True, exist_ok=True)
    titles = draw(runs, output)
    print(f"[plot] {output}: {len(runs)} run{'s' if len(runs) > 1 else ''}, {len(titles)} panels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
