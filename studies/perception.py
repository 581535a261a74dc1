"""Study: what makes the tiny Qwen2.5-VL *perceive* (what, where, when) the synthetic videos.

One controlled change per run on a dense-captioning task: the caption lists, in time order,
every event visible in the sampled frames ("red square at the top-left, then ...") and its
answer is how many there were. Frames are rendered in memory (no mp4 round trip) so a run is
fast; the held-out metric is teacher-forced accuracy per kind of caption word (colour, shape,
quadrant, count), with the real video and with every video swapped for another's (ablation).

    python studies/perception.py --theta 10000 --steps 600            # the default config
    python studies/perception.py --theta 3 --train-vision --steps 600 # one lever at a time
    python studies/perception.py --eval-only models/base [--long-events 3]  # a checkpoint, on the held-out sets
    python studies/perception.py --init models/base --sparse-fraction 0.5 --workers 14 --device cuda \
        --steps 4000 --minutes 4 --save DIR                               # continue the base on fresh data

--init continues a checkpoint (its own processor, synth's caption format "... N in total." that
the base was taught); --workers N renders a fresh video for every item in N processes instead of
reusing a fixed training set; --sparse-fraction mixes the benchmark's sparse videos among the
dense ones; --minutes bounds the run, and the lr schedule then runs on whichever of steps and
minutes ends first.
"""

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from minirl import synth, tiny  # noqa: E402
from minirl.data import build_prompt, build_target, encode_prompt  # noqa: E402
from minirl.model import load_model, next_position, rope_index  # noqa: E402
from minirl.video import process_video, uniform_indices  # noqa: E402

WORD_KIND = {**{c: "colour" for c in synth.COLOURS}, **{s: "shape" for s in synth.SHAPES},
             "top": "row", "bottom": "row", "left": "column", "right": "column"}


def long_events(rng, num_frames, max_events):
    """1..max_events events that each fill most of an equal time slot: dense, not sparse."""
    n = rng.randint(1, max_events)
    identities = rng.sample(list(synth.itertools.product(synth.COLOURS, synth.SHAPES)), n)
    slot = num_frames // n
    events = []
    for i, (colour, shape) in enumerate(identities):
        frames = rng.randint(slot // 2, slot)
        start = i * slot + rng.randint(0, slot - frames)
        events.append(dict(colour=colour, shape=shape, start=start, frames=frames, pos=rng.choice(synth.QUADRANTS),
                           to=None))
    return events


def prompt_ids(processor, video_tokens: int, problem=synth.CAPTION_PROMPT, before_video="") -> torch.Tensor:
    """The prompt's token ids: `problem` after the video, `before_video` just before it (studies/offset_probe.py)."""
    text = build_prompt(problem).replace("<|vision_start|>", before_video + "<|vision_start|>")
    return torch.tensor(encode_prompt(processor, text, video_tokens))


def make_item(rng, processor, frames_choices, total_frames=128, size=56, fps=8, max_events=0, synth_dense=False,
              sparse_fraction=0.0, synth_format=False, question_mix=0.0, grounding=0.0):
    """One captioning example: its prompt, target ids, the kind of every target word, its video.
    question_mix: this fraction of the prompts put a benchmark question about another video (with its options)
    before the caption request, so the caption starts at a different distance from the video every time.
    grounding: this fraction instead ask where one event the frames show is, named by colour and shape ("Where
    does the red circle appear?" -> "The red circle appears at the top-left [and moves to the ...]."): reading
    the event a prompt names, which a caption in time order never asks for."""
    if synth_dense and rng.random() >= sparse_fraction:  # synth's dense videos (1-3 long events, one moving)
        events = synth.make_events(rng, total_frames, dense=True)
    else:
        events = long_events(rng, total_frames, max_events) if max_events else synth.make_events(rng, total_frames)
    k = rng.choice(frames_choices)
    indices = uniform_indices(total_frames, k)
    frames = np.stack([synth.render(events, int(f), size) for f in indices])
    vision = process_video(processor, frames, k / (total_frames / fps))
    if synth_format:  # the base's own target: synth.caption_row, as train_sft.py saw it
        row = synth.caption_row(events, k, total_frames)
        text, answer = row["reasoning"], row["answer"]
    else:
        text, n = synth.caption(events, k, total_frames)
        answer = str(n)
    tokens = int(vision["video_grid_thw"].prod()) // processor.video_processor.merge_size**2
    problem = synth.CAPTION_PROMPT
    seen = [e for e in events if any(synth.on_screen(e, int(f)) for f in indices)] if grounding else []
    if grounding and seen and rng.random() < grounding:  # no draw at 0: the random stream of earlier runs is kept
        e = rng.choice(seen)
        problem = f"Where does the {synth.name(e)} appear?"
        text = f"The {synth.name(e)} appears at the {e['pos']}" + (f" and moves to the {e['to']}." if e["to"] else ".")
        answer = e["to"] or e["pos"]
    elif question_mix and rng.random() < question_mix:  # no draw at 0: the random stream of earlier runs is kept
        q = synth.make_question(synth.make_events(rng, total_frames), rng.choice(synth.CATEGORIES), rng.randrange(4),
                                rng, None)
        problem = "\n".join([q["problem"], *q["options"], problem])
    prompt = prompt_ids(processor, tokens, problem)
    target = processor.tokenizer(build_target(text, answer), add_special_tokens=False)["input_ids"]
    kinds = []
    for t in target:
        word = processor.tokenizer.decode([t]).strip().strip(".,-")
        kinds.append(WORD_KIND.get(word, "count" if word.isdigit() else "other"))
    return dict(prompt=prompt, target=torch.tensor(target), kinds=kinds, **vision)


class FreshVideos(torch.utils.data.IterableDataset):
    """An endless stream of freshly rendered examples, a different random stream per worker."""

    def __init__(self, seed, processor, **item_kw):
        self.seed, self.processor, self.item_kw = seed, processor, item_kw

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        rng = random.Random(f"study/{self.seed}/worker{info.id if info else 0}")
        while True:
            yield make_item(rng, self.processor, **self.item_kw)


def batch_forward(model, items, video_from=None):
    """Teacher-forced logits of every target token; video_from[i] = whose video item i sees."""
    video_from = video_from or list(range(len(items)))
    seqs = [torch.cat([it["prompt"], it["target"]]) for it in items]
    L = max(len(s) for s in seqs)
    ids = torch.zeros(len(items), L, dtype=torch.long)
    pos = torch.zeros(3, len(items), L, dtype=torch.long)
    vids = [items[j] for j in video_from]
    for b, (it, v) in enumerate(zip(items, vids, strict=True)):
        ids[b, :len(seqs[b])] = seqs[b]
        p = rope_index(it["prompt"], v["video_grid_thw"], v["second_per_grid_ts"], model.config)
        r = next_position(p) + torch.arange(len(it["target"]))
        pos[:, b, :len(seqs[b])] = torch.cat([p, r.expand(3, -1)], dim=1)
    if any(len(it["prompt"]) != len(v["prompt"]) for it, v in zip(items, vids, strict=True)):
        raise ValueError("the ablation swaps videos between items with the same token count only")
    embeds = model.encode_video(torch.cat([v["pixel_values_videos"] for v in vids]),
                                torch.cat([v["video_grid_thw"] for v in vids]))
    mask = ids == model.config.video_token_id
    mask[:, max(len(it["prompt"]) for it in items):] = False
    hidden = model(None, pos.to(model.device), input_ids=ids, video_embeds=embeds, video_mask=mask)
    logits = model.logits(hidden)  # (B, L, V)
    out = []
    for b, it in enumerate(items):
        P, R = len(it["prompt"]), len(it["target"])
        out.append(logits[b, P - 1:P + R - 1])  # (R, V)
    return out


def evaluate(model, items, ablate: bool) -> dict:
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
                order = order[1:] + order[:1]  # each item sees its neighbour's video
            for it, logits in zip(batch, batch_forward(model, batch, order), strict=True):
                pred = logits.argmax(-1).cpu()
                for kind, ok in zip(it["kinds"], (pred == it["target"]).tolist(), strict=True):
                    hits[kind] = hits.get(kind, 0) + ok
                    counts[kind] = counts.get(kind, 0) + 1
    model.train()
    return {k: round(100 * hits[k] / counts[k], 1) for k in sorted(counts)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--theta", type=float, default=10000.0)
    ap.add_argument("--mrope", default="", help="mrope_section, e.g. 4,6,6 (default: Qwen's split)")
    ap.add_argument("--size", default="tiny")
    ap.add_argument("--tokens-per-second", type=float, default=2)
    ap.add_argument("--train-vision", action="store_true")
    ap.add_argument("--init", default="", help="continue this checkpoint instead of a new model (vision trained)")
    ap.add_argument("--init-theta", type=float, default=0.0, help="with --init: give the checkpoint this rope_theta")
    ap.add_argument("--init-mrope", default="", help="with --init: and this mrope_section, e.g. 2,2,12")
    ap.add_argument("--init-merge", type=int, default=0,
                    help="with --init: this spatial_merge_size (a new merger MLP; every other weight kept)")
    ap.add_argument("--question-mix", type=float, default=0.0,
                    help="this fraction of prompts: an unrelated benchmark question before the caption request")
    ap.add_argument("--grounding", type=float, default=0.0,
                    help="this fraction of prompts: where is the <colour shape> (one event the frames show)")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--minutes", type=float, default=0.0, help="stop after this many minutes of training")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--frames", default="32", help="comma list of frame counts sampled per video")
    ap.add_argument("--train-videos", type=int, default=2000, help="the fixed training set (without --workers)")
    ap.add_argument("--test-videos", type=int, default=200)
    ap.add_argument("--workers", type=int, default=0, help="N > 0: a fresh video per example, rendered by N processes")
    ap.add_argument("--long-events", type=int, default=0,
                    help="N > 0: 1..N events, each filling most of its time slot (dense), instead of the benchmark's")
    ap.add_argument("--synth-dense", action="store_true", help="synth.make_events(dense=True) videos")
    ap.add_argument("--sparse-fraction", type=float, default=0.0,
                    help="with --synth-dense: this fraction of the videos are the benchmark's sparse ones")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-every", type=int, default=200)
    ap.add_argument("--save", default="", help="write the checkpoint here at every evaluation")
    ap.add_argument("--json", default="")
    ap.add_argument("--eval-only", default="", help="only evaluate this checkpoint (its own processor)")
    args = ap.parse_args()
    frames = [int(f) for f in args.frames.split(",")]
    from transformers import AutoProcessor

    torch.manual_seed(args.seed)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the workers fork after the tokenizer ran
    t0 = time.perf_counter()
    checkpoint = args.eval_only or args.init
    if args.init_theta or args.init_mrope:
        checkpoint = with_rope(checkpoint, args.init_theta, args.init_mrope)
    if args.init_merge:
        checkpoint = with_merge(checkpoint, args.init_merge)
    if checkpoint:
        model, processor = load_model(checkpoint, device=args.device), AutoProcessor.from_pretrained(checkpoint)
    else:
        model, processor = new_model(args)
        model = model.to(args.device)
    model.train()
    model.visual.requires_grad_(args.train_vision or bool(args.init))

    item_kw = dict(frames_choices=frames, max_events=args.long_events, synth_dense=args.synth_dense,
                   sparse_fraction=args.sparse_fraction, synth_format=bool(args.init), question_mix=args.question_mix,
                   grounding=args.grounding)
    tests = {}  # the held-out sets: dense and sparse apart when the training mixes them, captions apart from grounding
    captions = {**item_kw, "grounding": 0.0}
    kinds = {"": captions} if not args.sparse_fraction else {
        "dense/": {**captions, "sparse_fraction": 0.0}, "sparse/": {**captions, "synth_dense": False}}
    if args.grounding:
        kinds["grounding/"] = {**item_kw, "synth_dense": False, "grounding": 1.0}
    for tag, kw in kinds.items():
        test_rng = random.Random(f"study/test{tag.rstrip('/')}")
        tests[tag] = [make_item(test_rng, processor, **kw) for _ in range(args.test_videos)]
    if args.eval_only:
        print(json.dumps({f"{tag}{name}": evaluate(model, test, name == "ablated")
                          for tag, test in tests.items() for name in ("video", "ablated")}))
        return

    rng = random.Random(f"study/{args.seed}")

    def fixed_batches():  # a generator: the training set is built on the first step, never for --steps 0
        train = [make_item(rng, processor, **item_kw) for _ in range(args.train_videos)]
        while True:
            yield rng.sample(train, args.batch)

    if args.workers:
        loader = torch.utils.data.DataLoader(FreshVideos(args.seed, processor, **item_kw), batch_size=args.batch,
                                             num_workers=args.workers, collate_fn=list, prefetch_factor=4)
        batches = (batch for batch in loader)  # the workers start on the first step
    else:
        batches = fixed_batches()
    print(f"held-out data ready in {time.perf_counter() - t0:.0f}s", flush=True)

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    history, t_train, step = [], time.perf_counter(), 0

    def progress():  # the schedule's clock: steps, or the minutes when they end first (--steps 0: evaluate only)
        elapsed = (time.perf_counter() - t_train) / 60 / args.minutes if args.minutes else 0.0
        return max(step / args.steps, elapsed) if args.steps else 1.0

    def report():
        row = dict(step=step, loss=round(loss.item(), 3) if step else None,
                   minutes=round((time.perf_counter() - t0) / 60, 1))
        for tag, test in tests.items():
            row[f"{tag}video"], row[f"{tag}ablated"] = evaluate(model, test, False), evaluate(model, test, True)
        history.append(row)
        print(json.dumps(row), flush=True)
        if args.save:
            from minirl.model import save_pretrained

            save_pretrained(model, args.save)
            processor.save_pretrained(args.save)

    while progress() < 1:
        for group in opt.param_groups:  # linear warm-up, then linear decay to a tenth
            group["lr"] = args.lr * min(1.0, (step + 1) / args.warmup) * max(0.1, 1 - progress())
        batch = next(batches)
        logits = batch_forward(model, batch)
        loss = F.cross_entropy(torch.cat(logits), torch.cat([it["target"] for it in batch]).to(model.device))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        if step % 25 == 0:
            print(f"step {step} loss {loss.item():.3f} ({time.perf_counter() - t_train:.0f}s)", flush=True)
        if step % args.eval_every == 0:
            report()
    if not history or history[-1]["step"] != step:
        report()
    if args.json:
        Path(args.json).write_text(json.dumps(dict(args=vars(args), history=history), indent=1))


def with_rope(checkpoint, theta: float, mrope: str) -> str:
    """A temporary copy of `checkpoint` with this rope_theta and/or mrope_section (weights unchanged)."""
    import shutil

    copy = Path(tempfile.mkdtemp()) / "model"
    shutil.copytree(checkpoint, copy)
    config = json.loads((copy / "config.json").read_text())
    rope = config["text_config"]["rope_parameters"]
    if theta:
        rope["rope_theta"] = theta
    if mrope:
        rope["mrope_section"] = [int(x) for x in mrope.split(",")]
    (copy / "config.json").write_text(json.dumps(config, indent=2))
    return str(copy)


def with_merge(checkpoint, merge: int) -> str:
    """A temporary copy of `checkpoint` whose merger joins merge x merge patches into one LLM token.

    At merge 4 a 56-px frame (4 x 4 patches) is one token and the merger MLP sees its 16 patches in
    raster order, so *where* a shape is becomes part of the token's content: nothing has to be read
    from M-RoPE's slow height/width channels. The merger MLP's input grows to hidden * merge^2, so
    it starts afresh; every other tensor (and the processor, but for its merge_size) is kept.
    """
    from transformers import AutoConfig, AutoProcessor

    from minirl.model import QwenVL, save_pretrained

    old = load_model(checkpoint)
    config = AutoConfig.from_pretrained(checkpoint)
    config.vision_config.spatial_merge_size = merge
    model = QwenVL(config)
    fresh = model.state_dict()
    model.load_state_dict({k: v if v.shape == fresh[k].shape else fresh[k] for k, v in old.state_dict().items()})
    copy = Path(tempfile.mkdtemp()) / "model"
    save_pretrained(model, copy)
    processor = AutoProcessor.from_pretrained(checkpoint)
    processor.image_processor.merge_size = processor.video_processor.merge_size = merge
    processor.save_pretrained(copy)
    return str(copy)


def new_model(args):
    """A random tiny Qwen2.5-VL with this study's rope settings, and its processor."""
    corpus = tiny.default_corpus() + [synth.caption(synth.make_events(random.Random(i), 128), 128, 128)[0]
                                      for i in range(200)]
    processor = tiny.make_processor(corpus)
    s = tiny.SIZES[args.size]
    config = tiny.qwen_config(processor.tokenizer, **s, head_dim=s["hidden"] // s["heads"],
                              tokens_per_second=args.tokens_per_second)
    rope = config.text_config.rope_parameters
    rope["rope_theta"] = args.theta
    if args.mrope:
        rope["mrope_section"] = [int(x) for x in args.mrope.split(",")]
    from transformers import Qwen2_5_VLForConditionalGeneration

    with tempfile.TemporaryDirectory() as tmp:
        Qwen2_5_VLForConditionalGeneration(config).save_pretrained(tmp)
        return load_model(tmp), processor


if __name__ == "__main__":
    main()
