"""The projection table of the fused driver: one int64 row per projection (``Program.desc``).

The columns every kind shares come first; ``D_O1 .. D_O7``, ``D_N`` and ``D_FLAG`` mean what the
projection's kind says: each kind's module writes them (``pack``) and reads them back
(``scatter_packed``) in the same file, so writer and reader cannot drift apart.
"""

D_MODE, D_SRC, D_DST, D_C_IN, D_H_IN, D_W_IN, D_C_OUT, D_H_OUT, D_W_OUT, D_KH, D_KW, D_FLAG = range(12)
D_O1, D_O2, D_O3, D_O4, D_O5, D_O6, D_O7, D_N = range(12, 20)
DESC_WIDTH = 20
