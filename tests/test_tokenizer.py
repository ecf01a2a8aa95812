"""The character-level tokenizer: fixed ids, exact round trips, clear errors, padded batches."""

import random

import pytest
import torch

from mathllm.tokenizer import (
    END_ID,
    LATENT_SYMBOLS,
    PAD_ID,
    TOKENIZER,
    VOCAB,
    VOCAB_SIZE,
    Tokenizer,
)


def test_ids_are_fixed():
    # checkpoints depend on these: digits are their own ids, then the seed's symbols, then the appended ones
    assert [TOKENIZER.encode(str(d)) for d in range(10)] == [[d] for d in range(10)]
    seed = ["+", "=", " ", "<think>", "</think>", "<end>", "<pad>"]
    assert [TOKENIZER.token_to_id[t] for t in seed] == list(range(10, 17))
    assert [TOKENIZER.token_to_id[t] for t in ["-", "*", "<pause>", "<bos>"]] == [17, 18, 19, 20]
    assert [TOKENIZER.token_to_id[t] for t in LATENT_SYMBOLS] == list(range(21, 37))
    assert VOCAB_SIZE == TOKENIZER.vocab_size == 37
    assert (PAD_ID, END_ID) == (16, 15)
    assert TOKENIZER.encode("3+5=8<end>") == [3, 10, 5, 11, 8, 15]


@pytest.mark.parametrize("token", VOCAB)
def test_every_vocab_token_round_trips(token):
    ids = TOKENIZER.encode(token)
    assert ids == [VOCAB.index(token)]
    assert TOKENIZER.decode(ids, skip_pad=False) == token
    assert TOKENIZER.str_tokens(token) == [token]


def test_random_token_strings_round_trip():
    rng = random.Random(0)
    for _ in range(300):
        tokens = [rng.choice(VOCAB) for _ in range(rng.randint(0, 40))]
        text = "".join(tokens)
        ids = TOKENIZER.encode(text)
        assert ids == [VOCAB.index(t) for t in tokens]
        assert TOKENIZER.tokenize(text) == tokens
        assert TOKENIZER.decode(ids, skip_pad=False) == text
        assert TOKENIZER.decode(torch.tensor(ids, dtype=torch.long), skip_pad=False) == text


def test_decode_drops_padding_unless_asked():
    ids = TOKENIZER.encode("1+2=3<end><pad><pad>")
    assert TOKENIZER.decode(ids) == "1+2=3<end>"
    assert TOKENIZER.decode(ids, skip_pad=False) == "1+2=3<end><pad><pad>"


def test_a_real_cot_line_tokenizes_one_token_per_character_or_tag():
    text = "658+189=<think>8+9=17 5+8+1=14 6+1+1=8</think>847<end>"
    tokens = TOKENIZER.tokenize(text)
    assert tokens[:9] == ["6", "5", "8", "+", "1", "8", "9", "=", "<think>"]
    assert tokens.count(" ") == 2 and tokens[-1] == "<end>"
    assert "".join(tokens) == text


def test_unknown_character_names_the_character_and_its_position():
    with pytest.raises(ValueError) as err:
        TOKENIZER.encode("12+3x=")
    assert "'x'" in str(err.value) and "position 4" in str(err.value)
    with pytest.raises(ValueError, match="position 0"):
        TOKENIZER.encode("\t1+1=")


def test_unknown_or_unclosed_tag_is_an_error_with_its_position():
    with pytest.raises(ValueError) as err:
        TOKENIZER.encode("1+1=<thinking>2")
    assert "'<thinking>'" in str(err.value) and "position 4" in str(err.value)
    with pytest.raises(ValueError, match="position 2"):
        TOKENIZER.encode("1+<end")


def test_non_string_input_and_out_of_range_ids_are_errors():
    with pytest.raises(TypeError):
        TOKENIZER.tokenize(123)
    with pytest.raises(ValueError, match="position 1"):
        TOKENIZER.decode([1, VOCAB_SIZE])
    with pytest.raises(ValueError):
        TOKENIZER.decode([-1])


def test_str_tokens_accepts_text_ids_and_tensors():
    expected = ["1", "2", "+", "3", "=", "<think>"]
    assert TOKENIZER.str_tokens("12+3=<think>") == expected
    ids = TOKENIZER.encode("12+3=<think>")
    assert TOKENIZER.str_tokens(ids) == expected
    assert TOKENIZER.str_tokens(torch.tensor(ids)) == expected


def test_batch_right_padding():
    enc = Tokenizer().encode_batch(["1+2=", "10+20="])
    assert enc.input_ids.tolist() == [[1, 10, 2, 11, PAD_ID, PAD_ID], [1, 0, 10, 2, 0, 11]]
    assert enc.attention_mask.tolist() == [[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]]
    assert enc.lengths.tolist() == [4, 6]
    assert enc.input_ids.dtype == enc.attention_mask.dtype == torch.long


def test_batch_left_padding_puts_real_tokens_at_the_end():
    enc = TOKENIZER.encode_batch(["1+2=", "10+20="], padding_side="left")
    assert enc.input_ids.tolist() == [[PAD_ID, PAD_ID, 1, 10, 2, 11], [1, 0, 10, 2, 0, 11]]
    assert enc.attention_mask.tolist() == [[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]]
    assert TOKENIZER.decode_batch(enc.input_ids) == ["1+2=", "10+20="]


def test_batch_pad_to_and_its_errors():
    enc = TOKENIZER.encode_batch(["1+2=", ""], pad_to=7)
    assert enc.input_ids.shape == (2, 7)
    assert enc.attention_mask.sum(dim=1).tolist() == [4, 0]
    assert enc.input_ids[1].tolist() == [PAD_ID] * 7
    with pytest.raises(ValueError, match="pad_to"):
        TOKENIZER.encode_batch(["1+2=3<end>"], pad_to=3)
    with pytest.raises(ValueError, match="padding_side"):
        TOKENIZER.encode_batch(["1"], padding_side="middle")
    with pytest.raises(ValueError, match="'a'"):
        TOKENIZER.encode_batch(["1+1=2", "a"])
