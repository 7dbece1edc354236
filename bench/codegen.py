"""What code evsim's kernels become on each x86-64 CPU it picks a path for, read from the assembly.

    python bench/codegen.py [--targets znver4 sapphirerapids ...] [--out bench/CODEGEN.md]

The engine chooses its vector code when Numba compiles the kernels, from the CPU it compiles for
(evsim.simd: ``_target_has``, ``_target_block``). Numba compiles for another CPU when
``NUMBA_CPU_NAME`` and ``NUMBA_CPU_FEATURES`` name it (the name alone keeps the host's features), so
the code of a CPU this machine is not can still be generated and read.
For each target, a fresh Python (its own kernel cache, so nothing is loaded from an earlier compile)
compiles the float32 engine on a shipped model, runs two samples, and reports from the assembly of the
two hot kernels:

* the spike queue (``kernels.fire``, :func:`evsim.simd.queue16`): which compress instructions it holds, and
  whether any writes memory directly (``vpcompressd`` with a memory destination is microcoded on Zen 4);
* the conv scatter (``projections.conv_rows``): the width of its vector instructions, and how many vector
  registers it spills to the stack and reloads (a block of accumulators that does not fit the register
  file spills on every event).

It also records the choices evsim made for that target (compress or lane-by-lane stores, chunks held
per kernel row). The child runs the code it compiled (evsim's start-up probe and the two samples), so a
target using an instruction this machine lacks ends in an error row instead (SIGILL), not a wrong one.
Nothing here is timed: the code is read, not measured.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import llvmlite.binding as ll

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ["znver4", "sapphirerapids", "icelake-server", "skylake-avx512", "znver3", "haswell"]
DESCRIBE = {"znver4": "AMD Zen 4 (AVX-512)", "sapphirerapids": "Intel Sapphire Rapids (AVX-512)",
            "icelake-server": "Intel Ice Lake-SP (AVX-512)", "skylake-avx512": "Intel Skylake-SP / Cascade Lake (AVX-512, no VBMI2)",
            "znver3": "AMD Zen 3 (AVX2)", "haswell": "Intel Haswell (AVX2)"}

# Numba compiles for NUMBA_CPU_NAME with the *host's* features unless NUMBA_CPU_FEATURES names them too, so
# each target comes with its ISA extensions (LLVM's definitions of these CPUs, the ones that matter here)
_BASE = "+sse4.2,+popcnt,+avx,+avx2,+fma,+bmi,+bmi2,+f16c,+lzcnt,+movbe"
_SKX = _BASE + ",+avx512f,+avx512bw,+avx512cd,+avx512dq,+avx512vl"
_ICX = _SKX + ",+avx512vbmi,+avx512vbmi2,+avx512vnni,+avx512bitalg,+avx512vpopcntdq,+avx512ifma,+gfni,+vaes,+vpclmulqdq"
FEATURES = {"znver4": _ICX + ",+avx512bf16", "sapphirerapids": _ICX + ",+avx512bf16,+avx512fp16,+avxvnni",
            "icelake-server": _ICX, "skylake-avx512": _SKX, "znver3": _BASE, "haswell": _BASE}

CHILD = r'''
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import evsim
from evsim import kernels, simd
from evsim.intrinsics import SELECTED
from evsim.projections import conv_rows
net = evsim.compile_network(evsim.read_network(sys.argv[2]), dtype="float32")
x = np.stack([np.load(p) for p in sys.argv[3:5]])
evsim.simulate(net, x)
out = {"intrinsics": SELECTED, "compress": ("bytes and dwords" if simd._target_has("avx512f", "avx512vl", "avx512vbmi2")
                                            else "dwords" if simd._target_has("avx512f", "avx512vl") else "none"),
       "block_chunks": simd._target_block(),
       "fire": kernels.fire.inspect_asm(kernels.fire.signatures[0]),
       "conv_rows": conv_rows.conv_rows.inspect_asm(conv_rows.conv_rows.signatures[0])}
print(json.dumps(out))
'''

_COMPRESS = re.compile(r"\tvpcompress([bdwq])\s+%[xyz]mm\d+,\s*([^\s{]+)")
_SPILL = re.compile(r"\tvmov\w*\s+%([yz])mm\d+,\s*-?\d*\(%rsp\)")
_RELOAD = re.compile(r"\tvmov\w*\s+-?\d*\(%rsp\),\s*%([yz])mm\d+")


def read_asm(fire: str, conv: str) -> dict:
    """Counts from the assembly text (AT&T syntax, as Numba prints it) of the two kernels."""
    comp = _COMPRESS.findall(fire)
    return {
        "compress_register": sorted({f"vpcompress{k}" for k, dst in comp if dst.startswith("%")}),
        "compress_memory": sum(1 for _, dst in comp if not dst.startswith("%")),
        "conv_zmm": len(re.findall(r"%zmm\d+", conv)), "conv_ymm": len(re.findall(r"%ymm\d+", conv)),
        "conv_vector_spills": len(_SPILL.findall(conv)), "conv_vector_reloads": len(_RELOAD.findall(conv)),
        "fire_zmm": len(re.findall(r"%zmm\d+", fire)), "fire_ymm": len(re.findall(r"%ymm\d+", fire)),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", nargs="+", default=TARGETS)
    ap.add_argument("--model", default=str(ROOT / "models" / "fmnist-resnet8-ternary"))
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    model = Path(a.model)
    samples = sorted((model / "samples").glob("sample*.npy"))[:2]
    rows = []
    for target in a.targets:
        with tempfile.TemporaryDirectory() as cache:
            env = dict(os.environ, NUMBA_CPU_NAME=target, EVSIM_CACHE_DIR=cache, OPENBLAS_NUM_THREADS="1")
            if target in FEATURES:
                env["NUMBA_CPU_FEATURES"] = FEATURES[target]
            p = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), str(model / "folded.h5"), *map(str, samples)],
                               env=env, capture_output=True, text=True, timeout=1800)
        if p.returncode != 0:
            # e.g. -4 (SIGILL): the code compiled for that CPU uses an instruction this machine lacks
            why = (p.stderr.strip().splitlines() or [f"exit status {p.returncode}"])[-1]
            rows.append({"target": target, "error": f"did not run here ({why})"})
            print(f"{target}: {rows[-1]['error']}", file=sys.stderr)
            continue
        d = json.loads(p.stdout.strip().splitlines()[-1])
        row = {"target": target, "intrinsics": d["intrinsics"], "compress": d["compress"],
               "block_chunks": d["block_chunks"], **read_asm(d["fire"], d["conv_rows"])}
        rows.append(row)
        print(f"{target}: {row}", file=sys.stderr)
    lines = ["| target (NUMBA_CPU_NAME) | CPU | vector code | queue: compress in a register | queue: compress to memory "
             "| conv: chunks held per row | conv: zmm / ymm operands | conv: vector spills / reloads |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['target']} | {DESCRIBE.get(r['target'], '-')} | {r['error']} | | | | | |")
            continue
        lines.append(f"| {r['target']} | {DESCRIBE.get(r['target'], '-')} | {r['intrinsics']}, compress: {r['compress']} | "
                     f"{', '.join(r['compress_register']) or 'none'} | {r['compress_memory']} | {r['block_chunks']} | "
                     f"{r['conv_zmm']} / {r['conv_ymm']} | {r['conv_vector_spills']} / {r['conv_vector_reloads']} |")
    head = ["# The engine's code on each CPU it picks a path for", "",
            f"`python bench/codegen.py` on {datetime.date.today().isoformat()}, generated on this machine "
            f"(host CPU: LLVM {ll.get_host_cpu_name()}) for each target with `NUMBA_CPU_NAME` and its "
            "`NUMBA_CPU_FEATURES`, a fresh kernel cache each; the float32 engine compiled on the shipped "
            "ResNet-8 and run on two of its samples (evsim's start-up probe checks the vector code against the "
            "plain loops first: `ir` means they agreed). Read from the assembly, not timed: only this machine's "
            "own CPU was timed (bench/RESULTS.md). Spills and reloads are counted over the whole conv "
            "kernel (its set-up and rarely taken paths included), as moves of a vector register to or from "
            "the stack.", ""]
    text = "\n".join(head + lines)
    print(text)
    if a.out:
        a.out.write_text(json.dumps(rows, indent=1) if a.out.suffix == ".json" else text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
