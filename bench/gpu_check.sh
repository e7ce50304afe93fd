#!/usr/bin/env bash
# The GPU rows of bench/ in one call on a lent device machine (issue 16): the mixed-precision
# likelihood's tests on the GPU, then NUTS at N = 1e6 and 1e7 stars (D = 2, K = 3,
# bench/nuts_scaling.py). A session has about 15 minutes of device time, starts included, so
# everything runs in one command of under 600 s; results land in $OUT (gpu_check.log,
# gpu_scaling_1e6.json, gpu_scaling_1e7.json), each N's JSON written as soon as it is done.
#
# The device image holds JAX, NumPyro, SciPy, matplotlib, xarray, h5py and pytest (Python 3.12)
# but not bayesmix's other dependencies; they travel as wheels in .whl/ (git-ignored), fetched
# on this machine in the same session:
#
#   bash bench/gpu_check.sh --download    # about 20 MB of wheels into .whl/
#   # then the device tool: run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=590)
#
# GPU_CHECK_N overrides the sizes (a dry run on CPUs: GPU_CHECK_N=1e3). Checked on CPUs with the
# device image's Python 3.12, JAX 0.11.2 and NumPyro 0.21 and the wheels installed as below; not
# yet on a GPU.
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
  timeout 150 python3 -m pytest -q -p no:cacheprovider -n0 tests/test_likelihood.py -k "mixed or autodiff"
  # NUTS per 1000 draws (EM start and compilation reported apart), one process per N.
  for n in ${GPU_CHECK_N:-1e6 1e7}; do
    budget=$([[ "$n" == 1e7 ]] && echo 250 || echo 150)
    timeout "$budget" python3 bench/nuts_scaling.py --n "$n" --limit $((budget / 2)) \
      --save "$out/gpu_scaling_$n.json"
  done
} 2>&1 | tee "$log"
