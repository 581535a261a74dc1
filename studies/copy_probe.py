"""Study: what of the CoT-SFT target can the tiny decoder learn from text alone?

A CoT-SFT model from the perception base (rope_theta 3) wrote "So the answer is D.</think>
<answer>A</answer>": teacher-forced, it put the right letter inside <answer> for 27.5% of its own
*training* questions (chance 25%) after 450 steps. Suspect: rope_theta 3 leaves text only rotary
frequencies between 0.36 and 1 rad per position (head_dim 32), which alias every ~10 positions.

This trains a fresh tiny decoder on the benchmark's SFT rows with the video left out (question,
options, reasoning, answer; no video token) and reports teacher-forced accuracy on held-out rows:
  copy:   the letter inside <answer>, a copy of the one written four tokens before
  letter: the letter after "So the answer is": finding the option that the reasoning names
  all:    every target token
for one rope_theta per run (text positions are 1-D, so mrope_section does not matter here).
Result (studies/results/copy_theta*.log): theta 3 and 1e4 alike copy 100% by step 200 and stay
at chance on `letter` at step 300 (theta 3: 27.0 at 750, 34.0 at 1,000), so theta does not stop
a copy at a fixed offset; the option lookup is slow at both. (Reading at *varying* distances is
another matter: studies/offset_probe.py.)

    python studies/copy_probe.py --theta 3 --steps 300
    python studies/copy_probe.py --theta 10000 --steps 300

--init CHECKPOINT continues a checkpoint's decoder instead (its own processor and rope, vision tower
frozen), --fresh draws a new question for every training example, --save writes the result. From the
merge-4 base the copy is learned by step 200 and the lookup is still at chance (24.5%) at step 300
(studies/results/lookup_text_m4.log):

    python studies/copy_probe.py --init runs/exp/pt_m4_b --fresh --batch 64 --steps 300
"""

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from minirl import synth, tiny  # noqa: E402
from minirl.data import build_prompt, build_target, encode_prompt  # noqa: E402
from minirl.model import load_model  # noqa: E402


def encode(processor, row) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """(prompt ids, target ids, index of the 'answer is' letter, index of the <answer> letter)."""
    prompt = encode_prompt(processor, build_prompt(row["problem"], row["options"]), 0)
    target = processor.tokenizer(build_target(row["reasoning"], row["answer"]), add_special_tokens=False)["input_ids"]
    words = [processor.tokenizer.decode([t]).strip() for t in target]
    letters = [i for i, w in enumerate(words) if w in synth.LETTERS and words[i - 1] == "is"]
    return torch.tensor(prompt), torch.tensor(target), letters[-1], len(target) - 3  # ... X </answer> <|im_end|>


def fresh_rows(rng, n):
    """n questions, each about a video of its own (events, question and options drawn afresh)."""
    rows = []
    for _ in range(n):
        events = synth.make_events(rng, 128)
        category = rng.choice(synth.CATEGORIES)
        rows.append(synth.make_question(events, category, rng.randrange(4), rng, None))
    return rows


def forward(model, batch):
    """Teacher-forced logits (R, V) of each row's target."""
    seqs = [torch.cat([p, t]) for p, t, *_ in batch]
    L = max(len(s) for s in seqs)
    ids = torch.zeros(len(batch), L, dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, :len(s)] = s
    pos = torch.arange(L).expand(3, len(batch), L)  # text only: t = h = w
    logits = model.logits(model(None, pos, input_ids=ids))  # (B, L, V)
    return [logits[b, len(p) - 1:len(p) + len(t) - 1] for b, (p, t, *_) in enumerate(batch)]


def evaluate(model, rows) -> dict:
    hits = {"copy": 0, "letter": 0, "all": 0}
    tokens = 0
    with torch.no_grad():
        for i in range(0, len(rows), 32):
            batch = rows[i:i + 32]
            for (_, t, letter, copy), logits in zip(batch, forward(model, batch), strict=True):
                pred = logits.argmax(-1)
                hits["copy"] += int(pred[copy] == t[copy])
                hits["letter"] += int(pred[letter] == t[letter])
                hits["all"] += int((pred == t).sum())
                tokens += len(t)
    return dict(copy=round(100 * hits["copy"] / len(rows), 1), letter=round(100 * hits["letter"] / len(rows), 1),
                all=round(100 * hits["all"] / tokens, 1))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--theta", type=float, default=10000.0)
    ap.add_argument("--mrope", default="", help="mrope_section, e.g. 1,1,14 (default: Qwen's split)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init", default="", help="continue this checkpoint's decoder (vision tower left as it is)")
    ap.add_argument("--fresh", action="store_true", help="a new random question for every training example")
    ap.add_argument("--save", default="", help="write the checkpoint here at the end")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    _, train_rows = synth.make_split("train", 3000, 128, 8, 4, seed=0, timestamps=False)
    _, test_rows = synth.make_split("test", 200, 128, 8, 4, seed=0, timestamps=False)
    if args.init:
        from transformers import AutoProcessor

        processor, model = AutoProcessor.from_pretrained(args.init), load_model(args.init)
        model.visual.requires_grad_(False)
    else:
        processor = tiny.make_processor(synth.corpus(timestamps=False))
        config = tiny.make_config(processor.tokenizer, "tiny", rope_theta=args.theta)
        if args.mrope:
            config.text_config.rope_parameters["mrope_section"] = [int(x) for x in args.mrope.split(",")]
        from transformers import Qwen2_5_VLForConditionalGeneration

        with tempfile.TemporaryDirectory() as tmp:
            Qwen2_5_VLForConditionalGeneration(config).save_pretrained(tmp)
            model = load_model(tmp)
    train = [encode(processor, r) for r in train_rows]
    test = [encode(processor, r) for r in test_rows]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    rng = random.Random(args.seed)
    for step in range(1, args.steps + 1):
        for group in opt.param_groups:
            group["lr"] = args.lr * min(1.0, step / 20)
        batch = ([encode(processor, r) for r in fresh_rows(rng, args.batch)] if args.fresh
                 else rng.sample(train, args.batch))
        loss = F.cross_entropy(torch.cat(forward(model, batch)), torch.cat([t for _, t, *_ in batch]))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % args.eval_every == 0:
            model.eval()
            row = dict(theta=args.theta, mrope=args.mrope or "default", step=step, loss=round(loss.item(), 3),
                       **evaluate(model, test), seconds=round(time.perf_counter() - t0))
            model.train()
            print(json.dumps(row), flush=True)
    if args.save:
        from minirl.model import save_pretrained

        save_pretrained(model, args.save)
        processor.save_pretrained(args.save)


if __name__ == "__main__":
    main()
