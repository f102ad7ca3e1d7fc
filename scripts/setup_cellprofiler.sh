#!/usr/bin/env bash
# Create the CellProfiler 4.2.8.1 environment (Python 3.9 + Java 17) used by the ground-truth and feature rules.
# Usage: scripts/setup_cellprofiler.sh VENV_DIR LOCK_FILE
# CellProfiler 4.2.8.1 runs headless only on Python <= 3.9; its lock is installed in two steps:
#   1. build tools pinned to what python-javabridge (sdist only) compiles against;
#   2. the lock with --no-deps (skips wxPython and mysqlclient, which headless runs do not need)
#      and --no-build-isolation (javabridge builds against the numpy/Cython of step 1).
set -euo pipefail
venv=${1:?venv dir}
lock=${2:?lock file}

find_python39() {
  for cand in "${PYTHON39:-}" python3.9 "$HOME"/.pyenv/versions/3.9*/bin/python3.9; do
    [ -n "$cand" ] || continue
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; assert sys.version_info[:2] == (3, 9)' 2>/dev/null; then
      command -v "$cand"; return 0
    fi
  done
  return 1
}

find_java_home() {
  for cand in "${JAVA_HOME:-}" /usr/lib/jvm/java-17-openjdk-amd64 /usr/lib/jvm/java-17-openjdk* /usr/lib/jvm/*17*; do
    [ -n "$cand" ] && [ -x "$cand/bin/javac" ] && { echo "$cand"; return 0; }
  done
  return 1
}

if ! py39=$(find_python39); then
  cat >&2 <<'MSG'
error: CellProfiler 4.2.8.1 needs Python 3.9, and none was found (tried $PYTHON39, python3.9, ~/.pyenv/versions/3.9*).
  Get one with:   pyenv install 3.9.18      (or your OS package, e.g. python3.9-dev)
  then rerun:     make setup                (or PYTHON39=/path/to/python3.9 make setup)
  On a cluster:   snakemake --sdm conda uses envs/cellprofiler.yaml (bioconda cellprofiler=4.2.8) instead,
                  with groundtruth.cellprofiler: cellprofiler in the config.
MSG
  exit 1
fi
if ! java_home=$(find_java_home); then
  echo "error: CellProfiler needs a Java 17 JDK (javac); install openjdk-17-jdk or set JAVA_HOME." >&2
  exit 1
fi

echo "CellProfiler env: $venv (python $py39, JAVA_HOME $java_home)"
rm -rf "$venv"
"$py39" -m venv "$venv"
"$venv/bin/pip" install -q -U pip
"$venv/bin/pip" install -q numpy==1.23.5 Cython==0.29.37 setuptools==58.1.0 wheel
JAVA_HOME="$java_home" "$venv/bin/pip" install -q --no-deps --no-build-isolation -r "$lock"
JAVA_HOME="$java_home" "$venv/bin/cellprofiler" --version
