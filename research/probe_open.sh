#!/bin/bash
cd /work/main
PY=.venv/bin/python
P=runs/r7/probe
export OMP_NUM_THREADS=1
acc() { $PY evaluate.py --model $1 --data $P/test_open.jsonl --frames 8 --max-new-tokens 32 --batch-size 20 --out $P/pred-$2.jsonl --json $P/eval-$2.json > $P/eval-$2.log 2>&1; python3 -c "import json;t=json.load(open('$P/eval-$2.json'));print('$2', t['overall']['accuracy'], t['overall']['format_accuracy'])"; }
K=$1; s=$(date +%s)
[ -f $P/osft$K/hf/config.json ] || $PY train_sft.py --model.path models/base --data.train $P/train_open.jsonl --data.frames 8 --optim.steps $K --optim.batch_size 16 --optim.micro_batch_size 16 --optim.lr 2e-3 --data.frame_cache_mb 64 --optim.warmup_steps 4 --run.out $P/osft$K --run.tensorboard false > $P/osft$K.log 2>&1
echo "sft $K: $(( $(date +%s) - s )) s"
acc $P/osft$K/hf osft$K
