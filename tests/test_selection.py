"""Tests for gpal.selection: every selector against a plain brute-force reference."""

import itertools
import math

import numpy as np
import pytest

from gpal.selection import (
    AcquisitionSchedule,
    LowRankCovariance,
    cur_selection,
    farthest_point_sampling,
    farthest_point_sampling_from,
    frame_farthest_point_sampling,
    greedy_batch,
    greedy_batch_lowrank,
    greedy_select,
    random_selection,
)


# --------------------------------------------------------------------------------------
# brute-force references (plain numpy, written for clarity, not speed)
# --------------------------------------------------------------------------------------
def fps_reference(D, n_select, start):
    """FPS on a distance matrix D: next pick = argmax over unpicked of min distance."""
    picks = [start]
    dists = [np.inf]
    while len(picks) < n_select:
        d = D[:, picks].min(axis=1)
        d[picks] = -np.inf
        nxt = int(np.argmax(d))  # first maximum = lowest index
        picks.append(nxt)
        dists.append(d[nxt])
    return np.array(picks), np.array(dists)


def euclidean_matrix(X):
    return np.sqrt(((X[:, None, :] - X[None, :, :]) ** 2).sum(-1))


def cosine_matrix(X):
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    return euclidean_matrix(Xn)


def frame_distance_matrix(frames, zeta):
    """d(A,B)² = kbar(A,A) + kbar(B,B) - 2 kbar(A,B); kbar = mean of cos^zeta."""
    normed = [f / np.linalg.norm(f, axis=1, keepdims=True) for f in frames]
    n = len(frames)
    kbar = np.empty((n, n))
    for a in range(n):
        for b in range(n):
            kbar[a, b] = np.mean((normed[a] @ normed[b].T) ** zeta)
    d2 = np.diag(kbar)[:, None] + np.diag(kbar)[None, :] - 2 * kbar
    return np.sqrt(np.maximum(d2, 0))


def random_psd(rng, n, rank=None, scale=1.0):
    rank = n if rank is None else rank
    B = rng.normal(size=(n, rank))
    return scale * B @ B.T / rank


def logdet(M):
    sign, val = np.linalg.slogdet(M)
    assert sign > 0
    return val


def information_gain_of_set(K, noise, S):
    """½ log det(I + N^{-1/2} K_SS N^{-1/2}) = ½ [log det(K_SS + N_S) - Σ log σ_i²]."""
    S = list(S)
    if not S:
        return 0.0
    return 0.5 * (
        logdet(K[np.ix_(S, S)] + np.diag(noise[S])) - np.sum(np.log(noise[S]))
    )


def greedy_logdet_reference(K, noise, n_select):
    """At each step take argmax_i log det(K_{S+i} + σ² I) by explicit determinants.

    With per-candidate noise the objective is the information gain of the set (the Σ log
    σ_i² term makes noisy candidates no more attractive); for a constant noise it is the
    plain log det (the subtracted term is the same for every candidate).
    """
    S = []
    for _ in range(n_select):
        best, best_val = None, -np.inf
        for i in range(K.shape[0]):
            if i in S:
                continue
            T = S + [i]
            val = logdet(K[np.ix_(T, T)] + np.diag(noise[T])) - np.sum(np.log(noise[T]))
            if val > best_val:
                best, best_val = i, val
        S.append(best)
    return np.array(S)


# --------------------------------------------------------------------------------------
# farthest-point sampling
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_fps_matches_reference(metric, seed):
    rng = np.random.default_rng(seed)
    n, F = [(120, 13), (200, 8), (90, 3), (150, 40)][seed]
    # clustered data, like descriptors of a few structural motifs
    centres = rng.normal(size=(5, F)) * 3
    X = centres[rng.integers(5, size=n)] + rng.normal(size=(n, F)) * rng.uniform(
        0.05, 1.0
    )
    X += 10.0 if metric == "cosine" else 0.0  # keep rows away from zero norm
    D = euclidean_matrix(X) if metric == "euclidean" else cosine_matrix(X)
    start = int(rng.integers(n))
    n_select = 40 if seed != 2 else n  # seed 2: the complete ordering
    idx, dist = farthest_point_sampling(
        X, n_select, start=start, metric=metric, return_distances=True
    )
    ref_idx, ref_dist = fps_reference(D, n_select, start)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(dist, ref_dist, rtol=1e-10, atol=1e-12)
    assert idx.dtype == np.int64 and idx.shape == (n_select,)
    assert np.all(np.diff(dist[1:]) <= 1e-12)  # covering radius never grows


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_fps_high_dimensional_data_uses_blas_screen_and_stays_exact(metric):
    from gpal import selection

    rng = np.random.default_rng(11)
    X = rng.normal(size=(400, 64)) + (3.0 if metric == "cosine" else 0.0)
    D = euclidean_matrix(X) if metric == "euclidean" else cosine_matrix(X)
    idx, dist = farthest_point_sampling(
        X, 80, start=7, metric=metric, return_distances=True
    )
    ref_idx, ref_dist = fps_reference(D, 80, 7)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(dist, ref_dist, rtol=1e-10)
    # the triangle-inequality screen is useless here; the BLAS screen must kick in
    scale = np.ones(400) if metric == "euclidean" else 1 / np.linalg.norm(X, axis=1)
    inf = np.full(400, np.inf)
    picks, _, n_eval = selection._fps_kernel(
        X, scale, inf, 7, 80, selection._PRUNE_MARGIN, 0.5, 0.2
    )
    np.testing.assert_array_equal(picks, ref_idx)
    assert n_eval[40:].mean() < 0.2 * 400
    # and with the BLAS screen disabled the picks are the same
    plain = selection._fps_kernel(
        X, scale, inf, 7, 80, selection._PRUNE_MARGIN, 2.0, 0.0
    )
    np.testing.assert_array_equal(plain[0], ref_idx)
    assert plain[2][40:].mean() > 0.5 * 400


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fps_from_existing_selection_matches_reference(metric, seed):
    rng = np.random.default_rng(20 + seed)
    F = [5, 16, 40][seed]
    existing = rng.normal(size=(15, F)) + 4.0
    X = np.concatenate([rng.normal(size=(150, F)) + 4.0, existing[:3] + 1e-9])
    both = np.concatenate([X, existing])
    D = euclidean_matrix(both) if metric == "euclidean" else cosine_matrix(both)
    d0 = D[: len(X), len(X) :].min(axis=1)
    # reference: plain FPS over X where the existing points count as earlier picks
    picks, dists = [], []
    mind = d0.copy()
    for _ in range(60):
        masked = mind.copy()
        masked[picks] = -np.inf
        nxt = int(np.argmax(masked))
        picks.append(nxt)
        dists.append(mind[nxt])
        mind = np.minimum(mind, D[: len(X), nxt])
    idx, dist = farthest_point_sampling_from(
        X, 60, d0, metric=metric, return_distances=True
    )
    np.testing.assert_array_equal(idx, picks)
    np.testing.assert_allclose(dist, dists, rtol=1e-9, atol=1e-12)
    assert not set(idx) & {150, 151, 152}  # near-copies of existing points come last
    # no existing selection: plain FPS from the first row
    np.testing.assert_array_equal(
        farthest_point_sampling_from(X, 20, np.full(len(X), np.inf), metric=metric),
        farthest_point_sampling(X, 20, start=0, metric=metric),
    )


def test_fps_ties_go_to_lowest_index_and_duplicates_come_last():
    # integer grid (exact distances in any summation order) with duplicated points
    g = np.array(list(itertools.product(range(3), range(3))), dtype=float)
    X = np.concatenate([g, g[[4, 0]]])  # rows 9, 10 duplicate rows 4, 0
    D = euclidean_matrix(X)
    for start in range(len(X)):
        idx = farthest_point_sampling(X, len(X), start=start)
        np.testing.assert_array_equal(idx, fps_reference(D, len(X), start)[0])
        assert sorted(idx) == list(range(len(X)))  # each row exactly once
    idx, dist = farthest_point_sampling(X, len(X), start=4, return_distances=True)
    assert list(idx[:5]) == [
        4,
        0,
        2,
        6,
        8,
    ]  # four corners at equal distance: lowest index first
    assert np.all(dist[-2:] == 0)  # the duplicates come last


def test_fps_random_start_is_seeded():
    X = np.random.default_rng(5).normal(size=(60, 4))
    a = farthest_point_sampling(X, 10, random_state=42)
    b = farthest_point_sampling(X, 10, random_state=np.random.default_rng(42))
    np.testing.assert_array_equal(a, b)
    assert a[0] == np.random.default_rng(42).integers(60)
    assert farthest_point_sampling(X, 0).shape == (0,)


def test_fps_accepts_non_contiguous_and_integer_input():
    X = np.random.default_rng(6).integers(0, 20, size=(50, 9))
    ref = farthest_point_sampling(X.astype(float), 12, start=3)
    np.testing.assert_array_equal(farthest_point_sampling(X, 12, start=3), ref)
    Xf = np.asfortranarray(X.astype(float))
    np.testing.assert_array_equal(farthest_point_sampling(Xf, 12, start=3), ref)


# --------------------------------------------------------------------------------------
# frame FPS
# --------------------------------------------------------------------------------------
def _random_frames(rng, n_frames=25, F=7):
    frames = []
    for _ in range(n_frames):
        n_atoms = int(rng.integers(1, 9))
        frames.append(
            np.abs(rng.normal(size=(n_atoms, F))) + rng.uniform(0, 1) * np.arange(F)
        )
    return frames


@pytest.mark.parametrize("zeta", [1, 2, 3])
@pytest.mark.parametrize("seed", [0, 1])
def test_frame_fps_matches_reference(zeta, seed):
    rng = np.random.default_rng(seed)
    frames = _random_frames(rng)
    D = frame_distance_matrix(frames, zeta)
    idx, dist = frame_farthest_point_sampling(
        frames, 12, zeta=zeta, start=2, return_distances=True
    )
    ref_idx, ref_dist = fps_reference(D, 12, 2)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(dist, ref_dist, rtol=1e-6, atol=1e-8)


def test_frame_distance_is_size_intensive():
    rng = np.random.default_rng(3)
    A = rng.random((4, 6)) + 0.1
    frames = [
        A,
        np.concatenate([A, A]),
        rng.random((3, 6)) + 0.1,
    ]  # frame 1 = supercell of frame 0
    for zeta in (1, 2):
        idx, dist = frame_farthest_point_sampling(
            frames, 3, zeta=zeta, start=0, return_distances=True
        )
        assert list(idx) == [0, 2, 1]
        assert dist[2] == pytest.approx(0.0, abs=1e-7)


# --------------------------------------------------------------------------------------
# greedy batch = greedy log-det
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("hetero", [False, True])
def test_greedy_batch_equals_bruteforce_logdet(seed, hetero):
    rng = np.random.default_rng(seed)
    n = 14
    K = random_psd(rng, n, rank=6)
    noise = rng.uniform(0.01, 0.3, n) if hetero else np.full(n, 0.05)
    ref = greedy_logdet_reference(K, noise, 8)
    idx, gains = greedy_batch(K, noise if hetero else 0.05, 8, return_gains=True)
    np.testing.assert_array_equal(idx, ref)
    # the marginal gains add up to the information gain of the batch, and shrink
    np.testing.assert_allclose(
        np.cumsum(gains),
        [information_gain_of_set(K, noise, ref[: k + 1]) for k in range(8)],
    )
    assert np.all(np.diff(gains) <= 1e-12)


def test_greedy_batch_within_1_minus_1_over_e_of_optimum():
    # The guarantee is for the normalised monotone submodular objective
    # f(S) = log det(I + K_SS/σ²) = log det(K_SS + σ²I) - |S| log σ², f(∅) = 0.
    for seed in range(6):
        rng = np.random.default_rng(100 + seed)
        n, k = 10, 4
        K = random_psd(rng, n, rank=3)
        noise = np.full(n, 0.1)
        idx = greedy_batch(K, 0.1, k)
        f = information_gain_of_set
        best = max(f(K, noise, S) for S in itertools.combinations(range(n), k))
        assert f(K, noise, idx) >= (1 - 1 / math.e) * best - 1e-12
        assert f(K, noise, idx) <= best + 1e-12


def test_greedy_batch_lowrank_and_callable_equal_dense():
    for seed in range(4):
        rng = np.random.default_rng(seed)
        n, r = 40, 6
        A = rng.normal(size=(n, r))
        d = rng.uniform(0, 0.2, n) if seed % 2 else None
        dense = A @ A.T + (np.diag(d) if d is not None else 0)
        noise = rng.uniform(0.05, 0.5, n)
        ref_idx, ref_gain = greedy_batch(dense, noise, 15, return_gains=True)
        idx, gain = greedy_batch_lowrank(A, noise, 15, diag=d, return_gains=True)
        np.testing.assert_array_equal(idx, ref_idx)
        np.testing.assert_allclose(gain, ref_gain, rtol=1e-9, atol=1e-12)
        np.testing.assert_array_equal(
            greedy_batch(LowRankCovariance(A, d), noise, 15), ref_idx
        )
        np.testing.assert_array_equal(
            greedy_batch(lambda i: dense[:, i], noise, 15, diag=np.diag(dense)), ref_idx
        )


def test_greedy_select_keep_stops_at_a_fraction_of_the_first_gain():
    rng = np.random.default_rng(3)
    K = random_psd(rng, 12, rank=4)
    full, gains = greedy_batch(K, 0.05, 12, return_gains=True)
    post_var = {}

    def scores(idx):  # the engine on the array posterior, through its public form
        post_var["n"] = post_var.get("n", 0) + 1
        S = list(picked)
        P = K - K[:, S] @ np.linalg.solve(K[np.ix_(S, S)] + 0.05 * np.eye(len(S)), K[S, :]) if S else K
        return 0.5 * np.log1p(np.diag(P)[idx] / 0.05)

    picked = []
    picks, values = greedy_select(12, 12, scores, picked.append, keep=0.25)
    n_keep = int(np.sum(gains >= 0.25 * gains[0]))
    assert 1 < n_keep < 12  # the case is not trivial
    np.testing.assert_array_equal(picks, full[:n_keep])
    np.testing.assert_allclose(values, gains[:n_keep], rtol=1e-9)


def test_acquisition_schedule_monotone_and_formula():
    sch = AcquisitionSchedule(w_start=0.9, w_floor=0.2, exponent=2.0)
    u = np.array([1.0, 0.8, 0.8, 0.5, 0.3, 0.1, 0.01, 0.0])
    w = [sch.update(x) for x in u]
    assert np.all(np.diff(w) <= 0)
    np.testing.assert_allclose(w, 0.2 + 0.7 * np.minimum(u / 1.0, 1) ** 2)
    assert w[0] == pytest.approx(0.9) and w[-1] == pytest.approx(0.2)
    assert sch.weight(3.0) == pytest.approx(
        0.9
    )  # above the reference: capped at w_start
    assert [h["weight"] for h in sch.history] == w
    # the weight follows the current uncertainty: it rises again if uncertainty rises
    assert sch.update(0.5) > w[-1]
    fixed = AcquisitionSchedule(reference=2.0)
    grid = np.linspace(2.0, 0.0, 21)
    ws = [fixed.weight(x) for x in grid]
    assert np.all(np.diff(ws) <= 0) and ws[0] == 1.0 and ws[-1] == pytest.approx(0.2)


# --------------------------------------------------------------------------------------
# CUR and random
# --------------------------------------------------------------------------------------
def test_cur_selection_leverage_and_determinism():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 12)) @ rng.normal(size=(12, 30))
    X[:5] = 0.0  # zero rows have zero leverage and are never drawn
    idx, lev = cur_selection(X, 10, random_state=3, return_leverage=True)
    U = np.linalg.svd(X, full_matrices=False)[0]
    np.testing.assert_allclose(lev, (U[:, :10] ** 2).sum(1) / 10, atol=1e-12)
    assert lev.sum() == pytest.approx(1.0)
    np.testing.assert_array_equal(idx, cur_selection(X, 10, random_state=3))
    assert len(set(idx)) == 10 and not set(idx) & set(range(5))
    idx2 = cur_selection(
        X, 78, random_state=0
    )  # more picks than non-zero rows: all of them first
    assert set(idx2[:75]) == set(range(5, 80)) and len(set(idx2)) == 78


def test_random_selection():
    a = random_selection(100, 30, random_state=1)
    assert len(set(a)) == 30 and a.min() >= 0 and a.max() < 100
    np.testing.assert_array_equal(a, random_selection(100, 30, random_state=1))


# --------------------------------------------------------------------------------------
# bad arguments
# --------------------------------------------------------------------------------------
def test_bad_options_list_valid_choices():
    X = np.random.default_rng(0).random((10, 3))
    with pytest.raises(
        ValueError,
        match=r"metric must be one of \{'euclidean', 'cosine'\}; got 'manhattan'",
    ):
        farthest_point_sampling(X, 3, metric="manhattan")
    with pytest.raises(ValueError, match=r"method must be one of \{'sample'\}"):
        cur_selection(X, 3, method="deterministic")


@pytest.mark.parametrize(
    "call",
    [
        lambda X: farthest_point_sampling(X, 11),
        lambda X: farthest_point_sampling(X, -1),
        lambda X: farthest_point_sampling(X, 2.5),
        lambda X: farthest_point_sampling(X, 3, start=10),
        lambda X: farthest_point_sampling(np.where(X > 0.5, np.nan, X), 3),
        lambda X: farthest_point_sampling(X[0], 3),
        lambda X: farthest_point_sampling(
            np.vstack([X, np.zeros(3)]), 3, metric="cosine"
        ),
        lambda X: farthest_point_sampling_from(X, 3, np.ones(9)),
        lambda X: farthest_point_sampling_from(X, 3, -np.ones(10)),
        lambda X: farthest_point_sampling_from(X, 3, np.full(10, np.nan)),
        lambda X: frame_farthest_point_sampling([X, X[:, :2]], 1),
        lambda X: frame_farthest_point_sampling([X, X], 1, zeta=0),
        lambda X: frame_farthest_point_sampling(X, 1),
        lambda X: greedy_batch(X, 0.1, 2),
        lambda X: greedy_batch(X @ X.T, 0.1, 11),
        lambda X: greedy_batch(lambda i: X[:, 0], 0.1, 2),
        lambda X: greedy_batch(np.triu(X @ X.T + 1), 0.1, 2),
        lambda X: greedy_batch(X @ X.T, 0.1, 2, diag=np.ones(10)),
        lambda X: greedy_batch_lowrank(X, -0.1, 2),
        lambda X: greedy_batch_lowrank(X, 0.1, 2, diag=-np.ones(10)),
        lambda X: AcquisitionSchedule(w_start=0.1, w_floor=0.5),
        lambda X: AcquisitionSchedule(exponent=0.0),
        lambda X: AcquisitionSchedule().weight(0.5),
        lambda X: AcquisitionSchedule().update(-1.0),
        lambda X: cur_selection(X, 3, n_components=0),
        lambda X: random_selection(5, 6),
    ],
)
def test_bad_arguments_raise_value_error(call):
    X = np.random.default_rng(0).random((10, 3))
    with pytest.raises(ValueError):
        call(X)


# --------------------------------------------------------------------------------------
# SparseGP.select_frames: greedy force information gain over candidate frames
# --------------------------------------------------------------------------------------
def _frame_model():
    from gpal import SOAP, SparseGP

    from conftest import POLY, SMALL_SOAP, cu_frames

    train = cu_frames(3, seed=21)
    desc = SOAP(species=[29], periodic=True, weighting=POLY, **SMALL_SOAP)
    model = SparseGP(desc, n_sparse=40, random_state=0).fit(train)
    pool = cu_frames(5, seed=22, rattle=0.05) + cu_frames(3, seed=23, rattle=0.2)
    return model, pool


def _force_gain(model, atoms):
    std = model.predict(atoms, forces_std=True)["forces_std"]
    return 0.5 * np.sum(np.log1p(std**2 / model.noise_["force"] ** 2))


def test_select_frames_equals_greedy_with_real_labels():
    """Each pick maximises the force information gain given the labels of earlier picks.

    Reference: brute force with real labelled updates (SparseGP.update, fixed sparse set)
    and predict(forces_std=True); the virtual zero-label update must give the same picks
    and gains, because posterior variances do not depend on label values.
    """
    import copy

    model, pool = _frame_model()
    R_before, alpha_before = model.solver_.R_.copy(), model.alpha_.copy()
    picks, gains = model.select_frames(pool, 3, return_gains=True)
    assert np.array_equal(model.solver_.R_, R_before) and np.array_equal(model.alpha_, alpha_before)
    ref = copy.deepcopy(model)
    left = list(range(len(pool)))
    for k in range(3):
        g = {i: _force_gain(ref, pool[i]) for i in left}
        best = max(left, key=g.get)
        assert picks[k] == best
        assert gains[k] == pytest.approx(g[best], rel=1e-7)
        ref.update([pool[best]])  # EMT labels: energy, forces, stress
        left.remove(best)
    assert len(set(picks.tolist())) == 3
    assert np.all(np.diff(gains) <= 1e-9)  # diminishing returns along the greedy path
    # the model itself is not changed by selecting
    assert model.solver_.K_nm_.shape[0] == sum(1 + 3 * len(a) + 6 for a in model.frames_)


def test_select_frames_bad_input():
    model, pool = _frame_model()
    with pytest.raises(ValueError, match="n_select"):
        model.select_frames(pool, 0)
    with pytest.raises(ValueError, match="n_select"):
        model.select_frames(pool, len(pool) + 1)
    with pytest.raises(ValueError, match="n_select must be an integer"):  # (2.7 had picked 2 frames)
        model.select_frames(pool, 2.7)
    assert len(model.select_frames(pool, np.int64(2))) == 2
    with pytest.raises(ValueError, match="unknown or no labels"):
        model.select_frames(pool, 1, labels=("energy", "charges"))
    with pytest.raises(ValueError, match="empty"):
        model.select_frames([], 1)
    with pytest.raises(ValueError, match="unknown or no score"):
        model.select_frames(pool, 1, score=())
    from gpal import InvalidPositionsError, UnknownSpeciesError

    from conftest import cuag_frames

    with pytest.raises(UnknownSpeciesError, match="Ag"):
        model.select_frames(pool[:2] + cuag_frames(1), 1)
    bad = pool[0].copy()
    bad.positions[0, 0] = np.nan
    with pytest.raises(InvalidPositionsError):
        model.select_frames([bad], 1)


def test_select_frames_scores_energy_information_when_asked():
    model, pool = _frame_model()
    _, gains = model.select_frames(pool, len(pool), score=("energy",), return_gains=True)
    first = []
    for a in pool:
        e_std = np.sqrt(model.solver_.var_sor(model.observation_rows(a).energy[None])[0])
        first.append(0.5 * np.log1p(e_std**2 / (model.noise_["energy"] ** 2 * len(a))))
    assert gains[0] == pytest.approx(max(first), rel=1e-9)
    both = model.select_frames(pool, 1, score=("energy", "forces"), return_gains=True)[1][0]
    forces = model.select_frames(pool, 1, return_gains=True)[1][0]
    assert both >= forces - 1e-12


def test_greedy_select_refuses_what_it_cannot_do():
    from gpal.selection import greedy_select

    with pytest.raises(ValueError, match="n_select must be between 0 and the 3 candidates"):
        greedy_select(3, 5, lambda i: np.ones(len(i)), lambda i: None)
    with pytest.raises(ValueError, match="finite values"):
        greedy_select(3, 2, lambda i: np.full(len(i), np.nan), lambda i: None)
    with pytest.raises(ValueError, match=r"got shape \(1,\)"):
        greedy_select(3, 2, lambda i: np.ones(1), lambda i: None)


def test_greedy_batch_survives_a_noise_below_round_off_of_a_used_up_rank():
    # rank 3, all 30 picked: after the third pick the conditional variances are round-off,
    # which can be negative beyond a noise of 1e-16 of the prior variance
    for seed in range(20):
        rng = np.random.default_rng(seed)
        A = rng.normal(size=(30, 3))
        idx, gains = greedy_batch(A @ A.T, 1e-16, 30, return_gains=True)
        assert sorted(idx.tolist()) == list(range(30))
        assert np.all(np.isfinite(gains)) and np.all(gains >= 0)


def test_greedy_select_keep_with_a_first_pick_of_zero_keeps_it_alone():
    picks, values = greedy_select(4, 4, lambda idx: np.zeros(len(idx)), lambda i: None, keep=0.25)
    assert picks.tolist() == [0] and values.tolist() == [0.0]


def test_select_frames_warns_of_a_species_with_no_sparse_point():
    from ase.build import bulk

    from gpal import SOAP, SparseGP

    from conftest import POLY, SMALL_SOAP, cu_frames

    desc = SOAP(species=[29, 47], periodic=True, weighting=POLY, **SMALL_SOAP)
    model = SparseGP(desc, n_sparse=30, random_state=0).fit(cu_frames(3, seed=21))
    ag = bulk("Ag", cubic=True)
    ag.rattle(0.2, seed=1)
    with pytest.warns(UserWarning, match="Ag: no sparse environment.*select_frames scores its environments 0"):
        picks, gains = model.select_frames(cu_frames(2, seed=22, rattle=0.05) + [ag], 3, return_gains=True)
    assert gains[list(picks).index(2)] == 0.0  # what the warning is about
