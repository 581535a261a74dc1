#!/bin/bash
# GRPO and its random-reward control side by side, one process (one core) each, on the demo's SFT model and
# curated questions (runs/demo). usage: research/demo_pair.sh NAME [extra train_rl.py flags...]
# held-out tables: runs/r2/NAME-{rl,control}/eval.json; wall time of the pair: runs/r2/times.txt
set -e
NAME=$1; shift
D=runs/demo
export OMP_NUM_THREADS=1
start=$(date +%s)
for run in rl control; do
  OUT=runs/r2/$NAME-$run; mkdir -p $OUT
  extra=""; [ $run = control ] && extra="--algo.shuffle_rewards true"
  .venv/bin/python train_rl.py --model.path $D/sft/hf \
    --data.train $D/data/train_rl_curated.jsonl --data.frames 32 --data.test $D/data/test.jsonl \
    --eval.every 100 --eval.max_examples 100 --eval.max_new_tokens 152 --eval.batch_size 32 \
    --run.tensorboard false --optim.steps 150 --optim.batch_size 8 --optim.micro_batch_size 64 --rollout.n 8 \
    --optim.lr 1e-4 --algo.kl_coef 0.05 --rollout.max_new_tokens 152 --rollout.temperature 0.7 --run.seed 0 \
    --run.out $OUT $extra "$@" > $OUT.log 2>&1 &
done
wait
echo "$NAME pair $(( $(date +%s) - start )) s" | tee -a runs/r2/times.txt
for run in rl control; do
  OUT=runs/r2/$NAME-$run
  OMP_NUM_THREADS=2 .venv/bin/python evaluate.py --model $OUT/hf --data $D/data/test.jsonl --frames 32 \
    --max-new-tokens 152 --batch-size 32 --out $OUT/eval.predictions.jsonl --json $OUT/eval.json > $OUT.eval.log 2>&1
  .venv/bin/python -c "import json; t=json.load(open('$OUT/eval.json')); print('$NAME-$run', round(100*t['overall']['accuracy'],1), {c: round(100*v['accuracy'],1) for c, v in t['categories'].items()})" | tee -a runs/r2/results.txt
done
