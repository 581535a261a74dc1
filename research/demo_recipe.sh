#!/bin/bash
# Study: a GRPO recipe that fits the 20-minute demo on the reasoning tier. Run from the repository root.
# research/demo_recipe.sh OUT  -- the demo's data and 500-step SFT (seed 0), then one GRPO run per line below,
# each evaluated on the 500 held-out questions every 50 steps (eval/accuracy in OUT/<run>/metrics.jsonl).
set -e
OUT=$1; PY=.venv/bin/python; export OMP_NUM_THREADS=1
TR="$PY -m torch.distributed.run --nproc_per_node 2"
[ -f $OUT/data/test.jsonl ] || $PY -m minirl.synth --out $OUT/data --train 9000 --test 500 --frames 128 --size 56 \
    --per-video 4 --no-timestamps --reasoning --seen-at 32
$PY -c "import demo, pathlib; demo.split_train(pathlib.Path('$OUT/data'))"
[ -f $OUT/sft/hf/config.json ] || $TR train_sft.py --model.path models/base --data.train $OUT/data/train_sft.jsonl \
    --data.frames 32 --data.frames_mix 32,64 --parallel.sp 2 --optim.steps 500 --optim.batch_size 16 \
    --optim.micro_batch_size 16 --optim.lr 1e-3 --optim.warmup_steps 10 --run.out $OUT/sft --run.seed 0 \
    --run.tensorboard false --data.frame_cache_mb 512
EV="$PY evaluate.py --model $OUT/sft/hf --data $OUT/data/train_rl.jsonl --frames 32 --n 8 --temperature 0.7 \
    --max-new-tokens 152 --batch-size 32"
[ -f $OUT/curated400.jsonl ] || OMP_NUM_THREADS=2 $EV --limit 400 --out $OUT/cur400.jsonl --curate $OUT/curated400.jsonl
[ -f $OUT/curated600a.jsonl ] || OMP_NUM_THREADS=2 $EV --limit 600 --out $OUT/cur600a.jsonl \
    --curate $OUT/curated600a.jsonl --curate-ablation
rl() {  # rl NAME CURATED STEPS LR KL MICRO
  [ -f $OUT/$1/hf/config.json ] || $TR train_rl.py --model.path $OUT/sft/hf --data.train $OUT/$2 --data.frames 32 \
    --data.test $OUT/data/test.jsonl --eval.every 50 --eval.max_examples 500 --eval.max_new_tokens 152 \
    --eval.batch_size 32 --parallel.sp 2 --optim.steps $3 --optim.batch_size 8 --rollout.n 8 --optim.lr $4 \
    --algo.kl_coef $5 --optim.micro_batch_size $6 --rollout.max_new_tokens 152 --rollout.temperature 0.7 \
    --run.out $OUT/$1 --run.seed 0 --run.tensorboard false > $OUT/$1.log 2>&1
}
rl rl1 curated400.jsonl 120 1e-4 0.05 8     # (this run evaluated every 40 steps)
rl rl2 curated400.jsonl 150 2e-4 0.05 64
rl rl3 curated600a.jsonl 150 1e-4 0.05 64
rl rl4 curated600a.jsonl 200 1e-4 0 64
rl rl5 curated600a.jsonl 150 1e-4 0.2 64
grep -o '"step": [0-9]*\|eval/accuracy": [0-9.]*' $OUT/rl*/metrics.jsonl | grep -B1 eval
