# Sourced by every launcher (not run): the repository root, the Python to use, the import path.
# PYTHON wins when set; else an active virtualenv's python; else ./.venv's (bin/python, or Scripts/python.exe
# as a Windows venv has it, e.g. under Git Bash); else python / python3 on PATH.
# Windows (Git Bash, MSYS, Cygwin): ROOT in D:/x/y form (`pwd -W`), which bash and a native python.exe both
# read, and PYTHONPATH entries separated by ';' as Windows Python expects (POSIX: ':').
case "$(uname -s 2>/dev/null)" in MINGW*|MSYS*|CYGWIN*) SFTBENCH_WINDOWS=1; _sep=";";; *) SFTBENCH_WINDOWS=; _sep=":";; esac
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && { [ -n "$SFTBENCH_WINDOWS" ] && pwd -W 2>/dev/null || pwd; })"
# venv_python DIR: the interpreter of the virtualenv DIR (POSIX bin/ or Windows Scripts/), empty when none.
venv_python() {
  if [ -x "$1/bin/python" ]; then echo "$1/bin/python"
  elif [ -x "$1/Scripts/python.exe" ]; then echo "$1/Scripts/python.exe"
  elif [ -x "$1/Scripts/python" ]; then echo "$1/Scripts/python"; fi
}
if [ -z "${PYTHON:-}" ]; then
  if [ -z "${VIRTUAL_ENV:-}" ] && [ -n "$(venv_python "$ROOT/.venv")" ]; then PYTHON="$(venv_python "$ROOT/.venv")"
  else PYTHON="$(command -v python || command -v python3)"; fi
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+$_sep$PYTHONPATH}"
export TOKENIZERS_PARALLELISM="${TOKENIZERS_PARALLELISM:-false}"
