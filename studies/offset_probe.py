"""Probe: does a checkpoint read the video only at the text offsets it was trained at?

    python studies/offset_probe.py --model models/base [--shifts 0 1 2 4 8 16 32] [--videos 100]

RoPE attention depends on the distance between a query and a key. The base was taught to caption
behind one prompt ("Describe the video."), so its caption tokens always sat at the same distances
from the video tokens. Here the same held-out dense videos are captioned (teacher-forced accuracy
per caption word, as studies/perception.py measures it) with k filler tokens inserted either
*before* the video (every distance from the caption to the video unchanged: a pure control) or
*after* it (every such distance grows by k). If reading collapses after the video but not before,
the model's looking is tied to fixed offsets, and any longer prompt (a question with its options)
blinds it. A small `rope_theta` makes this likely: every rotary channel then turns by >= 0.36 rad
per position, so no channel lets a query match a key's content independently of their distance.
"""

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from minirl import synth  # noqa: E402
from minirl.model import load_model  # noqa: E402
from studies.perception import evaluate, make_item, prompt_ids  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/base")
    ap.add_argument("--shifts", type=int, nargs="+", default=[0, 1, 2, 4, 8, 16, 32])
    ap.add_argument("--videos", type=int, default=100)
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--filler", default="the", help="one-token word repeated k times")
    args = ap.parse_args()
    from transformers import AutoProcessor

    model, processor = load_model(args.model), AutoProcessor.from_pretrained(args.model)
    if len(processor.tokenizer(f" {args.filler}", add_special_tokens=False)["input_ids"]) != 1:
        raise SystemExit(f"--filler {args.filler!r} is not one token for this tokenizer; pick another word")
    rng = random.Random("offset_probe")  # the same videos in every condition, rendered once
    items = [make_item(rng, processor, [args.frames], synth_dense=True, synth_format=True) for _ in range(args.videos)]
    video_tokens = [int((it["prompt"] == model.config.video_token_id).sum()) for it in items]
    for k in args.shifts:
        filler = " ".join([args.filler] * k)
        for where in ("before", "after") if k else ("none",):
            kw = dict(before_video=filler + " " if where == "before" else "",
                      problem=f"{filler} {synth.CAPTION_PROMPT}" if where == "after" else synth.CAPTION_PROMPT)
            shifted = [{**it, "prompt": prompt_ids(processor, n, **kw)}
                       for it, n in zip(items, video_tokens, strict=True)]
            row = dict(shift=k, where=where, video=evaluate(model, shifted, False))
            if k == 0:
                row["ablated"] = evaluate(model, shifted, True)
            print(json.dumps(row), flush=True)

if __name__ == "__main__":
    main()
