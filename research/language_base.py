"""Study: a perception base that keeps the language skills a derivation needs.

The shipped base cannot learn that two adjacent colour words are equal (research/equality_probe.py) while
the same architecture from random weights learns it in 250 steps. This script re-learns the language model
of models/base from scratch (vision tower and merger kept) on the last captioning stage's data, with text-only
skill rows mixed into every step (equality of two words, lookup in a numbered list by content or by number),
and reports held-out caption accuracy (pretrain_base.evaluate, real and swapped video) and skill accuracy.

python -m research.language_base --out runs/lbase [--steps 1500] [--text-weight 0.5] [--keep-llm]
python -m research.language_base --eval --init MODEL    # held-out captions (real / swapped video) and skills
"""

import argparse
import json
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoProcessor

from minirl import synth
from minirl.model import QwenVL, load_model, save_pretrained
from pretrain_base import batch_forward, evaluate, make_item

COLOURS, SHAPES = sorted(synth.COLOURS), sorted(synth.SHAPES)
POSITIONS = ["top-left", "top-right", "bottom-left", "bottom-right"]


def skill_row(rng: random.Random, kind: int | None = None) -> tuple[str, str]:
    """(prompt, answer) of one text-only skill: equality, lookup by content, lookup by number, neighbour."""
    items = [(c, rng.choice(SHAPES), rng.choice(POSITIONS)) for c in rng.sample(COLOURS, rng.randint(3, 4))]
    listing = ", ".join(f"({i + 1}) the {c} {s} at the {p}" for i, (c, s, p) in enumerate(items))
    kind = rng.randrange(4) if kind is None else kind
    if kind == 0:
        a, b = rng.choice(COLOURS), rng.choice(COLOURS)
        if rng.random() < 0.5:
            b = a
        return f"{a} is {b}?", "yes" if a == b else "no"
    k = rng.randrange(len(items))
    c, s, p = items[k]
    if kind == 1:
        return f"{listing}. Which is the {c} one?", f"({k + 1})"
    if kind == 2:
        return f"{listing}. What is ({k + 1})?", f"the {c} {s} at the {p}"
    j = k + 1 if k + 1 < len(items) else k - 1
    side = "after" if j > k else "before"
    return f"{listing}. What is right {side} the {c} one?", f"({j + 1}) the {items[j][0]} {items[j][1]}"


def skill_batch(rng, tok, n):
    """Right-padded ids (B, L), the loss mask of the answer tokens (B, L), positions (3, B, L)."""
    rows = []
    for _ in range(n):
        prompt, answer = skill_row(rng)
        p, a = tok(prompt)["input_ids"], tok(" " + answer)["input_ids"]
        rows.append((p, a))
    L = max(len(p) + len(a) for p, a in rows)
    ids = torch.zeros(n, L, dtype=torch.long)
    mask = torch.zeros(n, L, dtype=torch.bool)
    for b, (p, a) in enumerate(rows):
        ids[b, :len(p) + len(a)] = torch.tensor(p + a)
        mask[b, len(p):len(p) + len(a)] = True
    pos = torch.arange(L).expand(3, n, L)
    return ids, mask, pos


def skill_loss(model, ids, mask, pos):
    logits = model.logits(model(None, pos, input_ids=ids))  # (B, L, V)
    pred, target = logits[:, :-1][mask[:, 1:]], ids[:, 1:][mask[:, 1:]]
    return F.cross_entropy(pred, target), pred.argmax(-1) == target


def skill_accuracy(model, tok, n=256) -> dict:
    """Exact-answer accuracy per skill on fresh rows (teacher forced: every answer token right)."""
    rng, out = random.Random("skills/test"), {}
    model.eval()
    with torch.no_grad():
        for kind, name in enumerate(["equal", "which", "what", "neighbour"]):
            rows = [skill_row(rng, kind) for _ in range(n)]
            hits = 0
            for prompt, answer in rows:
                p, a = tok(prompt)["input_ids"], tok(" " + answer)["input_ids"]
                ids = torch.tensor([p + a])
                mask = torch.zeros_like(ids, dtype=torch.bool)
                mask[0, len(p):] = True
                _, ok = skill_loss(model, ids, mask, torch.arange(ids.shape[1]).expand(3, 1, -1))
                hits += bool(ok.all())
            out[name] = round(100 * hits / n, 1)
    model.train()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--init", default="models/base")
    ap.add_argument("--out", default="", help="write the trained model here")
    ap.add_argument("--eval", action="store_true", help="only report --init on the held-out videos and skills")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--text-weight", type=float, default=0.5)
    ap.add_argument("--text-batch", type=int, default=16)
    ap.add_argument("--keep-llm", action="store_true", help="continue the base's language model (the control)")
    ap.add_argument("--train-videos", type=int, default=1500)
    ap.add_argument("--test-videos", type=int, default=100)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--seed", type=int, default=0, help="which training videos (0: the first run's)")
    args = ap.parse_args()
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model, processor = load_model(args.init), AutoProcessor.from_pretrained(args.init)
    if not args.keep_llm and not args.eval:
        fresh = QwenVL(AutoConfig.from_pretrained(args.init)).state_dict()
        model.load_state_dict({k: v if k.startswith("visual.") else fresh[k] for k, v in model.state_dict().items()})
    model.train()
    model.visual.requires_grad_(True)
    tok = processor.tokenizer
    kw = dict(frames_choices=[32], synth_dense=True, sparse_fraction=0.6, question_mix=0.5, grounding=0.3)
    test_rng = random.Random("study/test")
    test = [make_item(test_rng, processor, **{**kw, "grounding": 0.0}) for _ in range(args.test_videos)]
    rng = random.Random("study/language" + (f"/{args.seed}" if args.seed else ""))
    train = [make_item(rng, processor, **kw) for _ in range(0 if args.eval else args.train_videos)]
    print(f"data ready in {time.perf_counter() - t0:.0f}s", flush=True)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    text_rng, history = random.Random("skills/train"), []

    def report(step):
        row = dict(step=step, minutes=round((time.perf_counter() - t0) / 60, 1), video=evaluate(model, test, False),
                   ablated=evaluate(model, test, True), skills=skill_accuracy(model, tok))
        history.append(row)
        print(json.dumps(row), flush=True)

    if args.eval:
        report(0)
        return
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = args.lr * min(1.0, (step + 1) / 20) * max(0.1, 1 - step / args.steps)
        batch = rng.sample(train, 16)
        logits = batch_forward(model, batch)
        caption = F.cross_entropy(torch.cat(logits), torch.cat([it["target"] for it in batch]))
        text, _ = skill_loss(model, *skill_batch(text_rng, tok, args.text_batch))
        loss = caption + args.text_weight * text
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if (step + 1) % 25 == 0:
            print(f"step {step + 1} caption {caption.item():.3f} text {text.item():.3f} "
                  f"({time.perf_counter() - t0:.0f}s)", flush=True)
        if (step + 1) % args.eval_every == 0:
            report(step + 1)
    out = Path(args.out)
    processor.save_pretrained(out)
    save_pretrained(model, out)
    (out / "history.json").write_text(json.dumps(dict(args=vars(args), history=history), indent=1))


if __name__ == "__main__":
    main()
