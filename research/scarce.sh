#!/bin/bash
# SFT on k worked answers for the full 1000 steps (many passes) from runs/lbase/fresh4.
cd /work/main
PY=.venv/bin/python
TR=".venv/bin/torchrun --nproc_per_node 2"
R=runs/r7
T=runs/r5/test1k/test.jsonl
export OMP_NUM_THREADS=1
summ() { python3 -c "import json;t=json.load(open('$1'));print(round(100*t['overall']['accuracy'],1), 'fmt', round(100*t['overall']['format_accuracy'],1), {k[:4]:round(100*v['accuracy'],1) for k,v in t['categories'].items()})"; }
ev() { local f=${3:-32}
  [ -f $R/eval-$2.json ] || $PY evaluate.py --model $1 --data $T --frames $f --max-new-tokens 152 --batch-size 16 --out $R/eval-$2.predictions.jsonl --json $R/eval-$2.json $4 > $R/eval-$2.log 2>&1
  echo "$(date +%T) eval $2: $(summ $R/eval-$2.json)"; }
k=$1; steps=${2:-1000}; seed=${3:-0}
head -n $k runs/r4_s0/data/train_sft_scan.jsonl > $R/sft_k$k.jsonl
out=$R/sftk${k}x${steps}_s$seed
[ -f $out/hf/config.json ] || $TR train_sft.py --model.path runs/lbase/fresh4 --data.train $R/sft_k$k.jsonl --data.video_dir runs/r4_s0/data --data.frames 32 --data.frames_mix 32,64 --parallel.sp 2 --run.tensorboard false --optim.steps $steps --optim.batch_size 16 --optim.micro_batch_size 16 --optim.lr 1e-3 --optim.warmup_steps 10 --data.frame_cache_mb 1024 --run.out $out --run.seed $seed > $out.log 2>&1
echo "$(date +%T) sft k=$k steps=$steps done"
ev $out/hf sftk${k}x${steps}_s$seed
