"""Text-only probe: can a model learn that two adjacent colour words are equal ("(2) the red square, red is green? no")?

python research/equality_probe.py MODEL_DIR [base|random] [STEPS]: AdamW lr 1e-3, 32 random rows a step; prints the
accuracy of the yes/no token on 64 fresh rows every 50 steps ("random": the same config, randomly initialised)."""
import random
import sys

import torch
from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

import os
SEED = int(os.environ.get("SEED", 0)); torch.manual_seed(SEED); random.seed(SEED)
tok = AutoTokenizer.from_pretrained('models/base')
model = Qwen2_5_VLForConditionalGeneration.from_pretrained(sys.argv[1])
mode = sys.argv[2] if len(sys.argv) > 2 else "base"
fresh = Qwen2_5_VLForConditionalGeneration._from_config(model.config)
if mode == "random": model = fresh
elif mode.startswith("shrink"):  # shrink and perturb: lam * theta + (1 - lam) * a fresh init
    lam = float(mode.split(":")[1])
    with torch.no_grad():
        for p, q in zip(model.parameters(), fresh.parameters()): p.mul_(lam).add_((1 - lam) * q)
elif mode == "freshio":  # token embeddings and output head start afresh, the layers keep the base's
    model.model.language_model.embed_tokens.load_state_dict(fresh.model.language_model.embed_tokens.state_dict())
    model.lm_head.load_state_dict(fresh.lm_head.state_dict())
elif mode.startswith("reset"):  # the top K decoder layers start afresh
    k = int(mode.split(":")[1]); layers = model.model.language_model.layers
    for i in range(len(layers) - k, len(layers)): layers[i].load_state_dict(fresh.model.language_model.layers[i].state_dict())
C = ["red", "green", "blue", "yellow"]; S = ["square", "circle"]
def make():
    q = random.choice(C); items = random.sample(C, random.choice([3, 4]))
    text = f"Which is the {q} shape? " + "; ".join(f"({i+1}) the {c} {random.choice(S)}, {c} is {q}? {'yes' if c==q else 'no'}" for i, c in enumerate(items))
    return text
def batch(n):
    texts = [make() for _ in range(n)]
    enc = tok(texts, return_tensors="pt", padding=True)
    return enc
yid, nid = tok(" yes")["input_ids"], tok(" no")["input_ids"]
print(yid, nid)
import os
params = list(model.model.language_model.parameters()) + (list(model.lm_head.parameters()) if os.environ.get("HEAD") else [])
opt = torch.optim.AdamW(params, lr=1e-3)
def dec_acc(enc, logits):
    ids = enc["input_ids"]; ok = tot = 0
    y, n = tok.convert_tokens_to_ids("y"), tok.convert_tokens_to_ids("n")
    for b in range(ids.shape[0]):
        for t in range(1, ids.shape[1]):
            if ids[b, t].item() in (y, n):
                pred = logits[b, t-1, [y, n]].argmax().item()
                ok += (pred == 0) == (ids[b, t].item() == y); tot += 1
    return ok / tot
for step in range(int(sys.argv[3]) if len(sys.argv) > 3 else 301):
    enc = batch(32)
    out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], labels=enc["input_ids"].masked_fill(enc["attention_mask"]==0, -100))
    out.loss.backward(); opt.step(); opt.zero_grad()
    if step % 50 == 0:
        with torch.no_grad():
            e = batch(64); l = model(input_ids=e["input_ids"], attention_mask=e["attention_mask"]).logits
        print(step, round(out.loss.item(), 3), "decision acc", round(dec_acc(e, l), 3), flush=True)
