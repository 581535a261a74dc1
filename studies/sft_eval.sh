#!/bin/bash
# CoT-SFT from a checkpoint on the demo's benchmark, then the held-out table with its video-ablation control.
#   bash studies/sft_eval.sh BASE OUT STEPS LR     (DATA=dir with test.jsonl, default runs/demo/data;
#                                                  TRAIN=jsonl, default the demo's SFT split; LIMIT=200; SEED=0;
#                                                  EXTRA='--key value ...' more train_sft.py options)
# The runs in README ("Why CoT-SFT stays at chance"), on the data `python demo.py` writes to runs/demo/data:
#   bash studies/sft_eval.sh studies/checkpoints/perception_gpu_d runs/exp/sft_d 150 1e-3
#   TRAIN=runs/demo/data/train.jsonl bash studies/sft_eval.sh studies/checkpoints/perception_gpu_d runs/exp/sft_d450 450 1e-3
#   python studies/text_answers.py runs/demo/data/train.jsonl runs/demo/data/train_textans.jsonl
#   TRAIN=runs/demo/data/train_textans.jsonl bash studies/sft_eval.sh studies/checkpoints/perception_gpu_d runs/exp/sft_d450_text 450 1e-3
#   python studies/text_answers.py runs/demo/data/train.jsonl runs/demo/data/train_captioncot.jsonl --caption-cot 32
#   TRAIN=runs/demo/data/train_captioncot.jsonl bash studies/sft_eval.sh studies/checkpoints/perception_gpu_d runs/exp/sft_d450_capcot 450 1e-3
BASE=$1; OUT=$2; STEPS=$3; LR=$4
D=${DATA:-runs/demo/data}
OMP_NUM_THREADS=1 .venv/bin/python -m torch.distributed.run --nproc_per_node 2 train_sft.py --model.path "$BASE" \
  --data.train "${TRAIN:-$D/train_sft.jsonl}" --data.frames 32 --parallel.sp 2 --run.tensorboard false \
  --optim.steps "$STEPS" --optim.batch_size 16 --optim.micro_batch_size 8 --optim.lr "$LR" --optim.warmup_steps 10 \
  --run.seed "${SEED:-0}" --run.out "$OUT" $EXTRA > "$OUT.log" 2>&1 || exit 1
bash studies/eval_ablation.sh "$OUT/hf" $D/test.jsonl "$OUT"
