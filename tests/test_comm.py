"""The alpha-beta cost model of a ring all-reduce, its fit, and the gloo measurement
(llmbook.comm, Chapter 6)."""

import pytest

from llmbook import comm


def test_ring_allreduce_time_by_hand():
    # 8 ranks, 1 GB at 100 GB/s, 10 us latency: 14 * 10us + 2 * 7/8 * 1e9 / 1e11 s
    t = comm.allreduce_seconds(1e9, 8, 100e9, 10e-6)
    assert t == pytest.approx(14 * 10e-6 + 0.0175)
    assert comm.allreduce_seconds(1e9, 1, 100e9, 10e-6) == 0.0  # nothing to exchange
    # for large messages the time tends to 2 m / beta whatever the number of ranks
    big = [comm.allreduce_seconds(1e12, n, 1e11) for n in (64, 1024)]
    assert big[1] / big[0] == pytest.approx(1.0, rel=0.02)


def test_fit_recovers_synthetic_constants():
    sizes = [2**k for k in range(10, 26, 3)]
    for n, alpha, beta in [(2, 30e-6, 2e9), (8, 5e-6, 450e9)]:
        times = [comm.allreduce_seconds(m, n, beta, alpha) for m in sizes]
        fitted_alpha, fitted_beta = comm.fit_alpha_beta(sizes, times, n)
        assert fitted_alpha == pytest.approx(alpha, rel=1e-9)
        assert fitted_beta == pytest.approx(beta, rel=1e-9)


def test_fit_rejects_bad_input():
    with pytest.raises(ValueError, match="at least two"):
        comm.fit_alpha_beta([1024], [1e-3], 2)
    with pytest.raises(ValueError, match="not both positive"):
        comm.fit_alpha_beta([1024, 2048], [2e-3, 1e-3], 2)  # bigger but faster
    with pytest.raises(ValueError, match="bandwidth"):
        comm.allreduce_seconds(1024, 2, 0.0)


def test_link_presets():
    assert comm.LINKS["nvlink4"].bandwidth == 450e9
    assert comm.LINKS["ib-ndr"].bandwidth == 50e9
    assert comm.LINKS["100gbe"].bandwidth == 12.5e9


def test_measure_allreduce_on_two_gloo_processes():
    times = comm.measure_allreduce([4, 4096], repeats=2)
    assert len(times) == 2 and all(t > 0 for t in times)
    with pytest.raises(ValueError, match="repeats"):
        comm.measure_allreduce([4096], repeats=0)
