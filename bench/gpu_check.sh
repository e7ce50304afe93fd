#!/usr/bin/env bash
# The GPU rows of bench/ in one call on a lent device machine (issue 16): NUTS at N = 1e6 and
# 1e7 stars (D = 2, K = 3, bench/nuts_scaling.py) and the mixed-precision likelihood's tests
# on the GPU. A device session has about 15 minutes in all, starts included, so everything
# runs in one command; results land in $OUT (gpu_scaling.json, gpu_check.log).
#
# The device image holds JAX, NumPyro, SciPy, matplotlib, xarray, h5py and pytest (Python 3.12)
# but not bayesmix's other dependencies; they travel as wheels in .whl/ (git-ignored):
#
#   bash bench/gpu_check.sh --download          # here, once: about 20 MB of wheels into .whl/
#   # then the device tool: run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=560)
#
# GPU_CHECK_N overrides the sizes (a dry run on CPUs: GPU_CHECK_N=1e3). Checked on CPUs with
# the device's versions (Python 3.12, JAX 0.11.2, NumPyro 0.21, the
# wheels installed the same way); not yet on a GPU.
set -uo pipefail
cd "$(dirname "$0")/.."

WHEELS=(blackjax==1.7.1 arviz==1.3.0 arviz-base==1.3.1 arviz-stats==1.3.3 arviz-plots==1.3.2
        xarray-einstats corner astropy pyerfa astropy-iers-data h5netcdf fastprogress)

if [[ "${1:-}" == "--download" ]]; then
  mkdir -p .whl
  platforms=()
  for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
           manylinux1_x86_64; do
    platforms+=(--platform "$p")
  done
  exec python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d .whl "${WHEELS[@]}"
fi

out="${OUT:-$(mktemp -d)}"
log="$out/gpu_check.log"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  .whl/*.whl || { echo "the wheels in .whl/ did not install: run bash bench/gpu_check.sh --download here first"; exit 2; }
export PYTHONPATH="$PWD:/tmp/site" PYTHONUNBUFFERED=1
{
  nvidia-smi -L
  python3 -c 'import jax, numpyro, bayesmix; print("jax", jax.__version__, jax.devices(), "numpyro",
numpyro.__version__, "bayesmix", bayesmix.__version__)'
  # The mixed-precision likelihood against float64 autodiff, on the GPU (about a minute).
  timeout 180 python3 -m pytest -q -p no:cacheprovider -n0 tests/test_likelihood.py -k "mixed or autodiff"
  # NUTS time per 1000 draws at N = 1e6 and 1e7 (EM start and compilation reported apart).
  # shellcheck disable=SC2086  # the sizes are words
  timeout 420 python3 bench/nuts_scaling.py --n ${GPU_CHECK_N:-1e6 1e7} --limit 200 --save "$out/gpu_scaling.json"
} 2>&1 | tee "$log"
