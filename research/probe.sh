#!/bin/bash
# One-shape colour probe on the new models/base: SFT K steps, then GRPO / shuffled control.
cd /work/main
PY=.venv/bin/python
P=runs/r7/probe
export OMP_NUM_THREADS=1
[ -f $P/test.jsonl ] || $PY -c "
from pathlib import Path
from minirl import synth
synth.one_shape_questions(Path('$P/train'), 64, seed=0, asked='colour')
synth.one_shape_questions(Path('$P/rl'), 64, seed=2, asked='colour')
synth.one_shape_questions(Path('$P/test'), 40, seed=1, asked='colour')"
acc() { $PY evaluate.py --model $1 --data $P/test.jsonl --frames 8 --max-new-tokens 64 --batch-size 20 --out $P/pred-$2.jsonl --json $P/eval-$2.json > $P/eval-$2.log 2>&1; python3 -c "import json;t=json.load(open('$P/eval-$2.json'));print('$2', t['overall']['accuracy'], t['overall']['format_accuracy'])"; head -c 300 $P/pred-$2.jsonl | grep -o '"responses": \[[^]]*' | head -c 200; echo; }
K=${K:-30}
s=$(date +%s)
[ -f $P/sft$K/hf/config.json ] || $PY train_sft.py --model.path models/base --data.train $P/train.jsonl --data.frames 8 --optim.steps $K --optim.batch_size 16 --optim.micro_batch_size 16 --optim.lr 2e-3 --data.frame_cache_mb 64 --optim.warmup_steps 4 --run.out $P/sft$K --run.tensorboard false > $P/sft$K.log 2>&1
echo "sft $K: $(( $(date +%s) - s )) s"
acc $P/sft$K/hf sft$K
