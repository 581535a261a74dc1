#!/bin/bash
# GRPO at temperature 0.7 (curation at 0.7 too) on the short SFT models of runs/r6 (500 steps on fresh4).
cd /work/main
PY=.venv/bin/python
TR=".venv/bin/torchrun --nproc_per_node 2"
R=runs/r7
T=runs/r5/test1k/test.jsonl
D=runs/r4_s0/data
TEMP=${TEMP:-0.7}
export OMP_NUM_THREADS=1
summ() { python3 -c "import json;t=json.load(open('$1'));print(round(100*t['overall']['accuracy'],1), 'fmt', round(100*t['overall']['format_accuracy'],1), {k[:4]:round(100*v['accuracy'],1) for k,v in t['categories'].items()})"; }
ev() { local f=${3:-32}
  [ -f $R/eval-$2.json ] || $PY evaluate.py --model $1 --data $T --frames $f --max-new-tokens 152 --batch-size 16 --out $R/eval-$2.predictions.jsonl --json $R/eval-$2.json $4 > $R/eval-$2.log 2>&1
  echo "$(date +%T) eval $2: $(summ $R/eval-$2.json)"; }
curate() {
  [ -f $R/curated-$2.jsonl ] || $PY evaluate.py --model $1 --data $D/train_rl.jsonl --frames 32 --n 8 --temperature $TEMP --max-new-tokens 152 --batch-size 16 --limit 1200 --out $R/curate-$2.predictions.jsonl --curate $R/curated-$2.jsonl --curate-ablation --headroom $R/curate-headroom-$2.json > $R/curate-$2.log 2>&1
  echo "$(date +%T) curated $2: $(wc -l < $R/curated-$2.jsonl)"; }
rl() {
  local sft=$1 data=$2 out=$3 seed=$4; shift 4
  [ -f $out/hf/config.json ] || $TR train_rl.py --model.path $sft --data.train $data --data.frames 32 --parallel.sp 2 --run.tensorboard false --optim.steps 300 --optim.batch_size 8 --rollout.n 8 --optim.lr 1e-4 --rollout.max_new_tokens 152 --rollout.temperature $TEMP --algo.kl_coef 0.05 --data.test $T --eval.every 60 --eval.max_examples 300 --eval.max_new_tokens 152 --run.out $out --run.seed $seed "$@" > $out.log 2>&1
  echo "$(date +%T) rl done $out"; }
for s in ${SEEDS:-1 0}; do
  curate runs/r6/sft500_s$s/hf t${TEMP}_s$s
  rl runs/r6/sft500_s$s/hf $R/curated-t${TEMP}_s$s.jsonl $R/rl_t${TEMP}_s$s $s
  ev $R/rl_t${TEMP}_s$s/hf rl_t${TEMP}_s$s
done
echo "$(date +%T) all done"
