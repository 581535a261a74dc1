"""The reasoning tier of LongVideo-Reason-Synth (`python -m minirl.synth --reasoning`): open questions that
compose facts a perception model reads reliably.

On the easy tier each question asks for one seen fact among four fixed options: there is no reasoning step for
RL to improve, and a quarter of guesses are rewarded. Here what must be perceived is what the perception base
was pretrained to caption (which shapes appear, in what order, where, which one moves); what can go wrong is a
composition over it:

- Temporal: what appeared right after / before the X? (a shape: "blue circle")
- Spatial: where was the shape that appeared right after / before the X? (a quadrant: "top-left")
- Goal & Purpose: what colour was the shape right after / before the moving shape? (a colour: "blue");
  how many shapes appeared after / before the moving shape? (a number)
- Plot & Narrative: how many shapes appeared after / before the X? between the X and the Y? (a number)

Its videos hold 3-4 events (EVENTS) of distinct colours, so a question names a shape by its colour ("the red
shape"), each event on screen in one of the `seen_at` uniformly sampled frames (32, the frames the demo trains
with; minirl/synth.py draws them), so that many frames show the whole script and fewer miss some of it. The
chain of thought is the perception base's caption of those frames with each event numbered, each item checked
against the colour(s) the question names ("(1) the red square at the top-left, red is blue? no; (2) ...
3 in total."), a derivation over the numbers ("The blue one is (2); after it is (3), the green circle.", "The
blue one is (2) of 3; after it 3-2=1."), and "So the answer is X."; it is never timed, and with its tags fits
in NEW_TOKENS (tests/test_synth.py measures it with models/base's tokenizer). The checks make finding the
named shape one comparison of two neighbouring words per item, where a lookup by content ("the blue one is
(2)") across the whole caption is what a tiny model gets wrong (docs/research-log.md). The base reads a video
this short almost without fault; each step of the derivation is one check, lookup or subtraction, and it is
where samples differ.

Every template has exactly one answer on every video: it picks its subject and side among those where the
answer exists. A same-quadrant question is left out: a quadrant may hold no other shape or several, and the
moving shape is in two. Answers are open, graded by minirl.reward (numbers by value, words by normalised
equality), so a uniform guess over a template's answers is right 1/6 to 1/3 of the time; each row's task
records that rate as `guess_rate` (minirl/oracle.py prints it beside the oracle table).

Events are the dicts minirl/synth.py writes, and synth hands over its vocabulary (`spaces`: every shape name,
colour and quadrant): synth imports this module, so nothing here imports synth.
"""

import random

EVENTS = (3, 4)  # inclusive range of events per video, each of its own colour
NEW_TOKENS = 152  # the longest chain of thought (4 events, every item checked), with its tags and answer
SIDES = (("after", 1), ("before", -1))  # a side of a shape in time, and the step to its neighbour there


def _name(event: dict) -> str:
    """The name "red square", as synth.name says it (synth imports this module, so this cannot import it)."""
    return f"{event['colour']} {event['shape']}"


def _mover(events: list[dict]) -> int:
    return next(i for i, e in enumerate(events) if e["to"] is not None)


def _pick(events, rng: random.Random, subject: int | None = None, still: bool = False) -> tuple[int, str, int]:
    """A random (subject, side, neighbour): a shape, "after" or "before", and the shape right there.

    Only sides where a neighbour exists are drawn; `subject` fixes the shape, `still` asks for a neighbour that
    does not move (a moving shape is in two quadrants)."""
    n = len(events)
    picks = [(i, side, i + step) for side, step in SIDES for i in range(n)
             if 0 <= i + step < n and subject in (None, i) and not (still and events[i + step]["to"])]
    return rng.choice(picks)


def _caption(events: list[dict], named: list[int]) -> str:
    """What the sampled frames show, numbered in time order, each item checked against the named shapes' colours:
    the first half of every chain of thought.

    "(1) the red square at the top-left, red is blue? no; (2) the blue circle at the top-right moves to the
    bottom-left, blue is blue? yes. 2 in total.": the perception base's caption (synth.caption: "First the ...,
    then the ...") with each event's number in place of "First" / "then", so that the derivation can name a
    shape by its number. A question that names no colour (the moving shape) gets no checks: ", "-separated."""
    asked = " or ".join(events[i]["colour"] for i in named)
    parts = []
    for i, e in enumerate(events):
        item = f"({i + 1}) the {_name(e)} at the {e['pos']}" + (f" moves to the {e['to']}" if e["to"] else "")
        parts.append(f"{item}, {e['colour']} is {asked}? {'yes' if i in named else 'no'}" if named else item)
    return ("; " if named else ", ").join(parts) + f". {len(events)} in total."


def _one(events, i: int) -> str:
    """How a question names shape i: by its colour, which no other shape of the video has ("the red shape")."""
    return f"the {events[i]['colour']} shape"


def _found(events, i: int, moving: bool = False) -> str:
    """The derivation's first step, finding the shape a question names by its colour: "The red one is (2)", or
    the moving shape by its movement: "The blue circle moves, it is (2)"."""
    return f"The {_name(events[i])} moves, it is ({i + 1})" if moving else f"The {events[i]['colour']} one is ({i + 1})"


def _neighbour(events, i: int, side: str, j: int, moving: bool = False) -> str:
    """The second step, one number on: "after it is (3), the blue circle"."""
    return f"{_found(events, i, moving)}; {side} it is ({j + 1}), the {_name(events[j])}"


def _count(events, i: int, side: str, moving: bool = False) -> tuple[int, str]:
    """How many shapes appeared on `side` of shape i, and the subtraction that says it: "after it 4-2=2"."""
    n, found = len(events), _found(events, i, moving)
    if side == "before":
        return i, f"{found}; before it {i + 1}-1={i}"
    return n - 1 - i, f"{found} of {n}; after it {n}-{i + 1}={n - 1 - i}"


# Each template takes (events, rng) and returns (problem, answer, derivation, task): the derivation turns the
# numbered list of what was seen into the answer, one lookup or one subtraction at a time; the task is what the
# oracle reads.


def r_next_shape(events, rng):
    i, side, j = _pick(events, rng)
    return (f"What appeared right {side} {_one(events, i)}?", _name(events[j]), f"{_neighbour(events, i, side, j)}.",
            dict(kind="next_shape", subject=i, side=side))


def r_next_place(events, rng):
    i, side, j = _pick(events, rng, still=True)
    return (f"Where was the shape that appeared right {side} {_one(events, i)}?", events[j]["pos"],
            f"{_neighbour(events, i, side, j)} at the {events[j]['pos']}.",
            dict(kind="next_place", subject=i, side=side))


def r_mover_colour(events, rng):
    i, side, j = _pick(events, rng, subject=_mover(events))
    return (f"What colour was the shape that appeared right {side} the moving shape?", events[j]["colour"],
            f"{_neighbour(events, i, side, j, moving=True)}.", dict(kind="mover_colour", subject=i, side=side))


def r_mover_count(events, rng):
    i, (side, _) = _mover(events), rng.choice(SIDES)
    k, derivation = _count(events, i, side, moving=True)
    return (f"How many shapes appeared {side} the moving shape?", str(k), f"{derivation}.",
            dict(kind="mover_count", subject=i, side=side))


def r_side_count(events, rng):
    i, (side, _) = rng.randrange(len(events)), rng.choice(SIDES)
    k, derivation = _count(events, i, side)
    return (f"How many shapes appeared {side} {_one(events, i)}?", str(k), f"{derivation}.",
            dict(kind="side_count", subject=i, side=side))


def r_between_count(events, rng):
    """The gap is drawn first, so that no count is much likelier than the others (a random pair is most often
    two neighbours, and a constant "0" would be right a third of the time)."""
    k = rng.randrange(len(events) - 1)
    first = rng.randrange(len(events) - 1 - k)
    i, j = rng.sample((first, first + k + 1), 2)
    a, b = sorted((i, j))  # the checks found both; in time order, whichever the question names first
    return (f"How many shapes appeared between {_one(events, i)} and {_one(events, j)}?", str(k),
            f"They are ({a + 1}) and ({b + 1}); between them {b + 1}-{a + 1}-1={k}.",
            dict(kind="between_count", subjects=[i, j]))


TEMPLATES = {
    "Temporal": (r_next_shape,),
    "Spatial": (r_next_place,),
    "Goal & Purpose": (r_mover_colour, r_mover_count),
    "Plot & Narrative": (r_side_count, r_between_count),
}


def answer_space(task: dict, events: list[dict], spaces: dict[str, list[str]]) -> list[str]:
    """Every answer the template of `task` gives on some video: a shape other than the subject, a quadrant, a
    colour, or a count of the shapes a video can hold besides the subject (besides two, between two)."""
    kind, counts = task["kind"], [str(k) for k in range(EVENTS[1])]
    if kind == "next_shape":
        return [s for s in spaces["shape"] if not s.startswith(events[task["subject"]]["colour"] + " ")]
    if kind == "next_place":
        return spaces["place"]
    if kind == "mover_colour":
        return [c for c in spaces["colour"] if c != events[task["subject"]]["colour"]]
    if kind in ("mover_count", "side_count"):
        return counts
    if kind == "between_count":
        return counts[:-1]
    raise ValueError(f"unknown reasoning task kind {kind!r}")


def make_question(events: list[dict], category: str, slot: int, rng: random.Random,
                  spaces: dict[str, list[str]]) -> dict:
    """One open question of `category`, from its template number `slot`; the task's guess_rate is the chance
    that a uniform guess over the template's answers is right."""
    problem, answer, derivation, task = TEMPLATES[category][slot](events, rng)
    task["guess_rate"] = 1 / len(answer_space(task, events, spaces))
    named = [] if task["kind"].startswith("mover") else task.get("subjects", [task.get("subject")])
    return dict(problem=problem, answer=answer,
                reasoning=f"{_caption(events, named)} {derivation} So the answer is {answer}.",
                category=category, task=task)
