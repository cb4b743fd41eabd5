"""Would Winograd convolution make deep_cnn's 3x3 layers faster here? A measured bound.

    python bench/winograd.py                 # F(2x2,3x3) and F(4x4,3x3), batch 100, 2 threads
    python bench/winograd.py --quick --json winograd.json

Winograd's minimal filtering computes an m x m block of a 3x3 convolution's output from an
(m+2) x (m+2) block of input with (m+2)^2 multiplications per (filter, channel) pair instead
of 9 m^2: 2.25x fewer for F(2x2,3x3), 4x fewer for F(4x4,3x3). Batched over tiles, the
multiplications are (m+2)^2 independent GEMMs, one per point xi of the transformed tile:

    M[xi] (FN, T) = U[xi] (FN, C) @ V[xi] (C, T)       T = tiles in the batch
    U = G g G^T (the filters, transformed), V = B^T d B (the input tiles), out tile = A^T M A

Their inner dimension is the channel count C (16 to 64 here) where im2col's is 9 C, and
OpenBLAS (the only GEMM this project uses) runs short inner dimensions far below its peak.
This script builds the Winograd convolution with NumPy transforms and native GEMMs
(``affine_forward``), validates it against ``conv2d_forward``, then times in the same run:

- im2col: ``conv2d_forward`` with ``set_conv_algorithm("im2col")`` (im2col + one GEMM per
  image);
- gemms: the (m+2)^2 transform-domain GEMMs alone, i.e. Winograd with free transforms;
- bound: gemms + the transforms' least memory traffic (read x, write V, read M, write out)
  at this run's copy bandwidth, i.e. Winograd with transforms that stream through memory;
- native: ``conv2d_forward`` with ``set_conv_algorithm("winograd")``, the F(4x4, 3x3)
  kernel fastlayers runs (csrc/winograd.cpp), which keeps a chunk of images' transforms in
  cache and so may beat the streaming bound.

gemms/im2col is the floor of any Winograd at that layer even with transforms that cost
nothing; it is what this script was written to find out before csrc/winograd.cpp existed.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from fastlayers import backend
from fastlayers.backend import _native

from machine import OtherLoad

# Lavin & Gray's matrices. F(2x2,3x3): points 0, 1, -1, inf.
B2 = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64).T
G2 = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float64)
A2 = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64).T
# F(4x4,3x3): points 0, 1, -1, 2, -2, inf.
B4 = np.array(
    [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
     [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], np.float64).T
G4 = np.array(
    [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
     [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], np.float64)
A4 = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]], np.float64).T
TRANSFORMS = {2: (B2, G2, A2), 4: (B4, G4, A4)}

# deep_cnn's 3x3 stride-1 convolutions after the first (bench/shapes.py): name, C, H, FN, pad.
LAYERS = [
    ("deep_cnn/conv2", 16, 28, 16, 1),
    ("deep_cnn/conv3", 16, 14, 32, 1),
    ("deep_cnn/conv4", 32, 14, 32, 2),
    ("deep_cnn/conv5", 32, 8, 64, 1),
    ("deep_cnn/conv6", 64, 8, 64, 1),
]


class Winograd:
    """F(m x m, 3x3) for one layer: transforms in NumPy, the GEMMs through the native seam."""

    def __init__(self, m: int, x: np.ndarray, W: np.ndarray, pad: int):
        B, G, A = TRANSFORMS[m]
        self.m, self.a, self.A = m, m + 2, A.astype(np.float32)
        N, C, H, _ = x.shape
        FN = W.shape[0]
        self.OH = H + 2 * pad - 2
        self.tiles = -(-self.OH // m)  # per side; the last tile may hang over the output
        span = self.tiles * m + 2
        xp = np.zeros((N, C, span, span), np.float32)
        xp[:, :, pad : pad + H, pad : pad + H] = x
        s = xp.strides
        d = np.lib.stride_tricks.as_strided(
            xp, (N, C, self.tiles, self.tiles, self.a, self.a), (s[0], s[1], m * s[2], m * s[3], s[2], s[3])
        )
        a2 = self.a * self.a
        # V (a*a, C, T), T ordered (n, tile row, tile column); U (a*a, FN, C)
        V = np.einsum("ip,nctupq,qj->ijcntu", B.T, d, B, optimize=True)
        self.V = np.ascontiguousarray(V.reshape(a2, C, -1), np.float32)
        U = np.einsum("ip,fcpq,jq->ijfc", G, W.astype(np.float64), G, optimize=True)
        self.U = np.ascontiguousarray(U.reshape(a2, FN, C), np.float32)
        self.M = np.empty((a2, FN, self.V.shape[2]), np.float32)
        self.zero = np.zeros(self.V.shape[2], np.float32)
        self.shape = (N, FN)

    def gemms(self) -> None:
        for k in range(self.U.shape[0]):
            _native.affine_forward(self.M[k], self.U[k], self.V[k], self.zero)

    def output(self, b: np.ndarray) -> np.ndarray:
        N, FN = self.shape
        t, a, m = self.tiles, self.a, self.m
        M = self.M.reshape(a, a, FN, N, t, t)
        Y = np.einsum("pi,pqfntu,qj->nftiuj", self.A, M, self.A, optimize=True)
        Y = Y.reshape(N, FN, t * m, t * m)[:, :, : self.OH, : self.OH]
        return Y + b[None, :, None, None]

    def traffic_bytes(self, x: np.ndarray, out: np.ndarray) -> int:
        return x.nbytes + self.V.nbytes + self.M.nbytes + out.nbytes


def best_ms(fn, repeats: int, inner: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        best = min(best, (time.perf_counter() - start) / inner)
    return 1e3 * best


def bandwidth_gbs(repeats: int) -> float:
    src = np.ones(32 << 20, np.float32)
    dst = np.empty_like(src)
    ms = best_ms(lambda: _native.identity_forward(dst, src), repeats, 1)
    return 2 * src.nbytes / (ms / 1e3) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--tiles", default="2,4", help="output tile sizes m of F(m x m, 3x3): 2 and/or 4")
    ap.add_argument("--repeats", type=int, default=7, help="timed repeats per cell; the best is kept")
    ap.add_argument("--quick", action="store_true", help="batch 4, 2 repeats: only proves the script runs")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    if args.quick:
        args.batch, args.repeats = 4, 2
    tiles = [int(v) for v in args.tiles.split(",")]
    rng = np.random.default_rng(0)

    print("validation: Winograd (NumPy transforms, native GEMMs) against native im2col conv2d_forward, float32")
    cases = []
    for name, C, H, FN, pad in LAYERS:
        x = rng.standard_normal((args.batch, C, H, H), dtype=np.float32)
        W = (rng.standard_normal((FN, C, 3, 3)) / np.sqrt(9 * C)).astype(np.float32)
        b = rng.standard_normal(FN).astype(np.float32)
        direct = np.empty((args.batch, FN, H + 2 * pad - 2, H + 2 * pad - 2), np.float32)
        with backend.conv_algorithm("im2col"):
            _native.conv2d_forward(direct, x, W, b, 1, pad)
        for m in tiles:
            wino = Winograd(m, x, W, pad)
            wino.gemms()
            err = float(np.abs(wino.output(b) - direct).max() / np.abs(direct).max())
            # Each output sums 9C products; the transforms add a few roundings of values up to
            # max|B|, max|G|, max|A| times larger (5, 1/4, 8 for F(4x4)): allow that many ulps.
            scale = 1.0 if m == 2 else 40.0
            limit = scale * 9 * C * np.finfo(np.float32).eps
            print(f"  {name:16s} F({m}x{m},3x3)  max error {err:.1e} of max|out|  (limit {limit:.1e})")
            if not err <= limit:
                raise SystemExit(f"validation failed: {name} F({m}x{m},3x3)")
            cases.append((name, m, x, W, b, pad, direct, wino))

    with OtherLoad() as load:
        bw = bandwidth_gbs(args.repeats)
        rows = []
        for name, m, x, W, b, pad, direct, wino in cases:
            inner = 1 if args.quick else 3
            out = np.empty_like(direct)
            with backend.conv_algorithm("im2col"):
                d_ms = best_ms(lambda: _native.conv2d_forward(out, x, W, b, 1, pad), args.repeats, inner)
            with backend.conv_algorithm("winograd"):
                n_ms = best_ms(lambda: _native.conv2d_forward(out, x, W, b, 1, pad), args.repeats, inner)
            g_ms = best_ms(wino.gemms, args.repeats, inner)
            t_ms = wino.traffic_bytes(x, direct) / (bw * 1e9) * 1e3
            rows.append({"layer": name, "m": m, "im2col_ms": d_ms, "gemms_ms": g_ms, "traffic_ms": t_ms,
                         "bound_ms": g_ms + t_ms, "native_ms": n_ms, "gemms_over_im2col": g_ms / d_ms,
                         "bound_over_im2col": (g_ms + t_ms) / d_ms, "native_over_im2col": n_ms / d_ms})
    print(f"\nforward, batch {args.batch}, best of {args.repeats}; copy bandwidth {bw:.1f} GB/s in this run; "
          f"{load.summary()}")
    print(f"  {'layer':16s} {'F(m,3)':8s} {'im2col ms':>10s} {'gemms ms':>9s} {'traffic ms':>11s} "
          f"{'bound ms':>9s} {'native ms':>10s} {'gemms/im2col':>13s} {'bound/im2col':>13s} {'native/im2col':>14s}")
    for r in rows:
        native = f"{r['native_ms']:10.3f}" if r["m"] == 4 else f"{'':10s}"
        ratio = f"{r['native_over_im2col']:13.2f}x" if r["m"] == 4 else ""
        print(f"  {r['layer']:16s} F({r['m']}x{r['m']})   {r['im2col_ms']:10.3f} {r['gemms_ms']:9.3f} "
              f"{r['traffic_ms']:11.3f} {r['bound_ms']:9.3f} {native} {r['gemms_over_im2col']:12.2f}x "
              f"{r['bound_over_im2col']:12.2f}x {ratio}")
    for m in tiles:
        sel = [r for r in rows if r["m"] == m]
        d, g, bnd, nat = (sum(r[k] for r in sel) for k in ("im2col_ms", "gemms_ms", "bound_ms", "native_ms"))
        native = f"{nat:10.3f}" if m == 4 else f"{'':10s}"
        ratio = f"{nat / d:13.2f}x" if m == 4 else ""
        print(f"  {'all five':16s} F({m}x{m})   {d:10.3f} {g:9.3f} {'':11s} {bnd:9.3f} {native} {g / d:12.2f}x "
              f"{bnd / d:12.2f}x {ratio}")
    print("  (native: the F(4x4, 3x3) kernel fastlayers runs; F(2x2, 3x3) exists here only as the estimate)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"batch": args.batch, "bandwidth_gbs": bw, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
