"""mathllm: tiny transformers that learn arithmetic, and the tools to look inside them."""

__version__ = "0.1.0"

from mathllm.tokenizer import TOKENIZER, Tokenizer  # noqa: E402,F401
