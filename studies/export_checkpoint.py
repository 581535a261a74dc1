"""Export a training checkpoint (step-NNNNNN/) in Hugging Face format, to evaluate it mid-run.

    PYTHONPATH=. python studies/export_checkpoint.py INIT_DIR RUN/step-000250 OUT_DIR
"""

import sys
from pathlib import Path

import torch

from minirl.checkpoint import export_hf
from minirl.model import load_model

init, ckpt, out = sys.argv[1:4]
model = load_model(init)
model.load_state_dict(torch.load(Path(ckpt) / "model.pt", map_location="cpu", weights_only=False), strict=True)
export_hf(model, out, init)
print("exported", out)
