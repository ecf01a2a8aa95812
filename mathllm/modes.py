"""Training modes without chain-of-thought labels: answer-only, pause, Gumbel-softmax free thinking, stepwise
internalization; their data, their training steps, and how a trained model of each mode generates.

Every mode reads the same chain-of-thought data (``scripts/generate_data.py --format cot``); what a mode does
with a line such as ``12+34=<think>2+4=6 1+3=4</think>46<end>``:

=============  ===========================================================================  =====================
mode           what the model reads (and, for gumbel, writes)                               loss on
=============  ===========================================================================  =====================
teacher        ``12+34=<think>2+4=6 1+3=4</think>46<end>``                                  trace + answer
answer-only    ``12+34=46<end>``                                                            answer
pause          ``12+34=<pause><pause>...<pause>46<end>`` (K pauses, forced at test time)    answer
gumbel         ``12+34=<think>z1 ... zK</think>46<end>``: the model samples z1..zK itself   answer
internalize    ``12+34=<think>`` + the trace minus its first n tokens + ``</think>46<end>``,   rest of trace + answer
               n growing with the step until no trace is left
=============  ===========================================================================  =====================

(``<end>`` is part of the answer.) **Gumbel**: each think token is a straight-through Gumbel-softmax sample
over the think alphabet (the forward pass sees a hard one-hot, the backward pass the soft sample's
gradient), fed back as ``one_hot @ W_E[alphabet]``; ``</think>`` and the answer are teacher-forced after the
generated trace and only the answer is scored, so gradients reach the think tokens only through the answer.
Two exact implementations of that gradient, and a fast one:

* ``sequential``: K single-token forwards through a differentiable KV cache (``KVCache(differentiable=True)``);
  the exact straight-through gradient through the whole chain of samples. Many small kernels.
* ``uncached``: the same gradient, but every step re-runs the model over the whole prefix (what a public
  predecessor did; kept as the reference and for the benchmark).
* ``parallel`` (default): sample the K tokens without an autograd graph (KV cache, one token per step; on
  CUDA the K steps are replayed as one captured CUDA graph), then one teacher-forced forward over the whole
  sequence with the sampled tokens, whose input embeddings carry a zero ``delta`` to collect gradients. The
  straight-through gradient of sample k is ``dL/de_k`` pushed through ``softmax((logits_{k-1} + g_k) / T)``;
  since the forward values are identical (hard one-hot), the exact chain is the solution of a triangular
  system that fixed-point iteration solves in K steps. ``gumbel_grad_depth`` = how many steps (each one
  backward pass to ``delta`` only, activation gradients without weight gradients), then one backward for the
  parameters: depth 1 = every path through one sampling decision, the cheap default; depth K = exact, equal
  to ``sequential`` (tested).

Measured (``scripts/benchmark_modes.py``, H100, small model, batch 32, K = 19): a ``parallel`` depth-1 step
takes 1.37x the time and 1.10x the memory of a teacher step on the same batch (eager sampling without the
CUDA graph: 6.3x); ``sequential`` 21x and 3.2x; ``uncached`` 19x and 11.6x.

The think budget K is a fixed number (``think_tokens=8``) or ``"trace"``: the length of the human trace
of that problem (a function of the operands, so it is known at test time too). The alphabet is
``digits`` (0-9, ``+``, ``=``, space: what human traces use), ``latent`` (``<z0>``...``<z15>``) or ``both``.

Everything that depends on the step (internalization schedule, smoothing, Gumbel noise, temperature,
teacher mixing) is a pure function of the step and the seed, so resuming from a checkpoint is exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from mathllm.tokenizer import (DIGIT_IDS, END_ID, END_THINK_ID, EQUALS_ID, LATENT_IDS, PAD_ID, PLUS_ID,
                               SPACE_ID, THINK_ID, TOKENIZER)

MODES = ("teacher", "answer-only", "pause", "gumbel", "internalize")
THINK_ALPHABETS = {
    "digits": DIGIT_IDS + [PLUS_ID, EQUALS_ID, SPACE_ID],  # the symbols of human traces
    "latent": list(LATENT_IDS),  # <z0>..<z15>: mean nothing to a human
    "both": DIGIT_IDS + [PLUS_ID, EQUALS_ID, SPACE_ID] + list(LATENT_IDS),
}
GUMBEL_BACKWARDS = ("parallel", "sequential", "uncached")
# TrainConfig fields that describe a mode (recorded with checkpoints; read back by generation/evaluation)
MODE_FIELDS = ("mode", "think_tokens", "think_alphabet", "gumbel_temperature", "gumbel_temperature_end",
               "gumbel_anneal", "gumbel_backward", "gumbel_grad_depth", "entropy_weight", "internalize_start",
               "internalize_end", "internalize_stages", "internalize_smoothing", "internalize_reset_optimizer",
               "init_from", "mix_teacher", "mix_teacher_end")


# ----------------------------------------------------------------------------------------------
# Settings
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModeSettings:
    """What generation and evaluation need to know about a model's training mode."""

    mode: str = "teacher"
    think_tokens: str = "trace"  # an integer as text, or "trace"
    think_alphabet: str = "digits"

    @classmethod
    def from_config(cls, config: dict[str, Any] | None) -> "ModeSettings":
        config = config or {}
        mode = config.get("mode") or "teacher"
        if config.get("use_gumbel") and mode == "teacher":
            mode = "gumbel"
        return cls(mode=mode, think_tokens=str(config.get("think_tokens", "trace")),
                   think_alphabet=config.get("think_alphabet", "digits"))

    @property
    def alphabet(self) -> list[int]:
        return THINK_ALPHABETS[self.think_alphabet]

    @property
    def writes_human_trace(self) -> bool:
        """Whether the model is trained to write (part of) the human trace: only then is think-exact meaningful."""
        return self.mode in ("teacher", "internalize")

    def budget(self, trace_length: int) -> int:
        """K for a problem whose human trace has ``trace_length`` tokens."""
        return trace_length if self.think_tokens == "trace" else int(self.think_tokens)

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "think_tokens": self.think_tokens, "think_alphabet": self.think_alphabet}


def check_mode_config(cfg) -> None:
    """Validate the mode fields of a ``TrainConfig`` (raises ValueError naming the problem)."""
    if cfg.mode not in MODES:
        raise ValueError(f"unknown --mode {cfg.mode!r}; choose one of {', '.join(MODES)}")
    tokens = str(cfg.think_tokens)
    if tokens != "trace" and not (tokens.isdigit() and int(tokens) >= 0):
        raise ValueError(f"--think-tokens must be a non-negative integer or 'trace', got {cfg.think_tokens!r}")
    if cfg.think_alphabet not in THINK_ALPHABETS:
        raise ValueError(f"unknown --think-alphabet {cfg.think_alphabet!r}; choose one of {', '.join(THINK_ALPHABETS)}")
    if cfg.gumbel_backward not in GUMBEL_BACKWARDS:
        raise ValueError(f"unknown --gumbel-backward {cfg.gumbel_backward!r}; choose one of {', '.join(GUMBEL_BACKWARDS)}")
    if cfg.gumbel_anneal not in ("linear", "exponential"):
        raise ValueError(f"--gumbel-anneal must be linear or exponential, got {cfg.gumbel_anneal!r}")
    if not cfg.gumbel_temperature > 0 or (cfg.gumbel_temperature_end is not None and not cfg.gumbel_temperature_end > 0):
        raise ValueError("Gumbel temperatures must be positive")
    if cfg.gumbel_grad_depth < 0:
        raise ValueError(f"--gumbel-grad-depth must be >= 0, got {cfg.gumbel_grad_depth}")
    if not 0 <= cfg.internalize_start < cfg.internalize_end:
        raise ValueError(f"need 0 <= --internalize-start < --internalize-end, got {cfg.internalize_start} and "
                         f"{cfg.internalize_end}")
    if cfg.internalize_stages is not None and cfg.internalize_stages < 1:
        raise ValueError(f"--internalize-stages must be >= 1, got {cfg.internalize_stages}")
    if cfg.internalize_smoothing < 0:
        raise ValueError(f"--internalize-smoothing must be >= 0, got {cfg.internalize_smoothing}")
    for name in ("mix_teacher", "mix_teacher_end"):
        value = getattr(cfg, name)
        if value is not None and not 0.0 <= value <= 1.0:
            raise ValueError(f"--{name.replace('_', '-')} must be in [0, 1], got {value}")
    if cfg.mode == "teacher" and (cfg.mix_teacher or cfg.mix_teacher_end):
        raise ValueError("--mix-teacher mixes teacher batches into another mode; it means nothing with --mode teacher")


def read_mode_metadata(checkpoint) -> Optional[dict[str, Any]]:
    """The mode fields a trainer wrote into a checkpoint's ``model.safetensors`` metadata (None: none)."""
    import json
    from pathlib import Path

    from safetensors import safe_open

    path = Path(checkpoint)
    path = path / "model.safetensors" if path.is_dir() else path
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        return json.loads(meta["mathllm_mode"]) if "mathllm_mode" in meta else None
    except (OSError, ValueError, KeyError):
        return None


def mode_settings(model) -> ModeSettings:
    """The mode a model was trained in, from ``model.training_meta`` (set by ``load_model`` and ``train``);
    teacher when nothing was recorded."""
    meta = getattr(model, "training_meta", None)
    config = meta.get("config") if isinstance(meta, dict) else None
    return ModeSettings.from_config(config)


# ----------------------------------------------------------------------------------------------
# Texts: one problem in each mode's format
# ----------------------------------------------------------------------------------------------

def split_text(text: str) -> tuple[str, Optional[str], str]:
    """``"12+34=<think>2+4=6 1+3=4</think>46<end>"`` -> ``("12+34=", "2+4=6 1+3=4", "46<end>")``; the trace is
    None when the line has no think block."""
    eq = text.index("=")
    prompt, rest = text[: eq + 1], text[eq + 1 :]
    if rest.startswith("<think>"):
        stop = rest.index("</think>")
        return prompt, rest[len("<think>") : stop], rest[stop + len("</think>") :]
    return prompt, None, rest


def answer_only_text(text: str) -> str:
    """``12+34=46<end>``: the think block removed."""
    prompt, _, answer = split_text(text)
    return prompt + answer


def trace_length(text: str) -> int:
    """Number of tokens in the human trace of a line (0 without a think block)."""
    trace = split_text(text)[1]
    return len(TOKENIZER.tokenize(trace)) if trace else 0


def pause_text(text: str, settings: ModeSettings) -> str:
    """``12+34=<pause>...<pause>46<end>`` with K pauses."""
    prompt, _, answer = split_text(text)
    return prompt + "<pause>" * settings.budget(trace_length(text)) + answer


def internalize_text(text: str, removed: int) -> str:
    """The line with the first ``removed`` trace tokens dropped (lines without a trace are unchanged)."""
    prompt, trace, answer = split_text(text)
    if trace is None:
        return text
    return prompt + "<think>" + "".join(TOKENIZER.tokenize(trace)[removed:]) + "</think>" + answer


def human_trace_length(prompt: str) -> int:
    """Length of the human trace of the problem in ``prompt`` (``"658+189="`` -> 23); what
    ``think_tokens="trace"`` uses at test time, where there is no trace to read it from."""
    from mathllm.data import format_example

    operands = [int(x) for x in prompt.rstrip("=").split("+")]
    return trace_length(format_example(operands, "cot"))


def mode_texts(texts: Sequence[str], settings: ModeSettings, removed: Optional[int] = None) -> list[str]:
    """Each line in the format a model of this mode is trained on (for gumbel: the answer-only line; the
    think block is the model's own). ``removed``: internalize stage (default: everything removed)."""
    if settings.mode == "teacher":
        return list(texts)
    if settings.mode in ("answer-only", "gumbel"):
        return [answer_only_text(t) for t in texts]
    if settings.mode == "pause":
        return [pause_text(t, settings) for t in texts]
    if settings.mode == "internalize":
        return [internalize_text(t, 10**9 if removed is None else removed) for t in texts]
    raise ValueError(f"unknown mode {settings.mode!r}")


# ----------------------------------------------------------------------------------------------
# Schedules (pure functions of the step)
# ----------------------------------------------------------------------------------------------

def step_seed(seed: int, step: int, stream: int) -> int:
    """A seed for one step's randomness; ``stream`` separates independent uses."""
    return (seed * 2_147_483_629 + step * 7_919 + stream * 1_000_000_007) % (2**63 - 1)


def gumbel_temperature(cfg, step: int, total_steps: int) -> float:
    """``gumbel_temperature`` at step 0, annealed (linearly or exponentially) to ``gumbel_temperature_end``."""
    start, end = cfg.gumbel_temperature, cfg.gumbel_temperature_end
    if end is None or total_steps <= 1:
        return start
    p = min(max(step / (total_steps - 1), 0.0), 1.0)
    if cfg.gumbel_anneal == "linear":
        return start + (end - start) * p
    return start * (end / start) ** p


def teacher_fraction(cfg, step: int, total_steps: int) -> float:
    """Share of teacher batches at this step: ``mix_teacher``, linearly to ``mix_teacher_end`` when set."""
    if cfg.mode == "teacher":
        return 1.0
    if cfg.mix_teacher_end is None or total_steps <= 1:
        return cfg.mix_teacher
    p = min(max(step / (total_steps - 1), 0.0), 1.0)
    return cfg.mix_teacher + (cfg.mix_teacher_end - cfg.mix_teacher) * p


def is_teacher_step(cfg, step: int, total_steps: int) -> bool:
    frac = teacher_fraction(cfg, step, total_steps)
    if frac <= 0.0:
        return cfg.mode == "teacher"
    if frac >= 1.0:
        return True
    gen = torch.Generator().manual_seed(step_seed(cfg.seed, step, 1))
    return bool(torch.rand((), generator=gen) < frac)


def internalize_removed(cfg, step: int, total_steps: int, max_trace: int) -> int:
    """Trace tokens removed from the front at ``step`` (before smoothing): none until ``internalize_start``
    (a fraction of training), all ``max_trace`` from ``internalize_end`` on, in between linear, in
    ``internalize_stages`` equal stages (None: one token at a time)."""
    if max_trace <= 0:
        return 0
    progress = (step / max(total_steps, 1) - cfg.internalize_start) / (cfg.internalize_end - cfg.internalize_start)
    progress = min(max(progress, 0.0), 1.0)
    stages = cfg.internalize_stages or max_trace
    stage = math.floor(progress * stages + 1e-9)
    return min(max_trace, math.floor(max_trace * stage / stages + 1e-9))


def smoothing_offsets(cfg, step: int, n: int, max_offset: int) -> torch.Tensor:
    """Deng et al. (2024)'s removal smoothing: each example removes ``o`` extra tokens, P(o) ∝ exp(-λ o)."""
    if cfg.internalize_smoothing <= 0 or max_offset <= 0:
        return torch.zeros(n, dtype=torch.long)
    o = torch.arange(max_offset + 1, dtype=torch.float64)
    probs = torch.exp(-cfg.internalize_smoothing * o)
    gen = torch.Generator().manual_seed(step_seed(cfg.seed, step, 2))
    return torch.multinomial(probs / probs.sum(), n, replacement=True, generator=gen)


# ----------------------------------------------------------------------------------------------
# Data for the dynamic modes
# ----------------------------------------------------------------------------------------------

def _operand_count(ids: list[int]) -> int:
    eq = ids.index(EQUALS_ID)
    return 1 + sum(t == PLUS_ID for t in ids[:eq])


def trace_layout(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For ``[n, L]`` cot lines: the position of ``<think>`` (-1 when none) and the trace length per row."""
    has = (ids == THINK_ID).any(1)
    think_pos = torch.where(has, (ids == THINK_ID).int().argmax(1), torch.full_like(has, -1, dtype=torch.long))
    end_pos = (ids == END_THINK_ID).int().argmax(1)
    length = torch.where(has, end_pos - think_pos - 1, torch.zeros_like(end_pos))
    return think_pos.long(), length.long()


def remove_trace_tokens(ids: torch.Tensor, removed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the first ``removed[i]`` trace tokens of each row of ``ids`` ``[B, L]`` (capped at its trace).

    Returns ``(ids, loss_mask)``: right-padded with ``<pad>`` to the longest row; the mask marks the targets
    after the first ``=`` that are not padding (causal attention: real tokens never see the padding).
    """
    B, L = ids.shape
    think_pos, length = trace_layout(ids)
    r = torch.minimum(removed.to(ids.device), length)
    new_len = L - r
    width = int(new_len.max())
    j = torch.arange(width, device=ids.device)[None, :]
    src = torch.where(j <= think_pos[:, None], j, j + r[:, None]).clamp(max=L - 1)
    valid = j < new_len[:, None]
    out = torch.where(valid, ids.gather(1, src), torch.full_like(src, PAD_ID))
    first_eq = (ids == EQUALS_ID).int().argmax(1, keepdim=True)
    mask = (torch.arange(1, width, device=ids.device)[None, :] > first_eq) & valid[:, 1:]
    return out, mask


def gumbel_groups(texts: Sequence[str], settings: ModeSettings, max_length: int, operand_balance: float = 0.0,
                  source: str = "data"):
    """Gumbel training data: a ``LengthGroupedData`` whose group keys are ``(P, K, A)`` (prompt length, think
    budget, answer length incl. ``<end>``) and whose rows are the prompt ids followed by the answer ids."""
    from mathllm.train import LengthGroupedData

    rows: dict[tuple[int, int, int], list[list[int]]] = {}
    operands: dict[tuple[int, int, int], list[int]] = {}
    for line_no, text in enumerate(texts, 1):
        prompt, trace, answer = split_text(text)
        p_ids, a_ids = TOKENIZER.encode(prompt), TOKENIZER.encode(answer)
        k = settings.budget(len(TOKENIZER.tokenize(trace)) if trace else 0)
        if len(p_ids) + k + len(a_ids) + 2 > max_length:
            raise ValueError(f"{source}, example {line_no}: prompt + {k} think tokens + answer is longer than "
                             f"--max-length {max_length}: {text!r}")
        key = (len(p_ids), k, len(a_ids))
        rows.setdefault(key, []).append(p_ids + a_ids)
        operands.setdefault(key, []).append(_operand_count(p_ids))
    return LengthGroupedData.from_rows(rows, operands, operand_balance)


# ----------------------------------------------------------------------------------------------
# Gumbel-softmax free thinking
# ----------------------------------------------------------------------------------------------

def gumbel_noise(shape: Sequence[int], seed: int, device: torch.device) -> torch.Tensor:
    """Standard Gumbel noise ``-log(Exp(1))`` from a generator seeded with ``seed``."""
    gen = torch.Generator(device=device).manual_seed(seed)
    return -torch.empty(tuple(shape), device=device).exponential_(generator=gen).log()


@torch.no_grad()
def sample_think(model, prefix: torch.Tensor, k: int, alphabet: torch.Tensor, noise: Optional[torch.Tensor] = None,
                 use_cache: bool = True, cuda_graph: bool = False) -> torch.Tensor:
    """Write ``k`` think tokens after ``prefix`` ``[B, P]`` (which ends in ``<think>``); each is
    ``argmax(logits[alphabet] + noise)`` (greedy when ``noise`` is None; with Gumbel noise, a sample).
    Returns indices into ``alphabet``, ``[B, k]``. ``use_cache=False`` re-runs the whole prefix every step.

    ``cuda_graph=True`` (CUDA, with noise): the K steps are captured as a CUDA graph the second time a shape
    (batch, prefix length, K) comes up, and replayed from then on (one launch instead of ~100 kernel launches
    per token; a shape seen once, such as an epoch's last short batch, costs no capture). Same result; falls
    back to eager execution (with a warning) if capture fails.
    """
    if cuda_graph and use_cache and noise is not None and k > 0 and prefix.is_cuda:
        sampler = _graph_sampler(model, prefix, k, alphabet, noise)
        if sampler is not None:
            return sampler(prefix, noise)
    return _sample_loop(model, prefix, k, alphabet, noise, use_cache)


def _sample_loop(model, prefix: torch.Tensor, k: int, alphabet: torch.Tensor, noise: Optional[torch.Tensor],
                 use_cache: bool = True) -> torch.Tensor:
    from mathllm.model import KVCache

    B = prefix.shape[0]
    choices = torch.zeros((B, k), dtype=torch.long, device=prefix.device)
    if k == 0:
        return choices
    if use_cache:
        cache = KVCache.for_model(model, B, capacity=prefix.shape[1] + k)
        logits = model(prefix, past_key_values=cache)[:, -1]
    else:
        seq = prefix
        logits = model(seq)[:, -1]
    for step in range(k):
        scores = _f32(logits[:, alphabet])
        if noise is not None:
            scores = scores + noise[:, step]
        choices[:, step] = scores.argmax(-1)
        if step == k - 1:
            break
        nxt = alphabet[choices[:, step]][:, None]
        if use_cache:
            logits = model(nxt, past_key_values=cache)[:, -1]
        else:
            seq = torch.cat([seq, nxt], dim=1)
            logits = model(seq)[:, -1]
    return choices


class _GraphSampler:
    """``_sample_loop`` for one shape, captured as a CUDA graph: copy the inputs in, replay, copy the result out."""

    def __init__(self, model, prefix: torch.Tensor, k: int, alphabet: torch.Tensor, noise: torch.Tensor):
        self.prefix, self.noise, self.alphabet = prefix.clone(), noise.clone(), alphabet.clone()
        device = prefix.device
        autocast_on = torch.is_autocast_enabled("cuda")
        dtype = torch.get_autocast_dtype("cuda")

        def run():  # autocast's weight cache must be off inside a capture
            with torch.autocast("cuda", dtype=dtype, enabled=autocast_on, cache_enabled=False):
                return _sample_loop(model, self.prefix, k, self.alphabet, self.noise)

        side = torch.cuda.Stream(device)  # warm-up on a side stream (the shape already ran eagerly once)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            run()
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = run()

    def __call__(self, prefix: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        self.prefix.copy_(prefix)
        self.noise.copy_(noise)
        self.graph.replay()
        return self.out.clone()


_GRAPH_SAMPLERS: "weakref.WeakKeyDictionary[Any, dict]" = None  # type: ignore[assignment]
_GRAPH_FAILED: set = set()


def _graph_sampler(model, prefix, k, alphabet, noise) -> Optional[_GraphSampler]:
    global _GRAPH_SAMPLERS
    import warnings
    import weakref

    if _GRAPH_SAMPLERS is None:
        _GRAPH_SAMPLERS = weakref.WeakKeyDictionary()
    per_model = _GRAPH_SAMPLERS.setdefault(model, {})
    key = (tuple(prefix.shape), k, tuple(alphabet.tolist()), noise.dtype, torch.is_autocast_enabled("cuda"),
           torch.get_autocast_dtype("cuda"), model.training)
    if key not in per_model:
        if id(model) in _GRAPH_FAILED:
            return None
        seen = per_model.setdefault("seen", set())
        if key not in seen:  # first sighting: eager (rare shapes never pay for a capture)
            seen.add(key)
            return None
        try:
            per_model[key] = _GraphSampler(model, prefix, k, alphabet, noise)
        except Exception as err:  # noqa: BLE001 - capture is an optimisation; eager gives the same samples
            _GRAPH_FAILED.add(id(model))
            warnings.warn(f"CUDA graph capture of Gumbel sampling failed ({type(err).__name__}: {err}); "
                          "sampling eagerly", RuntimeWarning, stacklevel=3)
            return None
    return per_model[key]


def _f32(x: torch.Tensor) -> torch.Tensor:
    """At least float32 (half-precision logits under autocast are upcast; float64 stays float64)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _column(batch: int, token: int, device) -> torch.Tensor:
    return torch.full((batch, 1), token, dtype=torch.long, device=device)


def _answer_loss(logits: torch.Tensor, answer: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(_f32(logits.reshape(-1, logits.shape[-1])), answer.reshape(-1))


def _entropy(think_logits: torch.Tensor) -> torch.Tensor:
    """Mean entropy (nats) of the model's distribution over the alphabet at each think position."""
    logp = torch.log_softmax(_f32(think_logits), dim=-1)
    return -(logp.exp() * logp).sum(-1).mean()


@dataclass
class GumbelOutput:
    loss: torch.Tensor  # answer loss (+ entropy_weight * entropy), with its graph when training
    answer_loss: torch.Tensor
    entropy: torch.Tensor  # mean entropy of the think distributions (nats), detached
    think: torch.Tensor  # [B, K] sampled think token ids (vocabulary ids)


def _straight_through(scores: torch.Tensor, noise: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, index): y is one-hot(argmax(scores + noise)) in the forward pass with the gradient of
    softmax((scores + noise) / tau) (what ``F.gumbel_softmax(hard=True)`` does, with explicit noise)."""
    z = scores + noise
    soft = torch.softmax(z / tau, dim=-1)
    index = z.argmax(-1)
    hard = F.one_hot(index, scores.shape[-1]).to(soft.dtype)
    return hard - soft.detach() + soft, index


def gumbel_loss_sequential(model, prompt: torch.Tensor, answer: torch.Tensor, k: int, alphabet: torch.Tensor,
                           noise: torch.Tensor, tau: float, entropy_weight: float = 0.0,
                           use_cache: bool = True) -> GumbelOutput:
    """Sample the think tokens one at a time with their straight-through graph (exact gradient).

    ``use_cache=True`` feeds each token through a differentiable KV cache; ``False`` re-runs the model over
    the whole prefix every step (the predecessor's way: same values, much slower).
    """
    from mathllm.model import KVCache

    B = prompt.shape[0]
    device = prompt.device
    prefix = torch.cat([prompt, _column(B, THINK_ID, device)], dim=1)
    E = model.W_E[alphabet]  # [A, d_model], with grad
    if use_cache:
        cache = KVCache.for_model(model, B, differentiable=True)
        logits = model(prefix, past_key_values=cache)[:, -1]
    else:
        seq = model.embed(prefix)
        logits = model(inputs_embeds=seq)[:, -1]
    think_scores, picks, last = [], [], None
    for step in range(k):
        scores = _f32(logits[:, alphabet])
        think_scores.append(scores)
        y, index = _straight_through(scores, noise[:, step], tau)
        picks.append(index)
        e = (y.to(E.dtype) @ E)[:, None]  # [B, 1, d_model]
        if step == k - 1:
            last = e  # fed together with </think> and the answer below
        elif use_cache:
            logits = model(inputs_embeds=e, past_key_values=cache)[:, -1]
        else:
            seq = torch.cat([seq, e], dim=1)
            logits = model(inputs_embeds=seq)[:, -1]
    tail = model.embed(torch.cat([_column(B, END_THINK_ID, device), answer[:, :-1]], dim=1))
    if last is not None:
        tail = torch.cat([last.to(tail.dtype), tail], dim=1)
    if use_cache:
        out = model(inputs_embeds=tail, past_key_values=cache)
    else:
        out = model(inputs_embeds=torch.cat([seq, tail.to(seq.dtype)], dim=1))
    answer_logits = out[:, -answer.shape[1]:]
    answer_loss = _answer_loss(answer_logits, answer)
    entropy = _entropy(torch.stack(think_scores, 1)) if k else answer_loss.new_zeros(())
    loss = answer_loss + entropy_weight * entropy if entropy_weight else answer_loss
    think = alphabet[torch.stack(picks, 1)] if k else prompt.new_zeros((B, 0))
    return GumbelOutput(loss, answer_loss.detach(), entropy.detach(), think)


def gumbel_forward_parallel(model, prompt: torch.Tensor, answer: torch.Tensor, k: int, alphabet: torch.Tensor,
                            noise: Optional[torch.Tensor], think: Optional[torch.Tensor] = None,
                            cuda_graph: bool = False):
    """One teacher-forced forward over ``prompt <think> z_1..z_k </think> answer`` with the think tokens
    sampled first (no graph; ``noise`` None = greedy), their input embeddings plus a zero ``delta``
    (requires grad). Returns ``(answer_logits [B, A, V], think_logits [B, k, |alphabet|], delta, think ids)``."""
    B, P = prompt.shape
    device = prompt.device
    prefix = torch.cat([prompt, _column(B, THINK_ID, device)], dim=1)
    if think is None:
        think = alphabet[sample_think(model, prefix, k, alphabet, noise, cuda_graph=cuda_graph)]
    full = torch.cat([prefix, think, _column(B, END_THINK_ID, device), answer[:, :-1]], dim=1)
    emb = model.embed(full)
    delta = torch.zeros((B, k, emb.shape[-1]), device=device, dtype=emb.dtype, requires_grad=torch.is_grad_enabled())
    if k:
        emb = torch.cat([emb[:, : P + 1], emb[:, P + 1 : P + 1 + k] + delta, emb[:, P + 1 + k :]], dim=1)
    logits = model(inputs_embeds=emb)
    return logits[:, P + 1 + k :], _f32(logits[:, P : P + k][..., alphabet]), delta, think


def gumbel_backward_parallel(model, prompt: torch.Tensor, answer: torch.Tensor, k: int, alphabet: torch.Tensor,
                             noise: torch.Tensor, tau: float, entropy_weight: float = 0.0, depth: int = 1,
                             scale: float = 1.0, autocast: Optional[Callable[[], Any]] = None,
                             cuda_graph: bool = False) -> GumbelOutput:
    """One Gumbel training step's forward and backward (gradients accumulate into the parameters' ``.grad``).

    The loss is multiplied by ``scale`` before backward (a GradScaler's scale; 1 otherwise). ``depth`` =
    number of fixed-point iterations of the straight-through chain (module docstring); 0 = no gradient
    through the sampling decisions at all (an ablation: the think tokens become fixed inputs).
    """
    import contextlib

    ctx = autocast or contextlib.nullcontext
    with ctx():
        answer_logits, think_logits, delta, think = gumbel_forward_parallel(model, prompt, answer, k, alphabet, noise,
                                                                            cuda_graph=cuda_graph)
        answer_loss = _answer_loss(answer_logits, answer)
        entropy = _entropy(think_logits) if k else answer_loss.new_zeros(())
        loss = answer_loss + entropy_weight * entropy if entropy_weight else answer_loss
    params = [p for p in model.parameters() if p.requires_grad]
    total = loss * scale
    if k == 0 or depth == 0:
        total.backward()
        return GumbelOutput(loss.detach(), answer_loss.detach(), entropy.detach(), think)
    soft = torch.softmax((think_logits + noise) / tau, dim=-1)  # [B, K, A]
    E = _f32(model.W_E[alphabet].detach())  # the lookup already gives W_E its (hard) gradient
    # dL/d(input embedding of each think token): activation gradients only (no weight gradients: about half
    # the cost of a full backward pass)
    direct = _f32(torch.autograd.grad(total, delta, retain_graph=True)[0])
    T = direct
    for _ in range(min(depth, k) - 1):  # after K iterations the chain is exact: more change nothing
        surrogate = (soft * (T @ E.T)).sum()
        T = direct + _f32(torch.autograd.grad(surrogate, delta, retain_graph=True)[0])
    # one backward for the parameters: the direct loss plus the straight-through path of every sample
    (total + (soft * (T @ E.T)).sum()).backward(inputs=params)
    return GumbelOutput(loss.detach(), answer_loss.detach(), entropy.detach(), think)


# ----------------------------------------------------------------------------------------------
# Generation in each mode (evaluation, playground)
# ----------------------------------------------------------------------------------------------

def _groups(keys: Sequence[Any], batch_size: int) -> list[tuple[Any, list[int]]]:
    by_key: dict[Any, list[int]] = {}
    for i, key in enumerate(keys):
        by_key.setdefault(key, []).append(i)
    return [(key, idx[s : s + batch_size]) for key, idx in sorted(by_key.items()) for s in range(0, len(idx), batch_size)]


@torch.inference_mode()
def greedy_think(model, prompts: Sequence[str], settings: ModeSettings, batch_size: int = 128) -> list[list[int]]:
    """The think tokens a gumbel-mode model writes greedily after each prompt (``"12+34="``), as ids."""
    device = model.W_E.device
    alphabet = torch.tensor(settings.alphabet, device=device)
    encoded = [TOKENIZER.encode(p) + [THINK_ID] for p in prompts]
    budgets = [settings.budget(human_trace_length(p)) for p in prompts]
    out: list[list[int]] = [[] for _ in prompts]
    was_training = model.training
    model.eval()
    try:
        for (length, k), rows in _groups([(len(e), b) for e, b in zip(encoded, budgets)], batch_size):
            prefix = torch.tensor([encoded[i] for i in rows], dtype=torch.long, device=device)
            think = alphabet[sample_think(model, prefix, k, alphabet)].tolist()
            for i, t in zip(rows, think):
                out[i] = t
    finally:
        model.train(was_training)
    return out


def generate_for_mode(model, prompts: Sequence[str], settings: Optional[ModeSettings] = None,
                      max_new_tokens: int = 64, batch_size: int = 128, return_probs: bool = False,
                      temperature: float = 0.0, generator: Optional[torch.Generator] = None):
    """Complete each prompt the way a model of this mode is used; returns completions (or ``Generation``s).

    * teacher, answer-only, internalize: plain generation (``mathllm.generate.generate``).
    * pause: K ``<pause>`` tokens are appended to the prompt, then the model writes the answer.
    * gumbel: ``<think>``, K tokens chosen greedily from the think alphabet (argmax; at temperature > 0,
      sampled from the alphabet), ``</think>``, then the answer.

    The forced or think tokens do not count against ``max_new_tokens``. A prompt that does not end in ``=``
    (the playground's partial input) is first completed up to its ``=`` by plain generation. With
    ``return_probs`` each token's probability is read from one teacher-forced pass over the whole completion.
    """
    from mathllm.generate import Generation, generate

    settings = settings or mode_settings(model)
    kwargs = dict(temperature=temperature, batch_size=batch_size, generator=generator)
    if settings.mode in ("teacher", "answer-only", "internalize"):
        return generate(model, list(prompts), max_new_tokens=max_new_tokens, return_probs=return_probs, **kwargs)

    prompts = list(prompts)
    heads = [""] * len(prompts)  # what plain generation added to a partial prompt, up to its '='
    partial = [i for i, p in enumerate(prompts) if not p.endswith("=")]
    if partial:
        done = generate(model, [prompts[i] for i in partial], max_new_tokens=max_new_tokens, **kwargs)
        for i, text in zip(partial, done):
            heads[i] = text[: text.index("=") + 1] if "=" in text else text
    full_prompts = [p + h for p, h in zip(prompts, heads)]
    ready = [i for i, p in enumerate(full_prompts) if p.endswith("=") and _parses(p)]
    forced = [""] * len(prompts)
    if settings.mode == "pause":
        for i in ready:
            forced[i] = "<pause>" * settings.budget(human_trace_length(full_prompts[i]))
    elif settings.mode == "gumbel":
        if temperature > 0:
            think_ids = _sampled_think(model, [full_prompts[i] for i in ready], settings, temperature, generator)
        else:
            think_ids = greedy_think(model, [full_prompts[i] for i in ready], settings, batch_size)
        for i, ids in zip(ready, think_ids):
            forced[i] = "<think>" + TOKENIZER.decode(ids) + "</think>"
    else:
        raise ValueError(f"unknown mode {settings.mode!r}")
    room = [max(0, min(max_new_tokens, model.cfg.n_ctx - len(TOKENIZER.encode(p + f))))
            for p, f in zip(full_prompts, forced)]
    answers = [""] * len(prompts)
    for r in sorted(set(room)):
        rows = [i for i in ready if room[i] == r]
        if rows and r > 0:
            for i, text in zip(rows, generate(model, [full_prompts[i] + forced[i] for i in rows], max_new_tokens=r,
                                              **kwargs)):
                answers[i] = text
    completions = [h + f + a for h, f, a in zip(heads, forced, answers)]
    if not return_probs:
        return completions
    probs = token_probabilities(model, prompts, completions, batch_size)
    out = []
    for p, c, pr in zip(prompts, completions, probs):
        ids = TOKENIZER.encode(c)
        out.append(Generation(prompt=p, text=c, token_ids=ids, probs=pr, finished=bool(ids) and ids[-1] == END_ID))
    return out


def _parses(prompt: str) -> bool:
    body = prompt[:-1]
    return bool(body) and all(part.isdigit() for part in body.split("+")) and "+" in body


def _sampled_think(model, prompts: Sequence[str], settings: ModeSettings, temperature: float,
                   generator: Optional[torch.Generator]) -> list[list[int]]:
    """Think tokens sampled from softmax(logits[alphabet] / temperature) (the playground's temperature)."""
    device = model.W_E.device
    alphabet = torch.tensor(settings.alphabet, device=device)
    out = []
    with torch.inference_mode():
        for p in prompts:
            k = settings.budget(human_trace_length(p))
            prefix = torch.tensor([TOKENIZER.encode(p) + [THINK_ID]], device=device)
            u = torch.rand((1, k, len(alphabet)), generator=generator, device=device) if generator is not None else \
                torch.rand((1, k, len(alphabet)), device=device)
            noise = -torch.log(-torch.log(u.clamp(1e-10, 1 - 1e-7))) * temperature
            # argmax(l + T g) = argmax(l / T + g): a sample from softmax(l / T)
            out.append(alphabet[sample_think(model, prefix, k, alphabet, noise)][0].tolist())
    return out


@torch.inference_mode()
def token_probabilities(model, prompts: Sequence[str], completions: Sequence[str], batch_size: int = 128) -> list[list[float]]:
    """Per completion token, the probability the model gives it after the prompt and the tokens before it."""
    device = model.W_E.device
    seqs = [TOKENIZER.encode(p + c) for p, c in zip(prompts, completions)]
    starts = [len(TOKENIZER.encode(p)) for p in prompts]
    out: list[list[float]] = [[] for _ in prompts]
    for length, rows in _groups([len(s) for s in seqs], batch_size):
        ids = torch.tensor([seqs[i] for i in rows], dtype=torch.long, device=device)
        if length < 2:
            continue
        probs = torch.softmax(model(ids[:, :-1]).float(), -1).gather(2, ids[:, 1:, None]).squeeze(2).cpu()
        for row, i in enumerate(rows):
            out[i] = probs[row, starts[i] - 1 :].tolist()
    return out


__all__ = ["MODES", "THINK_ALPHABETS", "ModeSettings", "mode_settings", "split_text", "answer_only_text",
           "pause_text", "internalize_text", "human_trace_length", "mode_texts", "gumbel_temperature",
           "internalize_removed", "remove_trace_tokens", "sample_think", "gumbel_loss_sequential",
           "gumbel_forward_parallel", "gumbel_backward_parallel", "generate_for_mode", "greedy_think",
           "token_probabilities"]
