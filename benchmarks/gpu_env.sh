# Sourced by the GPU scripts (gpu_check.sh, gpu_issue10.sh, gpu_issue22.sh): on a GPU machine
# with PyTorch and no network, find a Python that imports flexsample and what the script needs.
#
#   gpu_python REPO CHECK   sets PY (and PYTHONPATH when it installs); returns 1 if none works
#
# Tried in order: REPO/.venv/bin/python (it rarely travels: its interpreter links to the
# machine it was made on), then $PY or python3 as they are, then python3 with the carried
# wheels of REPO/.whl/ installed to /tmp/site and this checkout to /tmp/fs. CHECK (Python code)
# runs from /tmp, so that the checkout's flat folders are not imported in place of the package.
# FORCE_INSTALL=1 goes straight to the install.
gpu_python() {
  local repo=$1 check=$2 candidate
  if [ -z "${FORCE_INSTALL:-}" ]; then
    for candidate in "$repo/.venv/bin/python" "${PY:-python3}"; do
      command -v "$candidate" >/dev/null 2>&1 || continue
      if (cd /tmp && timeout 15 "$candidate" -c "$check"); then
        PY=$candidate
        return 0
      fi
    done
  fi
  PY=python3
  if [ -d "$repo/.whl" ]; then
    timeout 30 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --upgrade --target /tmp/site "$repo"/.whl/*.whl
  fi
  rm -rf /tmp/fs
  timeout 30 "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile \
    --target /tmp/fs "$repo"
  export PYTHONPATH=/tmp/fs:/tmp/site
  (cd /tmp && timeout 15 "$PY" -c "$check")
}
