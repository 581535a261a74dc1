"""`make base`: rebuild the perception base models/base, the tiny Qwen2.5-VL the demo starts from.

    python pretrain_base.py --out models/base [--work runs/base] [--quick]

About 2.5 hours on a 2-core CPU (`--quick`: two steps of every command, a smoke test of the
plumbing, in about a minute). SFT and RL teach a model to reason about what it sees; they cannot
teach it to see, so the demo starts, as a real user would, from a model pretrained to perceive:
one that captions the synthetic videos (what, where, when) and keeps the few language skills a
derivation over a caption needs. The recipe (BASE_RECIPE) has three parts:

1. train_sft.py teaches a random tiny Qwen2.5-VL (`rope_theta` 3, vision tower trained) to caption
   dense videos written by minirl/synth.py, in stages of falling lr.
2. Captioning stages, one change each, run by this file (`--init`): frames are rendered in memory
   (no mp4 round trip) so a stage is fast, and each stage reports teacher-forced accuracy per kind
   of caption word (colour, shape, row, column, count) on held-out videos, with the real video and
   with every video swapped for another's (the ablation: what the model reads from the video).
3. Language stages: the same captioning with the language model started afresh (vision tower and
   merger kept) and text-only skill rows in every step (`--fresh-language`, `--skills`). A language
   model trained on captions alone loses the plasticity to learn that two neighbouring colour words
   are equal, which every check of the reasoning tier's chain is; a fresh one taught these skills
   beside the captions keeps them (docs/research-log.md, 2026-12-04).

models/base is this recipe's result as the studies ran it; their language stages drew their videos
from other random streams, so a rebuild gives a base with the same skills, not the same weights.

No benchmark question is ever a training target. Every step is a command printed before it runs,
its output kept in WORK/logs; a step whose result exists is skipped, so an interrupted run resumes.

    python pretrain_base.py --init DIR --save OUT [stage flags]    # one captioning stage by hand
"""

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoProcessor

from demo import run, sft_args, torchrun
from minirl import synth
from minirl.data import build_prompt, build_target, encode_prompt
from minirl.model import QwenVL, load_model, next_position, rope_index, save_pretrained
from minirl.video import process_video, uniform_indices

# 1. Captioning with train_sft.py, stage by stage: dense videos (1-3 long events: every event the
#    sampled frames show, in time order, with its place), `--captions` sampled frames.
# 2. The captioning stages (`perception`, each continuing the previous model with these flags):
#    theta 1e4 (so a query can match a key's content at any distance) with half the caption
#    requests after an unrelated benchmark question; then the benchmark's sparse videos mixed in;
#    then `spatial_merge_size` 4 (a 56-px frame is one token, so where a shape is becomes the token's
#    content); then longer, then on new videos; then with 30% of the prompts asking where one named
#    event is (grounding: read the event a prompt names).
# 3. The language stages: that captioning, the language model afresh with 16 skill rows a step at weight 0.5,
#    continued on new videos; then 32 skill rows at weight 1.0 until every skill passes.
LANGUAGE = dict(grounding=0.3, sparse_fraction=0.6)
BASE_RECIPE = dict(
    synth=dict(train=2000, test=100, frames=128, size=56, captions=32),
    rope_theta=3.0,
    stages=[dict(steps=700, lr=3e-3, warmup_steps=20), dict(steps=300, lr=1e-3, warmup_steps=0)],
    batch_size=16,
    perception_flags=dict(question_mix=0.5, synth_dense=True, frames=32, lr=1e-3),
    perception=[dict(init_theta=10000, steps=400),
                dict(sparse_fraction=0.6, train_videos=1500, steps=1091),
                dict(init_merge=4, sparse_fraction=0.6, train_videos=1500, steps=400),
                dict(sparse_fraction=0.6, train_videos=1500, steps=1453),
                dict(sparse_fraction=0.6, train_videos=1500, steps=1500, seed=1),
                dict(grounding=0.3, sparse_fraction=0.6, train_videos=1500, steps=800, seed=2),
                dict(**LANGUAGE, fresh_language=True, skills=16, skills_weight=0.5, train_videos=1500, steps=1500,
                     seed=3),
                dict(**LANGUAGE, skills=16, skills_weight=0.5, train_videos=3000, steps=2000, seed=4),
                dict(**LANGUAGE, skills=32, skills_weight=1.0, train_videos=1500, steps=1000, seed=5),
                dict(**LANGUAGE, skills=32, skills_weight=1.0, train_videos=1500, steps=2000, seed=6)],
)

def distinct_stages(stages: list[dict]) -> list[dict]:
    """The stages whose flags differ from every earlier stage's in more than their sizes and seed."""
    seen, kept = [], []
    for stage in stages:
        flags = {k: v for k, v in stage.items() if k not in ("steps", "train_videos", "seed")}
        if flags not in seen:
            seen.append(flags)
            kept.append(stage)
    return kept


BASE_QUICK = dict(  # every kind of command, a few steps each: a smoke test of the recipe's plumbing
    synth=dict(train=16, test=2, frames=64, size=56, captions=16), rope_theta=3.0,
    stages=[dict(steps=2, lr=3e-3, warmup_steps=1)], batch_size=4,
    perception_flags={**BASE_RECIPE["perception_flags"], "batch": 4, "test_videos": 4, "train_videos": 8,
                      "warmup": 1},
    perception=[{**stage, "steps": 2, "train_videos": 8} for stage in distinct_stages(BASE_RECIPE["perception"])],
)

# The videos a captioning stage renders: synth's length, frame size and frame rate of part 1.
VIDEO_FRAMES, VIDEO_SIZE, VIDEO_FPS = 128, 56, 8
EVAL_EVERY = 200  # steps between held-out reports
WORD_KIND = {**{c: "colour" for c in synth.COLOURS}, **{s: "shape" for s in synth.SHAPES},
             "top": "row", "bottom": "row", "left": "column", "right": "column"}


def make_item(rng, processor, frames_choices, synth_dense=False, sparse_fraction=0.0, question_mix=0.0,
              grounding=0.0) -> dict:
    """One captioning example: its prompt, target ids, the kind of every target word, its video.

    The target is synth.caption_row's, as train_sft.py taught it in part 1 ("First ... N in total.").
    synth_dense: synth's dense videos (1-3 long events, one moving), but for a `sparse_fraction` of the
    benchmark's sparse ones (without synth_dense: sparse only). question_mix: this fraction of the prompts
    put a benchmark question about another video (with its options) before the caption request, so the
    caption starts at a different distance from the video every time. grounding: this fraction instead
    ask where one event the frames show is, named by colour and shape ("Where does the red circle
    appear?" -> "The red circle appears at the top-left [and moves to the ...]."): reading the event a
    prompt names, which a caption in time order never asks for.

    Every random draw is made in the order and under the conditions it always was (no draw for a
    fraction of 0), so the recipe reproduces models/base.
    """
    if synth_dense and rng.random() >= sparse_fraction:
        events = synth.make_events(rng, VIDEO_FRAMES, dense=True)
    else:
        events = synth.make_events(rng, VIDEO_FRAMES)
    k = rng.choice(frames_choices)
    indices = uniform_indices(VIDEO_FRAMES, k)
    frames = np.stack([synth.render(events, int(f), VIDEO_SIZE) for f in indices])  # (k, H, W, 3)
    vision = process_video(processor, frames, k / (VIDEO_FRAMES / VIDEO_FPS))
    row = synth.caption_row(events, k, VIDEO_FRAMES)
    text, answer = row["reasoning"], row["answer"]
    tokens = int(vision["video_grid_thw"].prod()) // processor.video_processor.merge_size**2
    problem = synth.CAPTION_PROMPT
    seen = [e for e in events if any(synth.on_screen(e, int(f)) for f in indices)] if grounding else []
    if grounding and seen and rng.random() < grounding:
        e = rng.choice(seen)
        problem = f"Where does the {synth.name(e)} appear?"
        text = f"The {synth.name(e)} appears at the {e['pos']}" + (f" and moves to the {e['to']}." if e["to"] else ".")
        answer = e["to"] or e["pos"]
    elif question_mix and rng.random() < question_mix:
        q = synth.make_question(synth.make_events(rng, VIDEO_FRAMES), rng.choice(synth.CATEGORIES), rng.randrange(4),
                                rng, None)
        problem = "\n".join([q["problem"], *q["options"], problem])
    prompt = torch.tensor(encode_prompt(processor, build_prompt(problem), tokens))
    target = processor.tokenizer(build_target(text, answer), add_special_tokens=False)["input_ids"]
    kinds = []
    for t in target:
        word = processor.tokenizer.decode([t]).strip().strip(".,-")
        kinds.append(WORD_KIND.get(word, "count" if word.isdigit() else "other"))
    return dict(prompt=prompt, target=torch.tensor(target), kinds=kinds, **vision)


def batch_forward(model, items, video_from=None) -> list[torch.Tensor]:
    """Teacher-forced logits of every target token, (R_i, V) per item; video_from[i] = whose video item i sees.

    One right-padded batch: each item's positions are its own prompt's M-RoPE positions, then the
    target's continuing from them (as the sampler places a response).
    """
    video_from = video_from or list(range(len(items)))
    seqs = [torch.cat([it["prompt"], it["target"]]) for it in items]
    L = max(len(s) for s in seqs)
    ids = torch.zeros(len(items), L, dtype=torch.long)  # (B, L)
    pos = torch.zeros(3, len(items), L, dtype=torch.long)  # (3, B, L)
    vids = [items[j] for j in video_from]
    for b, (it, v) in enumerate(zip(items, vids, strict=True)):
        ids[b, :len(seqs[b])] = seqs[b]
        p = rope_index(it["prompt"], v["video_grid_thw"], v["second_per_grid_ts"], model.config)  # (3, P)
        r = next_position(p) + torch.arange(len(it["target"]))  # (R,)
        pos[:, b, :len(seqs[b])] = torch.cat([p, r.expand(3, -1)], dim=1)
    if any(len(it["prompt"]) != len(v["prompt"]) for it, v in zip(items, vids, strict=True)):
        raise ValueError("the ablation swaps videos between items with the same token count only")
    embeds = model.encode_video(torch.cat([v["pixel_values_videos"] for v in vids]),
                                torch.cat([v["video_grid_thw"] for v in vids]))
    mask = ids == model.config.video_token_id
    mask[:, max(len(it["prompt"]) for it in items):] = False  # a target token is never a video slot
    hidden = model(None, pos.to(model.device), input_ids=ids, video_embeds=embeds, video_mask=mask)
    logits = model.logits(hidden)  # (B, L, V)
    out = []
    for b, it in enumerate(items):
        P, R = len(it["prompt"]), len(it["target"])
        out.append(logits[b, P - 1:P + R - 1])  # (R, V)
    return out


def evaluate(model, items, ablate: bool) -> dict:
    """Teacher-forced accuracy (%) per kind of target word; ablate: each item sees its neighbour's video
    (among items of the same prompt length, so the video slots match)."""
    hits, counts = {}, {}
    model.eval()
    with torch.no_grad():
        by_len = {}
        for i, it in enumerate(items):
            by_len.setdefault(len(it["prompt"]), []).append(i)
        for group in by_len.values():
            batch = [items[i] for i in group]
            order = list(range(len(batch)))
            if ablate:
                order = order[1:] + order[:1]
            for it, logits in zip(batch, batch_forward(model, batch, order), strict=True):
                pred = logits.argmax(-1).cpu()
                for kind, ok in zip(it["kinds"], (pred == it["target"]).tolist(), strict=True):
                    hits[kind] = hits.get(kind, 0) + ok
                    counts[kind] = counts.get(kind, 0) + 1
    model.train()
    return {k: round(100 * hits[k] / counts[k], 1) for k in sorted(counts)}


def skill_row(rng: random.Random, kind: int | None = None) -> tuple[str, str]:
    """(prompt, answer) of one text-only skill a derivation over a numbered caption uses: 0 equality of two
    colours ("red is blue?" -> "no"), 1 lookup by content ("Which is the red one?" -> "(2)"), 2 lookup by
    number ("What is (2)?"), 3 the neighbour of an item named by content ("What is right after the red one?")."""
    colours = sorted(synth.COLOURS)
    items = [(c, rng.choice(synth.SHAPES), rng.choice(synth.QUADRANTS)) for c in rng.sample(colours, rng.randint(3, 4))]
    listing = ", ".join(f"({i + 1}) the {c} {s} at the {p}" for i, (c, s, p) in enumerate(items))
    kind = rng.randrange(len(SKILLS)) if kind is None else kind
    if kind == 0:
        a, b = rng.choice(colours), rng.choice(colours)
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


SKILLS = ("equal", "which", "what", "neighbour")  # skill_row's kinds, in order


def skill_loss(model, tokenizer, rows: list[tuple[str, str]]) -> tuple[torch.Tensor, list[bool]]:
    """Cross-entropy of the answers of text-only rows (one right-padded batch, text positions), and whether each
    answer is right token for token (teacher forced)."""
    pairs = [(tokenizer(q)["input_ids"], tokenizer(" " + a)["input_ids"]) for q, a in rows]
    L = max(len(q) + len(a) for q, a in pairs)
    ids = torch.zeros(len(rows), L, dtype=torch.long)  # (B, L)
    mask = torch.zeros(len(rows), L, dtype=torch.bool)  # (B, L): the answer tokens
    for b, (q, a) in enumerate(pairs):
        ids[b, :len(q) + len(a)] = torch.tensor(q + a)
        mask[b, len(q):len(q) + len(a)] = True
    ids, mask = ids.to(model.device), mask.to(model.device)
    logits = model.logits(model(None, torch.arange(L, device=model.device).expand(3, len(rows), L), input_ids=ids))
    target = mask[:, 1:]  # (B, L-1): logits at t predict token t+1
    loss = F.cross_entropy(logits[:, :-1][target], ids[:, 1:][target])
    wrong = (logits[:, :-1].argmax(-1) != ids[:, 1:]) & target  # (B, L-1)
    return loss, (~wrong.any(1)).tolist()


def skill_accuracy(model, tokenizer, n: int) -> dict:
    """Exact-answer accuracy (%) of each skill on n held-out rows (teacher forced)."""
    rng, out = random.Random("skills/test"), {}
    model.eval()
    with torch.no_grad():
        for kind, name in enumerate(SKILLS):
            _, right = skill_loss(model, tokenizer, [skill_row(rng, kind) for _ in range(n)])
            out[name] = round(100 * sum(right) / n, 1)
    model.train()
    return out


def with_fresh_language(checkpoint, dest: Path) -> Path:
    """A copy of `checkpoint` at `dest` whose language model (embeddings, decoder, head) starts afresh; the vision
    tower and its merger are kept."""
    config = AutoConfig.from_pretrained(checkpoint)
    model = partly_fresh(checkpoint, config, lambda name, old, new: name.startswith("visual."))
    save_pretrained(model, dest)
    AutoProcessor.from_pretrained(checkpoint).save_pretrained(dest)
    return dest


def partly_fresh(checkpoint, config, keep) -> QwenVL:
    """A model of `config` with `checkpoint`'s tensors where keep(name, old, new) holds and new ones elsewhere
    (drawn from torch's generator after the checkpoint loads)."""
    old = load_model(checkpoint).state_dict()
    model = QwenVL(config)
    new = model.state_dict()
    model.load_state_dict({k: v if keep(k, v, new[k]) else new[k] for k, v in old.items()})
    return model


def with_rope(checkpoint, theta: float, dest: Path) -> Path:
    """A copy of `checkpoint` at `dest` with this rope_theta (weights unchanged)."""
    shutil.copytree(checkpoint, dest)
    config = json.loads((dest / "config.json").read_text())
    config["text_config"]["rope_parameters"]["rope_theta"] = theta
    (dest / "config.json").write_text(json.dumps(config, indent=2))
    return dest


def with_merge(checkpoint, merge: int, dest: Path) -> Path:
    """A copy of `checkpoint` at `dest` whose merger joins merge x merge patches into one LLM token.

    At merge 4 a 56-px frame (4 x 4 patches) is one token and the merger MLP sees its 16 patches in
    raster order, so *where* a shape is becomes part of the token's content: nothing has to be read
    from M-RoPE's slow height/width channels. The merger MLP's input grows to hidden * merge^2, so
    it starts afresh; every other tensor (and the processor, but for its merge_size) is kept.
    """
    config = AutoConfig.from_pretrained(checkpoint)
    config.vision_config.spatial_merge_size = merge
    model = partly_fresh(checkpoint, config, lambda name, old, new: old.shape == new.shape)
    save_pretrained(model, dest)
    processor = AutoProcessor.from_pretrained(checkpoint)
    processor.image_processor.merge_size = processor.video_processor.merge_size = merge
    processor.save_pretrained(dest)
    return dest


def caption_stage(args):
    """Continue `args.init` on a fixed set of rendered captioning videos; write the model to `args.save`.

    Vision tower trained; AdamW, linear warm-up then linear decay to a tenth of the lr, gradients
    clipped at 1. Held-out reports every EVAL_EVERY steps and at the end (to `args.json`): captions
    of dense and sparse videos apart when the training mixes them, grounding apart from captions,
    and with `args.skills` text-only skill rows in every step, each skill's accuracy.
    """
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(args.seed)  # before the model is built: with_merge draws the new merger from it
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.init
        if args.init_theta:
            checkpoint = with_rope(checkpoint, args.init_theta, Path(tmp) / "rope")
        if args.init_merge:
            checkpoint = with_merge(checkpoint, args.init_merge, Path(tmp) / "merge")
        if args.fresh_language:
            checkpoint = with_fresh_language(checkpoint, Path(tmp) / "language")
        model, processor = load_model(checkpoint, device=device), AutoProcessor.from_pretrained(checkpoint)
    model.train()
    model.visual.requires_grad_(True)

    item_kw = dict(frames_choices=[int(f) for f in args.frames.split(",")], synth_dense=args.synth_dense,
                   sparse_fraction=args.sparse_fraction, question_mix=args.question_mix, grounding=args.grounding)
    captions = {**item_kw, "grounding": 0.0}
    kinds = {"": captions} if not args.sparse_fraction else {
        "dense/": {**captions, "sparse_fraction": 0.0}, "sparse/": {**captions, "synth_dense": False}}
    if args.grounding:
        kinds["grounding/"] = {**item_kw, "synth_dense": False, "grounding": 1.0}
    # The random streams are named as in the study that found the recipe, which models/base came from.
    tests = {}
    for tag, kw in kinds.items():
        test_rng = random.Random(f"study/test{tag.rstrip('/')}")
        tests[tag] = [make_item(test_rng, processor, **kw) for _ in range(args.test_videos)]
    rng = random.Random(f"study/{args.seed}")
    train = [make_item(rng, processor, **item_kw) for _ in range(args.train_videos)]
    skill_rng = random.Random(f"skills/{args.seed}")
    print(f"data ready in {time.perf_counter() - t0:.0f}s", flush=True)

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    history, t_train, step, loss = [], time.perf_counter(), 0, None

    def report():
        row = dict(step=step, loss=round(loss.item(), 3) if step else None,
                   minutes=round((time.perf_counter() - t0) / 60, 1))
        for tag, test in tests.items():
            row[f"{tag}video"], row[f"{tag}ablated"] = evaluate(model, test, False), evaluate(model, test, True)
        if args.skills:
            row["skills"] = skill_accuracy(model, processor.tokenizer, 4 * args.test_videos)
        history.append(row)
        print(json.dumps(row), flush=True)

    while step < args.steps:
        for group in opt.param_groups:  # linear warm-up, then linear decay to a tenth
            group["lr"] = args.lr * min(1.0, (step + 1) / args.warmup) * max(0.1, 1 - step / args.steps)
        batch = rng.sample(train, args.batch)
        logits = batch_forward(model, batch)
        loss = F.cross_entropy(torch.cat(logits), torch.cat([it["target"] for it in batch]).to(model.device))
        if args.skills:
            rows = [skill_row(skill_rng) for _ in range(args.skills)]
            loss = loss + args.skills_weight * skill_loss(model, processor.tokenizer, rows)[0]
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        if step % 25 == 0:
            print(f"step {step} loss {loss.item():.3f} ({time.perf_counter() - t_train:.0f}s)", flush=True)
        if step % EVAL_EVERY == 0:
            report()
    if not history or history[-1]["step"] != step:
        report()
    if args.json:
        Path(args.json).write_text(json.dumps(dict(args=vars(args), history=history), indent=1))
    processor.save_pretrained(args.save)
    save_pretrained(model, args.save)  # config.json last: the recipe takes it for "this stage is done"


def cli_flags(options: dict) -> list:
    """{"sparse_fraction": 0.6, "synth_dense": True} -> ["--sparse-fraction", 0.6, "--synth-dense"]"""
    flags = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        flags += [flag] if value is True else [flag, value]
    return flags


def pretrain_base(dest: Path, work: Path, recipe: dict):
    """Run `recipe`: captioning with train_sft.py stage by stage, then the captioning stages; copy the
    last model to `dest`."""
    (work / "logs").mkdir(parents=True, exist_ok=True)
    data, model, py = work / "data", work / "init", sys.executable
    s = recipe["synth"]
    if not (data / "test.jsonl").exists():
        run([py, "-m", "minirl.synth", "--out", data, "--train", s["train"], "--test", s["test"],
             "--frames", s["frames"], "--size", s["size"], "--captions", s["captions"], "--dense", "--seed", 1000],
            work / "logs/synth.log")
    if not (model / "config.json").exists():
        run([py, "-m", "minirl.tiny", "--out", model, "--rope-theta", recipe["rope_theta"]], work / "logs/model.log")
    for i, stage in enumerate(recipe["stages"]):
        out = work / f"stage{i}"
        if not (out / "hf/config.json").exists():
            sft = {**stage, "batch_size": recipe["batch_size"], "micro_batch_size": recipe["batch_size"]}
            torchrun("train_sft.py", sft_args(sft, model, data / "train.jsonl", s["captions"], out,
                                              **{"model.train_vision": "true", "run.seed": i}),
                     work / f"logs/stage{i}.log")
        model = out / "hf"
    for i, stage in enumerate(recipe["perception"]):
        out = work / f"perception{i}"
        if not (out / "config.json").exists():
            flags = cli_flags({**recipe["perception_flags"], **stage})
            run([py, "pretrain_base.py", "--init", model, *flags, "--save", out,
                 "--json", work / f"perception{i}.json"], work / f"logs/perception{i}.log")
        model = out
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(model, dest)
    print(f"wrote the perception base to {dest}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="write the perception base here (the whole recipe)")
    ap.add_argument("--work", default="runs/base", help="the recipe's data, checkpoints and logs")
    ap.add_argument("--quick", action="store_true", help="a few steps of every command (plumbing smoke test)")
    stage = ap.add_argument_group("one captioning stage (what the recipe's part 2 runs)")
    stage.add_argument("--init", default="", help="continue this checkpoint (its own processor)")
    stage.add_argument("--save", default="", help="write the trained model here")
    stage.add_argument("--json", default="", help="write the flags and the held-out reports here")
    stage.add_argument("--init-theta", type=float, default=0.0, help="give the checkpoint this rope_theta first")
    stage.add_argument("--init-merge", type=int, default=0,
                       help="give the checkpoint this spatial_merge_size first (a new merger MLP, other weights kept)")
    stage.add_argument("--fresh-language", action="store_true",
                       help="start the language model afresh first (vision tower and merger kept)")
    stage.add_argument("--skills", type=int, default=0, help="text-only skill rows in every step (skill_row)")
    stage.add_argument("--skills-weight", type=float, default=0.5, help="their loss's weight beside the caption's")
    stage.add_argument("--synth-dense", action="store_true", help="synth.make_events(dense=True) videos")
    stage.add_argument("--sparse-fraction", type=float, default=0.0,
                       help="with --synth-dense: this fraction of the videos are the benchmark's sparse ones")
    stage.add_argument("--question-mix", type=float, default=0.0,
                       help="this fraction of prompts: an unrelated benchmark question before the caption request")
    stage.add_argument("--grounding", type=float, default=0.0,
                       help="this fraction of prompts: where is the <colour shape> (one event the frames show)")
    stage.add_argument("--frames", default="32", help="comma list of frame counts sampled per video")
    stage.add_argument("--train-videos", type=int, default=2000, help="the fixed training set")
    stage.add_argument("--test-videos", type=int, default=200, help="each held-out set")
    stage.add_argument("--steps", type=int, default=600)
    stage.add_argument("--batch", type=int, default=16)
    stage.add_argument("--lr", type=float, default=3e-3)
    stage.add_argument("--warmup", type=int, default=20)
    stage.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.init:
        if not args.save:
            ap.error("--init needs --save")
        caption_stage(args)
        return
    if not args.out:
        ap.error("--out (the whole recipe) or --init with --save (one stage)")
    start = time.time()
    pretrain_base(Path(args.out).resolve(), Path(args.work).resolve(), BASE_QUICK if args.quick else BASE_RECIPE)
    print(f"({(time.time() - start) / 60:.1f} min)")


if __name__ == "__main__":
    main()
