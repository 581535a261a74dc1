#!/bin/bash
# GRPO levers on the demo's SFT model and curated questions (runs/demo from `python demo.py --out runs/demo`),
# one change at a time from the demo's recipe (8 x 8, 150 steps, lr 1e-4, KL 0.05, cosine to 0.1).
# usage: research/demo_recipe2.sh NAME [extra train_rl.py flags...]; held-out table: runs/r2/NAME/eval.json
set -e
NAME=$1; shift
D=runs/demo; OUT=runs/r2/$NAME
export OMP_NUM_THREADS=1
mkdir -p $OUT
start=$(date +%s)
.venv/bin/python -m torch.distributed.run --nproc_per_node 2 train_rl.py --model.path $D/sft/hf \
  --data.train $D/data/train_rl_curated.jsonl --data.frames 32 --data.test $D/data/test.jsonl \
  --eval.every 50 --eval.max_examples 100 --eval.max_new_tokens 152 --eval.batch_size 32 --parallel.sp 2 \
  --run.tensorboard false --optim.steps 150 --optim.batch_size 8 --optim.micro_batch_size 64 --rollout.n 8 \
  --optim.lr 1e-4 --algo.kl_coef 0.05 --rollout.max_new_tokens 152 --rollout.temperature 0.7 --run.seed 0 \
  --run.out $OUT "$@" > $OUT.log 2>&1
echo "$NAME train $(( $(date +%s) - start )) s" | tee -a runs/r2/times.txt
OMP_NUM_THREADS=2 .venv/bin/python evaluate.py --model $OUT/hf --data $D/data/test.jsonl --frames 32 \
  --max-new-tokens 152 --batch-size 32 --out $OUT/eval.predictions.jsonl --json $OUT/eval.json > $OUT.eval.log 2>&1
.venv/bin/python -c "import json; t=json.load(open('$OUT/eval.json')); print('$NAME', round(100*t['overall']['accuracy'],1), {c: round(100*v['accuracy'],1) for c, v in t['categories'].items()})" | tee -a runs/r2/results.txt
