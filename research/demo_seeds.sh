#!/bin/bash
# The demo's GRPO stage (demo.RECIPES["reasoning"]["rl"], one process each, side by side) with other RL seeds on
# the demo's SFT model and curated questions. usage: [TAG=name EXTRA="train_rl flags"] research/demo_seeds.sh
# DEMO_DIR SEED [SEED...]; held-out table of each: DEMO_DIR/seeds/TAG-sS/eval.json (TAG: rl), one line each in
# DEMO_DIR/seeds/results.txt
set -e
D=$1; shift
export OMP_NUM_THREADS=1
mkdir -p $D/seeds
for s in "$@"; do
  OUT=$D/seeds/${TAG:-rl}-s$s
  .venv/bin/python train_rl.py --model.path $D/sft/hf --data.train $D/data/train_rl_curated.jsonl --data.frames 32 \
    --data.test $D/data/test.jsonl --eval.every 50 --eval.max_examples 100 --eval.max_new_tokens 152 \
    --eval.batch_size 32 --parallel.sp 1 --run.tensorboard false --optim.steps 150 --optim.batch_size 8 \
    --optim.micro_batch_size 64 --rollout.n 8 --optim.lr 1e-4 --algo.kl_coef 0.05 --rollout.max_new_tokens 152 \
    --rollout.temperature 0.7 --run.seed $s --run.out $OUT $EXTRA > $OUT.log 2>&1 &
done
wait
for s in "$@"; do
  OUT=$D/seeds/${TAG:-rl}-s$s
  OMP_NUM_THREADS=2 .venv/bin/python evaluate.py --model $OUT/hf --data $D/data/test.jsonl --frames 32 \
    --max-new-tokens 152 --batch-size 32 --out $OUT/eval.predictions.jsonl --json $OUT/eval.json > $OUT.eval.log 2>&1
  .venv/bin/python -c "import json; t=json.load(open('$OUT/eval.json')); print('${TAG:-rl} seed $s', round(100*t['overall']['accuracy'],1), {c: round(100*v['accuracy'],1) for c, v in t['categories'].items()})" | tee -a $D/seeds/results.txt
done
