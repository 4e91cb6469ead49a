#!/usr/bin/env bash
# The GPU checks, for a session that is lent an accelerator (the `device` tool of the workplace:
# ask its status first; a run costs minutes of a small budget). One short run, from the
# repository root on the device machine, whose python3 has a CUDA torch:
#   1. tests/test_gpu.py: the GPU path (pinned batches, bf16, channels-last, compile) trains;
#   2. benchmarks/gpu_step.py: s/step of a VOC-shaped DeepLabv2-R101 step, fp32 eager against
#      bf16 + channels-last + torch.compile, and the GPU memory peak.
# Both run even if the first fails; the exit code is the worst of the two.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python3 -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print(torch.cuda.get_device_name())' || exit 1
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py
tests=$?
timeout 300 python3 benchmarks/gpu_step.py --steps 10
bench=$?
exit $(( tests > bench ? tests : bench ))
