"""Rewards: the format reward, answer extraction and accuracy, and user reward plug-ins.

Every reward function has the signature `fn(response: str, answer: str, example: dict) -> float`,
where `example` is the dataset row (its `options`, `category`, any extra keys). The default is
`reward` = 0.9 * accuracy + 0.1 * format. A user reward plugs in as `--reward file.py:function`
through `load_reward_fn`.

The built-in rewards never raise, whatever the response string holds (a hypothesis fuzz test
checks it), and every regex here is linear-time, so an adversarial response cannot stall a
rollout.

How accuracy reads an answer: the content of the last `<answer>...</answer>` (or the whole
response when there is none), then by the kind of ground truth:
- a letter (multiple choice): `B`, `(B)`, `B.`, `B. the red circle`, `Answer: B`, lower case;
  failing those, the text of exactly one option ("the red circle" when an option is "C. red circle");
- a number: the last number in the answer, within `rel_tol` (relative) or `abs_tol`;
- anything else: equality after normalisation (lower case, no punctuation, no a/an/the).
"""

import importlib.util
import math
import re
import string
from collections.abc import Callable
from pathlib import Path

_TAG = r"</?(?:think|answer)>"
_NO_TAG = rf"(?:(?!{_TAG}).)*"  # any text without a reasoning tag; linear, no nested quantifiers
FORMAT = re.compile(rf"<think>{_NO_TAG}</think>\s*<answer>{_NO_TAG}</answer>", re.DOTALL)
ANSWER = re.compile(rf"<answer>({_NO_TAG})</answer>", re.DOTALL)
NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?", re.ASCII)
ONLY_LETTER = re.compile(r"[\s(\[*\"']*([A-Za-z])[\s)\].*:\"']*", re.ASCII)
LEADING_LETTER = re.compile(r"[\s(\[*]*([A-Za-z])[)\].:]", re.ASCII)
CUE_LETTER = re.compile(r"(?:answer|option|choice)\s*(?:(?:is|:|=)\s*)?[(\[]?([A-Za-z])(?![A-Za-z0-9])(.?)",
                        re.IGNORECASE | re.ASCII)
OPTION_PREFIX = re.compile(r"\s*\(?[A-Za-z][).:]\s*", re.ASCII)
ARTICLES = re.compile(r"\b(?:a|an|the)\b")
PUNCTUATION_TO_SPACE = str.maketrans(string.punctuation, " " * len(string.punctuation))


def format_reward(response: str) -> float:
    """1.0 iff the whole (stripped) response is `<think>...</think>` then `<answer>...</answer>`."""
    return 1.0 if FORMAT.fullmatch(response.strip()) else 0.0


def extract_answer(response: str) -> str:
    """The content of the last `<answer>...</answer>`; else what follows an unclosed `<answer>`; else all."""
    found = ANSWER.findall(response)
    if found:
        return found[-1].strip()
    if "<answer>" in response:
        return response.rsplit("<answer>", 1)[1].strip()
    return response.strip()


def normalize(text: str) -> str:
    """Lower case, punctuation to spaces, articles dropped, whitespace collapsed."""
    text = text.lower().translate(PUNCTUATION_TO_SPACE)
    return " ".join(ARTICLES.sub(" ", text).split())


def _option_pick(text: str, options: list[str]) -> int | None:
    """The one option whose text `text` is (or, failing that, contains), or None."""
    said = normalize(text)
    texts = [normalize(OPTION_PREFIX.sub("", o, count=1)) for o in options]
    picked = [k for k, t in enumerate(texts) if t and t == said]
    if not picked:
        picked = [k for k, t in enumerate(texts) if t and f" {t} " in f" {said} "]
    return picked[0] if len(picked) == 1 else None


def choice_letter(text: str, options: list[str] | None = None, letters: str = "ABCD") -> str | None:
    """The option letter `text` picks, or None. Only letters in `letters` count.

    Tried in order, the first letter in `letters` wins: the text is just a letter ("(b)"); it
    starts with one ("B. the red circle"); the last cue ("answer is B", "Answer: b", but not
    the article in "the answer is a red circle"; "answer" cues before "option"/"choice" ones);
    the text of exactly one option.
    """
    text = text.strip()
    found = []
    if m := ONLY_LETTER.fullmatch(text):
        found.append(m.group(1))
    if m := LEADING_LETTER.match(text):
        found.append(m.group(1))
    cues = [m for m in CUE_LETTER.finditer(text)
            if m.group(1).isupper() or m.group(2) in ("", ".", ")", "]", ":", ",")]
    # "so the answer is B" outranks "option A is wrong"
    answer_cues = [m for m in cues if m.group(0)[:6].lower() == "answer"]
    found += [m.group(1) for m in (answer_cues or cues)[-1:]]
    for letter in found:
        if letter.upper() in letters:
            return letter.upper()
    if options and (k := _option_pick(text, options)) is not None and k < len(letters):
        return letters[k]
    return None


def _number(text: str) -> float | None:
    found = NUMBER.findall(text.replace(",", ""))
    return float(found[-1]) if found else None


def accuracy_reward(response: str, answer: str, example: dict | None = None, rel_tol: float = 1e-2,
                    abs_tol: float = 1e-6) -> float:
    """1.0 when the response's answer matches the ground truth `answer` (see the module docstring)."""
    said = extract_answer(response)
    truth = answer.strip()
    options = (example or {}).get("options")
    options = options if isinstance(options, list) and all(isinstance(o, str) for o in options) else None
    if len(truth) == 1 and truth.isascii() and truth.isalpha():
        count = len(options) if options else max(4, ord(truth.upper()) - ord("A") + 1)
        letters = string.ascii_uppercase[:count]
        return 1.0 if choice_letter(said, options, letters) == truth.upper() else 0.0
    if NUMBER.fullmatch(truth.replace(",", "")):
        expected, got = _number(truth), _number(said)
        if got is None or not math.isfinite(got) or not math.isfinite(expected):
            return 1.0 if got == expected else 0.0
        return 1.0 if math.isclose(got, expected, rel_tol=rel_tol, abs_tol=abs_tol) else 0.0
    return 1.0 if normalize(said) == normalize(truth) else 0.0


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
