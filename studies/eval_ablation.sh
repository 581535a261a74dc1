#!/bin/bash
# The held-out table of a checkpoint and its video-ablation control (every question gets another's video).
#   bash studies/eval_ablation.sh MODEL TEST.jsonl OUT     (LIMIT=200, NEW_TOKENS=64) -> OUT{,.ablated}.{pred.jsonl,eval.json,eval.log}
MODEL=$1; TEST=$2; OUT=$3
for ablation in "" --video-ablation; do
  OMP_NUM_THREADS=2 .venv/bin/python eval.py --model "$MODEL" --data "$TEST" --frames 32 --max-new-tokens "${NEW_TOKENS:-64}" \
    --batch-size 16 --limit "${LIMIT:-200}" $ablation --out "$OUT${ablation:+.ablated}.pred.jsonl" \
    --json "$OUT${ablation:+.ablated}.eval.json" > "$OUT${ablation:+.ablated}.eval.log" 2>&1
done
