"""Training modes (mathllm.modes): data without human traces, a think budget that never depends on the answer, the
Gumbel-softmax gradient (cached = uncached = parallel at full depth; it reaches the think tokens' embeddings; no
think targets), schedules, every mode training a tiny model, exact resume, generation / evaluation / playground per
mode, the experiment and benchmark scripts. (Finding modes by name and the base interface:
tests/test_training_mode.py.)"""

from __future__ import annotations

import html
import itertools
import json
import math
from pathlib import Path

import pytest
import torch

from mathllm.checkpoints import TrainedModel, find_checkpoints, load_model, read_metadata, read_metrics
from mathllm.data import format_example
from mathllm.model import MathTransformer, ModelConfig
from mathllm.modes import AnswerOnly, Gumbel, Internalize, Pause, get_mode
from mathllm.modes.gumbel import (GumbelSettings, gumbel_backward_parallel, gumbel_forward_parallel, gumbel_groups,
                                  gumbel_loss_sequential, gumbel_noise, gumbel_temperature, sample_think)
from mathllm.modes.internalize import (InternalizeSettings, internalize_text, remove_trace_tokens, removed_at,
                                       smoothing_offsets, trace_layout)
from mathllm.modes.thinking import THINK_ALPHABETS, shape_budget, think_budget, token_probabilities
from mathllm.text import split_text
from mathllm.tokenizer import END_THINK_ID, LATENT_IDS, PAUSE_ID, THINK_ID, TOKENIZER
from mathllm.train import TrainConfig, train

ROOT = Path(__file__).resolve().parent.parent
TEXT = "658+189=<think>8+9=17 5+8+1=14 6+1+1=8</think>847<end>"


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def tiny_config(data_dir: Path, output_dir: Path, **overrides) -> TrainConfig:
    base = dict(model_size="tiny", data_dir=str(data_dir), output_dir=str(output_dir), batch_size=16,
                learning_rate=3e-3, warmup_steps=2, max_steps=6, logging_steps=2, eval_steps=6, save_steps=100,
                eval_examples=16, wandb=False, progress=False, seed=3, evaluate_test=False)
    base.update(overrides)
    return TrainConfig.from_dict(base)  # a mode's settings given flat: think_tokens="4"


def think_length(completion: str) -> int:
    """Tokens between <think> and </think>."""
    ids = TOKENIZER.encode(completion)
    return ids.index(END_THINK_ID) - ids.index(THINK_ID) - 1


# --- texts and data ----------------------------------------------------------------------------------

def test_each_mode_rewrites_a_line():
    assert split_text(TEXT).think == "8+9=17 5+8+1=14 6+1+1=8"
    assert get_mode("teacher").training_texts([TEXT]) == [TEXT]
    assert get_mode("answer-only").training_texts([TEXT]) == ["658+189=847<end>"]
    assert get_mode("pause", think_tokens="3").training_texts([TEXT]) == ["658+189=<pause><pause><pause>847<end>"]
    # "shape": the longest trace of a 3-digit + 3-digit problem (999+999, 24 tokens), not this one's (23)
    assert get_mode("pause").training_texts([TEXT]) == ["658+189=" + "<pause>" * 24 + "847<end>"]
    assert get_mode("pause", think_tokens="0").training_texts([TEXT]) == ["658+189=847<end>"]
    assert get_mode("gumbel").training_texts([TEXT]) == ["658+189=847<end>"]  # its think block is its own
    assert internalize_text(TEXT, 7) == "658+189=<think>5+8+1=14 6+1+1=8</think>847<end>"
    assert internalize_text(TEXT, 99) == "658+189=<think></think>847<end>"
    assert internalize_text("3+5=8<end>", 4) == "3+5=8<end>"


def test_the_shape_budget_is_the_longest_trace_of_the_prompts_shape():
    assert think_budget("658+189=", "shape") == think_budget("100+100=", "shape") == 24
    assert think_budget("3+5=", "shape") == 0 and think_budget("1+2+3=", "shape") == 8
    assert think_budget("658+189=", "8") == 8 and think_budget("3+5=", "0") == 0
    for lengths in [(1, 1), (2, 1), (1, 2), (2, 2), (1, 1, 1), (2, 1, 1)]:
        longest = 0
        for operands in itertools.product(*[range(10 ** (n - 1) if n > 1 else 0, 10**n) for n in lengths]):
            think = split_text(format_example(list(operands))).think
            longest = max(longest, len(TOKENIZER.tokenize(think)) if think else 0)
        assert shape_budget(lengths) == longest, lengths


def leading_pauses(completion: str) -> int:
    """How many <pause> tokens a completion starts with (the forced ones; an untrained model may add more later)."""
    ids = TOKENIZER.encode(completion) + [-1]
    return next(i for i, t in enumerate(ids) if t != PAUSE_ID)


PROMPTS_OF_ONE_SHAPE = ["1000+1000=", "9999+1001="]  # 0 carries (trace of 23 tokens) and 4 carries (33)


def test_prompts_of_one_shape_get_the_same_number_of_pauses_whatever_their_carries():
    """The think budget must not tell the model the answer: the human trace's length would give the carries."""
    lines = [format_example([1000, 1000]), format_example([9999, 1001])]
    assert [len(TOKENIZER.tokenize(split_text(t).think)) for t in lines] == [23, 33]  # what "trace" would give
    texts = get_mode("pause").training_texts(lines)
    assert [t.count("<pause>") for t in texts] == [33, 33]
    torch.manual_seed(0)
    model = MathTransformer.from_preset("tiny").eval()
    completions = get_mode("pause").generate(model, PROMPTS_OF_ONE_SHAPE, max_new_tokens=2)
    assert [leading_pauses(c) for c in completions] == [33, 33]


@pytest.mark.parametrize("alphabet", ["digits", "latent"])
def test_prompts_of_one_shape_get_think_blocks_of_one_length_whatever_their_carries(alphabet):
    torch.manual_seed(0)
    model = MathTransformer.from_preset("tiny").eval()
    mode = get_mode("gumbel", think_alphabet=alphabet)
    completions = mode.generate(model, PROMPTS_OF_ONE_SHAPE, max_new_tokens=2)
    assert [think_length(c) for c in completions] == [33, 33]
    assert [len(t) for t in mode.greedy_think(model, PROMPTS_OF_ONE_SHAPE)] == [33, 33]
    data = gumbel_groups([format_example([1000, 1000]), format_example([9999, 1001])], mode.settings, 128)
    # groups (prompt length, think budget, answer length): the answers differ ("2000<end>", "11000<end>"), K does not
    assert list(data.groups) == [(10, 33, 5), (10, 33, 6)]


@pytest.mark.parametrize("mode", ["answer-only", "pause"])
def test_answer_only_and_pause_data_hold_no_human_trace(tiny_dataset, mode):
    cfg = tiny_config(tiny_dataset, "unused", mode=mode, **({"think_tokens": "4"} if mode == "pause" else {}))
    texts = [json.loads(line)["text"] for line in (tiny_dataset / "train.jsonl").read_text().splitlines()]
    data = cfg.training_mode().training_data(texts, cfg)
    seen = set()
    for length, ids in data.groups.items():
        assert not ((ids == THINK_ID) | (ids == END_THINK_ID)).any()
        mask = data.loss_masks[length]
        assert not (mask & (ids[:, 1:] == PAUSE_ID)).any()  # pauses are given, never targets
        for row in ids:
            seen.add(TOKENIZER.decode(row))
    expected = {split_text(t).prompt + ("<pause>" * 4 if mode == "pause" else "") + split_text(t).answer
                for t in texts}
    assert seen == expected


def test_gumbel_rows_are_prompt_and_answer_only():
    texts = [TEXT, "12+34=<think>2+4=6 1+3=4</think>46<end>", "13+34=<think>3+4=7 1+3=4</think>47<end>"]
    data = gumbel_groups(texts, GumbelSettings(), 128)  # "shape": 24 think tokens for 3+3 digits, 15 for 2+2
    assert set(data.groups) == {(8, 24, 4), (6, 15, 3)}
    assert [TOKENIZER.decode(r) for r in data.groups[(6, 15, 3)]] == ["12+34=46<end>", "13+34=47<end>"]
    fixed = gumbel_groups(texts, GumbelSettings(think_tokens="5"), 128)
    assert set(fixed.groups) == {(8, 5, 4), (6, 5, 3)}
    with pytest.raises(ValueError, match=r"example 1: prompt \+ 24 think tokens \+ answer is longer than"):
        gumbel_groups(texts, GumbelSettings(), 30)


def test_removing_trace_tokens_pads_on_the_right_and_masks_the_padding():
    a = "12+34=<think>2+4=6 1+3=4</think>46<end>"  # trace of 11 tokens
    b = "1+2+3=<think>1+2+3=6</think>666666<end>"  # trace of 7, same total length (not a true sum: no matter)
    ids = torch.tensor([TOKENIZER.encode(a), TOKENIZER.encode(b)])
    assert [x.tolist() for x in trace_layout(ids)] == [[6, 6], [11, 7]]
    out, mask = remove_trace_tokens(ids, torch.tensor([9, 9]))
    assert TOKENIZER.decode(out[0]) == "12+34=<think>=4</think>46<end>" == internalize_text(a, 9)
    assert TOKENIZER.decode(out[1]) == "1+2+3=<think></think>666666<end>" == internalize_text(b, 9)
    assert TOKENIZER.decode(out[0], skip_pad=False).endswith("<end><pad><pad>")
    assert mask[0].tolist() == [False] * 5 + [True] * 7 + [False] * 2  # targets after '=', not the padding
    assert mask[1].tolist() == [False] * 5 + [True] * 9


def test_schedules_are_pure_functions_of_the_step():
    settings = InternalizeSettings(internalize_start=0.2, internalize_end=0.6)
    removed = [removed_at(settings, s, 100, 20) for s in range(100)]
    assert removed[0] == removed[20] == 0 and removed[60] == removed[99] == 20
    assert all(a <= b for a, b in zip(removed, removed[1:])) and removed[40] == 10
    staged = InternalizeSettings(internalize_end=1.0, internalize_stages=4)
    assert sorted({removed_at(staged, s, 100, 20) for s in range(100)}) == [0, 5, 10, 15]
    assert removed_at(staged, 50, 100, 0) == 0  # nothing to remove
    smooth = InternalizeSettings(internalize_smoothing=1.0)
    assert torch.equal(smoothing_offsets(smooth, 5, 7, 50, 10), smoothing_offsets(smooth, 5, 7, 50, 10))
    assert not torch.equal(smoothing_offsets(smooth, 5, 7, 50, 10), smoothing_offsets(smooth, 5, 8, 50, 10))
    assert smoothing_offsets(smooth, 5, 7, 2000, 10).float().mean() < 1.0  # P(o) ∝ exp(-o)
    assert smoothing_offsets(smooth, 5, 7, 2000, 10).max() <= 10
    assert not smoothing_offsets(InternalizeSettings(), 5, 7, 50, 10).any()  # off by default
    anneal = GumbelSettings(gumbel_temperature=2.0, gumbel_temperature_end=0.5)
    assert gumbel_temperature(anneal, 0, 11) == 2.0 and gumbel_temperature(anneal, 10, 11) == pytest.approx(0.5)
    assert gumbel_temperature(anneal, 5, 11) == pytest.approx(1.0)  # exponential: geometric mean half-way
    linear = GumbelSettings(gumbel_temperature=2.0, gumbel_temperature_end=0.5, gumbel_anneal="linear")
    assert gumbel_temperature(linear, 5, 11) == pytest.approx(1.25)
    assert gumbel_temperature(GumbelSettings(gumbel_temperature=1.5), 7, 11) == 1.5


def test_the_internalize_mode_removes_more_as_training_goes_on():
    mode = get_mode("internalize", internalize_end=0.5, internalize_stages=2, internalize_reset_optimizer=True)
    cfg = TrainConfig(mode="internalize", max_length=64)
    texts = [TEXT, "12+34=<think>2+4=6 1+3=4</think>46<end>"]
    mode.setup(cfg, mode.training_data(texts, cfg), total_steps=100)
    assert mode.max_trace == 23
    assert [mode.removed(s) for s in (0, 24, 25, 49, 50, 99)] == [0, 0, 11, 11, 23, 23]
    assert [s for s in range(1, 100) if mode.stage_changed(s)] == [25, 50]  # fresh AdamW moments then
    assert mode.validation_texts(texts, 0) == texts
    assert mode.validation_texts(texts, 30)[1] == internalize_text(texts[1], 11)
    assert mode.scoring_texts(texts, ["", ""]) == ([internalize_text(t, 99) for t in texts], False)
    assert not get_mode("internalize").stage_changed(50)  # only with internalize_reset_optimizer


def test_what_each_mode_scores_when_evaluated():
    texts = [TEXT]
    assert get_mode("answer-only").scoring_texts(texts, ["847<end>"]) == (["658+189=847<end>"], False)
    assert get_mode("pause", think_tokens="2").scoring_texts(texts, ["x"]) == (
        ["658+189=<pause><pause>847<end>"], True)
    own = "<think><z1><z2></think>846<end>"  # the true answer after the model's own think block
    assert get_mode("gumbel").scoring_texts(texts, [own]) == (["658+189=<think><z1><z2></think>847<end>"], True)
    assert get_mode("gumbel").scoring_texts(texts, ["847<end>"]) == (["658+189=847<end>"], True)
    for cls in (AnswerOnly, Pause, Gumbel):
        assert not cls.writes_human_trace and cls.note
    assert Internalize.writes_human_trace and Gumbel.writes_own_thoughts and not Pause.writes_own_thoughts


# --- the Gumbel-softmax step ------------------------------------------------------------------------------

def gumbel_problem(k=5, alphabet="latent", dtype=torch.float64):
    torch.manual_seed(0)
    model = MathTransformer(ModelConfig.from_preset("tiny", init_std=0.2)).to(dtype)
    prompt = torch.tensor([TOKENIZER.encode(f"{10 + i}+{30 + i}=") for i in range(4)])
    answer = torch.tensor([TOKENIZER.encode(f"{40 + 2 * i}<end>") for i in range(4)])
    ids = torch.tensor(THINK_ALPHABETS[alphabet])
    noise = gumbel_noise((4, k, len(ids)), 5, torch.device("cpu")).to(dtype)
    return model, prompt, answer, ids, noise


def grads_of(model, fn):
    model.zero_grad(set_to_none=True)
    out = fn()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def sequential(model, prompt, answer, alphabet, noise, use_cache=True, k=5):
    out = gumbel_loss_sequential(model, prompt, answer, k, alphabet, noise, 0.7, 0.05, use_cache=use_cache)
    out.loss.backward()
    return out


def test_cached_sampling_equals_uncached_sampling():
    model, prompt, _, alphabet, noise = gumbel_problem(k=6)
    prefix = torch.cat([prompt, torch.full((4, 1), THINK_ID)], 1)
    for n in (noise, None):
        assert torch.equal(sample_think(model, prefix, 6, alphabet, n), sample_think(model, prefix, 6, alphabet, n,
                                                                                      use_cache=False))


def test_cached_gumbel_gradient_equals_uncached_and_parallel_at_full_depth():
    model, prompt, answer, alphabet, noise = gumbel_problem()
    cached, g_cached = grads_of(model, lambda: sequential(model, prompt, answer, alphabet, noise))
    uncached, g_uncached = grads_of(model, lambda: sequential(model, prompt, answer, alphabet, noise, use_cache=False))
    exact, g_exact = grads_of(model, lambda: gumbel_backward_parallel(model, prompt, answer, 5, alphabet, noise, 0.7,
                                                                      0.05, depth=5))
    cheap, g_cheap = grads_of(model, lambda: gumbel_backward_parallel(model, prompt, answer, 5, alphabet, noise, 0.7,
                                                                      0.05, depth=1))
    assert torch.equal(cached.think, uncached.think) and torch.equal(cached.think, exact.think)
    assert cached.loss.item() == pytest.approx(uncached.loss.item(), abs=1e-12)
    assert cached.loss.item() == pytest.approx(exact.loss.item(), abs=1e-12)
    for name in g_cached:
        assert torch.allclose(g_cached[name], g_uncached[name], atol=1e-12), name
        assert torch.allclose(g_cached[name], g_exact[name], atol=1e-10), name
    assert any(not torch.allclose(g_cached[n], g_cheap[n], atol=1e-6) for n in g_cached)  # depth 1 truncates


@pytest.mark.parametrize("how", ["sequential", "parallel"])
def test_gradients_reach_the_embeddings_of_the_think_tokens(how):
    model, prompt, answer, alphabet, noise = gumbel_problem()
    if how == "sequential":
        out, grads = grads_of(model, lambda: sequential(model, prompt, answer, alphabet, noise))
    else:
        out, grads = grads_of(model, lambda: gumbel_backward_parallel(model, prompt, answer, 5, alphabet, noise, 0.7))
    written = set(out.think.flatten().tolist())
    assert written <= set(LATENT_IDS)
    for token in written:  # every think token the model wrote gets a gradient in its embedding row
        assert grads["embed.W_E"][token].abs().sum() > 0
    never = set(LATENT_IDS) - written
    for token in never:  # the soft sample reaches unwritten symbols through the logits only, not the input rows
        assert grads["embed.W_E"][token].abs().sum() == 0


def test_no_gradient_comes_from_think_token_targets():
    """The loss scores the answer only: the logits at the think positions get no gradient from the loss (only
    the straight-through path through the samples, which this forward has none of)."""
    model, prompt, answer, alphabet, noise = gumbel_problem()
    captured = {}

    def keep(module, inputs, output):
        if output.requires_grad:  # the teacher-forced pass, not the sampling steps
            output.retain_grad()
            captured["logits"] = output

    handle = model.unembed.register_forward_hook(keep)
    try:
        answer_logits, *_ = gumbel_forward_parallel(model, prompt, answer, 5, alphabet, noise)
        torch.nn.functional.cross_entropy(answer_logits.flatten(0, 1), answer.flatten()).backward()
    finally:
        handle.remove()
    grad = captured["logits"].grad  # [B, P + 1 + K + A, V]
    P = prompt.shape[1]
    assert grad[:, : P + 1 + 5].abs().sum() == 0  # prompt, <think> and the think tokens predict nothing scored
    assert grad[:, P + 1 + 5 :].abs().sum() > 0


def test_gumbel_loss_ignores_what_the_human_trace_says():
    a = "12+34=<think>2+4=6 1+3=4</think>46<end>"
    b = "12+34=<think>9+9=9 9+9=9 9+9+9=9</think>46<end>"  # a wrong trace, of another length
    settings = GumbelSettings()
    assert list(gumbel_groups([b], settings, 64).groups) == [(6, 15, 3)]
    assert torch.equal(gumbel_groups([a], settings, 64).groups[(6, 15, 3)],
                       gumbel_groups([b], settings, 64).groups[(6, 15, 3)])


def test_greedy_and_sampled_think_tokens_of_a_gumbel_model():
    torch.manual_seed(0)
    model = MathTransformer.from_preset("tiny").eval()
    mode = get_mode("gumbel", think_tokens="4", think_alphabet="latent")
    prompts = ["12+34=", "658+189=", "3+5="]
    greedy = mode.greedy_think(model, prompts)
    completions = mode.generate(model, prompts, max_new_tokens=3)
    assert [TOKENIZER.encode(c)[1:5] for c in completions] == greedy
    assert all(len(t) == 4 and set(t) <= set(LATENT_IDS) for t in greedy)

    def sampled(seed):
        return mode.sampled_think(model, prompts, 1.0, torch.Generator().manual_seed(seed))

    assert sampled(1) == sampled(1) and sampled(1) != sampled(2)
    assert all(len(t) == 4 and set(t) <= set(LATENT_IDS) for t in sampled(3))
    hot = mode.generate(model, prompts, max_new_tokens=3, temperature=1.0, generator=torch.Generator().manual_seed(1))
    assert [TOKENIZER.encode(c)[1:5] for c in hot] == sampled(1)


def test_forced_tokens_get_their_probabilities_from_one_teacher_forced_pass():
    torch.manual_seed(0)
    model = MathTransformer.from_preset("tiny").eval()
    (gen,) = get_mode("pause", think_tokens="2").generate(model, ["12+34="], max_new_tokens=3, return_probs=True)
    assert gen.text.startswith("<pause><pause>") and len(gen.probs) == len(gen.token_ids) == len(gen.tokens)
    ids = TOKENIZER.encode("12+34=")
    with torch.no_grad():
        probs = torch.softmax(model(torch.tensor([ids + gen.token_ids]))[0, len(ids) - 1 : -1], -1)
    expected = probs.gather(1, torch.tensor(gen.token_ids)[:, None]).squeeze(1)
    torch.testing.assert_close(torch.tensor(gen.probs), expected, rtol=1e-4, atol=1e-6)
    assert token_probabilities(model, ["12+34="], [gen.text]) == [pytest.approx(gen.probs)]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_sampling_equals_eager_sampling():
    torch.manual_seed(0)
    model = MathTransformer(ModelConfig.from_preset("tiny", init_std=0.2)).cuda()
    prompt = torch.tensor([TOKENIZER.encode(f"{10 + i}+{30 + i}=") for i in range(8)], device="cuda")
    prefix = torch.cat([prompt, torch.full((8, 1), THINK_ID, device="cuda")], 1)
    alphabet = torch.tensor(THINK_ALPHABETS["digits"], device="cuda")
    for seed in range(3):
        noise = gumbel_noise((8, 7, len(alphabet)), seed, torch.device("cuda"))
        eager = sample_think(model, prefix, 7, alphabet, noise)
        assert torch.equal(sample_think(model, prefix, 7, alphabet, noise, cuda_graph=True), eager)
    with torch.no_grad():
        model.W_E.mul_(3.0)  # the graph reads the live weights (the optimizer updates them in place)
    noise = gumbel_noise((8, 7, len(alphabet)), 9, torch.device("cuda"))
    assert torch.equal(sample_think(model, prefix, 7, alphabet, noise, cuda_graph=True),
                       sample_think(model, prefix, 7, alphabet, noise))


# --- training in every mode ----------------------------------------------------------------------------------

MODE_RUNS = {
    "teacher": {},
    "answer-only": {},
    "pause": {"think_tokens": "3"},
    "gumbel": {"think_tokens": "4"},
    "gumbel-latent-sequential": {"mode": "gumbel", "think_alphabet": "latent", "think_tokens": "3",
                                 "gumbel_backward": "sequential", "entropy_weight": 0.01},
    "gumbel-shape-mixed": {"mode": "gumbel", "mix_teacher": 0.5, "gumbel_temperature_end": 0.3},
    "internalize": {"internalize_smoothing": 4.0, "internalize_reset_optimizer": True, "internalize_end": 0.5},
}


@pytest.mark.parametrize("name", list(MODE_RUNS))
def test_each_mode_trains_a_tiny_model_with_finite_loss(tiny_dataset, tmp_path, name):
    settings = dict(MODE_RUNS[name])
    settings.setdefault("mode", name)
    result = train(tiny_config(tiny_dataset, tmp_path / name, evaluate_test=True, **settings), console_log=False)
    losses = [m["loss"] for m in read_metrics(tmp_path / name) if "loss" in m]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    record = json.loads((tmp_path / name / "training_config.json").read_text())
    assert record["config"]["mode"] == settings["mode"] and record["mode"]["mode"] == settings["mode"]
    own = {k: v for k, v in settings.items() if k not in ("mode", "mix_teacher")}
    assert record["config"]["mode_settings"] == own and own.items() <= record["mode"].items()
    assert result.test_results["mode"] == settings["mode"] and 0 <= result.test_results["exact_match"] <= 1
    assert (result.test_results["think_exact"] is None) == (settings["mode"] not in ("teacher", "internalize"))
    assert json.loads(read_metadata(tmp_path / name)["mathllm_mode"]) == record["mode"]


@pytest.mark.parametrize("settings", [
    {"mode": "gumbel", "think_tokens": "3", "mix_teacher": 0.3, "gumbel_temperature_end": 0.5},
    {"mode": "internalize", "internalize_smoothing": 2.0, "internalize_reset_optimizer": True,
     "internalize_end": 0.8},
])
def test_interrupted_mode_runs_resume_to_the_same_weights(tiny_dataset, tmp_path, settings):
    train(tiny_config(tiny_dataset, tmp_path / "straight", max_steps=8, **settings), console_log=False)

    def stop_at_4(metrics):
        if metrics["step"] == 4 and "loss" in metrics:
            raise KeyboardInterrupt

    cfg = tiny_config(tiny_dataset, tmp_path / "resumed", max_steps=8, **settings)
    assert train(cfg, on_log=stop_at_4, console_log=False).interrupted
    assert [s for s, _ in find_checkpoints(tmp_path / "resumed")] == [4]
    train(cfg, console_log=False)
    a = load_model(tmp_path / "straight").state_dict()
    b = load_model(tmp_path / "resumed").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_warm_start_loads_the_weights(tiny_dataset, tmp_path):
    train(tiny_config(tiny_dataset, tmp_path / "teacher", max_steps=2), console_log=False)
    train(tiny_config(tiny_dataset, tmp_path / "warm", mode="gumbel", think_tokens="2", max_steps=2,
                      learning_rate=1e-12, init_from=str(tmp_path / "teacher")), console_log=False)
    a = load_model(tmp_path / "teacher").state_dict()
    b = load_model(tmp_path / "warm").state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-8) for k in a)
    with pytest.raises(ValueError, match="d_model"):
        train(tiny_config(tiny_dataset, tmp_path / "bad", model_size="mini", init_from=str(tmp_path / "teacher")),
              console_log=False)


# --- generation, evaluation and the playground in each mode -----------------------------------------------------

def model_of_mode(name: str, **settings) -> TrainedModel:
    torch.manual_seed(0)
    return TrainedModel(MathTransformer.from_preset("tiny").eval(), get_mode(name, **settings), None)


def test_a_gumbel_model_writes_its_own_trace_from_its_alphabet():
    trained = model_of_mode("gumbel", think_alphabet="latent")  # think_tokens "shape"
    prompts = ["658+189=", "3+5=", "12+34="]
    out = trained.generate(prompts, max_new_tokens=5)
    for prompt, completion in zip(prompts, out):
        ids = TOKENIZER.encode(completion)
        k = think_budget(prompt, "shape")
        assert ids[0] == THINK_ID and ids[1 + k] == END_THINK_ID
        assert set(ids[1 : 1 + k]) <= set(LATENT_IDS)
    assert [think_length(c) for c in out] == [24, 0, 15]


def test_a_pause_model_is_given_its_pauses():
    trained = model_of_mode("pause", think_tokens="4")
    (completion,) = trained.generate(["12+34="], max_new_tokens=3)
    assert completion.startswith("<pause>" * 4) and not completion.startswith("<pause>" * 5)
    assert trained.mode.ignore_target_ids() == (PAUSE_ID,)


def test_evaluation_and_playground_handle_every_mode(tiny_dataset):
    from mathllm.data import load_split
    from mathllm.evaluate import evaluate_examples
    from mathllm.playground import run_expression
    from mathllm.widgets import result_html

    examples = load_split(tiny_dataset / "test.jsonl")[:20]
    for name, settings in (("answer-only", {}), ("pause", {}), ("gumbel", {"think_tokens": "3"}),
                           ("internalize", {})):
        trained = model_of_mode(name, **settings)
        res = evaluate_examples(trained, examples)
        assert res["mode"] == name and res["num_examples"] == 20 and 0 <= res["token_accuracy"] <= 1
        played = run_expression(trained, "12+34")
        assert played.mode == name and len(played.tokens) == len(played.token_probs)
        assert played.mode_note == trained.mode.note and html.escape(trained.mode.note) in result_html(played)
        if name == "gumbel":
            assert played.completion.startswith("<think>") and len(TOKENIZER.encode(played.completion)) >= 5
            assert html.escape("the think tokens are the model's own") in result_html(played)
        if name == "pause":
            assert leading_pauses(played.completion) >= 15  # "shape" of 12+34: 15 (the model may add more)


# --- command lines -------------------------------------------------------------------------------------------

def run_script(name: str, *argv: str) -> int:
    """Run ``scripts/<name>.py``'s main in this process, as its command line would (errors -> exit code 2)."""
    import importlib.util

    from mathllm.cli import run_cli

    spec = importlib.util.spec_from_file_location(f"script_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return run_cli(lambda: module.main(list(argv)))


def test_train_cli_use_gumbel_is_the_gumbel_mode(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_script("train", "--model-size", "tiny", "--data-dir", str(tiny_dataset), "--output-dir", str(out),
                      "--no-wandb", "--batch-size", "8", "--max-steps", "2", "--logging-steps", "1", "--eval-steps",
                      "100", "--no-evaluate-test", "--use-gumbel", "--gumbel-temperature", "0.5", "--think-tokens", "2",
                      "--no-progress") == 0
    config = json.loads((out / "training_config.json").read_text())["config"]
    assert config["mode"] == "gumbel" and config["mode_settings"] == {"gumbel_temperature": 0.5, "think_tokens": "2"}
    capsys.readouterr()
    assert run_script("train", "--mode", "bogus", "--data-dir", str(tiny_dataset)) == 2
    err = capsys.readouterr().err
    assert "unknown mode 'bogus'" in err and "Traceback" not in err
    assert run_script("train", "--mode", "pause", "--think-tokens", "trace", "--data-dir", str(tiny_dataset)) == 2
    err = capsys.readouterr().err
    assert "retired" in err and "'shape'" in err


def test_modes_experiment_writes_one_summary(tiny_dataset, tmp_path, capsys):
    assert run_script("modes_experiment", "--data-dir", str(tiny_dataset), "--model-size", "tiny", "--max-steps", "4",
                      "--batch-size", "8", "--seeds", "1", "2", "--device", "cpu", "--output-root",
                      str(tmp_path / "modes"), "--analyse-examples", "30", "--modes", "answer-only",
                      "g2:mode=gumbel,think_tokens=2", "--logging-steps", "2", "--eval-steps", "4",
                      "--eval-examples", "8") == 0
    summary = json.loads((tmp_path / "modes" / "summary.json").read_text())
    assert [(r["name"], r["seed"]) for r in summary["runs"]] == [("answer-only", 1), ("g2", 1), ("answer-only", 2),
                                                                  ("g2", 2)]
    for run in summary["runs"]:
        assert (tmp_path / "modes" / f"{run['name']}-seed{run['seed']}" / "model.safetensors").is_file()
        assert 0 <= run["test_exact_match"] <= 1 and run["seconds_per_step"] > 0
        assert run["settings"]["mode"] == run["mode"] and [m["step"] for m in run["learning_curve"] if "loss" in m] == [2, 4]
    g2 = summary["runs"][1]
    assert g2["mode"] == "gumbel" and g2["settings"]["think_tokens"] == "2"
    assert len(g2["think_analysis"]["entropy_bits_per_position"]) == 2 and g2["think_analysis"]["most_informative"]
    assert summary["aggregate"]["g2"]["seeds"] == [1, 2]
    capsys.readouterr()
    assert run_script("modes_experiment", "--data-dir", str(tiny_dataset), "--max-steps", "2", "--seed", "4",
                      "--output-root", str(tmp_path / "x"), "--dry-run") == 2
    assert "seed" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_benchmark_script_prints_the_ratios(capsys):
    assert run_script("benchmark_modes", "--model-size", "tiny", "--batch-size", "8", "--num-examples", "2000",
                      "--steps", "1", "--repeats", "1", "--warmup", "1", "--device", "cpu") == 0
    out = capsys.readouterr().out
    assert "x teacher" in out and "gumbel" in out and "uncached" in out and "peak MiB" in out


def _conditional_entropy(pairs) -> float:
    """H(Y | X) in bits = H(Y) - I(X; Y), with the plug-in estimates of ``mathllm.free_thinking``."""
    from mathllm.free_thinking import entropy_bits, mutual_information

    codes: dict = {}
    x = [codes.setdefault(key, len(codes)) for key, _ in pairs]
    y = [value for _, value in pairs]
    return entropy_bits(y) - mutual_information(x, y)


def test_the_shape_budget_tells_nothing_about_the_carries_while_the_trace_length_told_almost_everything():
    """The leak issue 16 found: on 4-digit two-operand problems the human trace's length leaves almost no
    uncertainty about the number of carries (README: 1.93 -> 0.001 bits on data/add4_cot's test split); the
    'shape' budget leaves all of it."""
    from mathllm.data import generate_dataset
    from mathllm.text import split_text
    from mathllm.tokenizer import TOKENIZER

    rows = list(generate_dataset(num_examples=4_000, max_digits=4, seed=3)["train"])
    shape = [tuple(len(str(x)) for x in r["operands"]) for r in rows]
    carries = [r["num_carries"] for r in rows]
    trace_length = [len(TOKENIZER.tokenize(split_text(r["text"]).think or "")) for r in rows]
    budget = [think_budget(r["prompt"], "shape") for r in rows]
    prior = _conditional_entropy(list(zip(shape, carries)))
    assert prior > 1.5
    assert _conditional_entropy(list(zip(zip(shape, budget), carries))) == pytest.approx(prior)
    assert _conditional_entropy(list(zip(zip(shape, trace_length), carries))) < 0.05
