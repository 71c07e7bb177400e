# Shared by tools/*: create .venv with Python >= 3.11 and install p2pnode into it (editable),
# skipping the install when pyproject.toml and the requested extras have not changed.
ensure_venv() {
  local extras="${1:-}"
  if [ ! -x .venv/bin/python ]; then
    local py=""
    for cand in python3.13 python3.12 python3.11 python3; do
      if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        py="$cand"; break
      fi
    done
    [ -n "$py" ] || { echo "p2pnode needs Python 3.11 or newer" >&2; exit 1; }
    "$py" -m venv .venv
  fi
  local spec="."
  [ -n "$extras" ] && spec=".[$extras]"
  local hash
  hash="$(sha256sum pyproject.toml | cut -c1-16)"
  local stamp=".venv/.p2pnode-installed-$hash-${extras//,/_}"
  if [ ! -f "$stamp" ]; then
    echo "installing p2pnode${extras:+ [$extras]} into .venv ..." >&2
    if ! .venv/bin/python -m pip install --disable-pip-version-check -e "$spec" >.venv/install.log 2>&1; then
      cat .venv/install.log >&2
      echo "install failed (log above, also in .venv/install.log)" >&2
      exit 1
    fi
    # stamps of an older pyproject.toml are stale; other extras of this one stay installed
    find .venv -maxdepth 1 -name ".p2pnode-installed-*" ! -name ".p2pnode-installed-$hash-*" -delete
    touch "$stamp" ".venv/.p2pnode-installed-$hash-"
    case ",$extras," in *,test,*) touch ".venv/.p2pnode-installed-$hash-demo" ;; esac
  fi
}
