#!/bin/bash
# GRPO on the --easy benchmark from a CoT-SFT checkpoint, then the held-out table with its video-ablation control.
#   bash studies/rl_easy.sh SFT_MODEL OUT STEPS LR      (DATA=dir with test.jsonl, default runs/easy, written by
#                                                      the command below; TRAIN=jsonl, default DATA/train.jsonl;
#                                                      EXTRA='--key value ...' more train_rl.py options)
# The runs in README ("The same base on the --easy benchmark"):
#   .venv/bin/python -m minirl.synth --out runs/easy --train 1500 --test 200 --frames 128 --per-video 4 --no-timestamps --easy
#   DATA=runs/easy TRAIN=runs/easy/train.jsonl bash studies/sft_eval.sh studies/checkpoints/perception_1e4_sparse runs/exp/sft_1e4_sparse_easy450 450 1e-3
#   bash studies/rl_easy.sh runs/exp/sft_1e4_sparse_easy450/hf runs/exp/rl_1e4_sparse_easy 40 5e-5
#   bash studies/rl_easy.sh runs/exp/sft_1e4_sparse_easy450/hf runs/exp/rl_1e4_sparse_easy_lr1e-5 100 1e-5   (run with --eval.every 25)
SFT=$1; OUT=$2; STEPS=$3; LR=$4
D=${DATA:-runs/easy}
OMP_NUM_THREADS=1 .venv/bin/python -m torch.distributed.run --nproc_per_node 2 train_rl.py --model.path "$SFT" \
  --data.train "${TRAIN:-$D/train.jsonl}" --data.test $D/test.jsonl --data.frames 32 --eval.every 10 \
  --eval.max_examples 100 --eval.max_new_tokens 64 --parallel.sp 2 --run.tensorboard false --optim.steps "$STEPS" \
  --optim.batch_size 8 --rollout.n 8 --optim.lr "$LR" --rollout.max_new_tokens 64 --rollout.temperature 1.0 \
  --run.out "$OUT" $EXTRA > "$OUT.log" 2>&1 || exit 1
bash studies/eval_ablation.sh "$OUT/hf" $D/test.jsonl "$OUT"
