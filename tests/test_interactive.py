"""scripts/interactive.py: the chain-of-thought display, the true answer beside the model's, bad input, leaving."""

import subprocess
import sys
from pathlib import Path

from model_doubles import ScriptedModel

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import interactive  # noqa: E402


def session(model, lines):
    """Run the REPL on scripted input; return everything it printed."""
    printed, feed = [], iter(lines)

    def read(prompt):
        try:
            return next(feed)
        except StopIteration:
            raise EOFError

    code = interactive.repl(model, temperature=0.0, max_new_tokens=None, input_fn=read, out=printed.append)
    return code, "\n".join(printed)


def test_shows_the_trace_the_answer_and_the_truth():
    code, text = session(ScriptedModel("<think>8+9=17 5+8+1=14 6+1+1=8</think>847<end>"), ["658+189", "quit"])
    assert code == 0
    assert "step 1: 8+9=17" in text and "step 3: 6+1+1=8" in text
    assert "answer: 847   true: 847" in text and "correct" in text and text.endswith("bye")


def test_a_wrong_answer_gets_a_mark():
    _, text = session(ScriptedModel("<think>8+9=17 5+8+1=14 6+1+1=8</think>848<end>"), ["658+189="])
    assert "answer: 848   true: 847" in text and "WRONG" in text


def test_bad_input_gives_a_message_and_the_session_goes_on():
    model = ScriptedModel("<think>2+4=6 1+3=4</think>46<end>")
    _, text = session(model, ["12+a=", "12+34", "exit"])
    assert "error: unexpected character 'a' at position 3" in text
    assert "answer: 46   true: 46" in text


def test_partial_input_is_completed():
    _, text = session(ScriptedModel("3=10<end>"), ["7+"])
    assert "model:  7+3=10<end>" in text and "true: 10" in text


def test_ctrl_d_and_ctrl_c_leave_cleanly():
    def interrupt(prompt):
        raise KeyboardInterrupt

    printed = []
    assert interactive.repl(ScriptedModel("1<end>"), 0.0, None, input_fn=interrupt, out=printed.append) == 0
    assert printed[-1].strip() == "bye"
    assert session(ScriptedModel("1<end>"), [])[0] == 0  # EOF at once


def test_a_missing_or_foreign_checkpoint_is_a_clear_error(tmp_path):
    foreign = tmp_path / "model.safetensors"
    foreign.write_bytes(b"this is not a safetensors file")
    for path in (tmp_path / "nowhere", foreign):
        proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "interactive.py"), "--checkpoint", str(path)],
                              capture_output=True, text=True, input="quit\n", timeout=60)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr and str(path.name) in proc.stderr


def test_subtraction_and_multiplication_and_what_the_model_cannot_do():
    _, text = session(ScriptedModel("<think>8-9=-1 5-8-1=-4 6-1-1=4</think>469<end>"), ["658-189", "3-7", "1+2*3"])
    assert "step 2: 5-8-1=-4" in text and "answer: 469   true: 469" in text
    assert "error: 3-7 would be negative" in text and "error: mixed operators" in text
    _, text = session(ScriptedModel("<think>2*4=8 1*4=4 48 2*3+4=10 1*3+0+1=4</think>408<end>"), ["12*34="])
    assert "step 3: 48" in text and "answer: 408   true: 408" in text
