"""The notebook playground widget: running an expression fills the result, bad input fills the error."""

from model_doubles import ScriptedModel
from mathllm.widgets import Playground


def test_playground_shows_trace_answer_and_probability_plot():
    pg = Playground(ScriptedModel("<think>8+9=17 5+8+1=14 6+1+1=8</think>847<end>"))
    pg.expression.value = "658+189="  # as if typed and Enter pressed
    assert "8+9=17" in pg.result.value and "847" in pg.result.value and "correct" in pg.result.value
    assert pg.plot.value.startswith("<img") and pg.error.value == ""
    assert pg.last_result.correct


def test_playground_reports_bad_input_and_keeps_working():
    pg = Playground(ScriptedModel("<think>8+9=17 5+8+1=14 6+1+1=8</think>847<end>"))
    assert pg.run("12+a=") is None
    assert "unexpected character" in pg.error.value and pg.result.value == ""
    assert pg.run("658+189=").model_answer == 847 and pg.error.value == ""


def test_widgets_carry_the_css_classes_the_browser_test_uses():
    pg = Playground(ScriptedModel("1<end>"))
    assert "mathllm-expression" in pg.expression._dom_classes and "mathllm-run" in pg.run_button._dom_classes
    assert "mathllm-result" in pg.result._dom_classes and "mathllm-error" in pg.error._dom_classes
