"""The reasoning tier of LongVideo-Reason-Synth (`python -m minirl.synth --reasoning`): open questions that
compose facts a perception model reads reliably.

On the easy tier each question asks for one seen fact among four fixed options: there is no reasoning step for
RL to improve, and a quarter of guesses are rewarded. Here the videos and what must be perceived are the same
(which shapes appear, in what order, where, which one moves); what can go wrong is a composition over it:

- Temporal: what appeared right after / before the X? (a shape: "blue circle")
- Spatial: where was the shape that appeared right after / before the X? (a quadrant: "top-left")
- Goal & Purpose: what colour was the shape right after / before the moving shape? (a colour: "blue");
  how many shapes appeared after / before the moving shape? (a number)
- Plot & Narrative: how many shapes appeared after / before the X? between the X and the Y? (a number)

Every template has exactly one answer on every video the generator makes (5-8 events in time order, each
identity at most once, exactly one moving shape): it picks its subject and side among those where the answer
exists. A same-quadrant question is left out: a quadrant may hold no other shape or several, and the moving
shape is in two. Answers are open, graded by minirl.reward (numbers by value, words by normalised equality), so
a uniform guess over a template's answers is right 1/8 to 1/4 of the time; each row's task records that rate as
`guess_rate` (minirl/oracle.py prints it beside the oracle table).

The chain of thought lists the shapes in order (as the easy tier's count question does), derives the answer from
that list in one sentence, and ends "So the answer is X."; it is never timed, so that with its tags it fits in
the 64 new tokens the demo samples (tests/test_synth.py measures it with models/base's tokenizer).

Events are the dicts minirl/synth.py writes, and synth hands over its vocabulary (`spaces`: every shape name,
colour, quadrant and count): synth imports this module, so nothing here imports synth.
"""

import random

SIDES = (("after", 1), ("before", -1))  # a side of a shape in time, and the step to its neighbour there


def _name(event: dict) -> str:
    """The name "red square", as synth.name says it (synth imports this module, so this cannot import it)."""
    return f"{event['colour']} {event['shape']}"


def _listed(events: list[dict]) -> str:
    """What was seen, in order: the first half of every chain of thought."""
    return "Shapes appear: " + ", ".join(_name(e) for e in events) + "."


def _shapes(k: int) -> str:
    """A count as the chain of thought says it: "1 shape appears", "3 shapes appear"."""
    return f"{k} shape appears" if k == 1 else f"{k} shapes appear"


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


def _on_side(events, i: int, side: str) -> int:
    """How many shapes appeared on `side` of shape i."""
    return i if side == "before" else len(events) - 1 - i


# Each template takes (events, rng) and returns (problem, answer, derivation, task): the derivation is the one
# sentence that turns the list of what was seen into the answer; the task is what the oracle reads.


def r_next_shape(events, rng):
    i, side, j = _pick(events, rng)
    return (f"What appeared right {side} the {_name(events[i])}?", _name(events[j]),
            f"The shape {side} the {_name(events[i])} is the {_name(events[j])}.",
            dict(kind="next_shape", subject=i, side=side))


def r_next_place(events, rng):
    i, side, j = _pick(events, rng, still=True)
    return (f"Where was the shape that appeared right {side} the {_name(events[i])}?", events[j]["pos"],
            f"The shape {side} the {_name(events[i])} is the {_name(events[j])}, at the {events[j]['pos']}.",
            dict(kind="next_place", subject=i, side=side))


def r_mover_colour(events, rng):
    i, side, j = _pick(events, rng, subject=_mover(events))
    return (f"What colour was the shape that appeared right {side} the moving shape?", events[j]["colour"],
            f"The {_name(events[i])} moves; the shape {side} it is the {_name(events[j])}.",
            dict(kind="mover_colour", subject=i, side=side))


def r_mover_count(events, rng):
    i, (side, _) = _mover(events), rng.choice(SIDES)
    k = _on_side(events, i, side)
    return (f"How many shapes appeared {side} the moving shape?", str(k),
            f"The {_name(events[i])} moves; {_shapes(k)} {side} it.", dict(kind="mover_count", subject=i, side=side))


def r_side_count(events, rng):
    i, (side, _) = rng.randrange(len(events)), rng.choice(SIDES)
    k = _on_side(events, i, side)
    return (f"How many shapes appeared {side} the {_name(events[i])}?", str(k),
            f"{_shapes(k)} {side} the {_name(events[i])}.", dict(kind="side_count", subject=i, side=side))


def r_between_count(events, rng):
    """The gap is drawn first, so that no count is much likelier than the others (a random pair is most often
    two neighbours, and a constant "0" would be right a third of the time)."""
    k = rng.randrange(len(events) - 1)
    first = rng.randrange(len(events) - 1 - k)
    i, j = rng.sample((first, first + k + 1), 2)
    pair = f"the {_name(events[i])} and the {_name(events[j])}"
    return (f"How many shapes appeared between {pair}?", str(k), f"{_shapes(k)} between {pair}.",
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
    kind = task["kind"]
    if kind == "next_shape":
        return [s for s in spaces["shape"] if s != _name(events[task["subject"]])]
    if kind == "next_place":
        return spaces["place"]
    if kind == "mover_colour":
        return spaces["colour"]
    if kind in ("mover_count", "side_count"):
        return spaces["count"]
    if kind == "between_count":
        return spaces["count"][:-1]
    raise ValueError(f"unknown reasoning task kind {kind!r}")


def make_question(events: list[dict], category: str, slot: int, rng: random.Random,
                  spaces: dict[str, list[str]]) -> dict:
    """One open question of `category`, from its template number `slot`; the task's guess_rate is the chance
    that a uniform guess over the template's answers is right."""
    problem, answer, derivation, task = TEMPLATES[category][slot](events, rng)
    task["guess_rate"] = 1 / len(answer_space(task, events, spaces))
    return dict(problem=problem, answer=answer, reasoning=f"{_listed(events)} {derivation} So the answer is {answer}.",
                category=category, task=task)
