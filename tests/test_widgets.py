"""The notebook playground widget: running an expression fills the result, bad input fills the error."""

from mathllm.checkpoints import TrainedModel
from mathllm.training_mode import get_mode
from mathllm.widgets import Playground
from model_doubles import ScriptedModel


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


def test_playground_runs_a_trained_model_in_its_mode_and_says_so():
    pg = Playground(TrainedModel(ScriptedModel("46<end>"), get_mode("pause", think_tokens="2"), None))
    result = pg.run("12+34")
    assert result.completion == "<pause><pause>46<end>" and result.correct
    assert "trained in <b>pause</b> mode" in pg.result.value and "46" in pg.result.value
    teacher = Playground(ScriptedModel("<think>2+4=6 1+3=4</think>46<end>"))
    teacher.run("12+34")
    assert "trained in" not in teacher.result.value  # teacher forcing needs no note


def _run_directory(path, operation):
    """A trained-looking run: tiny weights and a record of its data (the operation, cot format)."""
    import json

    from mathllm.checkpoints import save_model
    from mathllm.model import MathTransformer

    save_model(MathTransformer.from_preset("tiny"), path)
    record = {"config": {"mode": "teacher"}, "data_meta": {"arguments": {"max_digits": 3, "operation": operation,
                                                                         "fmt": "cot"}}}
    (path / "training_config.json").write_text(json.dumps(record))
    return path


def test_the_checkpoint_menu_switches_models(tmp_path):
    menu = {"add3": _run_directory(tmp_path / "add3", "add"), "mul3": _run_directory(tmp_path / "mul3", "mul")}
    pg = Playground(checkpoints=menu)
    assert pg.selector.options == ("add3", "mul3") and pg.selector.value == "add3"
    assert "mathllm-checkpoint" in pg.selector._dom_classes and "mathllm-model-info" in pg.model_info._dom_classes
    assert pg.model_info.value.startswith("<div") and "<b>add3</b>: addition" in pg.model_info.value  # named at once
    assert pg.expression.placeholder == "e.g. 658+189="
    assert pg.run("12*34") is None and "does not do multiplication" in pg.error.value
    pg.selector.value = "mul3"  # as if chosen in the menu
    assert "<b>mul3</b>: multiplication" in pg.model_info.value and pg.expression.placeholder == "e.g. 123*45="
    assert pg.error.value == "" and pg.run("12*34") is not None  # an untrained model: any answer, but it runs
    assert pg.run("12+34") is None and "does not do addition" in pg.error.value
    pg.select("add3")
    assert pg.selector.value == "add3" and pg.model is pg._loaded["add3"]  # loaded once, kept


def test_choosing_a_checkpoint_clears_the_old_output_before_naming_the_new_one(tmp_path):
    # The page learns of the switch in the order the kernel makes the changes: the browser test waits until the
    # model's line names the new checkpoint, and then the old result must already be gone.
    menu = {"add3": _run_directory(tmp_path / "add3", "add"), "sub3": _run_directory(tmp_path / "sub3", "sub")}
    pg = Playground(checkpoints=menu, selected="add3")
    pg.run("658-189")
    assert "does not do subtraction" in pg.error.value
    changes = []
    for widget in (pg.model_info, pg.result, pg.error, pg.plot):
        widget.observe(lambda change, w=widget: changes.append(w), names="value")
    pg.selector.value = "sub3"
    assert changes and changes[-1] is pg.model_info and "<b>sub3</b>" in pg.model_info.value
    assert pg.error.value == pg.result.value == pg.plot.value == ""
