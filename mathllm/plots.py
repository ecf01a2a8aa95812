"""Every plot of the workbench: plotly figures to explore in the notebooks, matplotlib PNGs for ``figures/``.

One section per topic, in notebook order; add a new section at the end rather than growing another one.

    >>> fig = plot_data_distributions(dataset)            # plotly, shown inline with fig.show()
    >>> save_data_distributions_png(dataset)              # figures/01_data_distributions.png

Sections: data (notebook 01), training (02), evaluation (03), playground (04).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mathllm.utils import REPO_ROOT

FIGURES_DIR = REPO_ROOT / "figures"
SPLIT_COLORS = {"train": "#4C72B0", "val": "#DD8452", "test": "#55A868"}


def _color(name: str, index: int) -> str:
    palette = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860"]
    return SPLIT_COLORS.get(name, palette[index % len(palette)])


# ----------------------------------------------------------------------------------------------
# Data (notebook 01): how generated problems are distributed, split by split
# ----------------------------------------------------------------------------------------------

DATA_PANELS = {
    "operand_digits": "digits per operand",
    "num_carries": "carries per problem",
    "num_tokens": "sequence length (tokens)",
}


def data_distributions(splits: Mapping[str, Any]) -> dict[str, Any]:
    """The numbers behind the data plots, from ``{"train": examples, ...}`` (a ``Dataset`` works too).

    ``fractions[panel][split] = (values, fraction of the split's examples)``; ``carries_by_digits`` is a
    ``[num_digits, num_carries]`` table of fractions per row, over all splits together.
    """
    from mathllm.data import describe

    described = {name: describe(splits[name]) for name in splits}
    fractions: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {panel: {} for panel in DATA_PANELS}
    for name, columns in described.items():
        for panel in DATA_PANELS:
            values, counts = np.unique(columns[panel], return_counts=True)
            fractions[panel][name] = (values, counts / max(counts.sum(), 1))
    digits = np.concatenate([c["num_digits"] for c in described.values()])
    carries = np.concatenate([c["num_carries"] for c in described.values()])
    table = np.zeros((int(digits.max(initial=0)) + 1, int(carries.max(initial=0)) + 1))
    np.add.at(table, (digits, carries), 1)
    table = table[1:]  # no problem has 0 digits
    table = table / np.maximum(table.sum(axis=1, keepdims=True), 1)
    return {"fractions": fractions, "carries_by_digits": table, "sizes": {n: len(splits[n]) for n in splits}}


def plot_data_distributions(splits: Mapping[str, Any], title: str | None = None):
    """Plotly figure, 2x2: digits per operand, carries, sequence lengths (one bar per split, as fractions of
    the split: the splits should look alike) and the carries of each problem length as a heat map."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    stats = data_distributions(splits)
    panel_titles = list(DATA_PANELS.values()) + ["carries per problem, by its longest operand"]
    fig = make_subplots(rows=2, cols=2, subplot_titles=panel_titles, horizontal_spacing=0.1, vertical_spacing=0.16)
    for i, panel in enumerate(DATA_PANELS):
        row, col = divmod(i, 2)
        for j, (name, (values, fraction)) in enumerate(stats["fractions"][panel].items()):
            fig.add_trace(go.Bar(x=values, y=fraction, name=f"{name} ({stats['sizes'][name]:,})",
                                 marker_color=_color(name, j), legendgroup=name, showlegend=(i == 0),
                                 hovertemplate=f"{name}<br>%{{x}}: %{{y:.1%}}<extra></extra>"),
                          row=row + 1, col=col + 1)
        fig.update_xaxes(title_text=DATA_PANELS[panel], dtick=1 if panel != "num_tokens" else None,
                         row=row + 1, col=col + 1)
        fig.update_yaxes(title_text="fraction of split", tickformat=".0%", row=row + 1, col=col + 1)
    table = stats["carries_by_digits"]
    fig.add_trace(go.Heatmap(z=table, x=list(range(table.shape[1])), y=list(range(1, table.shape[0] + 1)),
                             colorscale="Blues", zmin=0, showscale=False, texttemplate="%{z:.0%}",
                             hovertemplate="%{y} digits, %{x} carries: %{z:.1%}<extra></extra>"), row=2, col=2)
    fig.update_xaxes(title_text="carries", dtick=1, row=2, col=2)
    fig.update_yaxes(title_text="digits of the longest operand", dtick=1, row=2, col=2)
    fig.update_layout(barmode="group", height=650, width=950, title=title or "Generated problems",
                      legend_title_text="split", margin=dict(t=80, b=40))
    return fig


def save_data_distributions_png(splits: Mapping[str, Any], path: str | Path = FIGURES_DIR / "01_data_distributions.png",
                                title: str | None = None) -> Path:
    """The same four panels as ``plot_data_distributions``, with matplotlib, saved as a PNG; returns the path."""
    from matplotlib.figure import Figure

    stats = data_distributions(splits)
    fig = Figure(figsize=(11, 7.5), dpi=110, layout="constrained")
    axes = fig.subplots(2, 2)
    for i, panel in enumerate(DATA_PANELS):
        ax = axes.flat[i]
        groups = stats["fractions"][panel]
        width = 0.8 / max(len(groups), 1)
        for j, (name, (values, fraction)) in enumerate(groups.items()):
            ax.bar(values + (j - (len(groups) - 1) / 2) * width, fraction, width=width, color=_color(name, j),
                   label=f"{name} ({stats['sizes'][name]:,})")
        ax.set_title(DATA_PANELS[panel])
        ax.set_xlabel(DATA_PANELS[panel])
        ax.set_ylabel("fraction of split")
        if panel != "num_tokens":
            ax.set_xticks(np.unique(np.concatenate([v for v, _ in groups.values()])))
    axes.flat[0].legend(title="split")
    ax = axes.flat[3]
    table = stats["carries_by_digits"]
    ax.imshow(table, cmap="Blues", vmin=0, aspect="auto", origin="lower",
              extent=(-0.5, table.shape[1] - 0.5, 0.5, table.shape[0] + 0.5))
    for (r, c), value in np.ndenumerate(table):
        if value > 0:
            ax.text(c, r + 1, f"{value:.0%}", ha="center", va="center", fontsize=8,
                    color="white" if value > 0.6 * table.max() else "black")
    ax.set_xticks(range(table.shape[1]))
    ax.set_yticks(range(1, table.shape[0] + 1))
    ax.set_xlabel("carries")
    ax.set_ylabel("digits of the longest operand")
    ax.set_title("carries per problem, by its longest operand")
    fig.suptitle(title or "Generated problems")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path




# ----------------------------------------------------------------------------------------------
# Training (notebook 02): loss and validation curves, drawn live while a model trains
# ----------------------------------------------------------------------------------------------

def _curves(history: Sequence[Mapping[str, Any]]) -> dict[str, tuple[list[float], list[float]]]:
    """{"loss": (steps, values), "val_loss": ..., "val_exact_match": ...} from a metrics history."""
    out: dict[str, tuple[list[float], list[float]]] = {}
    for key in ("loss", "val_loss", "val_exact_match"):
        pts = [(m["step"], m[key]) for m in history if key in m]
        out[key] = ([p[0] for p in pts], [p[1] for p in pts])
    return out


def plot_training_curves(history: Sequence[Mapping[str, Any]], title: str = "Training"):
    """Plotly: training/validation loss (log scale) and validation exact match against the step."""
    from plotly.subplots import make_subplots
    import plotly.graph_objects as go

    c = _curves(history)
    fig = make_subplots(rows=1, cols=2, subplot_titles=["completion loss", "validation exact match"])
    fig.add_trace(go.Scatter(x=c["loss"][0], y=c["loss"][1], name="train loss", mode="lines"), row=1, col=1)
    fig.add_trace(go.Scatter(x=c["val_loss"][0], y=c["val_loss"][1], name="val loss", mode="lines+markers"),
                  row=1, col=1)
    fig.add_trace(go.Scatter(x=c["val_exact_match"][0], y=c["val_exact_match"][1], name="val exact match",
                             mode="lines+markers"), row=1, col=2)
    fig.update_yaxes(type="log", row=1, col=1)
    fig.update_yaxes(range=[0, 1.02], tickformat=".0%", row=1, col=2)
    fig.update_xaxes(title_text="step")
    fig.update_layout(height=380, width=950, title=title)
    return fig


def training_curves_figure(history: Sequence[Mapping[str, Any]], title: str = "Training"):
    """Matplotlib version of ``plot_training_curves`` (for PNGs and for live updates)."""
    from matplotlib.figure import Figure

    c = _curves(history)
    fig = Figure(figsize=(11, 3.8), dpi=100, layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.plot(*c["loss"], label="train loss")
    if c["val_loss"][0]:
        ax_loss.plot(*c["val_loss"], "o-", label="val loss")
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("step")
    ax_loss.set_title("completion loss")
    ax_loss.legend()
    ax_acc.plot(*c["val_exact_match"], "o-", color="#55A868")
    ax_acc.set_ylim(0, 1.02)
    ax_acc.set_xlabel("step")
    ax_acc.set_title("validation exact match")
    ax_acc.yaxis.set_major_formatter(lambda v, _: f"{v:.0%}")
    fig.suptitle(title)
    return fig


def save_training_curves_png(history: Sequence[Mapping[str, Any]], path: str | Path = FIGURES_DIR / "02_training_curves.png",
                             title: str = "Training") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    training_curves_figure(history, title).savefig(path)
    return path


class LiveTrainingPlot:
    """A ``train(..., on_log=...)`` callback that redraws the curves in place in a notebook.

    >>> # live = LiveTrainingPlot(); train(cfg, on_log=live); live.close()
    """

    def __init__(self, every: int = 1, title: str = "Training (live)"):
        self.history: list[dict[str, Any]] = []
        self.every, self.title, self._calls, self._handle = every, title, 0, None

    def __call__(self, metrics: Mapping[str, Any]) -> None:
        self.history.append(dict(metrics))
        self._calls += 1
        if self._calls % self.every == 0 or "val_exact_match" in metrics:
            self.redraw()

    def redraw(self) -> None:
        from IPython.display import display

        fig = training_curves_figure(self.history, self.title)
        if self._handle is None:
            self._handle = display(fig, display_id=True)
        else:
            self._handle.update(fig)

    def close(self) -> None:
        if self.history:
            self.redraw()


# ----------------------------------------------------------------------------------------------
# Evaluation (notebook 03): accuracy broken down by digits, carries, operands
# ----------------------------------------------------------------------------------------------

BREAKDOWNS = {"by_num_digits": "digits of the longest operand", "by_num_carries": "number of carries",
              "by_num_operands": "number of operands"}


def plot_accuracy_breakdown(results: Mapping[str, Any], title: str = "Exact match on the test split"):
    """Plotly bars: exact match per number of digits, carries and operands (hover shows the count)."""
    from plotly.subplots import make_subplots
    import plotly.graph_objects as go

    keys = [k for k in BREAKDOWNS if results.get(k)]
    fig = make_subplots(rows=1, cols=len(keys), subplot_titles=[BREAKDOWNS[k] for k in keys])
    for i, key in enumerate(keys, 1):
        table = results[key]
        fig.add_trace(go.Bar(x=list(table), y=[v["exact_match"] for v in table.values()],
                             customdata=[v["count"] for v in table.values()], showlegend=False,
                             text=[f"{v['exact_match']:.1%}" for v in table.values()], textposition="outside",
                             hovertemplate="%{x}: %{y:.2%} of %{customdata} examples<extra></extra>"), row=1, col=i)
        fig.update_xaxes(title_text=BREAKDOWNS[key], type="category", row=1, col=i)
    fig.update_yaxes(range=[0, 1.1], tickformat=".0%")
    fig.update_layout(height=360, width=950, title=title)
    return fig


def save_accuracy_breakdown_png(results: Mapping[str, Any], path: str | Path = FIGURES_DIR / "03_accuracy_breakdown.png",
                                title: str = "Exact match on the test split") -> Path:
    from matplotlib.figure import Figure

    keys = [k for k in BREAKDOWNS if results.get(k)]
    fig = Figure(figsize=(4 * len(keys), 3.6), dpi=100, layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(keys)))
    for ax, key in zip(axes, keys):
        table = results[key]
        values = [v["exact_match"] for v in table.values()]
        bars = ax.bar(list(table), values, color="#4C72B0")
        for bar, v, cell in zip(bars, values, table.values()):
            ax.text(bar.get_x() + bar.get_width() / 2, v + 0.02, f"{v:.1%}\nn={cell['count']}", ha="center",
                    fontsize=8)
        ax.set_ylim(0, 1.2)
        ax.set_xlabel(BREAKDOWNS[key])
        ax.set_ylabel("exact match")
    fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


# ----------------------------------------------------------------------------------------------
# Playground (notebook 04): how sure the model was of each token it wrote
# ----------------------------------------------------------------------------------------------

def plot_token_probabilities(tokens: Sequence[str], probs: Sequence[float], title: str = ""):
    """Matplotlib bar chart: one bar per generated token, its probability; low-confidence tokens in red."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(4.0, 0.32 * len(tokens) + 1.5), 2.6), dpi=100, layout="constrained")
    ax = fig.subplots()
    colors = ["#C44E52" if p < 0.5 else "#4C72B0" for p in probs]
    ax.bar(range(len(tokens)), probs, color=colors)
    ax.set_xticks(range(len(tokens)))
    ax.set_xticklabels([t.replace("<think>", "<th>").replace("</think>", "</th>") for t in tokens],
                       rotation=90, fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("probability")
    ax.set_title(f"probability of each generated token{': ' + title if title else ''}", fontsize=9)
    return fig


__all__: Sequence[str] = [
    "FIGURES_DIR", "data_distributions", "plot_data_distributions", "save_data_distributions_png",
    "plot_training_curves", "training_curves_figure", "save_training_curves_png", "LiveTrainingPlot",
    "plot_accuracy_breakdown", "save_accuracy_breakdown_png", "plot_token_probabilities",
]
