"""Gumbel-softmax free thinking: the model writes K think tokens itself; only the answer is scored.

    12+34=<think>2+4=6 1+3=4</think>46<end>   ->   12+34=<think>z1 ... zK</think>46<end>

Each think token is a straight-through Gumbel-softmax sample over the think alphabet (the forward pass sees a
hard one-hot, the backward pass the soft sample's gradient), fed back as ``one_hot @ W_E[alphabet]``;
``</think>`` and the answer are teacher-forced after the generated trace and only the answer (with ``<end>``) is
scored, so gradients reach the think tokens only through the answer. At test time the model writes its think
tokens greedily (or sampled, at a temperature). Two exact implementations of that gradient, and a fast one:

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

The think budget K is a fixed number or ``"shape"`` (``mathllm.modes.thinking``: never the answer's business);
the alphabet is ``digits`` (0-9, ``+``, ``=``, space: what human traces use), ``latent`` (``<z0>``...``<z15>``) or
``both``. The noise and the temperature are pure functions of the seed and the step, so resuming is exact.
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from mathllm.batches import LengthGroupedData, num_operands, stratum
from mathllm.model import KVCache
from mathllm.modes.thinking import (RETIRED_BUDGETS, THINK_ALPHABETS, check_alphabet, check_budget,
                                    generate_with_forced_thoughts, think_budget)
from mathllm.text import split_text, think_block
from mathllm.tokenizer import END_THINK_ID, THINK_ID, TOKENIZER
from mathllm.training_mode import Batch, StepContext, StepOutput, TrainingMode, answer_only_text, step_seed
from mathllm.utils import eval_mode

GUMBEL_BACKWARDS = ("parallel", "sequential", "uncached")


@dataclass
class GumbelSettings:
    think_tokens: str = "shape"  # pause/gumbel: think budget K, an integer or "shape" (longest trace of the prompt's shape)
    think_alphabet: str = "digits"  # gumbel: what it may think in: digits (0-9 + = space), latent (<z0>..<z15>), both
    gumbel_temperature: float = 1.0  # gumbel: Gumbel-softmax temperature (the start value when annealed)
    gumbel_temperature_end: Optional[float] = None  # gumbel: anneal the temperature to this by the last step
    gumbel_anneal: str = "exponential"  # gumbel: temperature schedule, linear | exponential
    gumbel_backward: str = "parallel"  # gumbel: parallel (fast) | sequential (cached K steps, exact) | uncached
    gumbel_grad_depth: int = 1  # gumbel, parallel: sampling decisions a gradient path crosses (K = exact)
    gumbel_cuda_graph: bool = True  # gumbel, parallel, on CUDA: replay the K sampling steps as a CUDA graph
    entropy_weight: float = 0.0  # gumbel: + weight * mean think entropy (nats); > 0 sharpens, < 0 explores

    def __post_init__(self) -> None:
        self.think_tokens = check_budget(self.think_tokens)
        check_alphabet(self.think_alphabet)
        if self.gumbel_backward not in GUMBEL_BACKWARDS:
            raise ValueError(f"unknown --gumbel-backward {self.gumbel_backward!r}; choose one of "
                             f"{', '.join(GUMBEL_BACKWARDS)}")
        if self.gumbel_anneal not in ("linear", "exponential"):
            raise ValueError(f"--gumbel-anneal must be linear or exponential, got {self.gumbel_anneal!r}")
        if not self.gumbel_temperature > 0 or (self.gumbel_temperature_end is not None
                                               and not self.gumbel_temperature_end > 0):
            raise ValueError("Gumbel temperatures must be positive")
        if self.gumbel_grad_depth < 0:
            raise ValueError(f"--gumbel-grad-depth must be >= 0, got {self.gumbel_grad_depth}")

    @property
    def alphabet(self) -> list[int]:
        return THINK_ALPHABETS[self.think_alphabet]


def gumbel_temperature(settings: GumbelSettings, step: int, total_steps: int) -> float:
    """``gumbel_temperature`` at step 0, annealed (linearly or exponentially) to ``gumbel_temperature_end``."""
    start, end = settings.gumbel_temperature, settings.gumbel_temperature_end
    if end is None or total_steps <= 1:
        return start
    p = min(max(step / (total_steps - 1), 0.0), 1.0)
    if settings.gumbel_anneal == "linear":
        return start + (end - start) * p
    return start * (end / start) ** p


def gumbel_groups(texts: Sequence[str], settings: GumbelSettings, max_length: int, operand_balance: float = 0.0,
                  source: str = "data", stratum_min_share: float = 0.0) -> LengthGroupedData:
    """Gumbel training data: a ``LengthGroupedData`` whose group keys are ``(P, K, A)`` (prompt length, think
    budget, answer length incl. ``<end>``) and whose rows are the prompt ids followed by the answer ids."""
    rows: dict[tuple[int, int, int], list[list[int]]] = {}
    labels: dict[tuple[int, int, int], list[tuple[int, tuple[int, ...]]]] = {}
    for line_no, text in enumerate(texts, 1):
        parts = split_text(text)
        p_ids, a_ids = TOKENIZER.encode(parts.prompt), TOKENIZER.encode(parts.answer)
        k = think_budget(parts.prompt, settings.think_tokens)
        if len(p_ids) + k + len(a_ids) + 2 > max_length:
            raise ValueError(f"{source}, example {line_no}: prompt + {k} think tokens + answer is longer than "
                             f"--max-length {max_length}: {text!r}")
        key = (len(p_ids), k, len(a_ids))
        rows.setdefault(key, []).append(p_ids + a_ids)
        labels.setdefault(key, []).append((num_operands(parts.prompt), stratum(parts.prompt)))
    return LengthGroupedData.from_rows(rows, labels, operand_balance, stratum_min_share)


# ----------------------------------------------------------------------------------------------
# Sampling think tokens, and the straight-through gradient
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


def _answer_loss(logits: torch.Tensor, answer: torch.Tensor, normalize=None) -> torch.Tensor:
    """Mean cross-entropy of the answer tokens (``normalize``: a count -> divisor, for data parallelism)."""
    flat, target = _f32(logits.reshape(-1, logits.shape[-1])), answer.reshape(-1)
    if normalize is None:
        return F.cross_entropy(flat, target)
    return F.cross_entropy(flat, target, reduction="sum") / normalize(target.new_tensor(target.numel(), dtype=torch.float))


def _entropy(think_logits: torch.Tensor, normalize=None) -> torch.Tensor:
    """Mean entropy (nats) of the model's distribution over the alphabet at each think position."""
    logp = torch.log_softmax(_f32(think_logits), dim=-1)
    per_position = -(logp.exp() * logp).sum(-1)
    if normalize is None:
        return per_position.mean()
    return per_position.sum() / normalize(per_position.new_tensor(float(per_position.numel())))


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
                           use_cache: bool = True, normalize=None) -> GumbelOutput:
    """Sample the think tokens one at a time with their straight-through graph (exact gradient).

    ``use_cache=True`` feeds each token through a differentiable KV cache; ``False`` re-runs the model over
    the whole prefix every step (the predecessor's way: same values, much slower).
    """
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
    answer_loss = _answer_loss(answer_logits, answer, normalize)
    entropy = _entropy(torch.stack(think_scores, 1), normalize) if k else answer_loss.new_zeros(())
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
                             cuda_graph: bool = False, normalize=None) -> GumbelOutput:
    """One Gumbel training step's forward and backward (gradients accumulate into the parameters' ``.grad``).

    The loss is multiplied by ``scale`` before backward (a GradScaler's scale; 1 otherwise). ``depth`` =
    number of fixed-point iterations of the straight-through chain (module docstring); 0 = no gradient
    through the sampling decisions at all (an ablation: the think tokens become fixed inputs).
    """
    ctx = autocast or contextlib.nullcontext
    with ctx():
        answer_logits, think_logits, delta, think = gumbel_forward_parallel(model, prompt, answer, k, alphabet, noise,
                                                                            cuda_graph=cuda_graph)
        answer_loss = _answer_loss(answer_logits, answer, normalize)
        entropy = _entropy(think_logits, normalize) if k else answer_loss.new_zeros(())
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
# The mode
# ----------------------------------------------------------------------------------------------

def _by_key(keys: Sequence[Any], batch_size: int) -> list[tuple[Any, list[int]]]:
    """Row indices grouped by key, in chunks of at most ``batch_size``."""
    groups: dict[Any, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    return [(key, rows[s : s + batch_size]) for key, rows in sorted(groups.items())
            for s in range(0, len(rows), batch_size)]


class Gumbel(TrainingMode):
    """Think tokens the model samples itself (straight-through Gumbel-softmax); loss on the answer."""

    name = "gumbel"
    Settings = GumbelSettings
    writes_human_trace = False
    writes_own_thoughts = True
    resume_ignored = frozenset({"gumbel_cuda_graph"})
    retired_values = {"think_tokens": RETIRED_BUDGETS}
    description = "the answer after the model's own think tokens"
    note = "the think tokens are the model's own, never supervised"

    def check(self, cfg) -> None:
        if cfg.prompt_loss_weight:
            raise ValueError("--prompt-loss-weight is for the teacher-forced modes; the gumbel mode scores the answer")

    def training_texts(self, texts: Sequence[str]) -> list[str]:
        """The answer-only lines (the think block is the model's own)."""
        return [answer_only_text(t) for t in texts]

    def training_data(self, texts: Sequence[str], cfg, source: str = "data") -> LengthGroupedData:
        return gumbel_groups(texts, self.settings, cfg.max_length, cfg.operand_balance, source,
                             cfg.stratum_min_share)

    def temperature(self, step: int) -> float:
        return gumbel_temperature(self.settings, step, self.total_steps)

    def training_step(self, model, batch: Batch, ctx: StepContext) -> StepOutput:
        s = self.settings
        P, K, A = batch.key
        prompt, answer = batch.ids[:, :P], batch.ids[:, P:]
        device = batch.ids.device
        alphabet = torch.tensor(s.alphabet, device=device)
        total, mine = ctx.global_rows(len(batch.ids))  # noise for the global batch, sliced: as one process would
        noise = gumbel_noise((total, K, len(alphabet)), step_seed(self.cfg.seed, ctx.step, 3), device)[mine]
        tau = self.temperature(ctx.step)
        normalize = None if ctx.rows is None else ctx.normalize
        if s.gumbel_backward == "parallel":
            out = gumbel_backward_parallel(model, prompt, answer, K, alphabet, noise, tau, s.entropy_weight,
                                           s.gumbel_grad_depth, 1.0 if ctx.loss_scale is None else ctx.loss_scale,
                                           ctx.autocast, cuda_graph=s.gumbel_cuda_graph, normalize=normalize)
        else:
            with ctx.autocast():
                out = gumbel_loss_sequential(model, prompt, answer, K, alphabet, noise, tau, s.entropy_weight,
                                             use_cache=s.gumbel_backward == "sequential", normalize=normalize)
            (out.loss if ctx.loss_scale is None else out.loss * ctx.loss_scale).backward()
        return StepOutput(out.loss.detach(), len(batch.ids) * (P + K + A + 1),
                          {"temperature": tau, "think_entropy": float(out.entropy), "answer_loss": float(out.answer_loss)})

    @torch.inference_mode()
    def validation_loss(self, model, texts: Sequence[str], step: int, batch_size: int) -> float:
        """The answer loss after the model's own greedy think tokens."""
        device = model.W_E.device
        key = (len(texts), hash(tuple(texts)))
        if key not in self._val_cache:
            self._val_cache = {key: gumbel_groups(texts, self.settings, model.cfg.n_ctx, source="validation")}
        alphabet = torch.tensor(self.settings.alphabet, device=device)
        total = count = 0.0
        for (P, K, A), ids in self._val_cache[key].groups.items():
            for i in range(0, len(ids), batch_size):
                batch = ids[i : i + batch_size].to(device)
                logits = gumbel_forward_parallel(model, batch[:, :P], batch[:, P:], K, alphabet, None)[0]
                total += F.cross_entropy(logits.flatten(0, 1).float(), batch[:, P:].flatten(), reduction="sum").item()
                count += batch[:, P:].numel()
        return total / max(count, 1.0)

    def generate(self, model, prompts: Sequence[str], max_new_tokens: int = 64, batch_size: int = 128,
                 drafts: Optional[Sequence[str]] = None, return_probs: bool = False, temperature: float = 0.0,
                 generator: Optional[torch.Generator] = None):
        """``<think>``, K tokens chosen greedily from the think alphabet (argmax; at temperature > 0, sampled from
        the alphabet), ``</think>``, then the answer. Drafts are not used: the think tokens are the model's own."""
        def thoughts(full_prompts: list[str]) -> list[str]:
            if temperature > 0:
                ids = self.sampled_think(model, full_prompts, temperature, generator)
            else:
                ids = self.greedy_think(model, full_prompts, batch_size)
            return ["<think>" + TOKENIZER.decode(t) + "</think>" for t in ids]

        return generate_with_forced_thoughts(model, prompts, thoughts, max_new_tokens, batch_size, return_probs,
                                             temperature, generator)

    @torch.inference_mode()
    def greedy_think(self, model, prompts: Sequence[str], batch_size: int = 128) -> list[list[int]]:
        """The think tokens the model writes greedily after each prompt (``"12+34="``), as ids."""
        device = model.W_E.device
        alphabet = torch.tensor(self.settings.alphabet, device=device)
        encoded = [TOKENIZER.encode(p) + [THINK_ID] for p in prompts]
        budgets = [think_budget(p, self.settings.think_tokens) for p in prompts]
        out: list[list[int]] = [[] for _ in prompts]
        with eval_mode(model):
            for (_, k), rows in _by_key([(len(e), b) for e, b in zip(encoded, budgets)], batch_size):
                prefix = torch.tensor([encoded[i] for i in rows], dtype=torch.long, device=device)
                for i, t in zip(rows, alphabet[sample_think(model, prefix, k, alphabet)].tolist()):
                    out[i] = t
        return out

    @torch.inference_mode()
    def sampled_think(self, model, prompts: Sequence[str], temperature: float,
                      generator: Optional[torch.Generator]) -> list[list[int]]:
        """Think tokens sampled from softmax(logits[alphabet] / temperature) (the playground's temperature)."""
        device = model.W_E.device
        alphabet = torch.tensor(self.settings.alphabet, device=device)
        out = []
        for p in prompts:
            k = think_budget(p, self.settings.think_tokens)
            prefix = torch.tensor([TOKENIZER.encode(p) + [THINK_ID]], device=device)
            u = torch.rand((1, k, len(alphabet)), generator=generator, device=device)
            noise = -torch.log(-torch.log(u.clamp(1e-10, 1 - 1e-7))) * temperature
            # argmax(l + T g) = argmax(l / T + g): a sample from softmax(l / T)
            out.append(alphabet[sample_think(model, prefix, k, alphabet, noise)][0].tolist())
        return out

    def scoring_texts(self, texts: Sequence[str], completions: Sequence[str]) -> tuple[list[str], bool]:
        """The true answer after the model's own think block."""
        lines = []
        for text, got in zip(texts, completions):
            parts = split_text(text)
            think = think_block(got)
            lines.append(parts.prompt + (f"<think>{think}</think>" if think is not None and got.startswith("<think>")
                                         else "") + parts.answer)
        return lines, True
