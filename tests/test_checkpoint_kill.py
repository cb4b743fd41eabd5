"""Killing a process while it saves never leaves a damaged checkpoint.

A child process saves a model and its optimizer in a loop, every array filled with a
counter that also goes into the metadata; the test kills it with SIGKILL at random moments
(seeded) and, after every kill, checks that the checkpoint on disk verifies (structure and
CRC-32) and loads, and that every array holds the counter its metadata names, which never
goes backwards. Some trials kill the child deterministically in the middle of writing the
temporary file, so that the interesting moment is certain to be covered.

Starting Python and importing fastlayers takes most of a second, so the children are forked
from one long-lived process that has done both: each trial's child is new, and costs a
fork.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import fastlayers
from fastlayers import checkpoint, models, optim

TRIALS = 64
MID_WRITE_EVERY = 8  # every 8th trial is killed halfway through writing its temporary file

SAVER = r"""
import os, sys, time
import fastlayers
from fastlayers import models, optim

path = sys.argv[1]
model = models.mlp(input_size=12, hidden=[64, 32], classes=3, batchnorm=True, seed=0)
opt = optim.Adam(model.parameters())


def fill(i):
    for p in model.parameters():
        p.data[...] = i
    for b in model.buffers().values():
        b[...] = i
    for state in opt.state:
        for a in state.values():
            a[...] = i
    opt.steps = i


def save_forever(i, mid_write):
    if mid_write:
        real_write = os.write

        def half_then_stall(fd, data):
            real_write(fd, bytes(data[: len(data) // 2]))
            real_write(1, f"mid {os.getpid()}\n".encode())
            time.sleep(60)

        os.write = half_then_stall
    while True:
        i += 1
        fill(i)
        fastlayers.save(model, path, optimizer=opt, metadata={"counter": str(i)})


for line in sys.stdin:
    start, mode = line.split()
    pid = os.fork()
    if pid == 0:
        try:
            save_forever(int(start), mode == "mid")
        finally:
            os._exit(3)
    # Each line in one write: a line from the child may come at any moment, and a pipe keeps
    # short writes whole.
    os.write(1, f"{pid}\n".encode())
    _, status = os.waitpid(pid, 0)
    os.write(1, f"{status}\n".encode())
"""


def check(path) -> int:
    """Verifies the checkpoint and that every array holds its counter; returns the counter."""
    meta = checkpoint.verify(path)
    counter = int(meta["counter"])
    model = fastlayers.load(path)
    for name, a in model.state_dict().items():
        assert np.all(a == counter), f"{name} does not hold the counter {counter}"
    opt = optim.Adam(model.parameters())
    checkpoint.load_optimizer(path, opt)
    assert opt.steps == counter
    assert all(np.all(a == counter) for state in opt.state for a in state.values())
    return counter


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_sigkill_at_random_moments_never_damages_the_checkpoint(tmp_path):
    path = tmp_path / "run.safetensors"
    model = models.mlp(input_size=12, hidden=[64, 32], classes=3, batchnorm=True, seed=0)
    for p in model.parameters():
        p.data[...] = 0
    for b in model.buffers().values():
        b[...] = 0
    fastlayers.save(model, path, optimizer=optim.Adam(model.parameters()), metadata={"counter": "0"})
    script = tmp_path / "saver.py"
    script.write_text(SAVER)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    rng = np.random.default_rng(20240601)
    counter, advanced, mid_writes = check(path), 0, 0
    # Kills land uniformly within ``window`` seconds of the child's start. A busy machine can
    # starve the child of CPU for that long, so a trial in which it saved nothing widens the
    # window for the next, and one in which it saved narrows it again.
    window = 0.03
    with open(tmp_path / "saver.err", "w") as err:
        saver = subprocess.Popen([sys.executable, str(script), str(path)], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        pid = None
        try:
            for trial in range(TRIALS):
                mid = trial % MID_WRITE_EVERY == MID_WRITE_EVERY - 1
                saver.stdin.write(f"{counter} {'mid' if mid else 'run'}\n")
                saver.stdin.flush()
                pid, stalled = None, None
                while pid is None or (mid and stalled is None):
                    line = saver.stdout.readline()
                    assert line, "the saver ended: " + (tmp_path / "saver.err").read_text()
                    if line.startswith("mid "):
                        stalled = int(line.split()[1])
                    else:
                        pid = int(line)
                if mid:
                    assert stalled == pid
                    mid_writes += 1
                else:
                    time.sleep(rng.uniform(0.0, window))
                os.kill(pid, signal.SIGKILL)
                status = int(saver.stdout.readline())
                pid = None
                assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (
                    f"trial {trial}: the saver was not killed but ended with status {status}: "
                    + (tmp_path / "saver.err").read_text()
                )
                now = check(path)
                assert now >= counter, f"trial {trial}: the checkpoint went back from {counter} to {now}"
                if not mid:
                    advanced += now > counter
                    window = max(0.03, window / 2) if now > counter else min(0.5, window * 2)
                counter = now
        finally:
            if pid is not None:  # a failure left a saver running
                os.kill(pid, signal.SIGKILL)
            saver.stdin.close()
            try:
                saver.wait(timeout=30)
            except subprocess.TimeoutExpired:
                saver.kill()
                saver.wait()
            saver.stdout.close()
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".run.safetensors.") and p.name.endswith(".tmp")]
    assert mid_writes == TRIALS // MID_WRITE_EVERY
    # Every kill in the middle of a write left its temporary file, and only that was lost.
    assert len(leftovers) >= mid_writes
    # The random kills let the saver get work done: the checkpoint moved on in many trials.
    random_trials = TRIALS - mid_writes
    assert advanced >= random_trials // 4, f"the checkpoint advanced in only {advanced} of {random_trials} trials"
