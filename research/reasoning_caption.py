"""How reliably does the perception base caption a video, by how many events, how long, and whether each is
on a frame of the 32-frame grid?

    OMP_NUM_THREADS=2 python -m research.reasoning_caption [--model models/base] [--videos 64] [--frames 32]

For each setting (events per video, frames a static event lasts) it renders videos in memory, asks the base
"Describe the video." and compares its greedy caption with synth.caption's target (what the sampled frames
show): exact caption, exact list of names in order, and exact count of events.
"""

import argparse
import random
import re

import numpy as np
import torch
from transformers import AutoProcessor

from minirl import synth
from minirl.data import build_prompt, encode_prompt
from minirl.model import load_model, prepare_inputs
from minirl.video import process_video, uniform_indices
from rollout import SamplingParams, sample

NAME = re.compile(r"the (red|green|blue|yellow) (square|circle)")


def events_for(rng, n_events, static, aligned=0, num_frames=128):
    identities = rng.sample(list(synth.itertools.product(synth.COLOURS, synth.SHAPES)), n_events)
    mover, slot, events = rng.randrange(n_events), num_frames // n_events, []
    for i, (colour, shape) in enumerate(identities):
        frames = synth.MOVER_FRAMES if i == mover else rng.randint(*static)
        starts = range(i * slot, i * slot + slot - frames + 1)
        if aligned:  # only starts that put the event on a frame of the `aligned`-frame grid
            grid = uniform_indices(num_frames, aligned)
            starts = [s for s in starts if any(s <= f < s + frames for f in grid)]
        start = rng.choice(list(starts))
        pos = rng.choice(synth.QUADRANTS)
        to = rng.choice([q for q in synth.QUADRANTS if q != pos]) if i == mover else None
        events.append(dict(colour=colour, shape=shape, start=start, frames=frames, pos=pos, to=to))
    return events


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="models/base")
    p.add_argument("--videos", type=int, default=64)
    p.add_argument("--frames", type=int, default=32)
    args = p.parse_args()
    model = load_model(args.model, dtype=torch.float32, device="cpu").eval()
    proc = AutoProcessor.from_pretrained(args.model)
    tok = proc.tokenizer
    params = SamplingParams(n=1, max_new_tokens=120, greedy=True,
                            stop_token_ids=(tok.convert_tokens_to_ids("<|im_end|>"),))
    print("| events | static frames | on the grid of | caption exact | names in order | count right | mean tokens |")
    print("|---|---|---|---:|---:|---:|---:|")
    for n_events, static, aligned in [((5, 8), (2, 4), 0), ((5, 8), (2, 4), 32), ((3, 5), (2, 4), 32),
                                      ((4, 6), (2, 4), 32)]:
        rng = random.Random(f"caption/{n_events}/{static}/{aligned}")
        exact = names = count = toks = 0
        for _ in range(0, args.videos, 8):
            prompts, targets = [], []
            for _ in range(8):
                events = events_for(rng, rng.randint(*n_events), static, aligned)
                idx = uniform_indices(128, args.frames)
                frames = np.stack([synth.render(events, int(f), 56) for f in idx])
                vis = process_video(proc, frames, args.frames / 16)
                n_tok = int(vis["video_grid_thw"].prod()) // proc.video_processor.merge_size ** 2
                ids = torch.tensor(encode_prompt(proc, build_prompt(synth.CAPTION_PROMPT), n_tok))
                with torch.no_grad():
                    prompts.append(prepare_inputs(model, ids, vis["pixel_values_videos"], vis["video_grid_thw"],
                                                  vis["second_per_grid_ts"]))
                targets.append(synth.caption(events, args.frames, 128))
            for s, (text, k) in zip(sample(model, prompts, params).samples, targets, strict=True):
                out = tok.decode(s.tokens, skip_special_tokens=True)
                toks += s.length
                exact += text in out
                names += NAME.findall(out.split("</think>")[0]) == NAME.findall(text)
                count += f"{k} in total" in out
        n = args.videos
        print(f"| {n_events} | {static} | {aligned} | {100 * exact / n:.1f} | {100 * names / n:.1f} "
              f"| {100 * count / n:.1f} | {toks / n:.0f} |", flush=True)
    print("example:", out)


if __name__ == "__main__":
    main()
