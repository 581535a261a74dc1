"""Reward tables (adversarial strings included), user reward plug-ins, and a fuzz test."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minirl.reward import (
    accuracy_reward,
    choice_letter,
    extract_answer,
    format_reward,
    load_reward_fn,
    normalize,
    reward,
)

OPTIONS = ["A. yellow square", "B. yellow circle", "C. red circle", "D. blue square"]
EXAMPLE = {"options": OPTIONS, "category": "Temporal"}


@pytest.mark.parametrize(
    "response, expected",
    [
        ("<think>red first</think><answer>C</answer>", 1.0),
        ("  <think>a\nb</think>\n\n<answer> C </answer>\n", 1.0),
        ("<think></think><answer></answer>", 1.0),
        ("<think>x</think>", 0.0),
        ("<answer>C</answer>", 0.0),
        ("<answer>C</answer><think>x</think>", 0.0),
        ("<think>x</think><answer>C</answer> trailing", 0.0),
        ("leading <think>x</think><answer>C</answer>", 0.0),
        ("<think>x</think><answer>B</answer><answer>C</answer>", 0.0),
        ("<think><think>x</think></think><answer>C</answer>", 0.0),
        ("<think>x</think>text<answer>C</answer>", 0.0),
        ("<think>x<answer>C</answer>", 0.0),
        ("", 0.0),
    ],
)
def test_format_reward(response, expected):
    assert format_reward(response) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("B", "B"), ("(B)", "B"), ("B.", "B"), ("b", "B"), ("  [b]  ", "B"), ("**B**", "B"),
        ("B. yellow circle", "B"), ("b) yellow circle", "B"), ("B: yellow circle", "B"),
        ("Answer: B", "B"), ("answer: b", "B"), ("The answer is (B).", "B"), ("the answer is b.", "B"),
        ("option A is wrong, so the answer is B", "B"), ("I pick option B", "B"),
        ("yellow circle", "B"), ("The Yellow Circle!", "B"), ("a yellow circle", "B"),
        ("the answer is a yellow circle", "B"),  # the article "a" is not option A
        ("it is the yellow circle, not the red", "B"),
        ("E", None), ("circle", None), ("", None), ("I think so", None), ("yellow", None),
        ("answer is e.", None), ("ABCD", None),
    ],
)
def test_choice_letter(text, expected):
    assert choice_letter(text, OPTIONS) == expected


@pytest.mark.parametrize(
    "response, expected",
    [
        ("<think>x</think><answer>C</answer>", "C"),
        ("<think>answer is A</think><answer>C</answer>", "C"),
        ("<answer>B</answer> then <answer>C</answer>", "C"),
        ("<think>x</think><answer>C", "C"),
        ("just C", "just C"),
    ],
)
def test_extract_answer(response, expected):
    assert extract_answer(response) == expected


@pytest.mark.parametrize(
    "response, answer, example, expected",
    [
        ("<think>x</think><answer>C</answer>", "C", EXAMPLE, 1.0),
        ("<think>x</think><answer>c. red circle</answer>", "C", EXAMPLE, 1.0),
        ("<think>x</think><answer>red circle</answer>", "C", EXAMPLE, 1.0),
        ("<think>the answer is C</think><answer>B</answer>", "C", EXAMPLE, 0.0),
        ("<answer>C</answer>", "c", EXAMPLE, 1.0),
        ("C", "C", None, 1.0),
        ("E", "E", None, 1.0),  # no options: letters up to the ground truth's count
        ("Answer: D", "C", EXAMPLE, 0.0),
        ("<answer></answer>", "C", EXAMPLE, 0.0),
        ("<answer>5.04</answer>", "5", None, 1.0),
        ("<answer>5.2</answer>", "5", None, 0.0),
        ("about 1,000 cars", "1000", None, 1.0),
        ("<answer>-3</answer>", "-3", None, 1.0),
        ("<answer>3</answer>", "-3", None, 0.0),
        ("<answer>between 2 and 7</answer>", "7", None, 1.0),  # the last number counts
        ("<answer>no number</answer>", "7", None, 0.0),
        ("<answer>1e999</answer>", "5", None, 0.0),
        ("<answer>The Eiffel Tower!</answer>", "eiffel tower", None, 1.0),
        ("<answer>an  apple.</answer>", "Apple", None, 1.0),
        ("<answer>apples</answer>", "apple", None, 0.0),
    ],
)
def test_accuracy_reward(response, answer, example, expected):
    assert accuracy_reward(response, answer, example) == expected


def test_normalize():
    assert normalize("  The Quick, brown FOX!  ") == "quick brown fox"


def test_weights():
    good = "<think>x</think><answer>C</answer>"
    assert reward(good, "C", EXAMPLE) == pytest.approx(1.0)
    assert reward("C", "C", EXAMPLE) == pytest.approx(0.9)
    assert reward("<think>x</think><answer>B</answer>", "C", EXAMPLE) == pytest.approx(0.1)
    assert reward("B", "C", EXAMPLE) == 0.0
    assert reward("C", "C", EXAMPLE, accuracy_weight=0.5, format_weight=0.5) == pytest.approx(0.5)


def test_load_reward_fn(tmp_path):
    path = tmp_path / "my_reward.py"
    path.write_text(
        "def length_reward(response, answer, example):\n"
        "    return float(len(response) == len(answer))\n"
        "THRESHOLD = 3\n"
    )
    fn = load_reward_fn(f"{path}:length_reward")
    assert fn("abc", "xyz", {}) == 1.0 and fn("ab", "xyz", {}) == 0.0
    with pytest.raises(FileNotFoundError, match="nope.py"):
        load_reward_fn(f"{tmp_path / 'nope.py'}:length_reward")
    with pytest.raises(AttributeError, match="missing_fn") as err:
        load_reward_fn(f"{path}:missing_fn")
    assert "length_reward" in str(err.value) and str(path) in str(err.value)
    with pytest.raises(TypeError, match="THRESHOLD"):
        load_reward_fn(f"{path}:THRESHOLD")
    for spec in (str(path), f"{path}:", ":length_reward"):
        with pytest.raises(ValueError, match="file.py:function"):
            load_reward_fn(spec)


def test_long_adversarial_strings_are_handled():
    """Inputs that make backtracking regexes blow up; every pattern here is linear."""
    n = 20_000
    for response in (
        "answer" + " " * n + "is",
        "<think>" * n,
        "<answer>" + "(" * n,
        "<think>" + "x" * n + "</think>" + " " * n + "<answer>" + "1." * n,
        "answer is " * n,
        "9" * n + "e" + "9" * n,
    ):
        for answer in ("B", "5", "free text"):
            assert 0.0 <= reward(response, answer, EXAMPLE) <= 1.0


PIECES = ["<think>", "</think>", "<answer>", "</answer>", "A", "b", "(", ")", ".", " ", "\n", "answer is",
          "Answer:", "option", "1.5", "-", "e9", ",", "the", "red circle", "\x00", "é", "٣"]


@settings(max_examples=300, deadline=None, database=None)
@given(
    response=st.one_of(st.text(), st.lists(st.sampled_from(PIECES), max_size=30).map("".join)),
    answer=st.one_of(st.text(max_size=8), st.sampled_from(["A", "b", "3", "-2.5", "1,000", "", " "])),
    options=st.one_of(st.none(), st.lists(st.text(max_size=12), max_size=6),
                      st.lists(st.sampled_from(PIECES), max_size=5)),
)
def test_no_string_makes_a_reward_raise(response, answer, options):
    example = {} if options is None else {"options": options}
    value = reward(response, answer, example)
    assert 0.0 <= value <= 1.0
    assert format_reward(response) in (0.0, 1.0)
    assert accuracy_reward(response, answer, None) in (0.0, 1.0)
