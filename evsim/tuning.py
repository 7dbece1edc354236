"""Machine-calibrated constants, in one place, each with the measurement that set it.

They change speed only, never results: every value below gives the same
spikes, outputs and counts (the tests run the engine at other values too).
Measured on the development machine (2 vCPU, AVX-512) unless said otherwise.
"""

# --- vector building blocks (evsim.simd, evsim.simd_plain)
LANES = 16
"""Neurons queued per vector compress: 16 int32 indices fill one 64-byte AVX-512 register."""

ROWS = 3
"""Synaptic runs (kernel rows) that ``add_runs`` holds at once: a 3x3 kernel's three rows."""

BLOCK_WIDE = 6
"""64-byte chunks per run held in registers with 32 vector registers (AVX-512): ROWS x 6 = 18
accumulators plus weights fit; larger blocks spilled."""

BLOCK_NARROW = 2
"""The same with 16 registers of 32 bytes (AVX2 and older): ROWS x 2 x 2 = 12 registers. Code generated
for AVX2 (NUMBA_CPU_NAME=haswell) with blocks of 6 spilled 18 accumulators and ran the 16-channel
scatter at a third of the AVX-512 speed; with 2 it ran at 20-27 G additions/s."""
