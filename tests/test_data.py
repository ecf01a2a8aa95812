"""Data generation: the formats, the vectorised writer, balance, leakage, determinism, files and the CLI."""

import itertools
import json
import logging
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from mathllm.data import (
    ENUMERATE_LIMIT,
    FIELDS,
    Split,
    _Shape,
    _shapes,
    balanced_quotas,
    count_distinct_problems,
    count_tokens,
    describe,
    format_example,
    format_prompt,
    generate_dataset,
    iter_jsonl,
    load_meta,
    load_problems,
    load_split,
    make_example,
    render_texts,
    write_dataset,
)
from mathllm.arithmetic import count_carries, count_carries_array
from mathllm.tokenizer import TOKENIZER

ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------------------------
# Formats
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("operands, text", [
    # the seed's examples
    ((658, 189), "658+189=<think>8+9=17 5+8+1=14 6+1+1=8</think>847<end>"),
    ((12, 34), "12+34=<think>2+4=6 1+3=4</think>46<end>"),
    ((5, 123), "5+123=<think>5+3=8 0+2=2 0+1=1</think>128<end>"),
    ((99, 21), "99+21=<think>9+1=10 9+2+1=12</think>120<end>"),
    ((3, 5), "3+5=8<end>"),
    # different lengths the other way round, a carry out of every column, zeros
    ((123, 5), "123+5=<think>3+5=8 2+0=2 1+0=1</think>128<end>"),
    ((999, 1), "999+1=<think>9+1=10 9+0+1=10 9+0+1=10</think>1000<end>"),
    ((9, 9), "9+9=18<end>"),
    ((0, 0), "0+0=0<end>"),
    ((100, 0), "100+0=<think>0+0=0 0+0=0 1+0=1</think>100<end>"),
    ((10, 90), "10+90=<think>0+0=0 1+9=10</think>100<end>"),
    # three operands: the carry can exceed 1; one-digit operands still get a think block
    ((999, 999, 999), "999+999+999=<think>9+9+9=27 9+9+9+2=29 9+9+9+2=29</think>2997<end>"),
    ((7, 8, 9), "7+8+9=<think>7+8+9=24</think>24<end>"),
    ((95, 7, 8), "95+7+8=<think>5+7+8=20 9+0+0+2=11</think>110<end>"),
])
def test_cot_format(operands, text):
    assert format_example(operands, "cot") == text
    assert render_texts(np.array([operands]), fmt="cot") == [text]


@pytest.mark.parametrize("operands, plain, reversed_", [
    ((12, 34), "12+34=46<end>", "12+34=64<end>"),
    ((99, 21), "99+21=120<end>", "99+21=021<end>"),
    ((0, 0), "0+0=0<end>", "0+0=0<end>"),
    ((500, 500, 5), "500+500+5=1005<end>", "500+500+5=5001<end>"),
])
def test_plain_and_reversed_formats(operands, plain, reversed_):
    assert format_example(operands, "plain") == plain
    assert format_example(operands, "reversed") == reversed_
    assert render_texts(np.array([operands]), fmt="plain") == [plain]
    assert render_texts(np.array([operands]), fmt="reversed") == [reversed_]


def test_prompt_and_example_fields():
    # the steps and carries themselves: tests/test_arithmetic.py
    assert format_prompt([5, 123]) == "5+123="
    example = make_example([99, 21])
    assert list(example) == list(FIELDS)
    assert example == {"text": "99+21=<think>9+1=10 9+2+1=12</think>120<end>", "prompt": "99+21=",
                       "operands": [99, 21], "answer": 120, "num_digits": 2, "num_operands": 2,
                       "num_carries": 2, "format": "cot"}


def test_docstring_examples_are_true():
    import doctest

    import mathllm.data

    assert doctest.testmod(mathllm.data, optionflags=doctest.ELLIPSIS).failed == 0


def test_bad_problems_are_errors():
    with pytest.raises(ValueError, match="at least 2"):
        format_example([5])
    with pytest.raises(ValueError, match="non-negative"):
        format_example([5, -1])
    with pytest.raises(ValueError, match="unknown format"):
        format_example([1, 2], "latin")
    with pytest.raises(TypeError):
        format_example([1.5, 2])


def _random_problems(rng, rows, max_operands=4, max_digits=6):
    """Operands of random lengths (zeros and 9s over-represented), 0 past each row's operand count."""
    num_operands = rng.integers(2, max_operands + 1, size=rows)
    lengths = rng.integers(1, max_digits + 1, size=(rows, max_operands))
    operands = rng.integers(0, 10 ** lengths)
    operands[rng.random(operands.shape) < 0.1] = 0
    nines = rng.random(operands.shape) < 0.1
    operands[nines] = 10 ** lengths[nines] - 1
    operands[np.arange(max_operands)[None, :] >= num_operands[:, None]] = 0
    return operands, num_operands


@pytest.mark.parametrize("fmt", ["cot", "plain", "reversed"])
def test_vectorised_texts_equal_the_reference(fmt):
    operands, num_operands = _random_problems(np.random.default_rng(1), 3000)
    texts = render_texts(operands, num_operands, fmt)
    for row, n, text in zip(operands.tolist(), num_operands.tolist(), texts):
        assert text == format_example(row[:n], fmt)


@pytest.mark.parametrize("fmt", ["cot", "plain", "reversed"])
def test_jsonl_lines_are_exactly_json_dumps_of_the_examples(fmt):
    operands, num_operands = _random_problems(np.random.default_rng(2), 2000)
    split = Split("train", operands, num_operands, fmt)
    lines = split.to_jsonl().decode().split("\n")
    assert lines[-1] == "" and len(lines) == len(split) + 1
    for line, row, n in zip(lines, operands.tolist(), num_operands.tolist()):
        example = make_example(row[:n], fmt)
        assert line == json.dumps(example)
        assert json.loads(line) == example
    # chunking does not change the bytes
    assert b"".join(split.jsonl_chunks(chunk_rows=7)) == split.to_jsonl()


def test_count_tokens_matches_the_tokenizer():
    for text in ["3+5=8<end>", format_example([658, 189]), format_example([1, 2, 3]), ""]:
        assert count_tokens(text) == len(TOKENIZER.encode(text))


# ----------------------------------------------------------------------------------------------
# Counting and drawing problems
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("lengths", [(1, 1), (3, 1), (2, 2), (1, 2, 1), (2, 1, 2), (1, 1, 1, 1)])
def test_stratum_sizes_match_brute_force(lengths):
    shape = _Shape.build(lengths)
    every = shape.enumerate()
    assert len(every) == shape.size == len({tuple(r) for r in every.tolist()})
    assert all(len(str(x)) == n for row in every.tolist()[:: max(1, len(every) // 500)] for x, n in zip(row, lengths))
    carries = Counter(count_carries(row) for row in every.tolist())
    assert shape.capacity.astype(int).tolist()[: max(lengths) + 1] == [carries[c] for c in range(max(lengths) + 1)]


def test_count_distinct_problems():
    assert count_distinct_problems(2) == 10_000
    assert count_distinct_problems(1, 3) == 100 + 1000
    total = sum(_Shape.build(s).capacity.sum() for s in _shapes(2, 3))
    assert total == count_distinct_problems(2, 3)


def test_drawn_problems_are_uniform_within_their_stratum():
    shape = _Shape.build((2, 2))
    carries = 2
    capacity = int(shape.capacity[carries])  # 2385 problems such as 55+55
    draws = shape.draw(np.full(120_000, carries), np.random.default_rng(0))
    assert (count_carries_array(draws) == carries).all()
    assert ((draws >= 10) & (draws <= 99)).all()
    counts = np.array(list(Counter(map(tuple, draws.tolist())).values()))
    assert len(counts) == capacity  # every problem of the stratum is reachable
    expected = len(draws) / capacity
    chi2 = ((counts - expected) ** 2 / expected).sum()
    dof = capacity - 1
    assert chi2 < dof + 6 * np.sqrt(2 * dof)


def test_quotas_balance_shapes_and_carries_and_respect_capacity():
    shapes = _shapes(3, 2)
    capacity = np.stack([_Shape.build(s).capacity[:4] for s in shapes])
    quotas = balanced_quotas(100_000, shapes, capacity)
    assert quotas.sum() == 100_000 and (quotas <= capacity).all()
    by_shape = dict(zip(shapes, quotas))
    for small in [(1, 1), (1, 2), (2, 1), (1, 3), (3, 1), (2, 2)]:  # too few problems: all of them
        assert (by_shape[small] == capacity[shapes.index(small)]).all()
    assert by_shape[(3, 3)].tolist() == [6000, 6000, 6000, 6000]  # the rest shared equally, carries equal
    assert by_shape[(2, 3)].tolist() == [7190, 7190, 7190, 2430]  # only 2430 have 3 carries
    # asking for everything gives everything
    assert (balanced_quotas(10**7, shapes, capacity) == capacity).all()
    # operand counts first: a short 2-operand group leaves its share to 3-operand problems only then
    shapes = _shapes(1, 3)
    capacity = np.stack([_Shape.build(s).capacity[:2] for s in shapes])
    assert balanced_quotas(400, shapes, capacity).sum(axis=1).tolist() == [100, 300]


# ----------------------------------------------------------------------------------------------
# Generated datasets
# ----------------------------------------------------------------------------------------------

def _all_tuples(dataset):
    return {name: dataset[name].operand_tuples() for name in dataset}


@pytest.fixture(scope="module")
def mixed():
    """Two to three operands of up to 4 digits: (4, 4, 4) has more problems than are enumerated."""
    assert 9000**3 > ENUMERATE_LIMIT
    return generate_dataset(num_examples=6000, max_digits=4, max_operands=3, seed=7, fmt="cot")


def test_every_example_is_right_and_rederivable(mixed):
    for name in mixed:
        split = mixed[name]
        texts = split.texts
        for i in range(0, len(split), 7):
            example = split[i]
            assert example["answer"] == sum(example["operands"])
            assert example["text"] == texts[i] == format_example(example["operands"], "cot")
            assert example["num_carries"] == count_carries(example["operands"])
            assert example["num_digits"] == max(len(str(x)) for x in example["operands"])
            assert example["num_operands"] == len(example["operands"]) in (2, 3)
            TOKENIZER.encode(example["text"])


def test_splits_do_not_share_problems(mixed):
    tuples = _all_tuples(mixed)
    seen = list(itertools.chain(*tuples.values()))
    assert len(seen) == len(set(seen)) == 6000
    for a, b in itertools.combinations(tuples, 2):
        assert not set(tuples[a]) & set(tuples[b])
    assert {n: len(t) for n, t in tuples.items()} == {"train": 4800, "val": 600, "test": 600}


def test_operand_counts_lengths_and_carries_are_balanced(mixed):
    num_operands = np.concatenate([mixed[name].num_operands for name in mixed])
    assert np.bincount(num_operands)[2:].tolist() == [3000, 3000]
    # with 3 operands every shape has plenty of problems: lengths uniform, carries equal within each shape
    rows = [(t, c) for s in mixed for t, c in zip(mixed[s].operand_tuples(), mixed[s].num_carries.tolist())]
    three = [(tuple(len(str(x)) for x in t), c) for t, c in rows if len(t) == 3]
    shapes = Counter(shape for shape, _ in three)
    assert len(shapes) == 64 and max(shapes.values()) - min(shapes.values()) <= 1
    for operand in range(3):
        lengths = Counter(shape[operand] for shape, _ in three)
        assert max(lengths.values()) - min(lengths.values()) <= 0.02 * len(three)
    per_shape = Counter(three)
    for shape in shapes:
        counts = [per_shape[(shape, c)] for c in range(max(shape) + 1)]
        assert max(counts) - min(counts) <= 1, (shape, counts)
    # the split is a random cut: val and test look like train
    train, val = describe(mixed["train"]), describe(mixed["val"])
    for field in ("num_carries", "num_digits"):
        p = np.bincount(train[field], minlength=6)[:6] / len(train[field])
        q = np.bincount(val[field], minlength=6)[:6] / len(val[field])
        assert np.abs(p - q).max() < 0.06


def test_metadata(mixed):
    meta = mixed.meta
    assert meta["arguments"] == dict(num_examples=6000, max_digits=4, max_operands=3, seed=7, fmt="cot",
                                      train_ratio=0.8, val_ratio=0.1, test_ratio=0.1)
    assert meta["num_examples"] == 6000 and meta["exhausted"] is False
    assert meta["distinct_problems_available"] == 10**8 + 10**12
    assert sum(meta["num_carries_counts"].values()) == 6000
    assert meta["code_version"]["mathllm"] == meta["mathllm_version"]
    assert "--max-operands 3" in meta["command"] and "--format cot" in meta["command"]


def test_split_behaves_like_a_list_of_examples(mixed):
    train = mixed["train"]
    head = train[:5]
    assert isinstance(head, Split) and len(head) == 5
    assert [ex["text"] for ex in head] == train.texts[:5]
    assert train[-1] == list(train)[-1]
    assert describe(head)["num_tokens"].tolist() == [len(TOKENIZER.encode(t)) for t in head.texts]
    listed = [train[i] for i in range(5)]
    for field in ("operand_digits", "num_carries", "num_tokens"):
        assert describe(listed)[field].tolist() == describe(head)[field].tolist()


def test_exhaustion_gives_every_problem_and_says_so(caplog):
    with caplog.at_level(logging.WARNING, logger="mathllm.data"):
        dataset = generate_dataset(num_examples=5000, max_digits=1, max_operands=3, seed=0)
    assert "only 1,100 distinct problems" in caplog.text
    tuples = list(itertools.chain(*_all_tuples(dataset).values()))
    expected = set(itertools.product(range(10), repeat=2)) | set(itertools.product(range(10), repeat=3))
    assert len(tuples) == 1100 and set(tuples) == expected
    assert dataset.meta["exhausted"] is True and dataset.meta["num_examples"] == 1100
    assert "1,100" in dataset.meta["note"]


def test_small_and_sampled_shapes_and_other_formats():
    # 5 digits: most shapes are sampled column by column; 1 digit: enumerated
    for max_digits, fmt in [(5, "reversed"), (1, "plain")]:
        dataset = generate_dataset(num_examples=40, max_digits=max_digits, seed=3, fmt=fmt)
        for name in dataset:
            for example in dataset[name]:
                assert example["text"] == format_example(example["operands"], fmt)
                assert example["format"] == fmt
        assert sum(len(dataset[n]) for n in dataset) == 40


def test_same_seed_same_bytes_different_seed_different(tmp_path):
    args = dict(num_examples=3000, max_digits=3, max_operands=3)
    first = write_dataset(generate_dataset(seed=5, **args), tmp_path / "a")
    again = write_dataset(generate_dataset(seed=5, **args), tmp_path / "b")
    other = write_dataset(generate_dataset(seed=6, **args), tmp_path / "c")
    for name in ("train", "val", "test", "meta"):
        assert first[name].read_bytes() == again[name].read_bytes()
    for name in ("train", "val", "test"):
        assert first[name].read_bytes() != other[name].read_bytes()


def test_bad_arguments_are_errors():
    with pytest.raises(ValueError, match="add up to 1"):
        generate_dataset(num_examples=10, train_ratio=0.5)
    with pytest.raises(ValueError, match="max_digits"):
        generate_dataset(num_examples=10, max_digits=0)
    with pytest.raises(ValueError, match="max_operands"):
        generate_dataset(num_examples=10, max_operands=1)
    with pytest.raises(ValueError, match="unknown format"):
        generate_dataset(num_examples=10, fmt="roman")
    with pytest.raises(ValueError, match="num_examples"):
        generate_dataset(num_examples=0)


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------

def test_written_files_load_back(tmp_path):
    dataset = generate_dataset(num_examples=500, max_digits=3, max_operands=3, seed=1)
    paths = write_dataset(dataset, tmp_path / "data")
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["meta.json", "test.jsonl", "train.jsonl",
                                                                     "val.jsonl"]
    assert paths["train"].stat().st_mode & 0o777 == 0o644
    for name in ("train", "val", "test"):
        loaded = load_split(paths[name])
        assert loaded == list(dataset[name])
        assert list(iter_jsonl(paths[name])) == loaded
    meta = load_meta(tmp_path / "data")
    assert meta["counts"] == {"train": 400, "val": 50, "test": 50}
    assert meta["files"] == {"train": "train.jsonl", "val": "val.jsonl", "test": "test.jsonl"}


def _write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


GOOD = json.dumps(make_example([12, 34]))


def _line_with(**changes):
    example = make_example([12, 34])
    example.update(changes)
    return json.dumps({k: v for k, v in example.items() if v is not None})


@pytest.mark.parametrize("bad_line, message", [
    ('{"text": "12+34=46<end>", "operands": [12, 34]', "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ("", "empty line"),
    (_line_with(answer=None), "missing field(s) answer"),
    (_line_with(text="12+34=4x6<end>"), "'x' at position 7"),
    (_line_with(text="12+34=<thinking>46<end>"), "'<thinking>'"),
    (_line_with(text="12+34"), "no '='"),
    (_line_with(operands=[12]), "at least 2"),
    (_line_with(operands=[12, "34"]), "non-negative integers"),
    (_line_with(num_carries="0"), "'num_carries' must be an integer"),
    (_line_with(format="latin"), "unknown format"),
    (_line_with(answer=47), "answer is 47 but operands [12, 34] give 46"),
    (_line_with(num_carries=1), "num_carries is 1"),
    (_line_with(text="12+34=47<end>"), "does not match its operands"),
    (_line_with(text="12+34=46<end>"), "expected '12+34=<think>"),
    (_line_with(prompt="12+35="), "prompt '12+35=' is not the start"),
])
def test_a_malformed_line_is_reported_with_file_and_line_number(tmp_path, bad_line, message):
    path = _write_lines(tmp_path / "train.jsonl", [GOOD, GOOD, bad_line, GOOD])
    with pytest.raises(ValueError) as err:
        load_split(path)
    assert f"{path}:3:" in str(err.value)
    assert message in str(err.value)


def test_valid_lines_written_differently_still_load(tmp_path):
    examples = [make_example([12, 34]), make_example([5, 123], "plain"), make_example([9, 9, 9], "reversed")]
    examples[0]["source"] = "by hand"  # an extra field is kept
    lines = [json.dumps(dict(reversed(list(ex.items()))), separators=(",", ":")) for ex in examples]
    path = _write_lines(tmp_path / "mixed.jsonl", lines)
    assert load_split(path) == examples
    assert load_split(_write_lines(tmp_path / "empty.jsonl", [])) == []


def test_consistency_checks_can_be_turned_off_for_hand_made_data(tmp_path):
    path = _write_lines(tmp_path / "custom.jsonl", [GOOD, _line_with(text="12+34=47<end>")])
    assert len(load_split(path, check_consistency=False)) == 2


def test_missing_files_name_the_command_that_makes_them(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_split(tmp_path / "nowhere" / "train.jsonl")
    assert "scripts/generate_data.py" in str(err.value) and "directory" in str(err.value)
    (tmp_path / "data").mkdir()
    with pytest.raises(FileNotFoundError, match=r"scripts/generate_data\.py .*--output-dir .*data"):
        load_split(tmp_path / "data" / "val.jsonl")
    with pytest.raises(FileNotFoundError, match="generate_data"):
        load_meta(tmp_path / "data")


# ----------------------------------------------------------------------------------------------
# The command line
# ----------------------------------------------------------------------------------------------

def _run_cli(*args):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "generate_data.py"), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_cli_end_to_end(tmp_path):
    out = tmp_path / "data"
    done = _run_cli("--num-examples", "300", "--max-digits", "2", "--seed", "3", "--format", "plain",
                    "--output-dir", str(out))
    assert done.returncode == 0, done.stderr
    assert "wrote 300 plain examples" in done.stdout
    meta = load_meta(out)
    assert meta["arguments"]["seed"] == 3 and meta["arguments"]["fmt"] == "plain"
    train = load_split(out / "train.jsonl")
    assert len(train) == 240 and all(ex["format"] == "plain" for ex in train)
    same = generate_dataset(num_examples=300, max_digits=2, seed=3, fmt="plain")
    assert (out / "train.jsonl").read_bytes() == same["train"].to_jsonl()


def test_cli_errors_are_one_clear_line(tmp_path):
    done = _run_cli("--num-examples", "10", "--train-ratio", "0.5", "--output-dir", str(tmp_path / "d"))
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error:") and "add up to 1" in done.stderr
    assert not (tmp_path / "d").exists()


def _main_in_process(*args):
    """``scripts/generate_data.py``'s main run here (errors -> exit 2, as on the command line): faster than a process."""
    import importlib.util

    from mathllm.cli import run_cli

    spec = importlib.util.spec_from_file_location("generate_data_script", ROOT / "scripts" / "generate_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return run_cli(lambda: module.main(list(args)))


def test_cli_reads_the_data_section_of_an_experiment_file(tmp_path, capsys):
    config = tmp_path / "exp.json"
    config.write_text(json.dumps({"data": {"num_examples": 200, "max_digits": 2, "max_operands": 3, "seed": 4},
                                  "data_dir": str(tmp_path / "from_file"), "batch_size": 8}))
    assert _main_in_process("--config", str(config), "--quiet") == 0
    assert load_meta(tmp_path / "from_file")["arguments"] == dict(
        num_examples=200, max_digits=2, max_operands=3, seed=4, fmt="cot", train_ratio=0.8, val_ratio=0.1,
        test_ratio=0.1)
    # flags override the file
    assert _main_in_process("--config", str(config), "--seed", "5", "--output-dir", str(tmp_path / "other"),
                            "--quiet") == 0
    assert load_meta(tmp_path / "other")["arguments"]["seed"] == 5
    assert load_meta(tmp_path / "other")["arguments"]["num_examples"] == 200
    # a file without a data section, or with an unknown argument, is a clear error
    capsys.readouterr()
    config.write_text(json.dumps({"batch_size": 8}))
    assert _main_in_process("--config", str(config)) == 2
    assert 'no "data" section' in capsys.readouterr().err
    config.write_text(json.dumps({"data": {"num_exemples": 10}}))
    assert _main_in_process("--config", str(config)) == 2
    assert "num_exemples" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# The independent check (issue 14): every step of every generated trace is a true equation, read by this file's
# own parser (nothing from mathllm.arithmetic); the subtraction traces are the rule; every answer is right
# ----------------------------------------------------------------------------------------------

_LINE = re.compile(r"(\d+)([-+*])(\d+)=(?:<think>(.*)</think>)?(\d+)<end>")
_TERM = re.compile(r"([-+*]?)(\d+)")


def _left_side_value(left: str) -> tuple[int, list[str]]:
    """The value of a step's left side such as ``2*5+7+1`` or ``0-9-1``, and what breaks the issue's rules for a
    step: at most one product, of one-digit factors; every other term a number of at most two digits."""
    problems, terms, pos = [], [], 0
    for m in _TERM.finditer(left):
        if m.start() != pos or (terms and not m.group(1)) or (not terms and m.group(1)):
            return 0, [f"cannot read {left!r}"]
        terms.append((m.group(1) or "+", m.group(2)))
        pos = m.end()
    if pos != len(left) or not terms:
        return 0, [f"cannot read {left!r}"]
    products = [i for i, (sign, _) in enumerate(terms) if sign == "*"]
    if len(products) > 1 or (products and products[0] != 1):
        problems.append(f"more than one product, or a product that is not the first two terms: {left!r}")
    value, i = 0, 0
    while i < len(terms):
        sign, number = terms[i]
        if i + 1 < len(terms) and terms[i + 1][0] == "*":
            factor = terms[i + 1][1]
            if len(number) != 1 or len(factor) != 1:
                problems.append(f"a factor of more than one digit in {left!r}")
            value += int(number) * int(factor)
            i += 2
            continue
        if len(number) > 2:
            problems.append(f"a term of more than two digits in {left!r}")
        value += -int(number) if sign == "-" else int(number)
        i += 1
    return value, problems


def check_trace(text: str) -> list[str]:
    """What is wrong with one generated line (``[]``: nothing)."""
    m = _LINE.fullmatch(text)
    if not m:
        return [f"malformed line {text!r}"]
    a, symbol, b, think, answer = int(m.group(1)), m.group(2), int(m.group(3)), m.group(4), m.group(5)
    true = {"+": a + b, "-": a - b, "*": a * b}[symbol]
    wrong = []
    if answer != str(true) or true < 0:
        wrong.append(f"answer {answer} is not {true}")
    one_digit = a < 10 and b < 10
    if (think is None) != (one_digit and symbol in "+-"):
        wrong.append("a think block where there should be none, or none where there should be one")
    items = [] if think is None else think.split(" ")
    for item in items:
        if item.isdigit():
            continue  # a bare number: an intermediate written out (checked below for multiplication)
        step = re.fullmatch(r"(.+)=(-?\d+)", item)
        if not step:
            wrong.append(f"{item!r} is neither an equation nor a number")
            continue
        value, problems = _left_side_value(step.group(1))
        wrong += problems
        if value != int(step.group(2)):
            wrong.append(f"{item!r} is false")
    if symbol == "-" and think is not None:
        # the rule, from a closed form: the borrow into column i is 1 exactly when a mod 10^i < b mod 10^i
        rule = []
        for i in range(len(str(a))):
            borrow = int(a % 10**i < b % 10**i)
            a_i, b_i = a // 10**i % 10, b // 10**i % 10
            rule.append(f"{a_i}-{b_i}" + ("-1" if borrow else "") + f"={a_i - b_i - borrow}")
        if items != rule:
            wrong.append(f"subtraction trace {items} is not the rule's {rule}")
    if symbol == "*":
        numbers = [int(x) for x in items if x.isdigit()]
        if numbers != [a * (b % 10 ** (j + 1)) for j in range(len(str(b)) - 1)]:
            wrong.append(f"running sums {numbers} are not a * (b mod 10^(j+1))")
        if len(items) - len(numbers) != len(str(a)) * len(str(b)):
            wrong.append("not one step per pair of digits")
    return wrong


@pytest.mark.parametrize("operation", ["add", "sub", "mul"])
def test_ten_thousand_generated_traces_are_true_step_by_step(operation):
    dataset = generate_dataset(num_examples=10_000, max_digits=4, operation=operation, seed=14)
    texts = [t for name in dataset for t in dataset[name].texts]
    assert len(texts) == 10_000
    assert {len(str(max(ex["operands"]))) for ex in dataset["train"][:2000]} == {1, 2, 3, 4}
    failures = [(t, check_trace(t)) for t in texts if check_trace(t)]
    assert not failures, failures[:3]
    assert {t for t in dataset["test"].texts[:300]} == {format_example(ex["operands"], "cot", operation)
                                                          for ex in dataset["test"][:300]}  # = the one-by-one renderer


def test_the_check_catches_wrong_traces():
    assert not check_trace("658-189=<think>8-9=-1 5-8-1=-4 6-1-1=4</think>469<end>")
    assert not check_trace("12*34=<think>2*4=8 1*4=4 48 2*3+4=10 1*3+0+1=4</think>408<end>")
    for bad, why in [
        ("658-189=<think>8-9=-1 5-8=-3 6-1-1=4</think>469<end>", "is not the rule"),  # a dropped borrow
        ("658-189=<think>8-9=1 5-8-1=-4 6-1-1=4</think>469<end>", "is false"),
        ("105-99=<think>5-9=-4 0-9-1=-10 1-0-1=0</think>006<end>", "answer"),  # leading zeros
        ("7-3=<think>7-3=4</think>4<end>", "think block"),
        ("12*34=<think>2*4=8 1*4=4 48 2*3+4=10 1*3+0+1=4</think>418<end>", "answer 418"),
        ("12*34=<think>2*4=8 1*4=4 46 2*3+4=10 1*3+0+1=4</think>408<end>", "running sums"),
        ("12*34=<think>12*4=48 48 2*3+4=10 1*3+0+1=4</think>408<end>", "more than one digit"),
        ("12*34=<think>2*4=8 1*4=4 48 2*3+4=10 1*3+100=4</think>408<end>", "more than two digits"),
        ("12*34=<think>2*4*1=8 1*4=4 48 2*3+4=10 1*3+0+1=4</think>408<end>", "more than one product"),
    ]:
        assert any(why in w for w in check_trace(bad)), (bad, check_trace(bad))


# ----------------------------------------------------------------------------------------------
# Subtraction, multiplication and mixes: formats, balance, leakage, determinism, files
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("operation", ["sub", "mul", "add,sub,mul"])
@pytest.mark.parametrize("fmt", ["cot", "plain", "reversed"])
def test_every_format_of_every_operation_is_written_exactly(operation, fmt, tmp_path):
    dataset = generate_dataset(num_examples=3000, max_digits=3, operation=operation, fmt=fmt, seed=2)
    split = dataset["train"]
    lines = split.to_jsonl().decode().splitlines()
    for i in range(0, len(split), 7):
        example = split[i]
        assert json.dumps(example) == lines[i] and split.texts[i] == example["text"]
        assert example == make_example(example["operands"], fmt, example.get("operation", "add"))
    paths = write_dataset(dataset, tmp_path)
    assert load_split(paths["train"]) == [split[i] for i in range(len(split))]


def test_subtraction_and_multiplication_lines():
    sub = make_example([658, 189], "reversed", "sub")
    assert sub == {"text": "658-189=964<end>", "prompt": "658-189=", "operands": [658, 189], "answer": 469,
                   "num_digits": 3, "num_operands": 2, "num_borrows": 2, "format": "reversed", "operation": "sub"}
    mul = make_example([12, 34], "plain", "*")
    assert mul["text"] == "12*34=408<end>" and mul["num_carries"] == 1 and mul["operation"] == "mul"
    assert "operation" not in make_example([12, 34])  # addition lines are what they always were
    assert format_example([7, 8], "cot", "mul") == "7*8=<think>7*8=56</think>56<end>"
    with pytest.raises(ValueError, match="a >= b"):
        make_example([3, 7], operation="sub")
    with pytest.raises(ValueError, match="exactly 2 operands"):
        make_example([3, 7, 1], operation="mul")


@pytest.mark.parametrize("operation", ["sub", "mul"])
def test_pair_splits_are_distinct_balanced_and_leakage_free(operation):
    dataset = generate_dataset(num_examples=20_000, max_digits=3, operation=operation, seed=3)
    problems = {name: dataset[name].operand_tuples() for name in dataset}
    every = [p for ps in problems.values() for p in ps]
    assert len(every) == len(set(every)) == 20_000 and all(p[0] == operation for p in every)
    for x, y in itertools.combinations(problems.values(), 2):
        assert not set(x) & set(y)
    if operation == "sub":
        assert all(a >= b for _, a, b in every)
    shapes = Counter(f"{len(str(a))}{'-' if operation == 'sub' else '*'}{len(str(b))}" for _, a, b in every)
    assert shapes == dataset.meta["shape_counts"]
    capacity = {"1-1": 55, "2-1": 900, "2-2": 4095, "1*1": 100, "1*2": 900, "2*1": 900}  # fewer than a share
    full = [n for shape, n in shapes.items() if shape not in capacity]
    assert max(full) - min(full) <= 1  # every other shape gets an equal share
    assert all(shapes[shape] == n for shape, n in capacity.items() if shape in shapes)
    assert dataset.meta["arguments"]["operation"] == operation and "balancing" in dataset.meta


def test_a_mix_gives_each_operation_an_equal_share_and_the_order_of_the_list_does_not_matter():
    mixed = generate_dataset(num_examples=9000, max_digits=2, operation="mul,add,sub", seed=4)
    assert mixed.meta["operation_counts"] == {"add": 3000, "sub": 3000, "mul": 3000}
    again = generate_dataset(num_examples=9000, max_digits=2, operation="add,sub,mul", seed=4)
    assert mixed["train"].to_jsonl() == again["train"].to_jsonl()
    problems = [p for name in mixed for p in mixed[name].operand_tuples()]
    assert len(problems) == len(set(problems))  # 12+3 and 12*3 are two problems, each in one split
    capped = generate_dataset(num_examples=9000, max_digits=1, operation="sub,mul", seed=4)
    assert capped.meta["operation_counts"] == {"sub": 55, "mul": 100} and capped.meta["exhausted"]


def test_pair_data_is_deterministic(tmp_path):
    def written(seed, where):
        write_dataset(generate_dataset(num_examples=2000, max_digits=4, operation="sub,mul", seed=seed), where)
        return [(where / f"{s}.jsonl").read_bytes() for s in ("train", "val", "test")]

    assert written(5, tmp_path / "a") == written(5, tmp_path / "b") != written(6, tmp_path / "c")


def test_addition_files_are_byte_for_byte_what_they_were():
    # sha256 of the three splits of this dataset as written before subtraction and multiplication existed: the
    # shipped checkpoints' data must regenerate exactly
    import hashlib

    dataset = generate_dataset(num_examples=5000, max_digits=4, max_operands=3, fmt="reversed", seed=1)
    digest = hashlib.sha256(b"".join(dataset[s].to_jsonl() for s in dataset)).hexdigest()[:16]
    assert digest == "4daa5ee5734e82b2"
    assert "operation" not in dataset.meta["arguments"]


@pytest.mark.parametrize("operation, small", [("sub", "1-1"), ("mul", "1*1"), ("add,sub", "1-1")])
def test_whole_strata_below_works_for_every_operation(operation, small):
    dataset = generate_dataset(num_examples=4000, max_digits=2, operation=operation, seed=6, whole_strata_below=101)
    symbol = small[1]
    in_split = {name: [p for p in dataset[name].operand_tuples() if len(p) == 3 and p[0] == ("sub" if symbol == "-"
                       else "mul") and max(p[1:]) < 10] for name in dataset}
    assert len(in_split["train"]) == (55 if symbol == "-" else 100) and not in_split["val"] and not in_split["test"]
    assert dataset.meta["arguments"]["whole_strata_below"] == 101


def test_bad_pair_arguments_are_errors():
    with pytest.raises(ValueError, match="subtraction takes exactly 2 operands"):
        generate_dataset(num_examples=100, operation="sub", max_operands=3)
    with pytest.raises(ValueError, match="max_digits must be in 1..9 for mul"):
        generate_dataset(num_examples=100, operation="mul", max_digits=10)
    with pytest.raises(ValueError, match="unknown operation 'div'"):
        generate_dataset(num_examples=100, operation="add,div")
    assert generate_dataset(num_examples=300, max_digits=2, max_operands=3, operation="add,sub").meta[
        "operation_counts"] == {"add": 150, "sub": 150}  # max_operands is addition's


@pytest.mark.parametrize("line, message", [
    ({"text": "658-189=<think>8-9=-1 5-8=-3 6-1-1=4</think>469<end>"}, "does not match its operands"),
    ({"answer": 470}, "answer is 470 but subtraction of [658, 189] gives 469"),
    ({"num_borrows": 1}, "num_borrows is 1"),
    ({"operands": [189, 658]}, "a >= b"),
    ({"operation": "div"}, "unknown operation 'div'"),
])
def test_a_wrong_subtraction_line_is_named_with_file_and_line(tmp_path, line, message):
    good = make_example([12, 5], "cot", "sub")
    bad = {**make_example([658, 189], "cot", "sub"), **line}
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(ValueError, match=re.escape(f"{path}:2: ") + ".*" + re.escape(message)):
        load_split(path)


def test_a_wrong_multiplication_line_is_named_and_a_mixed_hand_written_file_loads(tmp_path):
    lines = [make_example([12, 34], "cot", "mul"), make_example([7, 5]), make_example([9, 3], "cot", "sub")]
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps(x, indent=None, separators=(",", ":")) + "\n" for x in lines))
    assert load_split(path) == lines  # not byte-canonical (other separators): checked line by line
    lines[0] = {**lines[0], "text": "12*34=<think>2*4=8 1*4=4 48 2*3+4=10 1*3+0+1=4</think>418<end>"}
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    with pytest.raises(ValueError, match=re.escape(f"{path}:1: text")):
        load_split(path)


def test_problem_lists_need_only_a_prompt_and_an_answer(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text('{"prompt": "658-189=", "answer": 469}\n{"prompt": "12*34", "answer": 408, "note": "x"}\n'
                    '{"prompt": "99+1=", "answer": 100, "format": "plain"}\n')
    examples = load_problems(path, "cot")
    assert [ex["text"] for ex in examples] == ["658-189=<think>8-9=-1 5-8-1=-4 6-1-1=4</think>469<end>",
                                               "12*34=<think>2*4=8 1*4=4 48 2*3+4=10 1*3+0+1=4</think>408<end>",
                                               "99+1=<think>9+1=10 9+0+1=10</think>100<end>"]
    assert load_problems(path)[2]["text"] == "99+1=100<end>"  # no format given: the line's own, else cot
    assert load_problems(path, "reversed")[1]["text"] == "12*34=804<end>"
    data = write_dataset(generate_dataset(num_examples=200, max_digits=2, operation="sub", seed=1), tmp_path / "d")
    assert load_problems(data["test"]) == load_split(data["test"])  # a split reads as its problems


@pytest.mark.parametrize("content, message", [
    ('{"prompt": "12*34=", "answer": 418}', "answer 418 is wrong for 12*34= (it is 408)"),
    ('{"prompt": "3-7=", "answer": -4}', "prompt '3-7=' does not parse: subtraction needs a >= b"),
    ('{"prompt": "12/3=", "answer": 4}', "prompt '12/3=' does not parse"),
    ('{"prompt": "1+2*3=", "answer": 7}', "prompt '1+2*3=' does not parse"),
    ('{"answer": 7}', "missing field(s) prompt"),
    ('{"prompt": "1+2="}', "missing field(s) answer"),
    ('{"prompt": "1+2=", "answer": "3"}', "'answer' must be an integer"),
    ('{"prompt": 12, "answer": 3}', "'prompt' must be a string"),
])
def test_a_bad_problem_line_is_named_with_file_and_line(tmp_path, content, message):
    path = tmp_path / "mine.jsonl"
    path.write_text('{"prompt": "1+1=", "answer": 2}\n' + content + "\n")
    with pytest.raises(ValueError, match=re.escape(f"{path}:2: {message}")):
        load_problems(path)


def test_whole_strata_below_puts_small_strata_in_training_whole():
    from mathllm.data import generate_dataset

    pairs = lambda split: {ops for ops in split.operand_tuples() if len(ops) == 2 and max(ops) < 10}  # noqa: E731
    plain = generate_dataset(num_examples=3000, max_digits=2, max_operands=3, seed=5)
    whole = generate_dataset(num_examples=3000, max_digits=2, max_operands=3, seed=5, whole_strata_below=101)
    assert pairs(plain["val"]) | pairs(plain["test"])  # split like the rest, some pairs are held out
    assert len(pairs(whole["train"])) == 100 and not pairs(whole["val"]) and not pairs(whole["test"])
    assert sum(len(s) for s in whole.splits.values()) == sum(len(s) for s in plain.splits.values())
    assert whole.meta["arguments"]["whole_strata_below"] == 101 and "whole_strata_below" not in plain.meta["arguments"]
    assert generate_dataset(**whole.meta["arguments"])["test"].texts == whole["test"].texts  # regenerated exactly
