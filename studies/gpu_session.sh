#!/bin/bash
# One device session (a single GPU): the CUDA tests, the rollout bench on the GPU, and the
# perception base continued on fresh videos at two learning rates side by side.
#   OUT=out/gpu bash studies/gpu_session.sh    # MINUTES (4) bounds each training run
# On the lent machine .whl/ holds decord and av wheels for its Python (README: "GPU").
set -u
OUT=${OUT:-out/gpu}
MINUTES=${MINUTES:-4}
PY=${PY:-python3}
mkdir -p "$OUT"
if [ "$PY" = python3 ] && ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
{ nvidia-smi -L; $PY -c "import torch, transformers, decord, av; print('torch', torch.__version__,
'transformers', transformers.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())"
  $PY -c "import flash_attn; print('flash_attn', flash_attn.__version__)"; } > "$OUT/test_cuda.log" 2>&1
{ timeout 240 $PY -m pytest tests/test_cuda.py -v -p no:cacheprovider -rs --durations=5
  [ "${ROLLOUT:-1}" = 1 ] && timeout 200 $PY bench.py rollout --n 8 1; } >> "$OUT/test_cuda.log" 2>&1 &
# each run: name lr batch sparse-fraction
RUNS=${RUNS:-"a 1e-3 32 0.6;b 3e-4 32 0.6"}
IFS=';' read -ra CFGS <<< "$RUNS"
for cfg in "${CFGS[@]}"; do
  set -- $cfg
  timeout "$(awk "BEGIN {print $MINUTES * 60 + 150}")" $PY studies/perception.py --init "${INIT:-models/base}" \
    --synth-dense --sparse-fraction "$4" --frames 8,16,32,64 --workers 6 --batch "$3" --lr "$2" --warmup 50 \
    --steps 100000 --minutes "$MINUTES" --eval-every 500 --test-videos "${TEST_VIDEOS:-200}" --save "/tmp/base_$1" \
    > "$OUT/perception_$1.log" 2>&1 &
done
wait
for cfg in "${CFGS[@]}"; do set -- $cfg; x=$1; [ -d "/tmp/base_$x" ] && tar -C /tmp -cf "$OUT/base_$x.tar" "base_$x"; done
ls -la "$OUT"
