#!/usr/bin/env bash
# What post-training quantisation costs each shipped model, on all 10 000 Fashion-MNIST test images:
# float32 beside weight bits 2..16 with 16-bit membranes, and narrower membranes at 4 and 8 bits.
# Tables: models/quantization/<model>-float.json, <model>-bits.{csv,md}, <model>-membranes.{csv,md}.
# Usage: bash models/quantization/run.sh   (about 15 min on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/../.."
out=models/quantization
for m in fmnist-resnet8-ternary fmnist-resnet8-ternary-e4 fmnist-resnet8-ternary-sparse; do
    w=models/$m/folded.h5
    evsim eval -w "$w" -d fashion-mnist --json --no-progress > "$out/$m-float.json"
    evsim sweep -w "$w" -d fashion-mnist --grid weight_bits=2,4,6,8,12,16 --grid membrane_bits=16 \
        --energy-model 45nm-int32 --no-progress -o "$out/$m-bits" --force > /dev/null
    evsim sweep -w "$w" -d fashion-mnist --grid weight_bits=4,8 --grid membrane_bits=8,10,12 \
        --energy-model 45nm-int32 --no-progress -o "$out/$m-membranes" --force > /dev/null
done
