#!/bin/bash
cd /work/main
PY=.venv/bin/python
P=runs/r7/probe
export OMP_NUM_THREADS=1
acc() { $PY evaluate.py --model $1 --data $P/test.jsonl --frames 8 --max-new-tokens 64 --batch-size 20 --out $P/pred-$2.jsonl --json $P/eval-$2.json > $P/eval-$2.log 2>&1; python3 -c "import json;t=json.load(open('$P/eval-$2.json'));print('$2', t['overall']['accuracy'], t['overall']['format_accuracy'])"; }
K=$1; LR=$2; STEPS=$3; TAG=$4; shift 4
s=$(date +%s)
$PY train_rl.py --model.path $P/sft$K/hf --data.train $P/rl.jsonl --data.frames 8 --optim.batch_size 8 --rollout.n 8 --rollout.max_new_tokens 32 --optim.steps $STEPS --optim.lr $LR --run.out $P/rl-$TAG --run.tensorboard false "$@" > $P/rl-$TAG.log 2>&1 || tail -5 $P/rl-$TAG.log
echo "rl $TAG: $(( $(date +%s) - s )) s"
acc $P/rl-$TAG/hf rl-$TAG
