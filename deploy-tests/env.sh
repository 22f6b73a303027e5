# Sourced by scripts/check-deploy and scripts/render-manifests: makes sure
# the Python virtualenv with Helm's engine (helm-python-sdk) and
# kubernetes-validate exists and is current, then sets $WEFT_PY to its
# python. Installs Debian's python3-venv first when it is missing. The venv
# is made from Debian's /usr/bin/python3, whatever else is on PATH.
# Everything comes from Debian's archive and PyPI; nothing else is fetched.

weft_venv_setup() {
  local here req cache venv stamp want py=/usr/bin/python3
  here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
  req="$here/requirements.txt"
  cache="${WEFT_LAB_CACHE:-/var/cache/weft-lab}"
  venv="$cache/venv"
  stamp="$venv/.weft-requirements.sha256"
  want=$( (cat "$req"; "$py" --version 2>&1) | sha256sum | cut -d' ' -f1)
  if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    WEFT_PY="$venv/bin/python"
    return 0
  fi
  if ! "$py" -c 'import ensurepip, venv' 2>/dev/null; then
    if [ "$(id -u)" -ne 0 ]; then
      echo "python3-venv is missing: apt-get install python3-venv (as root), or run this as root" >&2
      return 1
    fi
    echo "==> apt-get install python3 python3-venv" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3 python3-venv >/dev/null ||
      { DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3 python3-venv >/dev/null; } || return 1
  fi
  mkdir -p "$cache" || { echo "cannot create $cache: run as root or set WEFT_LAB_CACHE" >&2; return 1; }
  echo "==> Python venv $venv (pip install -r deploy-tests/requirements.txt)" >&2
  rm -rf "$venv"
  "$py" -m venv "$venv" &&
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req" >&2 || return 1
  echo "$want" >"$stamp"
  WEFT_PY="$venv/bin/python"
}
