# Sourced (from the repository root) by the G.pt scripts in this directory: PYTHON (the
# interpreter; set it to override), PY_PREFIX ("nice -n 19" when NICE is set, else empty)
# and one-thread XLA, as in the documented timings (set XLA_FLAGS to override).
PYTHON="${PYTHON:-.venv/bin/python}"
PY_PREFIX=""
[ -n "${NICE:-}" ] && PY_PREFIX="nice -n 19"
export XLA_FLAGS="${XLA_FLAGS:---xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1}"
