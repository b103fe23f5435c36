#!/bin/sh
# An `origin` executable running the code of an earlier commit, for same-session A/B runs
# (bench/README.md): `upload_bench.py --origin "$(bench/origin_at.sh REV DIR)"`.
#
# It makes a git worktree of REV in DIR and writes DIR/.ab/origin, which runs this checkout's
# .venv Python (so the same pinned libraries) with DIR's packages instead of the editable
# install's: a sitecustomize drops the editable finder, PYTHONSAFEPATH keeps the working
# directory off sys.path, and both reach `origin serve`'s spawned workers through the
# environment. Remove it with `git worktree remove --force DIR`.
set -eu
[ $# -eq 2 ] || { echo "usage: $0 REV DIR" >&2; exit 2; }
rev=$1
dir=$(realpath -m "$2")
repo=$(cd "$(dirname "$0")/.." && pwd)
[ -e "$dir" ] || git -C "$repo" worktree add --detach "$dir" "$rev" >&2
mkdir -p "$dir/.ab"
cat >"$dir/.ab/sitecustomize.py" <<'EOF'
import sys

sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
EOF
cat >"$dir/.ab/origin" <<EOF
#!/bin/sh
PYTHONSAFEPATH=1 PYTHONPATH="$dir/.ab:$dir" exec "$repo/.venv/bin/python" \\
    -c 'import sys; from origin.cli import main; sys.exit(main())' "\$@"
EOF
chmod +x "$dir/.ab/origin"
# Fails here, not in the middle of a benchmark, if the old code is not what runs.
got=$("$dir/.ab/origin" --help >/dev/null && PYTHONSAFEPATH=1 PYTHONPATH="$dir/.ab:$dir" \
    "$repo/.venv/bin/python" -c 'import origin; print(origin.__file__)')
case $got in "$dir"/*) ;; *) echo "$0: imports $got, not $dir" >&2; exit 1 ;; esac
echo "$dir/.ab/origin"
