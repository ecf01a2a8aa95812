"""Every plot of the workbench: plotly figures to explore in the notebooks, matplotlib PNGs for ``figures/``.

One section per topic, in notebook order; add a new section at the end rather than growing another one::

    fig = plot_data_distributions(dataset)            # plotly, shown inline with fig.show()
    save_data_distributions_png(dataset)              # figures/01_data_distributions.png

Sections: data (notebook 01), training (02), evaluation (03), playground (04), interpretability (05-07),
reasoning without instructions (08), latent reasoning in depth (09), which tasks need a trace (10).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mathllm.data import describe
from mathllm.tokenizer import VOCAB
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

    live = LiveTrainingPlot(); train(cfg, on_log=live); live.close()
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


# ----------------------------------------------------------------------------------------------
# Interpretability (notebooks 05-07): attention maps, probes, logit lens, patching, faithfulness.
# The numbers come from mathllm.interp; these functions only draw them.
# ----------------------------------------------------------------------------------------------

def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def _short(label: str) -> str:
    return label.replace("<think>", "<th>").replace("</think>", "</th>")


def plot_attention_heads(att, title: str | None = None, zmax: float = 1.0):
    """Plotly summary view: every layer (rows) and head (columns) of an ``AttentionPatterns``; hover a cell for
    the query, the key and the weight. Queries run down, keys across."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    L, H = att.pattern.shape[:2]
    labels = [_short(x) for x in att.labels]
    fig = make_subplots(rows=L, cols=H, subplot_titles=[f"head {l}.{h}" for l in range(L) for h in range(H)],
                        horizontal_spacing=0.02, vertical_spacing=0.04)
    for l in range(L):
        for h in range(H):
            fig.add_trace(go.Heatmap(z=np.round(att.pattern[l, h], 3), x=labels, y=labels, zmin=0, zmax=zmax,
                                     colorscale="Blues", showscale=(l == 0 and h == 0),
                                     hovertemplate=f"head {l}.{h}<br>query %{{y}}<br>key %{{x}}<br>"
                                                   "weight %{z:.3f}<extra></extra>"),
                          row=l + 1, col=h + 1)
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False, autorange="reversed")
    what = f"mean over {att.num_examples} problems like {att.text}" if att.num_examples > 1 else att.text
    fig.update_layout(height=230 * L + 80, width=230 * H + 120, title=title or f"Attention, every head: {what}",
                      margin=dict(t=90, l=30, r=30, b=30))
    return fig


def plot_attention_head(att, layer: int, head: int, title: str | None = None):
    """Plotly per-head view: one head's pattern with the tokens (and their kinds) on both axes."""
    import plotly.graph_objects as go

    labels = [_short(x) for x in att.labels]
    fig = go.Figure(go.Heatmap(z=np.round(att.pattern[layer, head], 3), x=labels, y=labels, zmin=0, zmax=1,
                               colorscale="Blues", colorbar=dict(title="weight"),
                               hovertemplate="query %{y}<br>key %{x}<br>weight %{z:.3f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", title_text="query (the position that writes the next token)",
                     tickfont=dict(size=9))
    fig.update_xaxes(title_text="key", tickangle=-90, tickfont=dict(size=9))
    fig.update_layout(height=700, width=760, title=title or f"head {layer}.{head}")
    return fig


def save_attention_heads_png(att, path: str | Path = FIGURES_DIR / "05_attention_heads.png",
                             title: str | None = None) -> Path:
    """Matplotlib version of ``plot_attention_heads`` with the token labels on the outer axes."""
    from matplotlib.figure import Figure

    L, H = att.pattern.shape[:2]
    labels = [_short(x) for x in att.labels]
    P = len(labels)
    fig = Figure(figsize=(3.3 * H + 1.2, 3.3 * L + 0.8), dpi=110, layout="constrained")
    axes = np.atleast_2d(fig.subplots(L, H))
    for l in range(L):
        for h in range(H):
            ax = axes[l, h]
            ax.imshow(att.pattern[l, h], cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(f"head {l}.{h}", fontsize=9)
            ax.set_xticks(range(P))
            ax.set_yticks(range(P))
            ax.set_xticklabels(labels if l == L - 1 else [], rotation=90, fontsize=4.5)
            ax.set_yticklabels(labels if h == 0 else [], fontsize=4.5)
            ax.tick_params(length=0)
    what = f"mean over {att.num_examples} problems like {att.text}" if att.num_examples > 1 else att.text
    fig.suptitle(title or f"Attention (query down, key across): {what}", fontsize=10)
    return _save(fig, path)


def _probe_text(results, q: int) -> list[list[str]]:
    ok = results.meaningful()[q]
    acc = results.accuracy[q]
    return [["" if np.isnan(a) else (f"{100 * a:.0f}" if good else f"({100 * a:.0f})") for a, good in zip(row, oks)]
            for row, oks in zip(acc, ok)]


def plot_probe_accuracy(results, quantities: Sequence[str] | None = None, title: str | None = None):
    """Plotly heatmap of held-out probe accuracy, stream (rows) x position kind (columns), one quantity at a time
    (the menu switches). Hover shows the shuffled-label control, the majority baseline and the test size;
    numbers in parentheses do not beat those baselines clearly (``ProbeResults.meaningful``)."""
    import plotly.graph_objects as go

    describe_quantity = results.describe
    names = list(results.quantities) if quantities is None else list(quantities)
    fig = go.Figure()
    n_test = np.broadcast_to(results.n_test[None, :], results.accuracy.shape[1:])
    for i, name in enumerate(names):
        q = results.quantities.index(name)
        custom = np.stack([np.round(results.control[q], 3), np.round(results.majority[q], 3), n_test], axis=-1)
        fig.add_trace(go.Heatmap(
            z=np.round(results.accuracy[q], 3), x=[_short(k) for k in results.kinds], y=results.streams,
            zmin=0, zmax=1, colorscale="Viridis", visible=(i == 0), text=_probe_text(results, q),
            texttemplate="%{text}", textfont=dict(size=8), customdata=custom, colorbar=dict(title="held-out"),
            hovertemplate=(f"{name}<br>%{{y}} @ %{{x}}<br>held-out %{{z:.1%}}<br>shuffled-label control "
                           "%{customdata[0]:.1%}<br>majority class %{customdata[1]:.1%}<br>n test "
                           "%{customdata[2]}<extra></extra>")))
    buttons = [dict(label=name, method="update",
                    args=[{"visible": [j == i for j in range(len(names))]},
                          {"title": f"{title or 'Probe accuracy'}: {name} ({describe_quantity(name)})"}])
               for i, name in enumerate(names)]
    fig.update_layout(
        updatemenus=[dict(buttons=buttons, direction="down", x=1.0, xanchor="right", y=1.18, yanchor="top")],
        title=f"{title or 'Probe accuracy'}: {names[0]} ({describe_quantity(names[0])})",
        height=360, width=1100, margin=dict(t=90, b=80))
    fig.update_yaxes(autorange="reversed", title_text="residual stream")
    fig.update_xaxes(tickangle=-90, tickfont=dict(size=9), title_text="position kind")
    return fig


def save_probe_accuracy_png(results, quantities: Sequence[str],
                            path: str | Path = FIGURES_DIR / "06_probe_accuracy.png", title: str | None = None) -> Path:
    """One panel per quantity: held-out accuracy (%) per stream x position kind; grey, in parentheses: cells
    that do not beat the shuffled-label control and the majority class clearly."""
    from matplotlib.figure import Figure

    describe_quantity = results.describe
    K, S = len(results.kinds), len(results.streams)
    fig = Figure(figsize=(max(10.0, 0.33 * K + 2), 1.3 + (0.32 * S + 0.75) * len(quantities)), dpi=110,
                 layout="constrained")
    axes = np.atleast_1d(fig.subplots(len(quantities), 1))
    for ax, name in zip(axes, quantities):
        q = results.quantities.index(name)
        acc = results.accuracy[q]
        image = ax.imshow(np.ma.masked_invalid(acc), cmap="viridis", vmin=0, vmax=1, aspect="auto",
                          interpolation="nearest")
        good = results.meaningful()[q]
        for (s, k), a in np.ndenumerate(acc):
            if not np.isnan(a):
                ax.text(k, s, f"{100 * a:.0f}" if good[s, k] else f"({100 * a:.0f})", ha="center", va="center",
                        fontsize=5.5, color=("black" if a > 0.6 else "white") if good[s, k] else "#bbbbbb")
        ax.set_yticks(range(S))
        ax.set_yticklabels(results.streams, fontsize=7)
        ax.set_xticks(range(K))
        ax.set_xticklabels([_short(k) for k in results.kinds] if ax is axes[-1] else [], rotation=90, fontsize=7)
        ax.set_title(f"{name}: {describe_quantity(name)}", fontsize=9, loc="left")
    fig.colorbar(image, ax=list(axes), shrink=0.6, label="held-out accuracy")
    fig.suptitle(title or "Linear probes: held-out accuracy by residual stream x position "
                          "(in parentheses: not above the shuffled-label control / majority class)", fontsize=10)
    return _save(fig, path)


def plot_logit_lens(lens, title: str | None = None):
    """Plotly: for every stream (rows) and position (columns), the lens's top next token (text) coloured by the
    probability the stream gives the token that really comes next."""
    import plotly.graph_objects as go

    top, top_p = lens.top_tokens(), lens.top_probs()
    custom = np.stack([top.astype(str), np.round(top_p, 3).astype(str)], axis=-1)
    fig = go.Figure(go.Heatmap(
        z=np.round(lens.target_probs(), 3), x=[_short(x) for x in lens.labels], y=lens.streams, zmin=0, zmax=1,
        colorscale="Viridis", text=[[_short(t) for t in row] for row in top], texttemplate="%{text}",
        textfont=dict(size=9), customdata=custom, colorbar=dict(title="p(true next)"),
        hovertemplate="%{y} @ %{x}<br>top next token %{customdata[0]} (p=%{customdata[1]})<br>"
                      "p(true next token) %{z:.3f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", title_text="residual stream")
    fig.update_xaxes(tickangle=-90, tickfont=dict(size=9))
    fig.update_layout(height=360, width=1100, title=title or f"Logit lens: {lens.text}")
    return fig


def save_logit_lens_png(lens, path: str | Path = FIGURES_DIR / "06_logit_lens.png", title: str | None = None) -> Path:
    from matplotlib.figure import Figure

    probs = lens.target_probs()
    top = lens.top_tokens()
    S, P = probs.shape
    fig = Figure(figsize=(max(10.0, 0.32 * P + 2), 0.45 * S + 2.2), dpi=110, layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(np.ma.masked_invalid(probs), cmap="viridis", vmin=0, vmax=1, aspect="auto",
                      interpolation="nearest")
    for (s, p), token in np.ndenumerate(top):
        value = probs[s, p]
        ax.text(p, s, _short(token).replace(" ", "␣"), ha="center", va="center", fontsize=6,
                color="black" if (not np.isnan(value) and value > 0.6) else "white")
    ax.set_yticks(range(S))
    ax.set_yticklabels(lens.streams, fontsize=8)
    ax.set_xticks(range(P))
    ax.set_xticklabels([_short(x) for x in lens.labels], rotation=90, fontsize=6.5)
    ax.set_ylabel("residual stream")
    fig.colorbar(image, ax=ax, shrink=0.8, label="p(true next token)")
    ax.set_title(title or f"Logit lens (text: each stream's top next token): {lens.text}", fontsize=9)
    return _save(fig, path)


def plot_lens_accuracy(acc, title: str = "Logit lens over many problems: top-1 accuracy on the next token"):
    """Plotly heatmap: stream x position kind, share of problems where the stream's lens predicts the next token."""
    import plotly.graph_objects as go

    count = np.broadcast_to(acc.count[None, :], acc.accuracy.shape)
    fig = go.Figure(go.Heatmap(
        z=np.round(acc.accuracy, 3), x=[_short(k) for k in acc.kinds], y=acc.streams, zmin=0, zmax=1,
        colorscale="Viridis", customdata=count, texttemplate="%{z:.0%}", textfont=dict(size=8),
        hovertemplate="%{y} @ %{x}<br>lens top-1 = next token: %{z:.1%} of %{customdata}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", title_text="residual stream")
    fig.update_xaxes(tickangle=-90, tickfont=dict(size=9), title_text="position kind (predicting the next token)")
    fig.update_layout(height=340, width=1100, title=title)
    return fig


_PATCH_COMPONENTS = ("residual stream (resid_pre)", "attention output", "MLP output")


def plot_patching(result, title: str | None = None):
    """Plotly heatmap of a ``PatchingResult`` (0 = as corrupted, 1 = clean restored): layer x position for
    residual sweeps, component panels for ``patch_blocks``, layer x head for ``patch_heads``."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    values = result.values.numpy()
    labels = [_short(x) for x in result.pairs.labels]
    common = dict(zmin=-1, zmax=1, zmid=0, colorscale="RdBu")
    title = title or result.pairs.description
    if result.axis_names == ["layer", "head"]:
        fig = go.Figure(go.Heatmap(z=np.round(values, 3), x=[f"head {h}" for h in range(values.shape[1])],
                                   y=[f"layer {l}" for l in range(values.shape[0])], texttemplate="%{z:.2f}",
                                   hovertemplate="%{y} %{x}: %{z:.3f}<extra></extra>", **common))
        fig.update_yaxes(autorange="reversed")
        fig.update_layout(height=360, width=520, title=title)
        return fig
    panels = values if values.ndim == 3 else values[None]
    names = _PATCH_COMPONENTS if values.ndim == 3 else ("residual stream entering each block",)
    fig = make_subplots(rows=len(panels), cols=1, subplot_titles=names, vertical_spacing=0.12)
    for i, panel in enumerate(panels):
        fig.add_trace(go.Heatmap(z=np.round(panel, 3), x=labels, y=[f"layer {l}" for l in range(panel.shape[0])],
                                 showscale=(i == 0), colorbar=dict(title="restored"),
                                 hovertemplate="%{y} @ %{x}: %{z:.3f}<extra></extra>", **common), row=i + 1, col=1)
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(tickangle=-90, tickfont=dict(size=9))
    fig.update_layout(height=260 * len(panels) + 140, width=1100, title=title)
    return fig


def save_patching_png(results: Sequence[Any], path: str | Path = FIGURES_DIR / "07_patching.png",
                      titles: Sequence[str] | None = None, suptitle: str | None = None) -> Path:
    """One panel per residual-stream ``PatchingResult`` (``[layer, pos]``), values annotated where |v| >= 0.05."""
    from matplotlib.figure import Figure

    widths = [len(r.pairs.kinds) for r in results]
    fig = Figure(figsize=(max(10.0, 0.3 * max(widths) + 2.5), 2.6 * len(results) + 0.8), dpi=110,
                 layout="constrained")
    axes = np.atleast_1d(fig.subplots(len(results), 1))
    image = None
    for i, (ax, r) in enumerate(zip(axes, results)):
        values = r.values.numpy()
        image = ax.imshow(values, cmap="RdBu", vmin=-1, vmax=1, aspect="auto", interpolation="nearest")
        for (l, p), v in np.ndenumerate(values):
            if abs(v) >= 0.05:
                ax.text(p, l, f"{v:.2f}", ha="center", va="center", fontsize=6, color="white" if abs(v) > 0.6 else "black")
        ax.set_yticks(range(values.shape[0]))
        ax.set_yticklabels([f"layer {l}" for l in range(values.shape[0])], fontsize=7)
        ax.set_xticks(range(values.shape[1]))
        ax.set_xticklabels([_short(x) for x in r.pairs.labels], rotation=90, fontsize=6.5)
        ax.set_title(titles[i] if titles else f"{r.pairs.description} (n={len(r.pairs)})", fontsize=8.5, loc="left")
    fig.colorbar(image, ax=list(axes), shrink=0.7, label="share of the logit difference restored")
    fig.suptitle(suptitle or "Activation patching of the residual stream entering each block (clean -> corrupted)",
                 fontsize=10)
    return _save(fig, path)


_OUTCOME_COLORS = {"follows_edit": "#C44E52", "true_sum": "#4C72B0", "other": "#BBBBBB"}
_OUTCOME_NAMES = {"follows_edit": "follows the edited trace", "true_sum": "writes the true sum", "other": "neither"}


def _faithfulness_rows(result) -> list[dict[str, Any]]:
    """One bar per edit and step, then the unedited traces (drawn as right or not: nothing to follow there)."""
    unedited = [{**r, "follows_edit": 0} for r in result.rows if r["edit"] == "none"]
    return [r for r in result.rows if r["step"] != "all" and r["edit"] != "none"] + unedited


def plot_faithfulness(result, title: str = "Does the answer follow an edited trace?"):
    """Plotly stacked bars: for each edit and step, the share of answers that follow the edit, give the true
    sum, or neither (hover: counts and n)."""
    import plotly.graph_objects as go

    rows = _faithfulness_rows(result)
    x = [f"{r['edit']}<br>step {r['step']}" if r["edit"] != "none" else "no edit" for r in rows]
    fig = go.Figure()
    for outcome, color in _OUTCOME_COLORS.items():
        fig.add_trace(go.Bar(x=x, y=[r[outcome] / r["n"] for r in rows], name=_OUTCOME_NAMES[outcome],
                             marker_color=color, customdata=[[r[outcome], r["n"]] for r in rows],
                             hovertemplate="%{x}<br>%{customdata[0]} of %{customdata[1]} (%{y:.1%})<extra></extra>"))
    fig.update_layout(barmode="stack", height=420, width=950, title=title, yaxis_tickformat=".0%",
                      legend=dict(orientation="h", y=-0.25))
    return fig


def save_faithfulness_png(result, path: str | Path = FIGURES_DIR / "07_faithfulness.png",
                          title: str = "Does the answer follow an edited trace?") -> Path:
    from matplotlib.figure import Figure

    rows = _faithfulness_rows(result)
    labels = [f"{r['edit']}\nstep {r['step']}" if r["edit"] != "none" else "no edit" for r in rows]
    fig = Figure(figsize=(max(7.0, 1.0 * len(rows) + 2), 4.2), dpi=110, layout="constrained")
    ax = fig.subplots()
    bottom = np.zeros(len(rows))
    for outcome, color in _OUTCOME_COLORS.items():
        share = np.array([r[outcome] / r["n"] for r in rows])
        ax.bar(range(len(rows)), share, bottom=bottom, color=color, label=_OUTCOME_NAMES[outcome])
        bottom += share
    for i, r in enumerate(rows):
        ax.text(i, 1.02, f"n={r['n']}", ha="center", fontsize=7)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_ylim(0, 1.1)
    ax.yaxis.set_major_formatter(lambda v, _: f"{v:.0%}")
    ax.set_ylabel("share of edited problems")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


__all__: Sequence[str] = [
    "FIGURES_DIR", "data_distributions", "plot_data_distributions", "save_data_distributions_png",
    "plot_training_curves", "training_curves_figure", "save_training_curves_png", "LiveTrainingPlot",
    "plot_accuracy_breakdown", "save_accuracy_breakdown_png", "plot_token_probabilities",
    "plot_attention_heads", "plot_attention_head", "save_attention_heads_png", "plot_probe_accuracy",
    "save_probe_accuracy_png", "plot_logit_lens", "save_logit_lens_png", "plot_lens_accuracy", "plot_patching",
    "save_patching_png", "plot_faithfulness", "save_faithfulness_png",
]


# ----------------------------------------------------------------------------------------------
# Training modes and free thinking (notebook 08): exact match per mode, learning curves, what a
# free-thinking model writes. The numbers come from scripts/modes_experiment.py's summary JSON and
# mathllm.free_thinking; these functions only draw them.
# ----------------------------------------------------------------------------------------------

def _runs_by_name(summary: Mapping[str, Any]) -> dict[str, list[Mapping[str, Any]]]:
    by_name: dict[str, list[Mapping[str, Any]]] = {}
    for run in summary["runs"]:
        by_name.setdefault(run["name"], []).append(run)
    return by_name


def plot_mode_comparison(summary: Mapping[str, Any], title: str = "Exact match and time per step, by training mode"):
    """Plotly, two panels: test exact match per mode (one dot per seed, a bar at the mean) and seconds per
    step (mean over seeds), from ``scripts/modes_experiment.py``'s summary."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    by_name = _runs_by_name(summary)
    names = list(by_name)
    fig = make_subplots(rows=1, cols=2, subplot_titles=["test exact match", "seconds per training step"])
    means = [np.nanmean([r["test_exact_match"] if r.get("test_exact_match") is not None else np.nan
                         for r in by_name[n]]) for n in names]
    fig.add_trace(go.Bar(x=names, y=means, name="mean", marker_color="#4C72B0", opacity=0.6), row=1, col=1)
    for i, n in enumerate(names):
        ys = [r["test_exact_match"] for r in by_name[n] if r.get("test_exact_match") is not None]
        fig.add_trace(go.Scatter(x=[n] * len(ys), y=ys, mode="markers", marker=dict(color="#C44E52", size=8),
                                 name="seeds", showlegend=i == 0,
                                 text=[f"seed {r['seed']}" for r in by_name[n] if r.get("test_exact_match") is not None]),
                      row=1, col=1)
    secs = [np.nanmean([r["seconds_per_step"] if r.get("seconds_per_step") else np.nan for r in by_name[n]])
            for n in names]
    fig.add_trace(go.Bar(x=names, y=secs, name="s/step", marker_color="#55A868", showlegend=False), row=1, col=2)
    fig.update_yaxes(range=[0, 1.02], tickformat=".0%", row=1, col=1)
    fig.update_layout(height=400, width=1000, title=title)
    return fig


def plot_mode_learning_curves(summary: Mapping[str, Any], key: str = "val_exact_match",
                              title: str | None = None):
    """Plotly: one line per run (colour per mode, one line per seed) of ``key`` (``val_exact_match``,
    ``val_loss`` or the training ``loss``) against the step."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for i, (name, runs) in enumerate(_runs_by_name(summary).items()):
        for j, run in enumerate(runs):
            pts = [(m["step"], m[key]) for m in run.get("learning_curve", []) if key in m]
            fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers",
                                     name=name, legendgroup=name, showlegend=j == 0,
                                     line=dict(color=_color(name, i)), hovertext=f"{name} seed {run['seed']}"))
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text=key, **({"type": "log"} if "loss" in key else {}))
    fig.update_layout(height=420, width=900, title=title or f"{key} by training mode")
    return fig


def save_mode_comparison_png(summary: Mapping[str, Any], path: str | Path = FIGURES_DIR / "08_modes.png",
                             title: str = "Training modes: test exact match (dots = seeds) and validation curves") -> Path:
    """Matplotlib PNG: exact match per mode (bars = mean, dots = seeds) beside the val exact match curves."""
    from matplotlib.figure import Figure

    by_name = _runs_by_name(summary)
    names = list(by_name)
    fig = Figure(figsize=(12, 4.2), dpi=110, layout="constrained")
    ax_bar, ax_curve = fig.subplots(1, 2)
    for i, n in enumerate(names):
        ys = [r["test_exact_match"] for r in by_name[n] if r.get("test_exact_match") is not None]
        if ys:
            ax_bar.bar(i, np.mean(ys), color=_color(n, i), alpha=0.6)
            ax_bar.plot([i] * len(ys), ys, "o", color="#333333", ms=4)
        for j, run in enumerate(by_name[n]):
            pts = [(m["step"], m["val_exact_match"]) for m in run.get("learning_curve", []) if "val_exact_match" in m]
            if pts:
                ax_curve.plot(*zip(*pts), "-", color=_color(n, i), label=n if j == 0 else None, alpha=0.8)
    ax_bar.set_xticks(range(len(names)))
    ax_bar.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    ax_bar.set_ylim(0, 1.02)
    ax_bar.set_ylabel("test exact match")
    ax_curve.set_ylim(0, 1.02)
    ax_curve.set_xlabel("step")
    ax_curve.set_ylabel("val exact match")
    ax_curve.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_think_token_frequencies(stats: Mapping[str, Any], title: str = "What the model writes at each think position"):
    """Plotly heat map from ``mathllm.free_thinking.token_statistics``: rows = tokens used, columns = think
    positions, colour = share of traces with that token there."""
    import plotly.graph_objects as go


    used = stats["tokens_used"]
    freq = np.asarray(stats["frequencies"])[:, used].T if used else np.zeros((0, 0))
    fig = go.Figure(go.Heatmap(z=freq, x=list(range(freq.shape[1])), y=[VOCAB[t] for t in used], zmin=0, zmax=1,
                               colorscale="Blues", colorbar=dict(title="share"),
                               hovertemplate="position %{x}<br>token %{y}<br>%{z:.1%}<extra></extra>"))
    fig.update_xaxes(title_text="think position", dtick=1)
    fig.update_layout(height=max(300, 22 * len(used) + 120), width=max(500, 40 * freq.shape[1] + 200), title=title)
    return fig


def plot_think_information(table, excess: bool = True,
                           title: str = "Mutual information between think positions and the true carries / sums"):
    """Plotly heat map of an ``InformationTable``: rows = labels, columns = think positions, colour = MI in bits
    (``excess``: minus the shuffled-label baseline); hover shows MI, baseline and H(label)."""
    import plotly.graph_objects as go

    z = (table.excess() if excess else table.mi).T
    hover = [[f"{lab} @ position {pos}<br>MI {table.mi[a, b]:.3f} bits<br>shuffled {table.baseline[a, b]:.3f} "
              f"± {table.baseline_std[a, b]:.3f}<br>H(label) {table.label_entropy[b]:.2f} bits<br>n = {table.n[a]}"
              for a, pos in enumerate(table.positions)] for b, lab in enumerate(table.labels)]
    fig = go.Figure(go.Heatmap(z=z, x=table.positions, y=table.labels, colorscale="Viridis", text=hover,
                               hoverinfo="text", colorbar=dict(title="bits")))
    fig.update_xaxes(title_text="think position", dtick=1)
    fig.update_layout(height=max(320, 20 * len(table.labels) + 120), width=max(520, 40 * len(table.positions) + 240),
                      title=title + (" (minus shuffled baseline)" if excess else ""))
    return fig


def save_think_information_png(table, path: str | Path = FIGURES_DIR / "08_think_information.png",
                               title: str = "MI(think token; label) minus shuffled baseline, bits") -> Path:
    """Matplotlib PNG of ``plot_think_information`` (excess MI)."""
    from matplotlib.figure import Figure

    z = table.excess().T
    fig = Figure(figsize=(max(5.0, 0.45 * len(table.positions) + 3), max(3.0, 0.25 * len(table.labels) + 1.5)),
                 dpi=110, layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(z, aspect="auto", cmap="viridis", vmin=0)
    ax.set_xticks(range(len(table.positions)))
    ax.set_xticklabels(table.positions, fontsize=7)
    ax.set_yticks(range(len(table.labels)))
    ax.set_yticklabels(table.labels, fontsize=7)
    ax.set_xlabel("think position")
    fig.colorbar(im, ax=ax, label="bits")
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


__all__ = [*__all__, "plot_mode_comparison", "plot_mode_learning_curves", "save_mode_comparison_png",
           "plot_think_token_frequencies", "plot_think_information", "save_think_information_png"]


# ----------------------------------------------------------------------------------------------
# Latent reasoning in depth (notebook 09): looped models by carry-chain length, what each iteration computes.
# The numbers come from scripts/looped_experiment.py, mathllm.depth and mathllm.interp.iterations.
# ----------------------------------------------------------------------------------------------

def chain_table_rows(summary: Mapping[str, Any], which: str = "") -> tuple[list[str], list[str], np.ndarray,
                                                                             np.ndarray]:
    """``(run names, columns, mean [run, column], min [run, column])`` of a looped experiment's table: the uniform
    set and each carry-chain length k (or each stratum, ``3*3``, for multiplication), mean and min over the seeds
    (``which="same_weights_L1_"``: the same weights run once)."""
    table = summary["table"]
    names = [n for n, row in table.items() if row.get(f"{which}uniform")]
    ks = sorted({int(key[len(which) + 1:]) for row in table.values() for key in row
                 if key.startswith(f"{which}k") and key[len(which) + 1:].isdigit()})
    strata = sorted({key[len(which):] for row in table.values() for key in row  # multiplication: "3*3", ...
                     if key.startswith(which) and re.fullmatch(r"\d+(\*\d+)+", key[len(which):])},
                    key=lambda name: [int(part) for part in name.split("*")])
    columns = ["uniform"] + [f"k{k}" for k in ks] + strata
    mean = np.full((len(names), len(columns)), np.nan)
    low = np.full_like(mean, np.nan)
    for i, name in enumerate(names):
        for j, col in enumerate(columns):
            cell = table[name].get(f"{which}{col}")
            if cell:
                mean[i, j], low[i, j] = cell["mean"], cell["min"]
    return names, columns, mean, low


def _chain_cell(mean: float, low: float, newline: str = "\n") -> str:
    """A chain-table cell: the mean and, in brackets, the worst seed (left out when it is the mean: one seed)."""
    if not np.isfinite(mean):
        return ""
    return f"{mean:.1%}" if low == mean else f"{mean:.1%}{newline}({low:.1%})"


def plot_chain_table(summary: Mapping[str, Any], title: str = "Exact match by carry-chain length (mean over seeds)"):
    """Plotly heatmap: one row per run, one column for the uniform set and one per chain length k; the text gives
    the mean and, in brackets, the worst seed (when it differs from the mean)."""
    import plotly.graph_objects as go

    names, columns, mean, low = chain_table_rows(summary)
    text = [[_chain_cell(m, l, "<br>") for m, l in zip(mr, lr)] for mr, lr in zip(mean, low)]
    fig = go.Figure(go.Heatmap(z=mean, x=columns, y=names, zmin=0, zmax=1, colorscale="Viridis", text=text,
                               texttemplate="%{text}", textfont={"size": 9}, colorbar=dict(title="exact")))
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(height=120 + 40 * len(names), width=1000, title=title)
    return fig


def save_chain_table_png(summary: Mapping[str, Any], path: str | Path = FIGURES_DIR / "09_chain_table.png",
                         title: str = "Exact match by carry-chain length (mean over seeds; worst seed below)") -> Path:
    """Matplotlib PNG of ``plot_chain_table``."""
    from matplotlib.figure import Figure

    names, columns, mean, low = chain_table_rows(summary)
    fig = Figure(figsize=(1.2 + 0.75 * len(columns), 0.9 + 0.42 * len(names)), dpi=110, layout="constrained")
    ax = fig.subplots()
    ax.imshow(mean, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    for i in range(len(names)):
        for j in range(len(columns)):
            if np.isfinite(mean[i, j]):
                ax.text(j, i, _chain_cell(mean[i, j], low[i, j]), ha="center", va="center", fontsize=6.5,
                        color="white" if mean[i, j] < 0.6 else "black")
    ax.set_xticks(range(len(columns)))
    ax.set_xticklabels(columns, fontsize=8)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=8)
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def plot_iteration_lens(accuracy_by_depth: Mapping[int, Sequence[float]], labels: Sequence[str], trained_steps: int,
                        steps_to_answer: Mapping[int, Mapping[str, float]] | None = None,
                        title: str = "Logit lens after every layer of every iteration"):
    """Plotly, two panels: the share of problems whose whole answer the lens reads right after each depth step, one
    line per carry-chain length k (a dashed line at the trained depth), and the mean depth step from which the answer
    stays right, against k (a ripple carry climbs linearly, a lookahead like log k, a parallel read stays flat)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    cols = 2 if steps_to_answer else 1
    fig = make_subplots(rows=1, cols=cols, subplot_titles=["exact match by depth step", "steps until it settles"][:cols])
    for i, (k, values) in enumerate(sorted(accuracy_by_depth.items())):
        fig.add_trace(go.Scatter(x=list(labels), y=list(values), mode="lines+markers", name=f"k={k}",
                                 line=dict(color=_color(f"k{k}", i))), row=1, col=1)
    fig.add_vline(x=trained_steps - 1, line_dash="dash", line_color="grey", row=1, col=1)
    if steps_to_answer:
        ks = sorted(steps_to_answer)
        fig.add_trace(go.Scatter(x=ks, y=[steps_to_answer[k]["mean_step"] for k in ks], mode="lines+markers",
                                 name="mean step", line=dict(color="#333333")), row=1, col=2)
        fig.update_xaxes(title_text="carry-chain length k", row=1, col=2)
        fig.update_yaxes(title_text="depth step (layer outputs)", range=[0, len(labels) + 0.5], row=1, col=2)
    fig.update_yaxes(range=[0, 1.02], tickformat=".0%", row=1, col=1)
    fig.update_layout(height=420, width=1050, title=title)
    return fig


def save_iteration_lens_png(accuracy_by_depth: Mapping[int, Sequence[float]], labels: Sequence[str],
                            trained_steps: int, steps_to_answer: Mapping[int, Mapping[str, float]],
                            path: str | Path = FIGURES_DIR / "09_iteration_lens.png",
                            title: str = "Logit lens at every depth step, by carry-chain length k") -> Path:
    """Matplotlib PNG of ``plot_iteration_lens``."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 3.8), dpi=110, layout="constrained")
    ax, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2, 1]})
    x = np.arange(len(labels))
    for i, (k, values) in enumerate(sorted(accuracy_by_depth.items())):
        ax.plot(x, values, "-o", ms=3, color=_color(f"k{k}", i), label=f"k={k}")
    ax.axvline(trained_steps - 1, ls="--", color="grey", lw=1)
    ax.text(trained_steps - 1, 1.0, " trained depth", fontsize=7, color="grey", va="top")
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=60, fontsize=7)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("whole answer right (lens)")
    ax.legend(fontsize=7, ncol=2)
    ks = sorted(steps_to_answer)
    ax2.plot(ks, [steps_to_answer[k]["mean_step"] for k in ks], "-o", color="#333333", label="mean")
    ax2.plot(ks, [steps_to_answer[k]["max_step"] for k in ks], ":", color="#777777", label="max")
    ax2.set_ylim(0, trained_steps + 0.5)
    ax2.set_xlabel("carry-chain length k")
    ax2.set_ylabel("first step it stays right")
    ax2.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_probe_grid(grid: Mapping[str, Mapping[str, Any]], control: Mapping[str, Mapping[str, Any]] | None = None,
                    title: str = "Linear probes at the answer slots, by iteration"):
    """Plotly heatmaps, one per quantity family (column sum, generate, propagate, carry in): held-out accuracy per
    stream (embedding, after iteration 1, 2, ...) and column, read at the slot that writes that column's digit; the
    hover gives the shuffled-label/majority baseline. ``control``: the same grid for an untrained model (second row)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    families = list(grid)
    rows = 2 if control else 1
    titles = families + ([f"{f} (untrained model)" for f in families] if control else [])
    fig = make_subplots(rows=rows, cols=len(families), subplot_titles=titles, horizontal_spacing=0.04,
                        vertical_spacing=0.12)
    for r, source in enumerate([grid] + ([control] if control else [])):
        for c, family in enumerate(families):
            g = source[family]
            text = [[f"acc {a:.2f}<br>baseline {b:.2f}" for a, b in zip(ar, br)]
                    for ar, br in zip(g["accuracy"], g["baseline"])]
            fig.add_trace(go.Heatmap(z=g["accuracy"], x=[f"col {x}" for x in g["columns"]], y=g["streams"], zmin=0,
                                     zmax=1, colorscale="Viridis", showscale=(r == 0 and c == 0), hovertext=text,
                                     hoverinfo="text"), row=r + 1, col=c + 1)
            fig.update_yaxes(autorange="reversed", row=r + 1, col=c + 1)
    fig.update_layout(height=330 * rows, width=1100, title=title)
    return fig


def save_probe_grid_png(grid: Mapping[str, Mapping[str, Any]], control: Mapping[str, Mapping[str, Any]] | None = None,
                        path: str | Path = FIGURES_DIR / "09_probe_grid.png",
                        title: str = "Linear probes at the answer slots (accuracy; baseline in brackets)") -> Path:
    """Matplotlib PNG of ``plot_probe_grid``."""
    from matplotlib.figure import Figure

    families = list(grid)
    sources = [("trained", grid)] + ([("untrained", control)] if control else [])
    fig = Figure(figsize=(3.0 * len(families), 2.6 * len(sources) + 0.4), dpi=110, layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(sources), len(families), squeeze=False))
    for r, (label, source) in enumerate(sources):
        for c, family in enumerate(families):
            g, ax = source[family], axes[r, c]
            acc, base = np.asarray(g["accuracy"]), np.asarray(g["baseline"])
            ax.imshow(acc, vmin=0, vmax=1, cmap="viridis", aspect="auto")
            for i in range(acc.shape[0]):
                for j in range(acc.shape[1]):
                    if np.isfinite(acc[i, j]):
                        ax.text(j, i, f"{acc[i, j]:.2f}\n({base[i, j]:.2f})", ha="center", va="center", fontsize=5.5,
                                color="white" if acc[i, j] < 0.6 else "black")
            ax.set_xticks(range(len(g["columns"])))
            ax.set_xticklabels([str(x) for x in g["columns"]], fontsize=7)
            ax.set_yticks(range(len(g["streams"])))
            ax.set_yticklabels(g["streams"], fontsize=7)
            ax.set_title(f"{family} ({label})", fontsize=8)
            ax.set_xlabel("column", fontsize=7)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_iteration_patching(result, title: str | None = None):
    """Plotly heatmap of ``patch_iterations``: the clean state after iteration i at position p patched into the run
    where the carry chain was removed; 1 = the clean answer digit restored at the slot where the chain ends."""
    import plotly.graph_objects as go

    title = title or (f"Patching across iterations: chain of {result.k} removed, read at answer column "
                      f"{result.column}")
    fig = go.Figure(go.Heatmap(z=result.values, x=[_short(l) for l in result.labels], y=result.iterations,
                               zmid=0, colorscale="RdBu", zmin=-1, zmax=1, colorbar=dict(title="restored")))
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(height=300, width=1000, title=title)
    return fig


def save_iteration_patching_png(results: Sequence[Any], path: str | Path = FIGURES_DIR / "09_patching.png",
                                title: str = "Patching across iterations (1 = the clean digit restored)") -> Path:
    """Matplotlib PNG: one ``plot_iteration_patching`` panel per result (e.g. one per chain length)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 1.2 + 1.5 * len(results)), dpi=110, layout="constrained")
    axes = fig.subplots(len(results), 1, squeeze=False)[:, 0]
    for ax, result in zip(axes, results):
        image = ax.imshow(result.values, vmin=-1, vmax=1, cmap="RdBu", aspect="auto")
        ax.set_yticks(range(len(result.iterations)))
        ax.set_yticklabels(result.iterations, fontsize=7)
        ax.set_xticks(range(len(result.labels)))
        ax.set_xticklabels([_short(l) for l in result.labels], rotation=60, fontsize=6)
        ax.set_title(f"chain of {result.k} removed; read at answer column {result.column}", fontsize=8)
    fig.colorbar(image, ax=list(axes), shrink=0.8)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_past_loops(curves: Mapping[str, Sequence[float]], trained: int, drift: Mapping[str, Sequence[float]] | None = None,
                    title: str = "Running past the trained number of iterations"):
    """Plotly: exact match after 1, 2, ... iterations per test set (a dashed line at the trained count) and, with
    ``drift``, the relative change of the state per iteration (a fixed point would go to 0) and, when ``drift`` has
    it (``state_drift``'s ``change``), the change itself on a second axis (a growing norm alone also shrinks the
    relative change)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    cols = 2 if drift else 1
    absolute = bool(drift and drift.get("change"))
    specs = [[{}, {"secondary_y": absolute}]] if drift else [[{}]]
    fig = make_subplots(rows=1, cols=cols, specs=specs,
                        subplot_titles=["exact match", "change of the state per iteration"][:cols])
    for i, (name, values) in enumerate(curves.items()):
        fig.add_trace(go.Scatter(x=list(range(1, len(values) + 1)), y=list(values), mode="lines+markers", name=name,
                                 line=dict(color=_color(name, i))), row=1, col=1)
    fig.add_vline(x=trained, line_dash="dash", line_color="grey", row=1, col=1)
    if drift:
        change = list(drift["relative_change"])
        fig.add_trace(go.Scatter(x=list(range(1, len(change) + 1)), y=change, mode="lines+markers",
                                 name="|h_i - h_(i-1)| / |h_i|", line=dict(color="#333333")), row=1, col=2)
        if absolute:
            moved = list(drift["change"])
            fig.add_trace(go.Scatter(x=list(range(1, len(moved) + 1)), y=moved, mode="lines+markers",
                                     name="|h_i - h_(i-1)|", line=dict(color="#d62728", dash="dot")),
                          row=1, col=2, secondary_y=True)
        fig.add_vline(x=trained, line_dash="dash", line_color="grey", row=1, col=2)
    fig.update_xaxes(title_text="iterations")
    fig.update_yaxes(range=[0, 1.02], tickformat=".0%", row=1, col=1)
    fig.update_layout(height=400, width=1000, title=title)
    return fig


def save_past_loops_png(curves: Mapping[str, Sequence[float]], trained: int,
                        drift: Mapping[str, Sequence[float]] | None = None,
                        path: str | Path = FIGURES_DIR / "09_past_loops.png",
                        title: str = "Running past the trained number of iterations") -> Path:
    """Matplotlib PNG of ``plot_past_loops``."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 3.6), dpi=110, layout="constrained")
    axes = fig.subplots(1, 2 if drift else 1, squeeze=False)[0]
    for i, (name, values) in enumerate(curves.items()):
        axes[0].plot(range(1, len(values) + 1), values, "-o", ms=3, color=_color(name, i), label=name)
    axes[0].axvline(trained, ls="--", color="grey", lw=1)
    axes[0].set_ylim(0, 1.02)
    axes[0].set_xlabel("iterations")
    axes[0].set_ylabel("exact match")
    axes[0].legend(fontsize=7, ncol=2)
    if drift:
        change = list(drift["relative_change"])
        axes[1].plot(range(1, len(change) + 1), change, "-o", ms=3, color="#333333")
        axes[1].axvline(trained, ls="--", color="grey", lw=1)
        axes[1].set_ylim(bottom=0)
        axes[1].set_xlabel("iterations")
        axes[1].set_ylabel("|h_i - h_(i-1)| / |h_i| at the slots")
        if drift.get("change"):
            moved = list(drift["change"])
            twin = axes[1].twinx()
            twin.plot(range(1, len(moved) + 1), moved, ":o", ms=3, color="#d62728")
            twin.set_ylim(bottom=0)
            twin.set_ylabel("|h_i - h_(i-1)| (dotted)", color="#d62728")
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


# ----------------------------------------------------------------------------------------------
# Which tasks need a trace (notebook 10)
# ----------------------------------------------------------------------------------------------

def trace_map_rows(summaries: Mapping[str, Mapping[str, Any]],
                   modes: Sequence[str] = ("teacher", "answer-only")) -> list[dict[str, Any]]:
    """One row per task of ``scripts/trace_map.sh``'s summaries (``{task: summary}``): steps, batch, and per mode
    the test exact match of each seed, their mean and the smallest; ``gap`` = the smallest trace seed minus the
    largest answer-only seed (> 0: every trace run beat every answer-only run)."""
    rows = []
    for task, summary in summaries.items():
        by_name = _runs_by_name(summary)
        row: dict[str, Any] = {"task": task, "steps": summary.get("max_steps"), "batch": summary.get("batch_size")}
        for mode in modes:
            scores = [r["test_exact_match"] for r in by_name.get(mode, []) if r.get("test_exact_match") is not None]
            row[mode] = {"seeds": scores, "mean": float(np.mean(scores)) if scores else float("nan"),
                         "min": min(scores) if scores else float("nan"), "max": max(scores) if scores else float("nan")}
        row["gap"] = row[modes[0]]["min"] - row[modes[1]]["max"]
        rows.append(row)
    return rows


def plot_trace_map(summaries: Mapping[str, Mapping[str, Any]], title: str = "Which tasks need a trace"):
    """Plotly: per task, test exact match with the human trace and with the answer alone (bars = mean over
    seeds, dots = seeds), the same model, steps and batch within a task."""
    import plotly.graph_objects as go

    rows = trace_map_rows(summaries)
    tasks = [r["task"] for r in rows]
    fig = go.Figure()
    for i, (mode, label) in enumerate([("teacher", "with the trace"), ("answer-only", "answer only")]):
        fig.add_trace(go.Bar(x=tasks, y=[r[mode]["mean"] for r in rows], name=label, marker_color=_color(mode, i),
                             opacity=0.7, offsetgroup=mode))
        xs = [t for r, t in zip(rows, tasks) for _ in r[mode]["seeds"]]
        ys = [s for r in rows for s in r[mode]["seeds"]]
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers", name=f"{label}: seeds", offsetgroup=mode,
                                 marker=dict(color="#333333", size=6), showlegend=i == 0))
    fig.update_layout(barmode="group", scattermode="group", height=420, width=900, title=title)
    fig.update_yaxes(range=[0, 1.02], tickformat=".0%", title_text="test exact match")
    return fig


def save_trace_map_png(summaries: Mapping[str, Mapping[str, Any]], path: str | Path = FIGURES_DIR / "10_trace_map.png",
                       title: str = "Which tasks need a trace: the human trace vs the answer alone (dots = seeds)") -> Path:
    """Matplotlib PNG of ``plot_trace_map``."""
    from matplotlib.figure import Figure

    rows = trace_map_rows(summaries)
    fig = Figure(figsize=(9, 4), dpi=110, layout="constrained")
    ax = fig.subplots()
    width = 0.38
    for i, (mode, label) in enumerate([("teacher", "with the trace"), ("answer-only", "answer only")]):
        xs = np.arange(len(rows)) + (i - 0.5) * width
        ax.bar(xs, [r[mode]["mean"] for r in rows], width, color=_color(mode, i), alpha=0.7, label=label)
        for x, r in zip(xs, rows):
            ax.plot([x] * len(r[mode]["seeds"]), r[mode]["seeds"], "o", color="#333333", ms=4)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([f"{r['task']}\n{r['steps']} x {r['batch']}" for r in rows], fontsize=8)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("test exact match")
    ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


__all__ = [*__all__, "trace_map_rows", "plot_trace_map", "save_trace_map_png"]
