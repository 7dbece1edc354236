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

# --- event scatter (evsim.kernels)
CSR_GROUP = 64
"""Events that the CSR kernel adds in one pass at most when consecutive events reach the same
contiguous row range (a dense linear layer): with the grouping the dense linear readout ran 2.3x
faster (commit 97acae6)."""

ROWS_OVER_TAPS_MAX_EMPTY = 0.5
"""A conv is scattered by whole kernel rows unless at least this fraction of its (ci, ky, kx) taps is
entirely zero; then tap by tap, skipping the empty ones. Not tuned by a measurement of its own: rows add
every tap of a row (empty or not) in one vector pass, taps pay per tap, and the half-way point is where
the two do the same number of additions."""

# --- layout of the compiled network and the state (evsim.compiler, evsim.program, evsim.memory)
CHANNEL_MAJOR_WEIGHT_BYTES = 1 << 20
"""A population whose events feed a conv with more weight bytes than this emits them channel by channel,
so each input channel's weights are read once per step while hot in cache (about half a core's 2 MiB L2
on the machines measured; bench/ case 3, ResNet-19's 128 -> 128 layer)."""

SAMPLE_STATE_CACHE_BYTES = 1 << 20
"""A thread takes its samples one at a time through the timesteps when a sample's state is at most this
(it stays in cache from step to step), else all together layer by layer (each layer's weights serve all
of them). Measured with the fused driver, float32: the shipped ResNet-8 (0.75 MiB of state per sample)
ran about 5 % faster one at a time; ResNet-19 width 128 (19 MiB) 3-17 % faster layer by layer."""

ALIGN_BYTES = 64
"""Every array the kernels stream through starts on a cache line (one AVX-512 vector): a vector that
straddles two lines costs two accesses, and which arrays straddled varied from one process to the next
(measured: the conv kernel at 16 or at 25 G additions/s)."""

HUGE_PAGE_BYTES = 2 << 20
"""Transparent huge pages for the weight buffer and the engine state: the scatter ran at 10.4 or 14.3 G
additions/s depending on page placement with 4 KiB pages, consistently at the fast end with 2 MiB pages
(commit e17d358)."""

HUGE_PAGE_MIN_BYTES = 256 << 10
"""Arrays smaller than this gain nothing worth a 2 MiB mapping and are allocated normally."""
