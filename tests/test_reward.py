"""Reward tables (adversarial strings included), user reward plug-ins, the grammar's properties, a fuzz test."""

from decimal import Decimal

import pytest
from hypothesis import assume, example, given, settings
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
        ("option A is wrong, so the answer is B", "B"), ("I pick option B", "B"), ("B is right, not A", "B"),
        ("The answer is B, not the red circle.", "B"), ("A red square appears first, so the answer is B", "B"),
        ("B. Vitamin C", "B"), ("I think it is B", "B"),
        ("yellow circle", "B"), ("The Yellow Circle!", "B"), ("a yellow circle", "B"),
        ("the answer is a yellow circle", "B"),  # the article "a" is not option A
        ("it is the yellow circle, not the red", "B"),
        ("E", None), ("circle", None), ("", None), ("I think so", None), ("yellow", None),
        ("answer is e.", None), ("ABCD", None),
        # negations are no choice, lists and second choices are nothing
        ("Option A is wrong.", None), ("not A", None), ("The answer is not (B).", None), ("B is incorrect", None),
        ("It cannot be B.", None), ("we can rule out b.", None), ("B isn't right", None),
        ("not the yellow circle", None), ("the yellow circle is wrong", None),
        ("The answer is A, B, C, or D.", None), ("A or B", None), ("answer: b or c", None), ("B and C", None),
        ("A/B", None), ("either (A) or (B)", None), ("option B or option C", None), ("B or A because", None),
        ("yellow circle or red circle", None), ("The answer is A. No, the answer is B.", None),
        ("E. the answer is B", None), ("B. red circle", None),
    ],
)
def test_choice_letter(text, expected):
    options = [*OPTIONS[:1], "B. Vitamin C"] if "Vitamin" in text else OPTIONS
    assert choice_letter(text, options) == expected


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
        ("<answer>5</answer>", "5", None, 1.0),
        ("<answer>5.0</answer>", "5", None, 1.0),
        ("<answer>5.04</answer>", "5", None, 0.0),  # integers are exact: no tolerance
        ("<answer>6.95</answer>", "7", None, 0.0),
        ("<answer>99</answer>", "100", None, 0.0),
        ("<answer>2.50</answer>", "2.5", None, 1.0),
        ("about 1,000 cars", "1000", None, 1.0),
        ("<answer>1000</answer>", "1,000", None, 1.0),
        ("<answer>-3</answer>", "-3", None, 1.0),
        ("<answer>3</answer>", "-3", None, 0.0),
        ("<answer>between 2 and 7</answer>", "7", None, 0.0),  # two numbers: no one answer
        ("<answer>3, 4, or 7</answer>", "7", None, 0.0),
        ("<answer>1,2</answer>", "12", None, 0.0),  # a list, not a thousands separator
        ("<answer>not 7</answer>", "7", None, 0.0),
        ("<answer>no number</answer>", "7", None, 0.0),
        ("<answer>1e999</answer>", "5", None, 0.0),
        ("<answer>7</answer>", "1e99999999999999999999", None, 0.0),
        ("<answer>The Eiffel Tower!</answer>", "eiffel tower", None, 1.0),
        ("<answer>an  apple.</answer>", "Apple", None, 1.0),
        ("<answer>apples</answer>", "apple", None, 0.0),
        ("<answer>the</answer>", "a", None, 0.0),  # nothing said is never an answer
        ("<answer></answer>", "the", None, 0.0),
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

# Ground truths as a dataset holds them, one kind per question: an option letter, a number, a phrase.
LETTER_TRUTHS = st.sampled_from("ABCDEFabcdef")
NUMBER_TRUTHS = st.one_of(st.integers(-10**6, 10**6).map(str), st.integers(0, 10**7).map("{:,}".format),
                          st.decimals(-1000, 1000, places=2).map(str), st.sampled_from(["7", "7.05", "100", "99"]))
PHRASE_TRUTHS = st.lists(st.sampled_from(["red", "circle", "the", "an", "Eiffel", "tower", "apple", "blue square",
                                          "left", "up-left", "not"]), min_size=1, max_size=3).map(" ".join)


def canonical(truth: str):
    """What a truth means: the letter, the number's exact value, or the normalised phrase."""
    if len(truth) == 1 and truth.isalpha():
        return truth.upper()
    if truth[-1].isdigit():
        return Decimal(truth.replace(",", ""))
    return normalize(truth)


@settings(max_examples=500, deadline=None, database=None)
@example(pieces=["<answer>7</answer>"], truths=["7", "7.05"], options=None, with_truth=False)  # the old 1% tolerance
@example(pieces=["<answer>100</answer>"], truths=["100", "99"], options=None, with_truth=False)
@example(pieces=["E. the answer is B"], truths=["B", "E"], options=None, with_truth=False)  # first letter in range won
@example(pieces=["<answer>the</answer>"], truths=["the", "an"], options=None, with_truth=False)  # empty equals empty
@given(pieces=st.lists(st.sampled_from(PIECES + ["B", "E", "7", "7.04", "1,000", "or", "not", "Eiffel tower",
                                                 "blue square", "C. red circle"]), max_size=12),
       truths=st.one_of(*(st.lists(kind, min_size=2, max_size=6) for kind in (LETTER_TRUTHS, NUMBER_TRUTHS,
                                                                                 PHRASE_TRUTHS))),
       options=st.sampled_from([None, OPTIONS]), with_truth=st.booleans())
def test_no_response_is_rewarded_under_two_different_truths(pieces, truths, options, with_truth):
    """One response, every truth of its question's kind: at most one meaning is credited
    (`with_truth` appends the first truth to the response, so that hits happen)."""
    response = "".join(pieces) + (f" {truths[0]}" if with_truth else "")
    example_row = {"options": options} if options else {}
    credited = {canonical(t) for t in truths if accuracy_reward(response, t, example_row) == 1.0}
    assert len(credited) <= 1, (response, credited)


# Answers that name the wrong option w: alone, beside the right one r, in a list, as the other
# option's text, or as a second thought. x and y are the remaining options.
NAMING_WRONG = [
    "{w}", "({w})", "{w}.", "**{w}**", "{wl}", "Answer: {w}", "The answer is {w}.", "I pick option {w}",
    "{w}. {tw}", "{w}) {tr}", "{r}. {tw}", "{tw}", "the answer is {r}, the {tw}",
    "{r} or {w}", "{w} or {r}", "{r}, {w}", "{w}, {r}, {x}, or {y}", "{r} and {w}", "{r}/{w}", "either {r} or {w}",
    "The answer is {r} or {w}.", "The answer is {r}, {w}, {x}, or {y}.", "answer: {rl} or {wl}",
    "option {r} or option {w}", "({r}) or ({w})", "{tr} or {tw}", "{r} & {w}",
    "The answer is {r}. No wait, the answer is {w}.", "The answer is {w}. The answer is {r}.", "{w}. The answer is {r}",
]
# Answers that reject the right option r: never credited as r.
NEGATING_RIGHT = [
    "Option {r} is wrong.", "Not {r}.", "It is not ({r}).", "{r} is incorrect.", "The answer is not {r}.",
    "We can rule out {r}.", "It cannot be {r}", "It can't be {r}.", "{r} can be ruled out", "{r} isn't right",
    "{r} is the wrong one", "not the {tr}", "the {tr} is wrong", "anything except {r}",
]


def _fill(template, r, w, texts):
    x, y = (k for k in "ABCD" if k not in (r, w))
    return template.format(r=r, w=w, x=x, y=y, rl=r.lower(), wl=w.lower(), tr=texts[r], tw=texts[w])


ANSWER_OF = st.sampled_from([
    "{}", "<think>the answer is {r}</think><answer>{}</answer>", "<think>x</think><answer>I think {}</answer>",
    "<answer>After watching the video, {} because it moves.</answer>", "<answer>{}\n</answer>",
])


@settings(max_examples=500, deadline=None, database=None)
@example(template="The answer is {r} or {w}.", r="C", w="B", wrap="{}")
@given(template=st.sampled_from(NAMING_WRONG), r=st.sampled_from("ABCD"), w=st.sampled_from("ABCD"), wrap=ANSWER_OF)
def test_a_response_naming_a_wrong_option_is_never_rewarded(template, r, w, wrap):
    assume(r != w)
    texts = {k: o[3:] for k, o in zip("ABCD", OPTIONS, strict=True)}
    response = wrap.replace("{r}", r).format(_fill(template, r, w, texts))
    assert accuracy_reward(response, r, EXAMPLE) == 0.0, response


@settings(max_examples=300, deadline=None, database=None)
@example(template="Option {r} is wrong.", r="A", wrap="{}")
@given(template=st.sampled_from(NEGATING_RIGHT), r=st.sampled_from("ABCD"), wrap=ANSWER_OF)
def test_a_negated_option_is_never_rewarded(template, r, wrap):
    texts = {k: o[3:] for k, o in zip("ABCD", OPTIONS, strict=True)}
    w = "D" if r != "D" else "A"
    response = wrap.replace("{r}", w).format(_fill(template, r, w, texts))
    assert accuracy_reward(response, r, EXAMPLE) == 0.0, response


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
