#!/bin/bash
# After the temperature study: the shuffled-reward controls at 0.7, then the demo on the new models/base.
cd /work/main
while pgrep -f runs/r7/temp.sh > /dev/null; do sleep 20; done
PY=.venv/bin/python
TR=".venv/bin/torchrun --nproc_per_node 2"
R=runs/r7
T=runs/r5/test1k/test.jsonl
export OMP_NUM_THREADS=1
summ() { python3 -c "import json;t=json.load(open('$1'));print(round(100*t['overall']['accuracy'],1), 'fmt', round(100*t['overall']['format_accuracy'],1), {k[:4]:round(100*v['accuracy'],1) for k,v in t['categories'].items()})"; }
for s in 0 1; do
  out=$R/ctl_t0.7_s$s
  [ -f $out/hf/config.json ] || $TR train_rl.py --model.path runs/r6/sft500_s$s/hf --data.train $R/curated-t0.7_s$s.jsonl --data.frames 32 --parallel.sp 2 --run.tensorboard false --optim.steps 300 --optim.batch_size 8 --rollout.n 8 --optim.lr 1e-4 --rollout.max_new_tokens 152 --rollout.temperature 0.7 --algo.kl_coef 0.05 --data.test $T --eval.every 60 --eval.max_examples 300 --eval.max_new_tokens 152 --run.out $out --run.seed $s --algo.shuffle_rewards true > $out.log 2>&1
  $PY evaluate.py --model $out/hf --data $T --frames 32 --max-new-tokens 152 --batch-size 16 --out $R/eval-ctl_t0.7_s$s.predictions.jsonl --json $R/eval-ctl_t0.7_s$s.json > $R/eval-ctl_t0.7_s$s.log 2>&1
  echo "$(date +%T) eval ctl_t0.7_s$s: $(summ $R/eval-ctl_t0.7_s$s.json)"
done
echo "$(date +%T) demo easy start"
$PY demo.py --out runs/r7/demo_easy > runs/r7/demo_easy.out 2>&1
echo "$(date +%T) demo easy done"
$PY demo.py --benchmark reasoning --out runs/r7/demo_reason > runs/r7/demo_reason.out 2>&1
echo "$(date +%T) demo reasoning done"
