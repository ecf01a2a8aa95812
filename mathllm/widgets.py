"""ipywidgets for the notebooks: the arithmetic playground.

    Playground(load("checkpoints/add3_cot")).show()      # type 658+189= and press Enter or Run
    Playground(checkpoints=available_checkpoints()).show()  # with a menu of the models under checkpoints/

The widgets carry stable CSS classes (``mathllm-expression``, ``mathllm-run``, ``mathllm-result``,
``mathllm-error``, ``mathllm-checkpoint``, ``mathllm-model-info``) so the browser test (tests/browser) can find them.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping
from pathlib import Path

import ipywidgets as widgets
import matplotlib.pyplot as plt

from mathllm.checkpoints import load
from mathllm.playground import (ExpressionError, PlaygroundResult, describe_checkpoint, run_expression,
                                training_operations)
from mathllm.plots import plot_token_probabilities


def _figure_to_img_tag(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode()
    return f'<img alt="token probabilities" src="data:image/png;base64,{data}"/>'


def result_html(result: PlaygroundResult) -> str:
    """The trace, the answer and a right/wrong mark as HTML (also used by tests)."""
    esc = html.escape
    rows = [f"<div><b>model:</b> <code>{esc(result.full_text)}</code></div>"]
    if result.mode_note:
        rows.append(f"<div style='color:#57606a'>trained in <b>{esc(result.mode)}</b> mode: {esc(result.mode_note)}</div>")
    if result.think_steps:
        steps = "".join(f"<li><code>{esc(s)}</code></li>" for s in result.think_steps)
        rows.append(f"<div><b>chain of thought:</b><ol style='margin:0'>{steps}</ol></div>")
    answer = "?" if result.model_answer is None else str(result.model_answer)
    if result.correct is None:
        verdict = ""
    elif result.correct:
        verdict = "<span style='color:#1a7f37'>✓ correct</span>"
    else:
        verdict = "<span style='color:#cf222e'>✗ wrong</span>"
    truth = "" if result.true_answer is None else f" &nbsp; <b>true:</b> {result.true_answer}"
    rows.append(f"<div><b>answer:</b> <span class='mathllm-answer'>{answer}</span>{truth} &nbsp; {verdict}</div>")
    rows.extend(f"<div style='color:#9a6700'>note: {esc(w)}</div>" for w in result.warnings)
    return "\n".join(rows)


EXAMPLES = {"add": "658+189=", "sub": "658-189=", "mul": "123*45="}


class Playground:
    """Type an expression, see the model's chain of thought, its answer, and each token's probability.

    ``checkpoints`` (name -> directory, e.g. ``mathllm.playground.available_checkpoints()``) adds a menu to switch
    models; ``model`` is then the one shown first (default: the first in the menu, loaded on ``device``).
    """

    def __init__(self, model=None, temperature: float = 0.0, example: str | None = None,
                 checkpoints: Mapping[str, str | Path] | None = None, selected: str | None = None,
                 device: str = "cpu"):
        self.checkpoints = {name: Path(path) for name, path in (checkpoints or {}).items()}
        self.device = device
        self._loaded: dict[str, object] = {}
        if model is None:
            if not self.checkpoints:
                raise ValueError("Playground needs a model or a non-empty checkpoints menu")
            selected = selected if selected in self.checkpoints else next(iter(self.checkpoints))
            model = self._load(selected)
        self.model = model  # a TrainedModel (mathllm.checkpoints.load), or a bare model used by teacher forcing
        self.last_result: PlaygroundResult | None = None
        self.expression = widgets.Text(value="", placeholder=f"e.g. {example or self._example()}",
                                       description="Expression:", continuous_update=False,
                                       layout=widgets.Layout(width="320px"))
        self.temperature = widgets.FloatSlider(value=temperature, min=0.0, max=1.5, step=0.05,
                                               description="Temperature:", readout_format=".2f")
        self.run_button = widgets.Button(description="Run", button_style="primary", icon="play")
        self.result = widgets.HTML(value="")
        self.error = widgets.HTML(value="")
        self.plot = widgets.HTML(value="")
        self.selector = None  # made before the model's line, which names the checkpoint chosen in it
        if self.checkpoints:
            self.selector = widgets.Dropdown(options=list(self.checkpoints), value=selected or next(iter(self.checkpoints)),
                                             description="Model:", layout=widgets.Layout(width="320px"))
            self.selector.add_class("mathllm-checkpoint")
        self.model_info = widgets.HTML(value=self._info())
        self.expression.add_class("mathllm-expression")
        self.run_button.add_class("mathllm-run")
        self.result.add_class("mathllm-result")
        self.error.add_class("mathllm-error")
        self.plot.add_class("mathllm-plot")
        self.model_info.add_class("mathllm-model-info")
        self.run_button.on_click(lambda _: self.run())
        self.expression.observe(self._on_submit, names="value")
        rows = [widgets.HBox([self.expression, self.run_button])]
        if self.selector is not None:
            self.selector.observe(self._on_select, names="value")
            rows.insert(0, self.selector)
        self.widget = widgets.VBox([*rows, self.model_info, self.temperature, self.error, self.result, self.plot])

    def _load(self, name: str):
        if name not in self._loaded:
            self._loaded[name] = load(self.checkpoints[name], device=self.device)
        return self._loaded[name]

    def _example(self) -> str:
        operations = training_operations(self.model) or ("add",)
        return EXAMPLES.get(operations[0], "658+189=")

    def _info(self) -> str:
        name = f"<b>{html.escape(self.selector.value)}</b>: " if getattr(self, "selector", None) else ""
        return f"<div style='color:#57606a'>{name}{html.escape(describe_checkpoint(self.model))}</div>"

    def select(self, name: str) -> None:
        """Switch to the checkpoint ``name`` of the menu (what choosing it in the menu does)."""
        if name not in self.checkpoints:
            raise ValueError(f"no checkpoint {name!r} in the menu; it has {', '.join(self.checkpoints)}")
        if self.selector is not None and self.selector.value != name:
            self.selector.value = name  # calls _on_select
            return
        self.model = self._load(name)
        self.expression.placeholder = f"e.g. {self._example()}"
        self.result.value = self.error.value = self.plot.value = ""
        # Last: once the page shows the new checkpoint's name, the switch is complete (the browser test waits on it).
        self.model_info.value = self._info()

    def _on_select(self, change) -> None:
        self.select(change["new"])

    def _on_submit(self, change) -> None:
        # continuous_update=False: the value changes when the user presses Enter (or leaves the box)
        if change["new"].strip():
            self.run()

    def run(self, text: str | None = None) -> PlaygroundResult | None:
        """Run the model on ``text`` (default: the text box) and update the widgets."""
        text = self.expression.value if text is None else text
        try:
            res = run_expression(self.model, text, temperature=self.temperature.value)
        except ExpressionError as err:
            self.error.value = f"<div style='color:#cf222e'><b>error:</b> {html.escape(str(err))}</div>"
            self.result.value = ""
            self.plot.value = ""
            return None
        self.error.value = ""
        self.result.value = result_html(res)
        self.plot.value = _figure_to_img_tag(plot_token_probabilities(res.tokens, res.token_probs,
                                                                      title=res.prompt))
        self.last_result = res
        return res

    def show(self) -> None:
        from IPython.display import display

        display(self.widget)

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)
