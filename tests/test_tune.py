"""Hyper-parameter search: sampling, narrowing, the search end to end, processes, failures, CLI."""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time

import numpy as np
import pytest

from fastlayers import cli, layers, losses, models, optim, tune
from fastlayers.tune import Trial

# -- tiny data and models (module level: worker processes import them) ----------------------


def blobs(n=400, d=8, k=3, seed=0):
    """Three overlapping Gaussian clusters: a one-hidden-layer MLP learns them in a few steps
    with the right learning rate (about 0.9 of the held-out points), not with a wrong one."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 1.0, (k, d))
    t = rng.integers(0, k, n)
    x = (centres[t] + rng.normal(0.0, 1.0, (n, d))).astype(np.float32)
    return x, t.astype(np.int64)


def build_sgd(params):
    model = models.mlp(input_size=8, hidden=[16], classes=3, seed=0)
    return model, losses.SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=params["lr"])


def build_failing(params):
    if params["lr"] > 0.1:
        raise ValueError(f"refusing lr {params['lr']}")
    return build_sgd(params)


def build_exits(params):
    # The first call of the search kills its worker process outright, as a crash or the
    # OOM killer would; every later one trains.
    try:
        os.close(os.open(os.environ["TUNE_TEST_DIR"] + "/exited", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return build_sgd(params)
    os._exit(3)


def build_reports_threads(params):
    import fastlayers

    raise RuntimeError(f"threads {fastlayers.get_num_threads()} OMP {os.environ.get('OMP_NUM_THREADS')} "
                       f"OPENBLAS {os.environ.get('OPENBLAS_NUM_THREADS')}")


def build_waits(params):
    with open(os.environ["TUNE_TEST_DIR"] + f"/started-{os.getpid()}", "w"):
        pass
    time.sleep(60)
    return build_sgd(params)


SEARCH = dict(trials=8, rounds=3, epochs=2, batch_size=24, keep=0.25, seed=2)


def trial(value, acc, i=0, rnd=1, status="ok", loss=1.0, name="lr"):
    return Trial(round=rnd, index=i, params={name: value}, seed=0, status=status,
                 val_accuracy=acc if status == "ok" else math.nan, val_loss=loss if status == "ok" else math.nan)


# -- ranges ---------------------------------------------------------------------------------


def test_samples_stay_in_their_ranges_and_log_uniform_is_uniform_in_the_log():
    rng = np.random.default_rng(0)
    lu = tune.loguniform(1e-6, 1e-2)
    draws = np.array([lu.sample(rng) for _ in range(4000)])
    assert draws.min() >= 1e-6 and draws.max() <= 1e-2
    # Each of the four decades holds a quarter of the draws (binomial sd 27 of 1000).
    counts, _ = np.histogram(np.log10(draws), bins=[-6, -5, -4, -3, -2])
    assert np.all(np.abs(counts - 1000) < 5 * 27), counts
    u = tune.uniform(-1.0, 3.0)
    assert all(-1.0 <= u.sample(rng) <= 3.0 for _ in range(200))
    ri = tune.randint(3, 5)
    assert {ri.sample(rng) for _ in range(200)} == {3, 4, 5}
    assert all(type(ri.sample(rng)) is int for _ in range(10))
    logint = tune.randint(1, 1000, log=True)
    small = np.mean([logint.sample(rng) < 32 for _ in range(2000)])
    assert 0.4 < small < 0.6  # log(32)/log(1001) = 0.50; uniform would give 0.03
    ch = tune.choice(["sgd", "adam", 3])
    assert {repr(ch.sample(rng)) for _ in range(100)} == {"'sgd'", "'adam'", "3"}


def test_the_new_range_is_exactly_the_best_quantiles_span():
    space = {"lr": tune.loguniform(1e-6, 1e-1), "mom": tune.uniform(0.0, 1.0), "fixed": 7}
    values = [(3e-3, 0.2), (1e-5, 0.9), (4e-4, 0.5), (2e-2, 0.1), (7e-6, 0.3), (5e-4, 0.7), (9e-2, 0.4), (1e-3, 0.6)]
    accs = [0.90, 0.20, 0.85, 0.70, 0.10, 0.88, 0.30, 0.60]
    trials = [Trial(round=1, index=i, params={"lr": lr, "mom": m, "fixed": 7}, seed=0,
                    val_accuracy=a, val_loss=1 - a) for i, ((lr, m), a) in enumerate(zip(values, accs))]
    new = tune.narrow(space, trials, keep=0.375)  # ceil(0.375 * 8) = 3 best: accuracies 0.90, 0.88, 0.85
    assert new["lr"] == tune.loguniform(4e-4, 3e-3)
    assert new["mom"] == tune.uniform(0.2, 0.7)
    assert new["fixed"] == 7
    best = tune.rank(trials)[0]
    assert best.params["lr"] in new["lr"] and best.params["mom"] in new["mom"]
    # In log space the new range covers log10(3e-3 / 4e-4) = 0.875 of the original 5 decades.
    assert math.log10(new["lr"].high / new["lr"].low) == pytest.approx(math.log10(3e-3 / 4e-4))
    # Draws from it are log-uniform over that span: half of them below the geometric mean.
    rng = np.random.default_rng(0)
    draws = np.array([new["lr"].sample(rng) for _ in range(2000)])
    assert 0.45 < np.mean(draws < math.sqrt(4e-4 * 3e-3)) < 0.55


def test_ties_rank_by_loss_then_order_and_failures_rank_last_and_never_shape_the_range():
    trials = [
        trial(1e-3, 0.8, i=0, loss=0.5),
        trial(1e-1, math.nan, i=1, status="diverged"),
        trial(1e-2, 0.8, i=2, loss=0.4),
        trial(1e-5, 0.5, i=3),
        trial(5e-1, math.nan, i=4, status="error"),
        trial(2e-3, 0.8, i=5, loss=0.4),
    ]
    order = [t.index for t in tune.rank(trials)]
    assert order == [2, 5, 0, 3, 1, 4]
    # keep=1: every trial is in the quantile, but only the successful ones have a say.
    new = tune.narrow({"lr": tune.loguniform(1e-6, 1.0)}, trials, keep=1.0)
    assert new["lr"] == tune.loguniform(1e-5, 1e-2)
    # A trial whose accuracy is NaN counts as failed even if its status says ok.
    odd = trial(3e-1, math.nan, i=6)
    assert tune.rank([odd, trials[3]])[0].index == 3


def test_a_single_best_trial_narrows_to_a_window_of_keep_times_the_width_inside_the_original_range():
    space = {"lr": tune.loguniform(1e-6, 1e-2), "u": tune.uniform(0.0, 10.0), "n": tune.randint(1, 100)}
    trials = [Trial(round=1, index=0, params={"lr": 1e-4, "u": 5.0, "n": 50}, seed=0, val_accuracy=0.9, val_loss=0.1),
              Trial(round=1, index=1, params={"lr": 1e-3, "u": 1.0, "n": 3}, seed=0, val_accuracy=0.5, val_loss=0.1)]
    new = tune.narrow(space, trials, keep=0.5)  # ceil(0.5 * 2) = 1 best trial
    # log width 4 decades * 0.5 = 2 decades centred on 1e-4.
    assert new["lr"].low == pytest.approx(1e-5) and new["lr"].high == pytest.approx(1e-3)
    assert new["u"] == tune.uniform(2.5, 7.5)
    assert new["n"] == tune.randint(25, 75)  # 100 integers wide: 50 - 25 to 50 + 25
    # Near an end of the original range the window slides inside it instead of leaving it.
    edge = [Trial(round=1, index=0, params={"lr": 1e-2, "u": 0.0, "n": 1}, seed=0, val_accuracy=0.9, val_loss=0.1)]
    new = tune.narrow(space, edge, keep=0.5)
    assert new["lr"].low == pytest.approx(1e-4) and new["lr"].high == pytest.approx(1e-2)
    assert new["u"] == tune.uniform(0.0, 5.0)
    assert new["n"] == tune.randint(1, 51)
    # A range already reduced to a point stays a point; a window under one integer keeps the value.
    point = {"lr": tune.loguniform(1e-3, 1e-3), "u": tune.uniform(2.0, 2.0), "n": tune.randint(4, 5)}
    only = [Trial(round=1, index=0, params={"lr": 1e-3, "u": 2.0, "n": 5}, seed=0, val_accuracy=0.9, val_loss=0.1)]
    new = tune.narrow(point, only, keep=0.2, original=space)
    assert new == {"lr": tune.loguniform(1e-3, 1e-3), "u": tune.uniform(2.0, 2.0), "n": tune.randint(5, 5)}


def test_integers_and_choices_narrow_to_what_the_best_trials_used():
    space = {"n": tune.randint(1, 512, log=True), "opt": tune.choice(["sgd", "momentum", "adam"])}
    trials = [Trial(round=1, index=i, params={"n": n, "opt": o}, seed=0, val_accuracy=a, val_loss=0.0)
              for i, (n, o, a) in enumerate([(64, "adam", 0.9), (16, "sgd", 0.3), (200, "adam", 0.8),
                                             (32, "momentum", 0.85), (2, "sgd", 0.1)])]
    new = tune.narrow(space, trials, keep=0.6)  # the best 3: (64, adam), (200, adam), (32, momentum)
    assert new["n"] == tune.randint(32, 200, log=True)
    assert new["opt"] == tune.choice(["momentum", "adam"])  # the original order is kept


def test_no_successful_trial_leaves_the_ranges_unchanged():
    space = {"lr": tune.loguniform(1e-6, 1e-2)}
    assert tune.narrow(space, [trial(1e-3, math.nan, status="error")], keep=0.2) == space


# -- the search -----------------------------------------------------------------------------


def test_a_search_narrows_round_over_round_around_the_best_trials():
    x, t = blobs()
    space = {"lr": tune.loguniform(1e-5, 1e3)}
    result = tune.random_search(build_sgd, space, x, t, validation_split=0.25, processes=1, **SEARCH)
    assert len(result.trials) == 24 and len(result.ranges) == 4 and result.ranges[0] == space
    widths = [math.log(r["lr"].high / r["lr"].low) for r in result.ranges]
    # Every round's narrowing is exactly the span of the best quarter of all trials so far ...
    for r in range(1, 4):
        so_far = [tr for tr in result.trials if tr.round <= r]
        best = [tr for tr in tune.rank(so_far)[: math.ceil(0.25 * len(so_far))] if tr.ok]
        lrs = [tr.params["lr"] for tr in best]
        assert result.ranges[r]["lr"] == tune.loguniform(min(lrs), max(lrs))
        # ... the round's trials were drawn from the range before it ...
        assert all(tr.params["lr"] in result.ranges[r - 1]["lr"] for tr in result.trials if tr.round == r)
        # ... and contains the best trial so far.
        assert tune.rank(so_far)[0].params["lr"] in result.ranges[r]["lr"]
    # The ranges shrink round over round, from 8 decades to under one.
    assert widths[0] > widths[1] > widths[2] > widths[3]
    assert widths[3] < math.log(10) < widths[0] / 8 * 1.01
    # Narrowing pays: each round's trials are better on average than the round before's.
    mean = [np.mean([tr.val_accuracy if tr.ok else 0.0 for tr in result.trials if tr.round == r]) for r in (1, 2, 3)]
    assert mean[0] < mean[1] < mean[2]
    # Too large a learning rate diverges in the first round: reported, ranked last.
    assert any(tr.status == "diverged" for tr in result.trials)
    assert result.best is tune.rank(result.trials)[0] and result.best.val_accuracy > 0.8


def test_results_table_and_json():
    x, t = blobs()
    space = {"lr": tune.loguniform(1e-4, 1e1), "momentum": 0.9}
    result = tune.random_search(build_sgd, space, x, t, trials=5, rounds=2, epochs=1, batch_size=30,
                                processes=1, seed=3)
    lines = result.table().splitlines()
    assert lines[0].split()[:7] == ["rank", "round", "trial", "val_acc", "val_loss", "train_acc", "seconds"]
    assert "lr" in lines[0] and "momentum" in lines[0] and len(lines) == 11
    accs = [tr.val_accuracy for tr in result.ranked() if tr.ok]
    assert accs == sorted(accs, reverse=True)
    assert len(result.table(round=2).splitlines()) == 6 and len(result.table(top=3).splitlines()) == 4
    d = json.loads(result.to_json())
    assert d["settings"]["train_size"] == 320 and d["validation_size"] == 80
    assert len(d["trials"]) == 10 and len(d["ranges"]) == 3
    assert d["ranges"][0] == {"lr": {"kind": "loguniform", "low": 1e-4, "high": 10.0},
                              "momentum": {"kind": "fixed", "value": 0.9}}
    assert d["best"] == result.best.as_dict()
    for tr in d["trials"]:
        assert set(tr) >= {"params", "val_accuracy", "val_loss", "train_accuracy", "seconds", "round", "status"}
        assert tr["params"]["momentum"] == 0.9


def test_results_are_identical_with_one_and_two_processes():
    x, t = blobs()
    space = {"lr": tune.loguniform(1e-4, 3e2), "wd": tune.loguniform(1e-6, 1e-1)}

    def run(processes):
        r = tune.random_search(build_failing, space, x, t, trials=6, rounds=2, epochs=2, batch_size=24, seed=5,
                               processes=processes)
        return [(tr.round, tr.index, tr.params, tr.seed, tr.status, tr.error, tr.val_accuracy, tr.val_loss,
                 tr.train_accuracy, tr.train_loss) for tr in r.trials], r.ranges

    one, two = run(1), run(2)
    assert repr(one) == repr(two)  # repr: NaN != NaN in a plain comparison
    assert {row[4] for row in one[0]} == {"ok", "error"}
    # Another seed is another search.
    other = tune.random_search(build_sgd, space, x, t, trials=6, rounds=1, epochs=1, seed=6, processes=1)
    assert [tr.params for tr in other.trials] != [row[2] for row in one[0][:6]]


def test_workers_run_one_thread_each_and_the_callers_environment_is_left_alone():
    x, t = blobs(n=60)
    before = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    result = tune.random_search(build_reports_threads, {"lr": 0.1}, x, t, trials=2, rounds=1, processes=2)
    assert [tr.error for tr in result.trials] == ["RuntimeError: threads 1 OMP 1 OPENBLAS 1"] * 2
    assert {k: os.environ.get(k) for k in before} == before


def test_parameter_draws_depend_on_seed_round_index_and_name_only():
    x, t = blobs()
    a = tune.random_search(build_sgd, {"lr": tune.loguniform(1e-3, 1.0)}, x, t, trials=4, rounds=1, epochs=1,
                           seed=2, processes=1)
    b = tune.random_search(build_sgd, {"z": tune.uniform(0.0, 1.0), "lr": tune.loguniform(1e-3, 1.0)}, x, t,
                           trials=4, rounds=1, epochs=1, seed=2, processes=1)
    assert [tr.params["lr"] for tr in a.trials] == [tr.params["lr"] for tr in b.trials]
    assert [tr.seed for tr in a.trials] == [tr.seed for tr in b.trials]
    assert len({tr.seed for tr in a.trials}) == 4


class Spy(layers.Layer):
    """Records the row ids (column 0) of every batch the model sees, by mode."""

    def __init__(self):
        self.seen = {True: set(), False: set()}

    def forward(self, x, train=None):
        self.seen[self._is_training(train)].update(np.rint(x[:, 0]).astype(int).tolist())
        return x

    def backward(self, dout):
        return dout

    def config(self):
        return {}


def test_trials_train_on_the_split_and_score_on_the_held_out_rows_only():
    x, t = blobs(n=100)
    x[:, 0] = np.arange(len(x))  # row ids
    spies = []

    def build(params):
        spy = Spy()
        spies.append(spy)
        model = layers.Sequential(spy, layers.Affine(8, 3, rng=np.random.default_rng(0)))
        return model, losses.SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=params["lr"])

    result = tune.random_search(build, {"lr": tune.loguniform(1e-4, 1e-3)}, x, t, trials=3, rounds=2, epochs=2,
                                batch_size=10, validation_split=0.3, processes=1)
    val = set(result.validation_indices.tolist())
    assert len(val) == 30
    for spy in spies:  # every trial: the same split, the whole of it
        assert spy.seen[True] == set(range(100)) - val
        assert spy.seen[False] == val
    # The split is drawn from the seed, and differs with it.
    again = tune.random_search(build, {"lr": 1e-3}, x, t, trials=1, rounds=1, epochs=1, batch_size=10,
                               validation_split=0.3, processes=1, seed=0)
    other = tune.random_search(build, {"lr": 1e-3}, x, t, trials=1, rounds=1, epochs=1, batch_size=10,
                               validation_split=0.3, processes=1, seed=1)
    assert np.array_equal(again.validation_indices, result.validation_indices)
    assert not np.array_equal(other.validation_indices, result.validation_indices)
    # Explicit validation data instead of a split: nothing is held out of x.
    spies.clear()
    tune.random_search(build, {"lr": 1e-3}, x[:60], t[:60], trials=1, rounds=1, epochs=1, batch_size=10,
                       validation=(x[60:], t[60:]), processes=1)
    assert spies[0].seen[True] == set(range(60)) and spies[0].seen[False] == set(range(60, 100))


def test_failing_trials_are_reported_and_the_search_goes_on():
    x, t = blobs()

    def build(params):
        if params["lr"] > 0.1:
            raise ValueError(f"refusing lr {params['lr']:.3g}")
        if params["lr"] < 1e-3:
            return "not a tuple"
        return build_sgd(params)

    result = tune.random_search(build, {"lr": tune.loguniform(1e-4, 1e1)}, x, t, trials=10, rounds=2, epochs=1,
                                processes=1, keep=0.5)
    statuses = {tr.status for tr in result.trials}
    assert statuses == {"ok", "error"}
    refused = [tr for tr in result.trials if tr.params["lr"] > 0.1]
    assert refused and all(tr.error.startswith("ValueError: refusing lr") for tr in refused)
    wrong = [tr for tr in result.trials if tr.params["lr"] < 1e-3]
    assert wrong and all("build_fn must return a tuple (model, loss, optimizer), got str" in tr.error for tr in wrong)
    assert all(not tr.ok for tr in tune.rank(result.trials)[-len(refused) - len(wrong):])
    assert "error: ValueError: refusing lr" in result.table()
    # The failures bound nothing: the narrowed range is within the successful values.
    ok = [tr.params["lr"] for tr in result.trials if tr.round == 1 and tr.ok]
    assert min(ok) <= result.ranges[1]["lr"].low and result.ranges[1]["lr"].high <= max(ok)


def test_a_worker_that_dies_fails_its_round_and_the_next_round_gets_new_workers(tmp_path, monkeypatch):
    x, t = blobs()
    monkeypatch.setenv("TUNE_TEST_DIR", str(tmp_path))
    result = tune.random_search(build_exits, {"lr": tune.loguniform(1e-3, 1.0)}, x, t, trials=4, rounds=2,
                                epochs=1, processes=2, seed=0, keep=0.5)
    assert len(result.trials) == 8
    first = [tr for tr in result.trials if tr.round == 1]
    died = [tr for tr in first if tr.status == "error"]
    # Which of the round's other trials were still waiting when the pool broke is a matter of timing.
    assert died and all("a worker process died abruptly" in tr.error for tr in died)
    assert all(tr.ok for tr in first if tr not in died)
    assert all(tr.ok for tr in result.trials if tr.round == 2)


def test_interrupt_in_process_returns_the_finished_trials():
    x, t = blobs()
    calls = []

    def build(params):
        calls.append(params)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return build_sgd(params)

    with pytest.raises(tune.SearchInterrupted) as info:
        tune.random_search(build, {"lr": tune.loguniform(1e-3, 1.0)}, x, t, trials=5, rounds=2, epochs=1,
                           processes=1)
    assert isinstance(info.value, KeyboardInterrupt)
    result = info.value.result
    assert result.interrupted and [tr.index for tr in result.trials] == [0, 1]


def test_interrupt_stops_the_worker_processes(tmp_path, monkeypatch):
    x, t = blobs()
    monkeypatch.setenv("TUNE_TEST_DIR", str(tmp_path))
    # Ctrl-C must raise KeyboardInterrupt here even when pytest runs as a background job,
    # which starts with SIGINT ignored (and then Python installs no handler of its own).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)

    def interrupt_when_both_started():
        for _ in range(6000):
            if len(list(tmp_path.glob("started-*"))) == 2:
                break
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)

    thread = threading.Thread(target=interrupt_when_both_started)
    thread.start()
    try:
        with pytest.raises(tune.SearchInterrupted) as info:
            tune.random_search(build_waits, {"lr": tune.loguniform(1e-3, 1.0)}, x, t, trials=4, rounds=1,
                               epochs=1, processes=2)
    finally:
        thread.join()
        signal.signal(signal.SIGINT, previous)
    assert info.value.result.trials == []
    for path in tmp_path.glob("started-*"):
        pid = int(path.name.split("-")[1])
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


# -- bad arguments --------------------------------------------------------------------------


@pytest.mark.parametrize("make, error, message", [
    (lambda: tune.loguniform(0.0, 1.0), ValueError, "low must be > 0"),
    (lambda: tune.loguniform(1e-2, 1e-3), ValueError, "low must be <= high"),
    (lambda: tune.uniform(float("nan"), 1.0), ValueError, "low must be finite"),
    (lambda: tune.uniform(0.0, float("inf")), ValueError, "high must be finite"),
    (lambda: tune.uniform("0", 1.0), TypeError, "low must be a real number"),
    (lambda: tune.uniform(True, 1.0), TypeError, "low must be a real number"),
    (lambda: tune.randint(1.5, 3), TypeError, "low must be an int"),
    (lambda: tune.randint(0, 10, log=True), ValueError, "low must be > 0"),
    (lambda: tune.randint(1, 10, log=1), TypeError, "log must be a bool"),
    (lambda: tune.choice([]), ValueError, "must not be empty"),
    (lambda: tune.choice("abc"), TypeError, "must be a list or tuple"),
    (lambda: tune.choice([1, 2, 1]), ValueError, "given twice"),
])
def test_bad_ranges(make, error, message):
    with pytest.raises(error, match=message):
        make()


def _local_build(params):
    return build_sgd(params)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(trials=0), ValueError, "trials must be an int >= 1"),
    (dict(rounds=1.5), ValueError, "rounds must be an int >= 1"),
    (dict(epochs=0), ValueError, "epochs must be an int >= 1"),
    (dict(batch_size=-1), ValueError, "batch_size must be an int >= 1"),
    (dict(keep=0.0), ValueError, r"keep must be a fraction in \(0, 1\]"),
    (dict(keep=1.5), ValueError, r"keep must be a fraction in \(0, 1\]"),
    (dict(seed=-1), ValueError, "seed must be an int >= 0"),
    (dict(processes=0), ValueError, "processes must be an int >= 1"),
    (dict(validation_split=1.0), ValueError, r"validation_split must be in \(0, 1\)"),
    (dict(validation_split=0.001), ValueError, "leaves an empty set"),
    (dict(validation_split=0.2, validation=(np.zeros((5, 8), np.float32), np.zeros(5, np.int64))), ValueError,
     "not both"),
    (dict(validation=([1], [2])), TypeError, "validation must be a tuple"),
    (dict(validation=(np.zeros((0, 8), np.float32), np.zeros(0, np.int64))), ValueError, r"number \(> 0\)"),
    (dict(verbose="yes"), TypeError, "verbose must be a bool"),
    (dict(space={}), ValueError, "space is empty"),
    (dict(space=[("lr", 1)]), TypeError, "space must be a dict"),
    (dict(build_fn=3), TypeError, "build_fn must be callable"),
    (dict(build_fn=lambda p: build_sgd(p), processes=2), TypeError, "build_fn must be picklable"),
    (dict(t=np.zeros(5, np.int64)), ValueError, "different numbers of samples"),
    (dict(x=[[0.0]]), TypeError, "x and t must be numpy arrays"),
])
def test_bad_search_arguments(kwargs, error, message):
    x, t = blobs(n=60)
    args = dict(build_fn=build_sgd, space={"lr": tune.loguniform(1e-3, 1.0)}, x=x, t=t, trials=2, rounds=1,
                epochs=1, processes=1)
    args.update(kwargs)
    with pytest.raises(error, match=message):
        tune.random_search(**args)


# -- command line ---------------------------------------------------------------------------


class _Untouchable:
    """Stands in for the test set: any use of it fails the test."""

    def __getattr__(self, name):
        raise AssertionError(f"the test set was touched ({name})")

    def __len__(self):
        raise AssertionError("the test set was touched (len)")

    def __getitem__(self, key):
        raise AssertionError("the test set was touched ([])")

    def __array__(self, *args, **kwargs):
        raise AssertionError("the test set was touched (array)")


def test_cli_tune_prints_rounds_and_writes_json_without_the_test_set(tmp_path, capsys, monkeypatch):
    from fastlayers import data

    real = data.load_bundled
    monkeypatch.setattr(data, "load_bundled", lambda: (real()[0], (_Untouchable(), _Untouchable())))
    path = tmp_path / "search.json"
    args = ["tune", "--model", "mlp", "--limit", "600", "--trials", "3", "--rounds", "2", "--epochs", "1",
            "--processes", "1", "--param", "lr=log:1e-3:1e-1", "--param", "momentum=0.9",
            "--optimizer", "momentum", "--json", str(path)]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "round 1/2" in out and "round 2/2" in out and "final ranges" in out
    assert "weight_decay loguniform[1e-08, 0.0001]" in out  # the default range, kept
    d = json.loads(path.read_text())
    assert d["settings"]["train_size"] == 480 and d["validation_size"] == 120
    assert len(d["trials"]) == 6 and d["best"] is not None
    assert d["ranges"][0]["momentum"] == {"kind": "fixed", "value": 0.9}
    assert all(tr["status"] == "ok" for tr in d["trials"])


@pytest.mark.parametrize("spec, message", [
    ("lr", "expected NAME=SPEC"),
    ("lr=log:1e-3", "expected log:LOW:HIGH"),
    ("lr=log:0:1", "low must be > 0"),
    ("lr=log:a:1", "LOW and HIGH must be numbers"),
    ("n=int:1:2.5", "LOW and HIGH must be integers"),
    ("lr=cubic:1:2", "unknown kind 'cubic'"),
    ("bogus=log:1e-3:1e-1", "unknown parameter 'bogus' for mlp with sgd"),
    ("hidden=int:1:3", "unknown parameter 'hidden'"),  # mlp's hidden is a list of sizes
])
def test_cli_tune_refuses_bad_params(spec, message, capsys):
    try:
        status = cli.main(["tune", "--model", "mlp", "--param", spec, "--limit", "100", "--processes", "1"])
    except SystemExit as e:  # argparse's refusal of a malformed --param
        status = e.code
    assert status == 2
    assert message in capsys.readouterr().err


def test_cli_param_specs():
    assert cli._tune_param("lr=log:1e-4:1e-1") == ("lr", tune.loguniform(1e-4, 1e-1))
    assert cli._tune_param("momentum=uniform:0.5:0.99") == ("momentum", tune.uniform(0.5, 0.99))
    assert cli._tune_param("conv=int:8:64") == ("conv", tune.randint(8, 64))
    assert cli._tune_param("hidden=logint:16:256") == ("hidden", tune.randint(16, 256, log=True))
    assert cli._tune_param("activation=choice:relu,tanh") == ("activation", tune.choice(["relu", "tanh"]))
    assert cli._tune_param("dropout=choice:0,0.25,0.5") == ("dropout", tune.choice([0, 0.25, 0.5]))
    assert cli._tune_param("beta1=0.8") == ("beta1", 0.8)


def test_the_example_runs_from_its_script_in_worker_processes(tmp_path):
    # A script's build_fn is pickled by reference to __main__, which each spawned worker
    # imports again: the real path of examples/hyperparameter_search.py.
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "examples" / "hyperparameter_search.py"
    png, out_json = tmp_path / "hyperparameter_search.png", tmp_path / "search.json"
    args = [sys.executable, str(script), "--quick", "--processes", "2", "--out", str(tmp_path), "--json", str(out_json)]
    run = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "after round 2: lr [" in run.stdout
    d = json.loads(out_json.read_text())
    assert len(d["trials"]) == 8 and d["settings"]["processes"] == 2
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "matplotlib is not installed" in run.stdout and not png.exists()
    else:
        assert png.stat().st_size > 0
