"""Data generation: the formats, the vectorised writer, balance, leakage, determinism, files and the CLI."""

import itertools
import json
import logging
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
