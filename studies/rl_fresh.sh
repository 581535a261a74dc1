#!/bin/bash
# GRPO on fresh RL questions (each drawn once, DAPO dynamic sampling in place of curation) from a demo's
# CoT-SFT model, dp = 2; then the 500 held-out questions and the per-category answer prior.
#   bash studies/rl_fresh.sh NAME DEMO_DIR SEED [--key value ...]   (more train_rl.py options, which win)
#   -> runs/exp/NAME{.log,/,.pred.jsonl,.eval.json,.prior.txt}
# DEMO_DIR is a `python demo.py --out DIR [--seed S]` run (its sft/hf and data/); the README's issue-12
# studies ("Why GRPO does not add here"), e.g. on seed 1's demo:
#   bash studies/rl_fresh.sh s1_b32 runs/demo_s1 1
#   bash studies/rl_fresh.sh s1_b32_T1.5 runs/demo_s1 1 --rollout.temperature 1.5
#   bash studies/rl_fresh.sh s1_b32_drgrpo runs/demo_s1 1 --algo.adv_scale none
NAME=$1; D=$2; SEED=$3; shift 3
OUT=runs/exp/$NAME
mkdir -p runs/exp
OMP_NUM_THREADS=1 .venv/bin/python -m torch.distributed.run --nproc_per_node 2 train_rl.py --model.path $D/sft/hf \
  --data.train $D/data/train_rl.jsonl --data.test $D/data/test.jsonl --data.frames 32 --parallel.sp 1 \
  --eval.every 50 --eval.max_new_tokens 64 --eval.batch_size 16 --run.tensorboard false \
  --optim.steps 100 --optim.batch_size 32 --rollout.n 8 --optim.lr 1e-4 --rollout.max_new_tokens 64 \
  --algo.dynamic_sampling true --algo.max_sampling_tries 16 --run.seed $SEED --run.out $OUT "$@" > $OUT.log 2>&1 || exit 1
OMP_NUM_THREADS=2 .venv/bin/python eval.py --model $OUT/hf --data $D/data/test.jsonl --frames 32 --max-new-tokens 64 \
  --batch-size 16 --out $OUT.pred.jsonl --json $OUT.eval.json > $OUT.eval.log 2>&1
.venv/bin/python studies/answer_prior.py $OUT.pred.jsonl > $OUT.prior.txt
