"""Rewards: the format reward, answer extraction and accuracy, and user reward plug-ins.

Every reward function has the signature `fn(response: str, answer: str, example: dict) -> float`, where `example` is the
dataset row (its `options`, `category`, any extra keys). The default is `reward` = 0.9 * accuracy + 0.1 * format. A user
reward plugs in as `--reward file.py:function` through `load_reward_fn`.

The built-in rewards never raise, whatever the response string holds (a hypothesis fuzz test checks it), and every regex
here is linear-time, so an adversarial response cannot stall a rollout.

The grammar of an answer. Accuracy reads the content of the last `<answer>...</answer>` (else
what follows an unclosed `<answer>`, else the whole response), by the kind of ground truth:

- A letter (multiple choice): the answer must name exactly one option, affirmatively. Options are named by letter ("B",
  "(b)", "**B**", "B. yellow circle", "b) ...", "Answer: B", "the answer is b.", "I pick option B", "B is right") or by
  text ("the yellow circle" for "B. yellow circle"; case, punctuation and articles ignored). A lower-case letter names
  an option only with a mark beside it ("b.", "(b)", "b)", or last in the answer), and "A" / "I" followed by a word are
  English, so neither "a yellow circle" nor "I think" names one. Every name in the answer counts, and
  * a negated name is no choice and is skipped: "option A is wrong", "not A", "rule out (A)", "A cannot be", "not the
    red circle" -- so "Option A is wrong." is nothing and "option A is wrong, so the answer is B" is B;
  * a list of letters is nothing: "A, B, C, or D", "A or B", "b and c", "A/B";
  * names of two options are nothing: "A. no, the answer is B", "B. red circle" (C's text).
  The one option named must be among the row's options (its `options`, else the "A. ..." lines
  of its `problem`, as in the official LongVideo-Reason rows; A-D when it has none, or up to the
  truth's letter).
- A number: the answer must hold exactly one number ("1,000" is one), not negated, whose value equals the truth's
  exactly: "7.0" is 7, "6.95" and "7.07" are not, "between 2 and 7" and "3, 4, or 7" are nothing.
- Anything else: equality after normalisation (lower case, no punctuation, no a/an/the); an
  answer that normalises to nothing is never right.

So no response is rewarded under two different truths of its question's kind, and none that names a wrong option is:
both are hypothesis properties in tests/test_reward.py. Negation is read from a fixed word list; a rejection phrased
otherwise ("B is out.") is read as a choice -- tests/test_reward.py lists the phrasings covered.
"""

import importlib.util
import re
import string
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from pathlib import Path

_TAG = r"</?(?:think|answer)>"
_NO_TAG = rf"(?:(?!{_TAG}).)*"  # any text without a reasoning tag; linear, no nested quantifiers
FORMAT = re.compile(rf"<think>{_NO_TAG}</think>\s*<answer>{_NO_TAG}</answer>", re.DOTALL)
ANSWER = re.compile(rf"<answer>({_NO_TAG})</answer>", re.DOTALL)
NUMBER = re.compile(r"[-+]?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?", re.ASCII)
LETTER = re.compile(r"(?<![A-Za-z0-9])(?<![A-Za-z0-9]['’])[A-Za-z](?!['’]?[A-Za-z0-9])", re.ASCII)
NEXT_WORD = re.compile(r"\s+([a-z]+)", re.ASCII)
LETTER_FOLLOWERS = {"or", "and", "nor", "is", "was", "seems", "looks", "appears"}  # "A is ..." is option A
MARK_BEFORE, MARK_AFTER = "([*\"'", ").]:,*\"'"
# what may stand between two letters of a list: "A, B", "(A) or (B)", "A, B, or C", "A and/or option B"
LIST_GAP = re.compile(r"[\s.)\]:*\"']*(?:,|/|&|\b(?:or|and|nor)\b)(?:\s*(?:,|/|\b(?:or|and)\b))*"
                      r"\s*(?:(?:option|choice)\s+)?[\s(\[*\"']*", re.IGNORECASE | re.ASCII)
NEGATED_BEFORE = re.compile(  # "not (A)", "It cannot be B", "rule out option A", "isn't the red circle"
    r"(?:\b(?:not|no|never|cannot|except|than|instead of|exclude|excluding|eliminate|eliminating|rule out|"
    r"ruling out)|n['’ ]t)\s+(?:(?:the|an?|it|is|be|option|choice|answer)\s+){0,3}[(\[*\"']*$", re.IGNORECASE)
NEGATED_AFTER = re.compile(  # "A is wrong", "A can be ruled out", "A isn't", "A: incorrect" (not "A, not B")
    r"[\s.)\]:*\"'-]*(?:(?:is|was|are|seems|looks|appears|can|could|must|should|would|will|may|might|does|did|do)"
    r"(?:\s+be)?\s+(?:the\s+)?(?:not|never|wrong|incorrect|false|impossible|unlikely|ruled out|eliminated|excluded)"
    r"\b|(?:is|was|are|does|did|do|can|could|would|should)n['’ ]t\b|cannot\b|(?:wrong|incorrect|false)\b)",
    re.IGNORECASE)
OPTION_LINE = re.compile(r"^[ \t]*[A-Z]\.\s", re.MULTILINE | re.ASCII)  # "B. text" opening a line
OPTION_PREFIX = re.compile(r"\s*\(?[A-Za-z][).:]\s*", re.ASCII)
ARTICLES = re.compile(r"\b(?:a|an|the)\b")
PUNCTUATION_TO_SPACE = str.maketrans(string.punctuation, " " * len(string.punctuation))


def embedded_options(problem: str) -> list[tuple[int, str]]:
    """The options written into a question's text, as the official LongVideo-Reason rows carry them:
    [(where the option starts, "A. text"), ...], each running to the next option line; [] if none."""
    starts = [m.start() for m in OPTION_LINE.finditer(problem)]
    ends = [*starts[1:], len(problem)] if starts else []
    return [(a, problem[a:b].strip()) for a, b in zip(starts, ends, strict=True)]


def row_options(example: dict | None) -> list[str] | None:
    """A row's options: its `options` field, else the options embedded in its `problem` text."""
    example = example or {}
    options = example.get("options")
    if isinstance(options, list) and all(isinstance(o, str) for o in options):
        return options
    problem = example.get("problem")
    found = embedded_options(problem) if isinstance(problem, str) and options is None else []
    return [text for _, text in found] or None


def format_reward(response: str) -> float:
    """1.0 iff the whole (stripped) response is `<think>...</think>` then `<answer>...</answer>`."""
    return 1.0 if FORMAT.fullmatch(response.strip()) else 0.0


def extract_answer(response: str) -> str:
    """The content of the last `<answer>...</answer>`; else what follows an unclosed `<answer>`; else all."""
    if found := ANSWER.findall(response):
        return found[-1].strip()
    if "<answer>" in response:
        return response.rsplit("<answer>", 1)[1].strip()
    return response.strip()


def normalize(text: str) -> str:
    """Lower case, punctuation to spaces, articles dropped, whitespace collapsed."""
    text = text.lower().translate(PUNCTUATION_TO_SPACE)
    return " ".join(ARTICLES.sub(" ", text).split())


def _negated(text: str, start: int, end: int) -> bool:
    """Whether the name at text[start:end] is rejected by the words around it ("not A", "A is wrong")."""
    return bool(NEGATED_BEFORE.search(text, max(0, start - 40), start) or NEGATED_AFTER.match(text, end))


def _letter_names(text: str) -> tuple[set[str], bool]:
    """(The option letters `text` names and does not negate, whether it lists letters)."""
    last = len(text.rstrip())
    letters, named = [], set()
    for m in LETTER.finditer(text):
        letter, start, end = m.group(), m.start(), m.end()
        word = NEXT_WORD.match(text, end) if letter in "aAiI" else None
        english = word is not None and word.group(1) not in LETTER_FOLLOWERS  # "a cat", "I think", "A red ..."
        if english and letter != "A":
            continue
        letters.append(m)  # "A red circle" names nothing, but "B or A because ..." is still a list
        marked = (start > 0 and text[start - 1] in MARK_BEFORE) or end >= last or text[end] in MARK_AFTER
        if not english and (letter.isupper() or marked) and not _negated(text, start, end):
            named.add(letter.upper())
    listed = any(LIST_GAP.fullmatch(text, a.end(), b.start()) for a, b in zip(letters, letters[1:], strict=False))
    return named, listed


def _text_names(text: str, texts: list[str]) -> set[int]:
    """Indices of the option `texts` (normalised) that normalised `text` contains and does not negate.

    A text inside a longer option text's match ("red" in "dark red") is not a name of its own.
    """
    said = normalize(text)
    found = []  # (start, -length, option text)
    for t in set(filter(None, texts)):
        found += [(m.start(), -len(t), t) for m in re.finditer(rf"(?<!\S){re.escape(t)}(?!\S)", said)]
    named, reach = set(), -1
    for start, neg_length, t in sorted(found):
        end = start - neg_length
        if end > reach and not _negated(said, start, end):
            named.update(k for k, other in enumerate(texts) if other == t)
        reach = max(reach, end)
    return named


def choice_letter(text: str, options: list[str] | None = None, letters: str = "ABCD") -> str | None:
    """The one option letter `text` names (see the module docstring), or None; only `letters` count.

    Option texts are overwritten with a plain word before letters are read, so the "C" of
    "B. Vitamin C" names nothing and "a yellow circle" still reads as the article.
    """
    raw = [OPTION_PREFIX.sub("", o, count=1).strip() for o in options or []]
    blanked = text
    for t in sorted(raw, key=len, reverse=True):
        if len(t) > 1:
            blanked = re.sub(rf"(?<![A-Za-z0-9]){re.escape(t)}(?![A-Za-z0-9])", lambda m: "x" * len(m.group()),
                             blanked, flags=re.IGNORECASE)
    named, listed = _letter_names(blanked)
    named |= {string.ascii_uppercase[k] for k in _text_names(text, [normalize(t) for t in raw]) if k < 26}
    if listed or len(named) != 1:
        return None
    (letter,) = named
    return letter if letter in letters else None


def _decimal(number: str) -> Decimal | None:
    try:
        return Decimal(number.replace(",", ""))
    except InvalidOperation:  # an exponent too large for decimal
        return None


def accuracy_reward(response: str, answer: str, example: dict | None = None) -> float:
    """1.0 when the response's answer is the ground truth `answer` (see the module docstring)."""
    said = extract_answer(response)
    truth = answer.strip()
    options = row_options(example)
    if len(truth) == 1 and truth.isascii() and truth.isalpha():
        count = len(options) if options else max(4, ord(truth.upper()) - ord("A") + 1)
        letters = string.ascii_uppercase[:count]
        return 1.0 if choice_letter(said, options, letters) == truth.upper() else 0.0
    if NUMBER.fullmatch(truth):
        found = list(NUMBER.finditer(said))
        if len(found) != 1 or _negated(said, found[0].start(), found[0].end()):
            return 0.0
        got = _decimal(found[0].group())
        return 1.0 if got is not None and got == _decimal(truth) else 0.0
    said = normalize(said)
    return 1.0 if said and said == normalize(truth) else 0.0


def reward(response: str, answer: str, example: dict | None = None, accuracy_weight: float = 0.9,
           format_weight: float = 0.1) -> float:
    """The default reward: accuracy_weight * accuracy + format_weight * format."""
    accuracy = accuracy_reward(response, answer, example)
    return accuracy_weight * accuracy + format_weight * format_reward(response)


def load_reward_fn(spec: str) -> Callable[[str, str, dict], float]:
    """Import `fn` from "path/to/file.py:fn"; it must be `fn(response, answer, example) -> float`."""
    path, sep, name = spec.rpartition(":")
    if not sep or not path or not name:
        raise ValueError(f"reward spec {spec!r} must look like path/to/file.py:function_name")
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"reward file {file} (from {spec!r}) does not exist")
    module_spec = importlib.util.spec_from_file_location(f"minirl_user_reward_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, name):
        public = sorted(n for n in vars(module) if not n.startswith("_") and callable(getattr(module, n)))
        raise AttributeError(f"{file} has no function {name!r}; callables defined there: {public}")
    fn = getattr(module, name)
    if not callable(fn):
        raise TypeError(f"{file}:{name} is a {type(fn).__name__}, not a function "
                        "fn(response: str, answer: str, example: dict) -> float")
    return fn
