#!/usr/bin/env bash
# Use: bash bench/gpu_smoke.sh            (on a machine with a CUDA GPU; about 2-4 minutes)
#
# Checks the CUDA path of the training recipe: bf16 LoRA and 4-bit NF4 QLoRA, 20 steps each, on a
# small Llama built from a config (random weights, ~60M parameters, no download), run through the
# same command the daemon uses. Prints tokens/s and peak GPU memory of each run, and fails if a
# run fails or its loss is not finite.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
export HYPERLEX_HOME="$WORK/home"

"$PYTHON" - "$WORK" <<'PY'
import shutil, sys
from pathlib import Path
import torch
from transformers import AutoConfig, AutoModelForCausalLM
from engine.testing.tiny import build_tiny_model

if not torch.cuda.is_available():
    sys.exit("gpu_smoke: torch sees no CUDA device")
work = Path(sys.argv[1])
tokenizer_dir = build_tiny_model("llama")
model_dir = work / "small-llama"
config = AutoConfig.for_model("llama", vocab_size=512, hidden_size=768, intermediate_size=2048,
                              num_hidden_layers=8, num_attention_heads=12, num_key_value_heads=4,
                              max_position_embeddings=2048, tie_word_embeddings=True)
torch.manual_seed(0)
AutoModelForCausalLM.from_config(config).save_pretrained(model_dir)
for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
             "chat_template.jinja"):
    if (tokenizer_dir / name).exists():
        shutil.copy(tokenizer_dir / name, model_dir / name)
for precision in ("bf16", "int4"):
    (work / f"smoke-{precision}.toml").write_text(f'''extends = "tiny-test"
name = "gpu-smoke-{precision}"
[model]
base = "{model_dir}"
[device]
device = "cuda"
precision = "{precision}"
[training]
max_steps = 20
batch_size = 8
max_seq_len = 512
eval_every = 0
checkpoint_every = 10
''')
print(f"gpu_smoke: {torch.cuda.get_device_name(0)}, model {sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())/1e6:.0f}M parameters")
PY

status=0
for precision in bf16 int4; do
  start=$(date +%s)
  if "$PYTHON" -m engine.training.run --profile "$WORK/smoke-$precision.toml" \
      --run-dir "$WORK/run-$precision" --progress-jsonl > "$WORK/$precision.jsonl" 2> "$WORK/$precision.err"; then
    "$PYTHON" - "$WORK/$precision.jsonl" "$WORK/run-$precision/run_card.json" "$precision" "$(( $(date +%s) - start ))" <<'PY'
import json, math, statistics, sys
events = [json.loads(line) for line in open(sys.argv[1])]
steps = [e for e in events if e["event"] == "step"]
card = json.load(open(sys.argv[2]))["metrics"]
speed = statistics.median(e["tokens_per_s"] for e in steps[2:] or steps)
final = steps[-1]["loss"]
print(f"gpu_smoke {sys.argv[3]:5s}: {len(steps)} steps, {speed:,.0f} tokens/s (median), "
      f"peak GPU memory {card.get('peak_cuda_mb')} MiB, final loss {final:.4f}, "
      f"{sys.argv[4]} s wall")
sys.exit(0 if math.isfinite(final) and len(steps) == 20 else 1)
PY
  else
    echo "gpu_smoke $precision: FAILED"; tail -20 "$WORK/$precision.err"; status=1
  fi
done
exit $status
