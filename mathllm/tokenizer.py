"""Character-level tokenizer for arithmetic with chain of thought.

One token per character, plus a few special tokens written in angle brackets::

    >>> tok = Tokenizer()
    >>> tok.str_tokens("12+34=<think>2+4=6 1+3=4</think>46<end>")[:9]
    ['1', '2', '+', '3', '4', '=', '<think>', '2', '+']
    >>> tok.encode("3+5=8<end>")
    [3, 10, 5, 11, 8, 15]

Ids are fixed forever (checkpoints depend on them); new tokens are only ever appended:

    ids 0-9    the digits '0'-'9' (the id of a digit is its value)
    10-16      '+', '=', ' ', '<think>', '</think>', '<end>', '<pad>'   (the seed's vocabulary)
    17-20      '-', '*', '<pause>', '<bos>'                            (reserved for later modes)
    21-36      '<z0>' ... '<z15>': latent think symbols that mean nothing to a human
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Sequence

if TYPE_CHECKING:  # torch is imported lazily: data generation does not need it (saves ~2 s per CLI call)
    import torch

DIGITS = [str(d) for d in range(10)]
SEED_SYMBOLS = ["+", "=", " ", "<think>", "</think>", "<end>", "<pad>"]
RESERVED_SYMBOLS = ["-", "*", "<pause>", "<bos>"]
NUM_LATENT_SYMBOLS = 16
LATENT_SYMBOLS = [f"<z{i}>" for i in range(NUM_LATENT_SYMBOLS)]
VOCAB: list[str] = DIGITS + SEED_SYMBOLS + RESERVED_SYMBOLS + LATENT_SYMBOLS

TOKEN_TO_ID: dict[str, int] = {tok: i for i, tok in enumerate(VOCAB)}
PLUS_ID = TOKEN_TO_ID["+"]
EQUALS_ID = TOKEN_TO_ID["="]
SPACE_ID = TOKEN_TO_ID[" "]
THINK_ID = TOKEN_TO_ID["<think>"]
END_THINK_ID = TOKEN_TO_ID["</think>"]
END_ID = TOKEN_TO_ID["<end>"]
PAD_ID = TOKEN_TO_ID["<pad>"]
MINUS_ID = TOKEN_TO_ID["-"]
TIMES_ID = TOKEN_TO_ID["*"]
PAUSE_ID = TOKEN_TO_ID["<pause>"]
BOS_ID = TOKEN_TO_ID["<bos>"]
LATENT_IDS = [TOKEN_TO_ID[t] for t in LATENT_SYMBOLS]
DIGIT_IDS = list(range(10))
VOCAB_SIZE = len(VOCAB)

_SPECIAL_TOKENS = [t for t in VOCAB if len(t) > 1]


@dataclass
class BatchEncoding:
    """Padded token ids and their attention mask, both ``[batch, seq]``."""

    input_ids: "torch.Tensor"  # long, PAD_ID where padded
    attention_mask: "torch.Tensor"  # long, 1 for real tokens, 0 for padding
    lengths: "torch.Tensor"  # long [batch], number of real tokens per row


class Tokenizer:
    """Maps text like ``"658+189=<think>8+9=17</think>847<end>"`` to ids and back.

    Stateless; ``Tokenizer()`` always gives the same vocabulary. The module-level ``TOKENIZER`` is
    a ready instance.
    """

    vocab: list[str] = VOCAB
    token_to_id: dict[str, int] = TOKEN_TO_ID
    pad_id = PAD_ID
    end_id = END_ID

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def tokenize(self, text: str) -> list[str]:
        """Split text into tokens: ``"7+<pause>"`` -> ``['7', '+', '<pause>']``.

        Raises ``ValueError`` naming the character (or unknown ``<...>`` tag) and its position.
        """
        if not isinstance(text, str):
            raise TypeError(f"expected a string to tokenize, got {type(text).__name__}")
        tokens: list[str] = []
        i = 0
        while i < len(text):
            ch = text[i]
            if ch == "<":
                end = text.find(">", i)
                tag = text[i : end + 1] if end != -1 else ""
                if tag in TOKEN_TO_ID:
                    tokens.append(tag)
                    i = end + 1
                    continue
                shown = tag if tag else text[i : i + 12]
                raise ValueError(
                    f"unknown token {shown!r} at position {i} in {text!r}; "
                    f"special tokens are {', '.join(_SPECIAL_TOKENS)}"
                )
            if ch not in TOKEN_TO_ID:
                raise ValueError(
                    f"unknown character {ch!r} at position {i} in {text!r}; "
                    "allowed: digits 0-9, '+', '-', '*', '=', space and <...> special tokens"
                )
            tokens.append(ch)
            i += 1
        return tokens

    def encode(self, text: str) -> list[int]:
        """``"3+5=8<end>"`` -> ``[3, 10, 5, 11, 8, 15]``."""
        return [TOKEN_TO_ID[t] for t in self.tokenize(text)]

    def decode(self, ids: Iterable[int] | "torch.Tensor", skip_pad: bool = True) -> str:
        """Inverse of ``encode``; padding is dropped unless ``skip_pad=False``."""
        if hasattr(ids, "tolist"):  # torch.Tensor / numpy array
            ids = ids.tolist()
        out = []
        for pos, i in enumerate(ids):
            i = int(i)
            if not 0 <= i < len(VOCAB):
                raise ValueError(f"token id {i} at position {pos} is outside the vocabulary (0-{len(VOCAB) - 1})")
            if skip_pad and i == PAD_ID:
                continue
            out.append(VOCAB[i])
        return "".join(out)

    def str_tokens(self, text_or_ids: str | Sequence[int] | "torch.Tensor") -> list[str]:
        """One label per token, for plot axes: ``"12+3="`` -> ``['1', '2', '+', '3', '=']``."""
        if isinstance(text_or_ids, str):
            return self.tokenize(text_or_ids)
        if hasattr(text_or_ids, "tolist"):
            text_or_ids = text_or_ids.tolist()
        return [VOCAB[int(i)] for i in text_or_ids]

    def encode_batch(
        self,
        texts: Sequence[str],
        padding_side: str = "right",
        pad_to: int | None = None,
    ) -> BatchEncoding:
        """Encode and pad a batch. ``padding_side="left"`` is what batched generation wants.

        >>> enc = Tokenizer().encode_batch(["1+2=", "10+20="])
        >>> enc.input_ids.tolist()[0], enc.attention_mask.tolist()[0]
        ([1, 10, 2, 11, 16, 16], [1, 1, 1, 1, 0, 0])
        """
        import torch

        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        encoded = [self.encode(t) for t in texts]
        longest = max((len(e) for e in encoded), default=0)
        width = longest if pad_to is None else pad_to
        if width < longest:
            raise ValueError(f"pad_to={pad_to} is shorter than the longest sequence ({longest} tokens)")
        ids = torch.full((len(encoded), width), PAD_ID, dtype=torch.long)
        mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, seq in enumerate(encoded):
            n = len(seq)
            if n == 0:
                continue
            sl = slice(0, n) if padding_side == "right" else slice(width - n, width)
            ids[row, sl] = torch.tensor(seq, dtype=torch.long)
            mask[row, sl] = 1
        lengths = torch.tensor([len(e) for e in encoded], dtype=torch.long)
        return BatchEncoding(ids, mask, lengths)

    def decode_batch(self, ids: "torch.Tensor" | Sequence[Sequence[int]]) -> list[str]:
        return [self.decode(row) for row in ids]


TOKENIZER = Tokenizer()
