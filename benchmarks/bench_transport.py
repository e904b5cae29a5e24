"""Benchmark of the NEGF transport solver: RGF sweep, full T(E), dense solve, gradient of I.

For each device of N principal layers of b orbitals (random Hermitian blocks, non-orthogonal
S) it measures, in one process and one run:

- ``zgemm``: the machine's complex128 GEMM rate on b x b blocks, batched as the energies
  are (8 b^3 real flops each), through XLA (``jnp.matmul``) and through the BLAS (NumPy);
  ``fraction_of_zgemm`` below is against the faster of the two;
- ``sweep``: the RGF forward sweep alone with given lead self-energies, energies/s and
  achieved GFLOP/s counting the nominal 40 N b^3 real flops per energy (the implementation
  does about 27 N b^3: one LU with b right-hand sides and two products per layer);
  ``fraction_of_zgemm`` is the median over rounds of a sweep and a BLAS ZGEMM timed back to
  back (the machine's speed drifts within a run), ``fraction_of_zgemm_best_rates`` the best
  sweep over the best of both ZGEMM rates;
- ``transmission``: the full T(E) as ``hamjax.transport.transmission`` computes it (both
  leads' Lopez-Sancho decimation, ~20-25 doubling steps at eta = 1e-5 eV, plus the sweep);
- ``dense``: one dense direct solve (LAPACK zgesv through SciPy, same OpenBLAS as jaxlib's
  LAPACK) of the n x n system (n = N b) for the first block column per energy, the baseline
  RGF must beat; timed in rounds alternating with T(E), ``speedup_transmission`` is the
  median of the per-round ratios;
- ``grad``: ``jax.grad`` of the Landauer current with respect to the device blocks, against
  the cost of T(E) on the same energies (with ``--sizes``: for both lead methods);
- ``lead_methods`` (with ``--sizes``): T(E) with identical leads shared, their surface
  Green's functions by decimation or by the lead's eigenmodes (``lead_method="eigen"``),
  at eta = 1e-5 and 1e-9 eV, in rounds alternating both methods, the sweep alone and the
  dense solve; medians of the per-round ratios (dense / T(E), lead share = 1 - sweep / T(E));
- ``cpu_devices`` (with ``--cpu-devices N``, N > 1): the CPU split into N XLA host devices
  (``--xla_force_host_platform_device_count``, set before JAX loads), the energies of a
  chunk sharded over them (each device maps over its own energies, single-matrix LAPACK
  calls only), against one device, alternating.

Output: one JSON line per measurement with jax version, device, CPU load average, compile
time (first call minus steady call) and steady-state time (best of ``--repeat``), all
``block_until_ready``. Targets on the 2-core CPU: sweep >= 40% of the same-run ZGEMM rate
for b >= 256; T(E) >= 10x faster than the dense solve at N = 32, b = 128; gradient of I
<= 4x the cost of T(E).

LAPACK (LU, triangular solves) comes from the OpenBLAS bundled with jaxlib's SciPy
dependency. On a loaded shared machine its default thread pool spins and makes LU 10-50x
slower; ``--openblas-threads 1`` (set before NumPy and JAX load) avoids that, but on this
machine three of four runs with one OpenBLAS thread hung in a futex wait inside a compiled call
(LAPACK called from several XLA threads at once), so it is opt-in and recorded in the output.

    python benchmarks/bench_transport.py            # default: a few minutes
    python benchmarks/bench_transport.py --full     # N in {8, 32} x b in {64, ..., 512}
    python benchmarks/bench_transport.py --sizes 16x128,32x128 --no-dense --openblas-threads 1
    python benchmarks/bench_transport.py --sizes 16x64 --cpu-devices 2   # host devices
"""

from __future__ import annotations

import os
import sys

if "--openblas-threads" in sys.argv[:-1]:  # must happen before NumPy / JAX load OpenBLAS
    os.environ["OPENBLAS_NUM_THREADS"] = sys.argv[sys.argv.index("--openblas-threads") + 1]
if "--cpu-devices" in sys.argv[:-1]:  # XLA host devices: must be set before JAX loads
    _n = int(sys.argv[sys.argv.index("--cpu-devices") + 1])
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={_n}"
    ).strip()

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_enable_x64", True)

from hamjax.transport import current, sweep  # noqa: E402
from hamjax.transport.surface import DEFAULT_MAX_ITERATIONS  # noqa: E402

ETA = 1e-5


def emit(record: dict) -> None:
    record.update(
        jax_version=jax.__version__,
        device=str(jax.devices()[0]),
        load_average=round(os.getloadavg()[0], 2),
        openblas_threads=os.environ.get("OPENBLAS_NUM_THREADS"),
        n_devices=len(jax.devices()),
    )
    print(json.dumps(record), flush=True)


def timed(fn, *args, repeat: int):
    """(first-call seconds, best steady seconds) with block_until_ready."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t0)
    return first, best


def random_blocks(n_blocks: int, b: int, seed: int = 0) -> sweep.DeviceBlocks:
    """Random device: Hermitian diagonal blocks, couplings of similar size, S = 1 + small.
    The last layer and its coupling repeat the first ones, so both default leads are the same
    bulk (the usual case: one electrode material), as ``transmission`` detects."""
    rng = np.random.default_rng(seed)

    def cplx(*shape):
        return rng.normal(size=shape) + 1j * rng.normal(size=shape)

    scale = 1.0 / np.sqrt(b)
    d = cplx(n_blocks, b, b) * scale
    h_diag = (d + d.conj().transpose(0, 2, 1)) / 2
    h_upper = cplx(n_blocks - 1, b, b) * scale
    s_d = cplx(n_blocks, b, b) * 0.02 * scale
    s_diag = np.eye(b) + (s_d + s_d.conj().transpose(0, 2, 1)) / 2
    s_upper = cplx(n_blocks - 1, b, b) * 0.02 * scale
    for x in (h_diag, s_diag, h_upper, s_upper):
        x[-1] = x[0]
    c = jnp.complex128
    return sweep.DeviceBlocks(
        jnp.asarray(h_diag, c),
        jnp.asarray(s_diag, c),
        jnp.asarray(h_upper, c),
        jnp.asarray(s_upper, c),
        jnp.asarray(h_upper.conj().transpose(0, 2, 1), c),
        jnp.asarray(s_upper.conj().transpose(0, 2, 1), c),
        jnp.zeros((n_blocks, b)),
    )


def random_sigma(n_energies: int, b: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_energies, b, b)) + 1j * rng.normal(size=(n_energies, b, b))
    y = rng.normal(size=(n_energies, b, b)) + 1j * rng.normal(size=(n_energies, b, b))
    gamma = y @ y.conj().transpose(0, 2, 1) / b
    return jnp.asarray(0.1 * x / np.sqrt(b) - 0.5j * gamma)


def dense_matrix(blocks: sweep.DeviceBlocks, energy: float, sigma_l, sigma_r) -> np.ndarray:
    n_blocks, b, _ = blocks.h_diag.shape
    a = np.zeros((n_blocks * b, n_blocks * b), complex)
    hd, sd = np.asarray(blocks.h_diag), np.asarray(blocks.s_diag)
    hu, su = np.asarray(blocks.h_upper), np.asarray(blocks.s_upper)
    for k in range(n_blocks):
        sl = slice(k * b, (k + 1) * b)
        a[sl, sl] = energy * sd[k] - hd[k]
        if k + 1 < n_blocks:
            nx = slice((k + 1) * b, (k + 2) * b)
            a[sl, nx] = energy * su[k] - hu[k]
            a[nx, sl] = (energy * su[k] - hu[k]).conj().T
    a[:b, :b] -= np.asarray(sigma_l)
    a[-b:, -b:] -= np.asarray(sigma_r)
    return a


def bench_size(n_blocks: int, b: int, n_energies: int, args) -> dict:
    blocks = random_blocks(n_blocks, b)
    energies = jnp.asarray(np.linspace(-0.3, 0.3, n_energies))
    common = {"n_blocks": n_blocks, "b": b, "n_energies": n_energies}

    # complex GEMM rate of this machine, batched like the energies: XLA's (jnp.matmul) and
    # the BLAS's (NumPy -> OpenBLAS zgemm); the sweep is judged against the faster one
    x = random_sigma(n_energies, b, seed=5)
    y = random_sigma(n_energies, b, seed=6)
    rates = {}
    for engine, gemm, xy in (
        ("xla", jax.jit(jnp.matmul), (x, y)),
        ("blas", np.matmul, (np.asarray(x), np.asarray(y))),
    ):
        # a few ms per call: best of many, so the denominator is the machine's rate and
        # not one noisy sample (single calls swung 57-100 GFLOP/s on the 2-core machine)
        first, steady = timed(gemm, *xy, repeat=max(20, args.repeat))
        rates[engine] = 8 * b**3 * n_energies / steady / 1e9
        emit(
            {
                "what": "zgemm",
                "engine": engine,
                **common,
                "compile_s": first - steady,
                "steady_s": steady,
                "gflops": rates[engine],
            }
        )
    zgemm_gflops = max(rates.values())

    # RGF sweep alone (given self-energies)
    sig_l, sig_r = random_sigma(n_energies, b, 2), random_sigma(n_energies, b, 3)
    batched = sweep.batched_energies(tuple(jax.local_devices()[:1]))

    def sweep_all(blocks, sig_l, sig_r, energies):  # mapped over energies as transmission() is
        return sweep.map_energies(
            lambda xs: sweep.sweep(blocks, *xs), (sig_l, sig_r, energies), batched
        )

    sweep_jit = jax.jit(sweep_all)
    first, steady = timed(sweep_jit, blocks, sig_l, sig_r, energies, repeat=0)
    # The machine's speed drifts by up to 1.6x within a run (the BLAS ZGEMM measured 60 and
    # 97 GFLOP/s minutes apart), so the fraction is taken per round from a sweep and a
    # ZGEMM measured back to back, and its median reported.
    flops = 40 * n_blocks * b**3 * n_energies
    blas_xy = (np.asarray(x), np.asarray(y))
    fractions = []
    for _ in range(max(3, args.repeat)):
        _, gemm_s = timed(np.matmul, *blas_xy, repeat=10)
        _, sweep_s = timed(sweep_jit, blocks, sig_l, sig_r, energies, repeat=1)
        steady = min(steady, sweep_s)
        fractions.append((flops / sweep_s) / (8 * b**3 * n_energies / gemm_s))
    gflops = flops / steady / 1e9
    out = {"sweep_s_per_energy": steady / n_energies}
    emit(
        {
            "what": "sweep",
            **common,
            "energies_vmapped": batched,
            "compile_s": first - steady,
            "steady_s": steady,
            "energies_per_s": n_energies / steady,
            "gflops_nominal_40Nb3": gflops,
            "fraction_of_zgemm_best_rates": gflops / zgemm_gflops,
            "fraction_of_zgemm": float(np.median(fractions)),
            "fraction_of_zgemm_rounds": fractions,
        }
    )

    # full T(E): lead decimation + sweep, as transmission() runs it: one decimation run for
    # both (identical) leads, and the former path, one run per lead, in the same process
    left, right = sweep.end_leads(blocks, (b,) * n_blocks)
    eta = jnp.asarray(ETA)
    for share in (False, True):
        chunk = sweep.compiled_chunk(DEFAULT_MAX_ITERATIONS, tuple(jax.local_devices()[:1]), share)
        first, steady = timed(chunk, blocks, left, right, energies, eta, repeat=args.repeat)
        key = "" if share else "_separate_leads"
        out["t_s_per_energy" + key] = steady / n_energies
        out["transmission_call" + key] = (chunk, (blocks, left, right, energies, eta))
        emit(
            {
                "what": "transmission",
                **common,
                "share_leads": share,
                "identical_leads": bool(sweep.identical_leads(left, right)),
                "compile_s": first - steady,
                "steady_s": steady,
                "energies_per_s": n_energies / steady,
                "gflops_nominal_40Nb3": 40 * n_blocks * b**3 * n_energies / steady / 1e9,
                "lead_share": 1 - out["sweep_s_per_energy"] / (steady / n_energies),
            }
        )
    return {
        **out,
        "sweep_call": (sweep_jit, (blocks, sig_l, sig_r, energies)),
        "blocks": blocks,
        "energies": energies,
        "left": left,
        "right": right,
        "sigma": (sig_l[0], sig_r[0]),
    }


def bench_dense(n_blocks: int, b: int, state: dict, args) -> None:
    """LAPACK zgesv (SciPy) of the whole n x n system for the first block column."""
    import scipy.linalg

    a = dense_matrix(state["blocks"], 0.1, *state["sigma"])
    rhs = np.zeros((n_blocks * b, b), complex)
    rhs[:b, :b] = np.eye(b)

    def solve(a, rhs):
        return scipy.linalg.solve(a, rhs, check_finite=False)

    chunk, chunk_args = state["transmission_call"]
    separate, separate_args = state["transmission_call_separate_leads"]
    n_energies = int(chunk_args[3].shape[0])
    first, steady = timed(solve, a, rhs, repeat=0)
    ratios, ratios_separate = [], []
    for _ in range(max(3, args.repeat)):
        _, dense_s = timed(solve, a, rhs, repeat=1)
        _, t_s = timed(chunk, *chunk_args, repeat=1)
        _, t_sep = timed(separate, *separate_args, repeat=1)
        steady = min(steady, dense_s)
        ratios.append(dense_s / (t_s / n_energies))
        ratios_separate.append(dense_s / (t_sep / n_energies))
    emit(
        {
            "what": "dense",
            "n_blocks": n_blocks,
            "b": b,
            "n": n_blocks * b,
            "compile_s": first - steady,
            "steady_s_per_energy": steady,
            "speedup_transmission": float(np.median(ratios)),
            "speedup_transmission_rounds": ratios,
            "speedup_transmission_separate_leads": float(np.median(ratios_separate)),
            "speedup_transmission_separate_leads_rounds": ratios_separate,
            "speedup_sweep": steady / state["sweep_s_per_energy"],
        }
    )


def bench_grad(n_blocks: int, b: int, state: dict, args, lead_method="decimation") -> None:
    blocks, energies = state["blocks"], state["energies"]
    eta = jnp.asarray(ETA)
    fn = sweep.chunk_function(
        DEFAULT_MAX_ITERATIONS, tuple(jax.local_devices()[:1]), lead_method=lead_method
    )

    def amps(h_diag, h_upper):
        hb = blocks._replace(
            h_diag=h_diag, h_upper=h_upper, h_lower=h_upper.conj().transpose(0, 2, 1)
        )
        lb, rb = sweep.end_leads(hb, (b,) * n_blocks)
        t = fn(hb, lb, rb, energies, eta)[0]
        return current(energies, t, 0.2, fermi_level=0.0, temperature=300.0)

    value = jax.jit(amps)
    grad = jax.jit(jax.grad(amps, argnums=(0, 1)))
    args_ = (blocks.h_diag, blocks.h_upper)
    f_first, f_steady = timed(value, *args_, repeat=args.repeat)
    g_first, g_steady = timed(grad, *args_, repeat=args.repeat)
    emit(
        {
            "what": "grad",
            "lead_method": lead_method,
            "eta": ETA,
            "n_blocks": n_blocks,
            "b": b,
            "n_energies": int(energies.shape[0]),
            "compile_s_value": f_first - f_steady,
            "compile_s_grad": g_first - g_steady,
            "steady_s_value": f_steady,
            "steady_s_grad": g_steady,
            "grad_over_value": g_steady / f_steady,
        }
    )


def median_ratio(xs, ys):
    return float(np.median(np.asarray(xs) / np.asarray(ys)))


def bench_lead_methods(n_blocks: int, b: int, state: dict, args) -> None:
    """T(E) with shared leads by decimation and by eigenmodes at two eta, against the sweep
    alone and the dense solve, in alternating rounds (seconds per energy)."""
    import scipy.linalg

    blocks, energies, left, right = (state[k] for k in ("blocks", "energies", "left", "right"))
    n_energies = int(energies.shape[0])
    one = tuple(jax.local_devices()[:1])
    a = dense_matrix(blocks, 0.1, *state["sigma"])
    rhs = np.zeros((n_blocks * b, b), complex)
    rhs[:b, :b] = np.eye(b)
    sweep_jit, sweep_args = state["sweep_call"]
    calls = {}
    for eta in (1e-5, 1e-9):
        for method in ("decimation", "eigen"):
            chunk = sweep.compiled_chunk(DEFAULT_MAX_ITERATIONS, one, True, method)
            call_args = (blocks, left, right, energies, jnp.asarray(eta))
            first, _ = timed(chunk, *call_args, repeat=0)
            out = jax.device_get(chunk(*call_args))
            # the same compiled chunk serves both eta (an argument): compile time once
            calls[eta, method] = (chunk, call_args, first if eta == 1e-5 else None, out)
    times = {key: [] for key in calls}
    dense, sweeps = [], []
    for _ in range(max(5, args.repeat)):  # this machine's load swings: more rounds
        _, dense_s = timed(lambda: scipy.linalg.solve(a, rhs, check_finite=False), repeat=1)
        dense.append(dense_s)
        _, sweep_s = timed(sweep_jit, *sweep_args, repeat=1)
        sweeps.append(sweep_s / n_energies)
        for key, (chunk, call_args, _, _) in calls.items():
            _, t_s = timed(chunk, *call_args, repeat=1)
            times[key].append(t_s / n_energies)
    for (eta, method), (_, _, first, out) in calls.items():
        t = np.asarray(times[eta, method])
        reference = calls[eta, "decimation"][3][0]
        emit(
            {
                "what": "lead_methods",
                "n_blocks": n_blocks,
                "b": b,
                "n_energies": n_energies,
                "eta": eta,
                "lead_method": method,
                "share_leads": True,
                "compile_s": None if first is None else first - float(np.min(t)) * n_energies,
                "t_s_per_energy_median": float(np.median(t)),
                "t_s_per_energy_best": float(np.min(t)),
                "t_s_per_energy_rounds": t.tolist(),
                "sweep_s_per_energy_median": float(np.median(sweeps)),
                "sweep_s_per_energy_best": float(np.min(sweeps)),
                "dense_s_median": float(np.median(dense)),
                "dense_s_best": float(np.min(dense)),
                "speedup_vs_dense": median_ratio(dense, t),
                "lead_share": float(np.median(1 - np.asarray(sweeps) / t)),
                "max_residual": float(max(np.max(out[1]), np.max(out[2]))),
                "max_abs_t_minus_decimation": float(np.max(np.abs(out[0] - reference))),
            }
        )


def bench_cpu_devices(n_blocks: int, b: int, state: dict, args) -> None:
    """T(E) per energy with the energies sharded over all host devices against one."""
    blocks, energies, left, right = (state[k] for k in ("blocks", "energies", "left", "right"))
    devices = tuple(jax.local_devices())
    n_energies = -(-int(energies.shape[0]) // len(devices)) * len(devices)
    energies = jnp.linspace(float(energies[0]), float(energies[-1]), n_energies)
    for method in ("decimation", "eigen"):
        call_args = (blocks, left, right, energies, jnp.asarray(ETA))
        single = sweep.compiled_chunk(DEFAULT_MAX_ITERATIONS, devices[:1], True, method)
        split = sweep.compiled_chunk(DEFAULT_MAX_ITERATIONS, devices, True, method)
        timed(single, *call_args, repeat=0)
        timed(split, *call_args, repeat=0)
        t_single = np.asarray(jax.device_get(single(*call_args))[0])
        t_split = np.asarray(jax.device_get(split(*call_args))[0])
        ones, many = [], []
        for _ in range(max(5, args.repeat)):
            ones.append(timed(single, *call_args, repeat=1)[1] / n_energies)
            many.append(timed(split, *call_args, repeat=1)[1] / n_energies)
        emit(
            {
                "what": "cpu_devices",
                "n_blocks": n_blocks,
                "b": b,
                "n_energies": n_energies,
                "lead_method": method,
                "eta": ETA,
                "n_cpu_devices": len(devices),
                "one_device_s_per_energy_median": float(np.median(ones)),
                "split_s_per_energy_median": float(np.median(many)),
                "speedup": median_ratio(ones, many),
                "speedup_rounds": (np.asarray(ones) / np.asarray(many)).tolist(),
                "max_abs_t_difference": float(np.max(np.abs(t_single - t_split))),
            }
        )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="N in {8, 32} x b in 64..512")
    parser.add_argument("--repeat", type=int, default=3, help="steady-state repetitions (best of)")
    parser.add_argument("--no-dense", action="store_true", help="skip the dense baseline")
    parser.add_argument(
        "--sizes",
        help="comma-separated NxB, e.g. 16x128 (dense baseline and gradient for each)",
    )
    parser.add_argument(
        "--openblas-threads", type=int, help="OPENBLAS_NUM_THREADS for LAPACK (see above)"
    )
    parser.add_argument(
        "--cpu-devices",
        type=int,
        default=1,
        help="split the CPU into this many XLA host devices and time energies sharded over "
        "them against one device (see above)",
    )
    args = parser.parse_args(argv)
    if args.full:
        sizes = [(n, b) for n in (8, 32) for b in (64, 128, 256, 512)]
    else:
        sizes = [(32, 64), (32, 128), (8, 256)]
    dense_for, grad_for = [(32, 128)], [(32, 64), (8, 128), (32, 128)]
    if args.sizes:
        sizes = [tuple(int(x) for x in size.split("x")) for size in args.sizes.split(",")]
        dense_for = grad_for = sizes
    energies_for = {64: 8, 128: 4, 256: 2, 512: 1}
    for n_blocks, b in sizes:
        state = bench_size(n_blocks, b, energies_for.get(b, 1), args)
        if (n_blocks, b) in dense_for and not args.no_dense:
            bench_dense(n_blocks, b, state, args)
        if args.sizes:
            bench_lead_methods(n_blocks, b, state, args)
        if args.cpu_devices > 1:
            bench_cpu_devices(n_blocks, b, state, args)
        if (n_blocks, b) in grad_for:
            bench_grad(n_blocks, b, state, args)
            if args.sizes:
                bench_grad(n_blocks, b, state, args, lead_method="eigen")
    return 0


if __name__ == "__main__":
    sys.exit(main())
