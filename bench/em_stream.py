"""EM streamed from a FITS file (bayesmix.stream) against the in-memory fit_em: time and peak memory.

D = 4 features with per-star 4x4 correlated error covariances (4 error and 6
correlation columns), K = 5 components. A FITS binary table of N stars is written
chunk by chunk under ``--tmp`` (about N * 112 bytes; 1.1 GB at N = 1e7) by a separate
process, and deleted at the end. Then, each in a fresh subprocess (so that its peak
resident memory, ``ru_maxrss``, is its own, JAX runtime included):

* ``stream``: :func:`bayesmix.stream.fit_em_streamed` on the whole file from a given
  start, ``--iters`` iterations (tol = 0), run twice; the second run (programs
  compiled) gives the time per iteration (one pass over the file: read, build the
  covariances, E-step statistics) and the moments pass is timed on its own;
* ``memory``: :func:`bayesmix.em.fit_em` on the first ``--n-memory`` stars read into
  memory, the same start and iterations, run twice; the second run gives its time per
  iteration. Also the streamed fit on those same ``--n-memory`` stars (from the same
  file), so the ratio streamed / in-memory is at equal N.

Usage::

    python bench/em_stream.py                   # N = 1e6 streamed, in-memory at 1e6 (a few minutes)
    python bench/em_stream.py --n 1e7 --iters 3 # the issue's scale (~1.1 GB of disk under /tmp)
    python bench/em_stream.py --save out.json   # also write the JSON

JSON keys: ``machine`` {cpu_count, load_avg, jax, numpy}; ``settings`` {n, n_memory,
n_features, n_components, iters, chunk_size}; ``stream`` {n_stars, iter_s, moments_s,
first_run_s, peak_mb}; ``memory`` {n_stars, iter_s, first_run_s, peak_mb,
stream_iter_s_same_n, stream_peak_mb_same_n}; ``ratio_stream_over_memory`` (per-iteration
time at ``n_memory``); ``file_mb``; ``targets`` {peak_under_2gb}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

D, K = 4, 5
PAIRS = [(a, b) for a in range(D) for b in range(a + 1, D)]
COLUMNS = [f"x{j}" for j in range(D)] + [f"e{j}" for j in range(D)] + [f"r{a}{b}" for a, b in PAIRS]


def _truth():
    rng = np.random.default_rng(0)
    means = rng.normal(0.0, 3.0, (K, D))
    scales = rng.uniform(0.5, 1.5, (K, D))
    weights = np.array([0.4, 0.25, 0.15, 0.12, 0.08])
    covs = np.stack([np.diag(s**2) for s in scales])
    return weights, means, covs


def _chunk(rng, n):
    """``n`` simulated stars as FITS-ready columns (big-endian rows)."""
    weights, means, covs = _truth()
    comp = rng.choice(K, size=n, p=weights)
    true = means[comp] + np.sqrt(np.einsum("kaa->ka", covs))[comp] * rng.normal(size=(n, D))
    err = rng.uniform(0.2, 1.0, (n, D))
    rho = rng.uniform(-0.3, 0.3, (n, len(PAIRS)))  # |rho| <= 0.3: 4x4 correlation matrices stay PD
    corr = np.tile(np.eye(D), (n, 1, 1))
    for p, (a, b) in enumerate(PAIRS):
        corr[:, a, b] = corr[:, b, a] = rho[:, p]
    cov = corr * err[:, :, None] * err[:, None, :]
    x = true + np.einsum("nab,nb->na", np.linalg.cholesky(cov), rng.normal(size=(n, D)))
    rec = np.empty(n, np.dtype([(c, ">f8") for c in COLUMNS]))
    for j in range(D):
        rec[f"x{j}"], rec[f"e{j}"] = x[:, j], err[:, j]
    for p, (a, b) in enumerate(PAIRS):
        rec[f"r{a}{b}"] = rho[:, p]
    return rec


def generate(path: Path, n: int, chunk: int = 2**18) -> None:
    """A FITS binary table of ``n`` stars, written chunk by chunk (memory ~ chunk, not n)."""
    from astropy.io import fits

    header = fits.BinTableHDU.from_columns([fits.Column(name=c, format="D") for c in COLUMNS], nrows=0).header
    header["NAXIS2"] = n
    rng = np.random.default_rng(1)
    tmp = path.with_suffix(".part")
    with open(tmp, "wb") as fh:
        fh.write(fits.PrimaryHDU().header.tostring().encode("ascii"))
        fh.write(header.tostring().encode("ascii"))
        for start in range(0, n, chunk):
            fh.write(_chunk(rng, min(chunk, n - start)).tobytes())
        fh.write(b"\0" * (-(n * 8 * len(COLUMNS)) % 2880))
    os.replace(tmp, path)


def _start():
    from bayesmix.likelihood import MixtureParams

    _, means, covs = _truth()
    # A start near, not at, the truth: EM has work to do in every iteration.
    return MixtureParams(np.full(K, 1.0 / K), means + 0.5, covs * 1.5 + np.eye(D))


def _open(path, chunk, n=None):
    from bayesmix.stream import open_catalogue

    cat = open_catalogue(path, [f"x{j}" for j in range(D)], [f"e{j}" for j in range(D)],
                         correlations={(f"x{a}", f"x{b}"): f"r{a}{b}" for a, b in PAIRS}, chunk_size=chunk)
    return cat if n is None else dataclasses.replace(cat, stop=min(n, cat.n_stars))  # the first n rows


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_stream(path, iters, chunk, n=None) -> dict:
    from bayesmix.stream import _moments, fit_em_streamed

    cat = _open(path, chunk, n)
    t = time.perf_counter()
    fit_em_streamed(0, cat, K, init_params=_start(), max_iter=iters, tol=0.0)
    first = time.perf_counter() - t
    t = time.perf_counter()
    _moments(cat, np.zeros(D))
    moments = time.perf_counter() - t
    t = time.perf_counter()
    res = fit_em_streamed(0, cat, K, init_params=_start(), max_iter=iters, tol=0.0)
    total = time.perf_counter() - t
    # iters M-steps take iters + 1 passes (the last evaluates the returned parameters).
    return {"n_stars": cat.n_stars, "iter_s": (total - moments) / (iters + 1), "moments_s": moments,
            "first_run_s": first, "log_likelihood": res.log_likelihood, "peak_mb": _peak_mb()}


def run_memory(path, iters, n) -> dict:
    from astropy.table import Table

    from bayesmix.em import fit_em

    table = Table.read(path, memmap=True)[:n]
    x = np.stack([np.asarray(table[f"x{j}"], float) for j in range(D)], 1)
    err = np.stack([np.asarray(table[f"e{j}"], float) for j in range(D)], 1)
    corr = np.tile(np.eye(D), (len(x), 1, 1))
    for a, b in PAIRS:
        corr[:, a, b] = corr[:, b, a] = np.asarray(table[f"r{a}{b}"], float)
    cov = corr * err[:, :, None] * err[:, None, :]
    del table, corr
    t = time.perf_counter()
    fit_em(0, x, K, errors=cov, init_params=_start(), max_iter=iters, tol=0.0)
    first = time.perf_counter() - t
    t = time.perf_counter()
    res = fit_em(0, x, K, errors=cov, init_params=_start(), max_iter=iters, tol=0.0)
    total = time.perf_counter() - t
    return {"n_stars": len(x), "iter_s": total / (iters + 1), "first_run_s": first,
            "log_likelihood": res.log_likelihood, "peak_mb": _peak_mb()}


def _child(*args) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *map(str, args)], capture_output=True,
                         text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=float, default=1e6, help="stars streamed from the file")
    ap.add_argument("--n-memory", type=float, default=1e6, help="stars of the in-memory comparison")
    ap.add_argument("--iters", type=int, default=4)
    ap.add_argument("--chunk", type=int, default=2**16)
    ap.add_argument("--tmp", default="/tmp", help="folder of the temporary FITS file")
    ap.add_argument("--save", help="write the JSON here")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        mode, path, iters, chunk_or_n, *rest = args.child
        if mode == "stream":
            res = run_stream(path, int(iters), int(chunk_or_n), int(rest[0]) if rest else None)
        else:
            res = run_memory(path, int(iters), int(chunk_or_n))
        print(json.dumps(res))
        return res
    n, n_mem = int(args.n), int(args.n_memory)
    path = Path(args.tmp) / f"bayesmix_em_stream_{os.getpid()}.fits"
    try:
        t = time.perf_counter()
        generate(path, max(n, n_mem))
        gen_s = time.perf_counter() - t
        stream = _child("stream", path, args.iters, args.chunk, n)
        memory = _child("memory", path, args.iters, n_mem)
        same_n = stream if n == n_mem else _child("stream", path, args.iters, args.chunk, n_mem)
        file_mb = path.stat().st_size / 2**20
    finally:
        path.unlink(missing_ok=True)
    import jax

    memory |= {"stream_iter_s_same_n": same_n["iter_s"], "stream_peak_mb_same_n": same_n["peak_mb"]}
    out = {"machine": {"cpu_count": os.cpu_count(), "load_avg": os.getloadavg(),
                       "platform": platform.platform(), "jax": jax.__version__, "numpy": np.__version__},
           "settings": {"n": n, "n_memory": n_mem, "n_features": D, "n_components": K, "iters": args.iters,
                        "chunk_size": args.chunk},
           "generate_s": gen_s, "file_mb": file_mb, "stream": stream, "memory": memory,
           "ratio_stream_over_memory": same_n["iter_s"] / memory["iter_s"],
           "targets": {"peak_under_2gb": stream["peak_mb"] < 2048}}
    print(f"{'path':<10}{'N':>12}{'s/iter':>10}{'first run s':>13}{'peak MB':>10}")
    print(f"{'stream':<10}{stream['n_stars']:>12}{stream['iter_s']:>10.2f}{stream['first_run_s']:>13.1f}"
          f"{stream['peak_mb']:>10.0f}")
    if n != n_mem:
        print(f"{'stream':<10}{same_n['n_stars']:>12}{same_n['iter_s']:>10.2f}{same_n['first_run_s']:>13.1f}"
              f"{same_n['peak_mb']:>10.0f}")
    print(f"{'memory':<10}{memory['n_stars']:>12}{memory['iter_s']:>10.2f}{memory['first_run_s']:>13.1f}"
          f"{memory['peak_mb']:>10.0f}")
    print(f"streamed / in-memory time per iteration at N = {n_mem}: {out['ratio_stream_over_memory']:.2f}; "
          f"moments pass {stream['moments_s']:.1f} s; file {file_mb:.0f} MB written in {gen_s:.0f} s")
    if args.save:
        Path(args.save).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
