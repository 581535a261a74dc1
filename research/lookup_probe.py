"""Study: can the lookup by content ("(1) the red square at the top-left, (2) ... Which is the blue one?" ->
"(2)") be learned from text rows alone, and from which starting point?

Trains the language model (text only, vision tower unused) on `research.language_base` skill rows of one kind,
or of all four, and reports each skill's held-out exact accuracy (`skill_accuracy`) every --eval-every steps.

python -m research.lookup_probe --init MODEL [--random] [--kind 1] [--steps 600] [--batch 32] [--lr 1e-3]
"""

import argparse
import random
import time

import torch
from transformers import AutoConfig, AutoProcessor

from minirl.model import QwenVL, load_model
from research.language_base import skill_accuracy, skill_loss, skill_row


def batch(rng, tok, n, kind):
    rows = []
    for _ in range(n):
        prompt, answer = skill_row(rng, kind)
        rows.append((tok(prompt)["input_ids"], tok(" " + answer)["input_ids"]))
    L = max(len(p) + len(a) for p, a in rows)
    ids, mask = torch.zeros(n, L, dtype=torch.long), torch.zeros(n, L, dtype=torch.bool)
    for b, (p, a) in enumerate(rows):
        ids[b, :len(p) + len(a)] = torch.tensor(p + a)
        mask[b, len(p):len(p) + len(a)] = True
    return ids, mask, torch.arange(L).expand(3, n, L)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--init", default="models/base")
    ap.add_argument("--random", action="store_true", help="the init's config with random weights")
    ap.add_argument("--kind", type=int, default=None, help="0 equal, 1 which (by content), 2 what, 3 neighbour")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--eval-every", type=int, default=150)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = QwenVL(AutoConfig.from_pretrained(args.init)) if args.random else load_model(args.init)
    tok = AutoProcessor.from_pretrained(args.init).tokenizer
    params = [p for n, p in model.named_parameters() if not n.startswith("visual.")]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    rng, t0 = random.Random("probe/train"), time.perf_counter()
    print(0, skill_accuracy(model, tok, 128), flush=True)
    for step in range(1, args.steps + 1):
        loss, _ = skill_loss(model, *batch(rng, tok, args.batch, args.kind))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % args.eval_every == 0:
            print(step, f"loss {loss.item():.3f}", skill_accuracy(model, tok, 128),
                  f"{(time.perf_counter() - t0) / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
