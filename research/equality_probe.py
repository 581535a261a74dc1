"""Text-only probe: can a model learn that two adjacent colour words are equal ("(2) the red square, red is green? no")?

python research/equality_probe.py MODEL_DIR [base|random] [STEPS]: AdamW lr 1e-3, 32 random rows a step; prints the
accuracy of the yes/no token on 64 fresh rows every 50 steps ("random": the same config, randomly initialised)."""
import random
import sys

import torch
from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

torch.manual_seed(0); random.seed(0)
tok = AutoTokenizer.from_pretrained('models/base')
model = Qwen2_5_VLForConditionalGeneration.from_pretrained(sys.argv[1])
if len(sys.argv) > 2 and sys.argv[2] == "random": model = Qwen2_5_VLForConditionalGeneration._from_config(model.config)
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
opt = torch.optim.AdamW(model.model.language_model.parameters(), lr=1e-3)
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
