"""The answer-slots mode (mathllm.modes.slots): the rendering, the loss on the slots only, one-pass generation whose
text parses as an answer, its own token accuracy, and a model that learns through it."""

from __future__ import annotations

import pytest
import torch

from mathllm.cli import training_config, training_parser
from mathllm.evaluate import evaluate_examples
from mathllm.data import make_example
from mathllm.model import MathTransformer, ModelConfig
from mathllm.modes.slots import answer_width, slot_inputs, slot_line, slot_loss, slot_prompt
from mathllm.text import parse_answer
from mathllm.tokenizer import PAUSE_ID, TOKENIZER
from mathllm.train import TrainConfig, train
from mathllm.training_mode import Batch, StepContext, get_mode

pytestmark = pytest.mark.usefixtures("one_thread")


def small_model(n_loops: int = 1, seed: int = 0) -> MathTransformer:
    torch.manual_seed(seed)
    return MathTransformer(ModelConfig(n_layers=2, d_model=32, n_heads=4, d_mlp=64, n_loops=n_loops, n_ctx=32))


@pytest.mark.parametrize("prompt, pad, expected", [
    ("12+34=", 4, ("0012+0034=", 6, 46)),
    ("12+34=", 0, ("12+34=", 4, 46)),
    ("9999+1=", 4, ("9999+0001=", 6, 10000)),
    ("7+5=", 0, ("7+5=", 3, 12)),
    ("1+2+3=", 0, ("1+2+3=", 3, 6)),
    ("123*45=", 0, ("123*45=", 6, 5535)),
    ("658-189=", 3, ("658-189=", 4, 469)),
    ("12345+6=", 4, ("12345+00006=", 7, 12351)),  # an operand longer than the padding sets the width
])
def test_the_slots_depend_on_the_prompts_shape_only(prompt, pad, expected):
    assert slot_prompt(prompt, pad) == expected


def test_the_number_of_slots_never_depends_on_the_answer():
    no_carry, all_carry = slot_prompt("1000+1000=", 4), slot_prompt("9999+9999=", 4)
    assert no_carry[1] == all_carry[1] == answer_width("+", (4, 4)) + 1
    assert slot_line("1000+1000=", 4) == "1000+1000=02000<end>"


@pytest.mark.parametrize("prompt", ["7+", "3-7=", "12+3*4=", "abc="])
def test_a_prompt_slots_cannot_hold_is_a_clear_error(prompt):
    with pytest.raises(ValueError):
        slot_prompt(prompt)


def test_training_texts_read_the_prompt_of_any_format():
    mode = get_mode("answer-slots", pad_operands=3)
    texts = [make_example([658, 189], fmt)["text"] for fmt in ("cot", "plain", "reversed")]
    assert mode.training_texts(texts) == ["658+189=0847<end>"] * 3
    with pytest.raises(ValueError, match="non-negative integer"):
        get_mode("answer-slots", pad_operands=-1)


def test_the_inputs_hide_the_answer_and_the_loss_is_taken_on_the_slots_only():
    ids = torch.tensor([TOKENIZER.encode("0012+0034=00046<end>")])
    inputs, slots = slot_inputs(ids)
    assert TOKENIZER.decode(inputs[0]) == "0012+0034=" + "<pause>" * 6
    assert slots[0].tolist() == [False] * 10 + [True] * 6
    logits = torch.zeros(1, 16, 37, requires_grad=True)
    slot_loss(logits, ids, slots).backward()
    assert logits.grad[0, :10].abs().sum() == 0 and logits.grad[0, 10:].abs().sum() > 0


def test_a_training_step_learns_a_fixed_batch_and_never_sees_an_answer_digit():
    mode = get_mode("answer-slots", pad_operands=2)
    rows = torch.tensor([TOKENIZER.encode(line) for line in mode.training_texts(
        [f"{a}+{b}=" for a, b in [(12, 34), (56, 78), (9, 91), (40, 5)]])])
    model = small_model(n_loops=2)
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    ctx = StepContext(0, lambda: torch.autocast("cpu", enabled=False))
    losses = []
    for _ in range(60):
        opt.zero_grad()
        losses.append(mode.training_step(model, Batch(None, rows, None), ctx).loss.item())
        opt.step()
    assert losses[-1] < 0.3 * losses[0]
    assert len(seen) == 60 and all((x[:, 6:] == PAUSE_ID).all() for x in seen)  # after "12+34=": slots only


def test_generation_is_one_pass_whose_text_parses_and_matches_the_argmax():
    mode = get_mode("answer-slots", pad_operands=2)
    model = small_model(n_loops=2).eval()
    texts = mode.generate(model, ["12+34=", "7+", "99+1="])
    assert [len(TOKENIZER.encode(t)) for t in texts] == [4, 0, 4]
    ids = torch.tensor([TOKENIZER.encode("12+34=" + "<pause>" * 4)])
    assert TOKENIZER.decode(model(ids)[0, 6:].argmax(-1), skip_pad=False) == texts[0]
    gens = mode.generate(model, ["12+34="], return_probs=True)
    assert gens[0].text == texts[0] and len(gens[0].probs) == 4 and all(0 < p <= 1 for p in gens[0].probs)
    a = mode.generate(model, ["12+34="], temperature=1.0, generator=torch.Generator().manual_seed(1))
    b = mode.generate(model, ["12+34="], temperature=1.0, generator=torch.Generator().manual_seed(1))
    assert a == b
    assert parse_answer("046<end>") == 46  # the completion of a right model reads as its answer


class _Oracle(torch.nn.Module):
    """Logits that put all mass on the right answer token at each slot (for the evaluator's bookkeeping)."""

    def __init__(self):
        super().__init__()
        self.inner = small_model()
        self.cfg = self.inner.cfg

    @property
    def W_E(self):
        return self.inner.W_E

    def looping(self, n):
        return self.inner.looping(n)

    def forward(self, ids):
        out = torch.full(ids.shape + (37,), -10.0)
        for row, seq in enumerate(ids.tolist()):
            text = TOKENIZER.decode(seq)
            prompt = text[: text.index("=") + 1]
            line = slot_line(prompt, 2)
            for t, tok in enumerate(TOKENIZER.encode(line)):
                out[row, t, tok] = 10.0
        return out


def test_the_evaluator_scores_slots_with_the_modes_own_token_accuracy():
    mode = get_mode("answer-slots", pad_operands=2)
    examples = [make_example([a, b]) for a, b in [(12, 34), (99, 1), (5, 7)]]
    results = evaluate_examples(_Oracle(), examples, mode=mode, plain_speed_examples=0)
    assert results["exact_match"] == 1.0 and results["token_accuracy"] == 1.0
    assert results["mode"] == "answer-slots"


def test_the_answer_slots_flag_is_the_mode():
    cfg, _ = training_config(vars(training_parser().parse_args(["--answer-slots", "--pad-operands", "4",
                                                                  "--no-wandb"])))
    assert (cfg.mode, cfg.mode_settings) == ("answer-slots", {"pad_operands": 4})
    with pytest.raises(ValueError, match="--answer-slots contradicts --mode pause"):
        training_config(vars(training_parser().parse_args(["--answer-slots", "--mode", "pause"])))
    with pytest.raises(ValueError, match="scores only its slots"):
        TrainConfig(mode="answer-slots", prompt_loss_weight=0.1, wandb=False)


@pytest.mark.slow
def test_a_looped_slots_model_learns_one_digit_addition(tmp_path):
    """Through the package's trainer, 2 layers looped twice learn the 100 one-digit sums they are shown (the table)."""
    from mathllm.chains import write_examples

    splits = {"train": [make_example([a, b]) for a in range(10) for b in range(10)] * 4,
              "val": [make_example([a, b]) for a, b in [(3, 4), (9, 9), (0, 7), (5, 5)]] * 2,
              "test": [make_example([a, b]) for a in range(10) for b in range(10)]}
    write_examples(splits, tmp_path / "data", {"max_digits": 1})
    cfg = TrainConfig(mode="answer-slots", model_size="tiny", loops=2, data_dir=str(tmp_path / "data"),
                      output_dir=str(tmp_path / "run"), batch_size=32, learning_rate=3e-3, warmup_steps=20,
                      max_steps=250, eval_steps=250, save_steps=250, logging_steps=50, wandb=False, progress=False,
                      seed=0, max_length=16)
    result = train(cfg, console_log=False)
    assert result.test_results["exact_match"] >= 0.95, result.test_results["exact_match"]
