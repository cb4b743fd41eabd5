"""Where a training step's time goes: per-layer forward and backward time, FLOP rate and
im2col workspace, accumulated over steps.

``Trainer(..., profile=True)`` profiles every step of ``fit`` and keeps the result in
``trainer.profile``; ``fastlayers profile --model ...`` does the same on random data. By
hand::

    prof = fastlayers.profile.Profile(model, loss, optimizer)
    for x, t in batches:
        prof.train_step(x, t)          # the same operations as Trainer.train_step, timed
    print(prof.table())

Each row is one unit of ``Sequential``'s execution plan (an Affine, Conv2d or BatchNorm run
together with the ReLU after it is one row, "0 Conv2d(1→30, 5x5)+ReLU"), then the loss and
the optimizer update (``zero_grad`` and ``step``). The rows' intervals lie inside the step's
and never overlap, so they sum to at most the step time; "other" is the rest (Python between
the units). Times are per-step means; steps of different batch sizes may be mixed.

Profiling costs nothing while it is off: the timing runner is put on the model only for the
duration of a profiled step, and the ordinary path reads no clock.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from . import backend
from .layers import Affine, Conv2d, Layer, Sequential, _Pool2d

__all__ = ["Profile", "Row", "scratch_bytes"]

_OPENMP = bool(backend.build_info()["openmp"])


# ----------------------------------------------------------------------------------------
# im2col workspace
# ----------------------------------------------------------------------------------------

# The native convolution's workspace rule, restated from csrc/conv2d.cpp (constants and
# decisions alike); tests/test_profile.py pins its results for worked shapes. Each thread
# that runs a piece of the convolution holds, per Scratch slot: 0, a tile of col (K, t) (in
# the backward also dcol, and for the conv+ReLU kernel a (FN, t) tile of masked dout); 1, the
# padded input rows one im2col/col2im task reads; 2 and 3, for the conv+ReLU+pool kernel, one
# image's convolution output (or gradient) and its masked pooled gradient; 4, the im2col of
# one image's gradient when dx is computed as a convolution.
_SCRATCH_BYTES = 1 << 20
_MAX_GROUPS = 8
_PARTIAL_BYTES = 32 << 20
_MIN_ELEMENTS_PER_THREAD = 1 << 14
_MIN_MACS_PER_THREAD = float(1 << 20)
_IMAGE_BLOCKS = 8


def _min_items(elements_per_item: int) -> int:
    return max(1, _MIN_ELEMENTS_PER_THREAD // max(1, elements_per_item))


def _min_items_macs(macs_per_item: float) -> int:
    m = _MIN_MACS_PER_THREAD / max(1.0, macs_per_item)
    return 1 << 50 if m >= 1e15 else max(1, int(m))


def _team(n: int, min_per_thread: int, threads: int) -> int:
    """How many threads a parallel_for(n, body, min_per_thread) that is not nested runs on:
    OpenMP's static schedule gives iterations to threads 0 .. min(n, threads) - 1."""
    return min(n, threads) if n >= 2 * min_per_thread else 1


def _native_conv_scratch(shape, FN, FH, FW, stride, pad, itemsize, threads, fused, dx, pooled_plane=0,
                         forward_im2col=True, backward_im2col=True, forward_registers=False) -> int:
    # fused: 0 (conv alone), 1 (conv + ReLU), 2 (conv + ReLU + max pooling, whose output
    # planes have pooled_plane pixels). forward_im2col=False: the forward runs the direct
    # path, whose buffers the caller counts; the pooled block's per-image output stays here,
    # unless the direct forward pools in its registers (forward_registers) and has none.
    # backward_im2col=False: another path runs the backward and the caller counts it.
    N, C, H, W = shape
    if N == 0:
        return 0
    OH, OW = (H + 2 * pad - FH) // stride + 1, (W + 2 * pad - FW) // stride + 1
    K, P = C * FH * FW, OH * OW
    direct = FH == 1 and FW == 1 and stride == 1 and pad == 0  # col is x itself

    # plan(): output pixels per tile, whole output rows where they fit.
    L = max(1, _SCRATCH_BYTES // itemsize // max(1, K + FN))
    if P <= L:
        tile = P
    elif OW <= L:
        rows = L // OW
        tiles = -(-OH // rows)
        tile = -(-OH // tiles) * OW
    else:
        tiles = -(-P // L)
        tile = -(-P // tiles)
    last = (-(-P // tile) - 1) * tile
    pieces = [(0, tile), (last, P - last)]  # every other tile is like the first

    Wp = W + 2 * pad

    def padded_rows(p0, t) -> int:
        if p0 % OW or t % OW:
            return 0
        nbytes = ((t // OW - 1) * stride + FH) * Wp * itemsize
        return nbytes if nbytes <= _SCRATCH_BYTES else 0

    # Largest request per thread and slot: the buffers are kept per thread and grow to it.
    slot0, slot1 = [0] * threads, [0] * threads

    def use(slot, team, nbytes):
        for j in range(team):
            slot[j] = max(slot[j], nbytes)

    # With the pooling fused, each thread that runs an image also holds its whole
    # convolution output (slot 2, forward) or the gradient routed back to it (backward).
    slot2, slot3, slot4 = [0] * threads, [0] * threads, [0] * threads
    image_bytes = FN * P * itemsize if fused >= 2 else 0
    masked_bytes = FN * pooled_plane * itemsize if fused >= 2 else 0  # backward: the pooled gradient, masked

    # forward: each image on one thread (im2col nested, so on that thread too), or a lone
    # image on the caller with im2col's channels spread over the team.
    col = 0 if direct or not forward_im2col else K * tile * itemsize
    if N == 1:
        use(slot0, 1, col)
        use(slot2, 1, image_bytes)
        if not direct and forward_im2col:
            for p0, t in pieces:
                use(slot1, _team(C, _min_items(FH * FW * t), threads), padded_rows(p0, t))
    else:
        team = _team(N, _min_items_macs(float(FN) * float(K) * float(P)), threads)
        use(slot0, team, col)
        use(slot2, team, 0 if forward_registers else image_bytes)
        if not direct and forward_im2col:
            use(slot1, team, max(padded_rows(p0, t) for p0, t in pieces))

    if not backward_im2col:
        return sum(slot0) + sum(slot1) + sum(slot2)

    # backward: G image groups each on one thread, or (G = 1) images in turn on the caller
    # with im2col over channels and col2im over blocks of channels spread over the team.
    work = ((0 if direct else K * tile) + (FN * tile if fused == 1 else 0)) * itemsize
    groups = max(1, min(min(N, _MAX_GROUPS), int(_PARTIAL_BYTES / float(FN * K * itemsize))))
    if groups == 1:
        use(slot0, 1, work)
        use(slot2, 1, image_bytes)
        use(slot3, 1, masked_bytes)
        blocks = min(C, _IMAGE_BLOCKS)
        for p0, t in pieces:
            if direct:
                continue
            use(slot1, _team(C, _min_items(FH * FW * t), threads), padded_rows(p0, t))
            if dx:
                macs = float(FN) * float(K) * float(t) * 2.0 / float(blocks)
                use(slot1, _team(blocks, _min_items_macs(macs), threads), padded_rows(p0, t))
    else:
        macs = float(FN * K) * float(P) * (2.0 if dx else 1.0) * float(N) / float(groups)
        team = _team(groups, _min_items_macs(macs), threads)
        use(slot0, team, work)
        use(slot2, team, image_bytes)
        use(slot3, team, masked_bytes)
        # dx as a convolution (transposed_filters): im2col of one image's gradient (slot 4),
        # through padded rows of that gradient (slot 1).
        K2 = FN * FH * FW
        if (dx and not direct and K > 0 and stride == 1 and FH == FW and pad <= FH - 1 and tile == P
                and K2 * H * W * itemsize <= _SCRATCH_BYTES):
            use(slot4, team, K2 * H * W * itemsize)
            rows = (H - 1 + FH) * (OW + 2 * (FH - 1 - pad)) * itemsize
            use(slot1, team, rows if rows <= _SCRATCH_BYTES else 0)
        if not direct:
            use(slot1, team, max(padded_rows(p0, t) for p0, t in pieces))
    return sum(slot0) + sum(slot1) + sum(slot2) + sum(slot3) + sum(slot4)


def scratch_bytes(layer: Layer, input_shape: Sequence[int], fused: int = 0, *, pool: Layer | None = None,
                  backend_name: str | None = None, threads: int | None = None) -> int:
    """Bytes of im2col workspace ``layer``'s forward and backward use for an input of
    ``input_shape``; 0 for layers that have none (everything but Conv2d). ``fused`` is how
    many layers after it its kernel runs too: 1 for the ReLU, 2 for ReLU and max pooling
    ``pool`` (the native fused block then also keeps one image's convolution output and
    its pooled gradient per thread).

    The NumPy oracle builds the whole batch's col, N·OH·OW·C·FH·FW elements. A float32
    convolution that runs Winograd (``backend.set_conv_algorithm``) counts that path's
    buffers instead, as the native code reports them: per thread, a padded channel-last
    plane and the transformed tiles of a chunk of images (with the pooling fused, one image's
    output too, or for 2x2 windows that pool from the tiles its pooled values and argmax); on
    the calling thread, the transformed filters, the dW partials of the chunks
    and, where the ReLU or pooling is fused, the whole batch's output gradient. The direct and
    sparse pooled paths likewise report their own buffers. For the im2col passes, the native
    kernel works in tiles of at most 1 MiB per thread (plus at most 1 MiB of padded input
    rows), on the threads its parallel loops actually use for this shape: the sum over
    those threads of the largest buffers the layer asks of them. The native buffers are
    kept per thread across calls, so a process holds the per-thread maximum over all
    convolutions, not the sum of the rows. The native backward's per-group dW partial
    sums are not im2col workspace and are not counted. ``backend_name`` and ``threads``
    default to the active backend and thread count.
    """
    if not isinstance(layer, Conv2d):
        return 0
    shape = tuple(int(d) for d in input_shape)
    if len(shape) != 4:
        raise ValueError(f"scratch_bytes: {layer._tag()} takes (N, C, H, W) input; got shape {shape}")
    name = backend.get_backend() if backend_name is None else backend_name
    itemsize = layer.dtype.itemsize
    (FH, FW), stride, pad = layer.kernel_size, layer.stride, layer.padding
    native = name == "native" and backend.coverage()["conv2d_forward"]
    if not native:
        N, C, H, W = shape
        _, OH, OW = layer.output_shape((C, H, W))
        return N * OH * OW * C * FH * FW * itemsize
    threads = (backend.get_num_threads() if threads is None else int(threads)) if _OPENMP else 1
    pooled_plane, window = 0, None
    if int(fused) >= 2:
        if pool is None:
            raise ValueError("scratch_bytes: a convolution fused with its pooling needs the pool layer (pool=...)")
        _, _, POH, POW = pool._output((shape[0], *layer.output_shape(shape[1:])))
        pooled_plane, window = POH * POW, (*pool.kernel_size, pool.stride, pool.padding)
    # Float32 convolutions may take the direct, Winograd or sparse pooled paths
    # (backend.set_conv_algorithm): the native code says which, and what they ask for; the
    # passes that run im2col are counted here.
    forward, backward, nbytes, registers = "im2col", "im2col", 0, False
    if layer.dtype == np.float32:
        forward, backward, nbytes, registers = backend._native._conv_plan(
            *shape, layer.out_channels, FH, FW, stride, pad, int(fused), pooled_plane, layer.needs_input_grad,
            max(1, threads), window,
        )
    if forward != "im2col" and backward != "im2col" and (forward != "direct" or backward == "direct"):
        return nbytes
    return nbytes + _native_conv_scratch(
        shape, layer.out_channels, FH, FW, stride, pad, itemsize, max(1, threads), int(fused), layer.needs_input_grad,
        pooled_plane, forward_im2col=forward == "im2col", backward_im2col=backward == "im2col",
        forward_registers=registers,
    )


# ----------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------


def _describe(layer: Layer) -> str:
    if isinstance(layer, Conv2d):
        FH, FW = layer.kernel_size
        extra = (f", stride {layer.stride}" if layer.stride != 1 else "") + (
            f", pad {layer.padding}" if layer.padding else ""
        )
        return f"Conv2d({layer.in_channels}→{layer.out_channels}, {FH}x{FW}{extra})"
    if isinstance(layer, Affine):
        return f"Affine({layer.in_features}→{layer.out_features})"
    if isinstance(layer, _Pool2d):
        (PH, PW), stride, pad = layer.kernel_size, layer.stride, layer.padding
        extra = (f", stride {stride}" if stride != PH or PH != PW else "") + (f", pad {pad}" if pad else "")
        return f"{type(layer).__name__}({PH}x{PW}{extra})"
    return layer._tag()


class _Unit:
    """Accumulated totals of one row."""

    __slots__ = ("name", "layer", "absorbed", "fwd_ns", "bwd_ns", "fwd_flops", "bwd_flops", "scratch", "shape", "_memo")

    def __init__(self, name: str, layer: Layer | None = None, absorbed: tuple = ()):
        self.name, self.layer, self.absorbed = name, layer, absorbed
        self.fwd_ns = self.bwd_ns = 0
        self.fwd_flops = self.bwd_flops = 0
        self.scratch = 0
        self.shape: tuple | None = None
        self._memo: dict = {}

    def counted(self, shape: tuple, context: tuple) -> tuple[int, int]:
        """Records a forward on ``shape`` and returns its (forward, backward) FLOPs, computed
        once per shape and setting rather than on every step."""
        self.shape = shape
        key = (shape, self.layer.needs_input_grad, context)
        hit = self._memo.get(key)
        if hit is None:
            try:
                flops = self.layer.flops(shape)
            except NotImplementedError:  # a nested container: its children are not split out
                flops = (0, 0)
            absorbed = self.absorbed
            scratch = scratch_bytes(self.layer, shape, len(absorbed), pool=absorbed[1] if len(absorbed) > 1 else None,
                                    backend_name=context[0], threads=context[1])
            hit = self._memo[key] = (flops, scratch)
        self.scratch = max(self.scratch, hit[1])
        return hit[0]


class _TimedRunner:
    """Sequential's plan runner (layers._PlanRunner) with a clock around every unit."""

    def __init__(self, profile: Profile, context: tuple):
        self.profile, self.context = profile, context

    def _unit(self, index, layer, absorbed) -> _Unit:
        units = self.profile._units
        key = (index, len(absorbed))
        unit = units.get(key)
        if unit is None or unit.layer is not layer:
            name = "".join([
                "" if index is None else f"{index} ", _describe(layer), *("+" + _describe(a) for a in absorbed)
            ])
            unit = units[key] = _Unit(name, layer, absorbed)
        return unit

    def forward(self, units, x, train):
        clock = time.perf_counter_ns
        for index, layer, absorbed in units:
            unit = self._unit(index, layer, absorbed)
            start = clock()
            y = layer.forward_fused(x, train, absorbed) if absorbed else layer.forward(x, train)
            unit.fwd_ns += clock() - start
            unit.fwd_flops += unit.counted(x.shape, self.context)[0]
            x = y
        return x

    def backward(self, units, dout):
        clock = time.perf_counter_ns
        for index, layer, absorbed in reversed(units):
            unit = self._unit(index, layer, absorbed)
            start = clock()
            dout = layer.backward(dout)
            unit.bwd_ns += clock() - start
            unit.bwd_flops += unit.counted(unit.shape, self.context)[1]
            if dout is None:
                break
        return dout


@dataclass(frozen=True)
class Row:
    """One line of a profile, as means per step. ``forward_ms`` and ``backward_ms`` are None
    for the optimizer update, which is neither; ``share`` is the fraction of the step time."""

    name: str
    forward_ms: float | None
    backward_ms: float | None
    ms: float
    share: float
    forward_flops: float
    backward_flops: float
    scratch_bytes: int

    @property
    def gflops(self) -> float | None:
        """GFLOP/s over forward and backward together; None where no FLOPs are counted."""
        flops = self.forward_flops + self.backward_flops
        return flops / (self.ms * 1e6) if flops and self.ms > 0 else None


class Profile:
    """Times training steps of ``model`` (usually a Sequential) layer by layer.

    ``train_step(x, t)`` runs one step exactly as ``Trainer.train_step`` does (same kernels,
    same order, so the same numbers) and adds its timings; ``reset()`` forgets them (after a
    warm-up, say). ``rows``, ``step_ms``, ``other_ms``, ``table()`` and ``as_dict()`` report
    per-step means over the steps so far.
    """

    def __init__(self, model: Layer, loss, optimizer):
        self.model, self.loss, self.optimizer = model, loss, optimizer
        self.reset()

    def reset(self) -> None:
        self.steps = 0
        self.samples = 0
        self._step_ns = 0
        self._units: dict[tuple, _Unit] = {}
        self._loss = _Unit(f"loss {type(self.loss).__name__}")
        self._update = _Unit(f"update {type(self.optimizer).__name__}")
        self._contexts: dict[tuple, None] = {}

    def train_step(self, x: np.ndarray, t: np.ndarray, before_update=None) -> tuple[float, np.ndarray]:
        """Forward, backward and one optimizer update on one batch, timed; returns (loss, scores).

        ``before_update(loss)``, if given, runs between the backward pass and the update (the
        trainer checks there that the step is finite); its time counts as the update's, and
        an exception from it skips the update and leaves this step out of the profile."""
        model, loss_fn, opt = self.model, self.loss, self.optimizer
        context = (backend.get_backend(), backend.get_num_threads())
        runner = _TimedRunner(self, context)
        sequential = isinstance(model, Sequential)
        if sequential:
            if "_runner" in vars(model):
                raise RuntimeError("Profile.train_step: the model is already being profiled")
            model._runner = runner
        clock = time.perf_counter_ns
        try:
            t0 = clock()
            opt.zero_grad()
            t1 = clock()
            if sequential:
                scores = model.forward(x, train=True)
            else:
                scores = runner.forward([(None, model, ())], x, True)
            t2 = clock()
            loss = loss_fn.forward(scores, t) + opt.penalty()
            t3 = clock()
            dscores = loss_fn.backward()
            t4 = clock()
            if sequential:
                model.backward(dscores)
            else:
                runner.backward([(None, model, ())], dscores)
            t5 = clock()
            if before_update is not None:
                before_update(loss)
            opt.step()
            t6 = clock()
        finally:
            if sequential:
                del model._runner
        self.steps += 1
        self.samples += len(x)
        self._step_ns += t6 - t0
        self._loss.fwd_ns += t3 - t2
        self._loss.bwd_ns += t4 - t3
        self._update.fwd_ns += (t1 - t0) + (t6 - t5)
        self._contexts[context] = None
        return loss, scores

    # -- report --------------------------------------------------------------------------
    @property
    def step_ms(self) -> float:
        """Mean wall time of a step, in milliseconds."""
        return self._step_ns / self.steps / 1e6 if self.steps else 0.0

    @property
    def rows(self) -> list[Row]:
        """The plan's units in order, then the loss, then the optimizer update."""
        if not self.steps:
            return []
        n, step = self.steps, self._step_ns
        units = sorted(self._units.items(), key=lambda kv: (-1 if kv[0][0] is None else kv[0][0], kv[0][1]))
        rows = []
        for _, u in [*units, (None, self._loss)]:
            rows.append(Row(u.name, u.fwd_ns / n / 1e6, u.bwd_ns / n / 1e6, (u.fwd_ns + u.bwd_ns) / n / 1e6,
                            (u.fwd_ns + u.bwd_ns) / step if step else 0.0, u.fwd_flops / n, u.bwd_flops / n,
                            u.scratch))
        u = self._update
        rows.append(Row(u.name, None, None, u.fwd_ns / n / 1e6, u.fwd_ns / step if step else 0.0, 0.0, 0.0, 0))
        return rows

    @property
    def other_ms(self) -> float:
        """Step time outside every row (Python between the units), per step; never negative."""
        if not self.steps:
            return 0.0
        inside = sum(u.fwd_ns + u.bwd_ns for u in [*self._units.values(), self._loss, self._update])
        return (self._step_ns - inside) / self.steps / 1e6

    def _setting(self) -> str:
        return "; ".join(f"backend {b}, {t} thread{'s' if t != 1 else ''}" for b, t in self._contexts)

    def as_dict(self) -> dict:
        """The profile as JSON-ready data: per-step means, the rows (with ``gflops``) and the
        backend and thread count settings the steps ran under."""
        rows = []
        for r in self.rows:
            d = asdict(r)
            d["gflops"] = r.gflops
            rows.append(d)
        return {
            "steps": self.steps,
            "samples": self.samples,
            "step_ms": self.step_ms,
            "other_ms": self.other_ms,
            "settings": [{"backend": b, "threads": t} for b, t in self._contexts],
            "rows": rows,
        }

    def table(self) -> str:
        """The rows as a text table, then "other" and the step total."""
        if not self.steps:
            return "no steps profiled"
        rows = self.rows
        step = self.step_ms

        def ms(v):
            return "-" if v is None else f"{v:.3f}"

        def rate(v):
            return "-" if v is None else f"{v:.1f}"

        lines = [(r.name, ms(r.forward_ms), ms(r.backward_ms), ms(r.ms), f"{100 * r.share:.1f}", rate(r.gflops),
                  _bytes(r.scratch_bytes)) for r in rows]
        lines.append(("other", "", "", ms(self.other_ms), f"{100 * self.other_ms / step:.1f}" if step else "-", "", ""))
        fwd = sum(r.forward_ms or 0.0 for r in rows)
        bwd = sum(r.backward_ms or 0.0 for r in rows)
        flops = sum(r.forward_flops + r.backward_flops for r in rows)
        total_rate = rate(flops / (step * 1e6) if flops and step > 0 else None)
        total = ("step", ms(fwd), ms(bwd), ms(step), "100.0", total_rate, "")
        header = ("layer", "fwd ms", "bwd ms", "ms", "% step", "GFLOP/s", "scratch")
        widths = [max(len(line[i]) for line in [header, total, *lines]) for i in range(len(header))]

        def fmt(line):
            return "  ".join([line[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(line[1:], widths[1:])]).rstrip()

        rule = "-" * len(fmt(header))
        per_step = self.samples / self.steps
        batch = f"{per_step:g} samples" if per_step == int(per_step) else f"{per_step:.1f} samples on average"
        footer = f"mean of {self.steps} step{'s' if self.steps != 1 else ''} of {batch}; {self._setting()}"
        return "\n".join([fmt(header), rule, *map(fmt, lines), rule, fmt(total), footer])


def _bytes(n: int) -> str:
    if not n:
        return "-"
    if n < 1 << 20:
        return f"{n / 1024:.1f} KiB"
    return f"{n / (1 << 20):.1f} MiB"
