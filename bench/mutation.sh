#!/usr/bin/env bash
# Mutation testing of one core module with its test subset, then killed/survived counts.
#   bench/mutation.sh geometry          (modules: the [tool.eatai.mutation.*] tables of pyproject.toml)
#   bench/mutation.sh schedules "eatai.attacks.schedules.xǁOscillationScheduleǁ*"   (some mutants only)
#   MUTATION_TESTS=tests/test_apgd_rules.py bench/mutation.sh schedules   (another test subset)
# mutmut 3 reads its settings from ./pyproject.toml and copies the project to ./mutants, so each
# module runs in its own copy of the tracked files, .mutation/<module>/, whose [tool.mutmut] is
# that module's: the files to mutate and the tests that cover them. Results stay there, so a
# second run only tests what changed; `cd .mutation/<module> && mutmut browse` to read them.
# Heavy on CPU: run it under `flock /tmp/eatai-heavy.lock` on a shared machine.
set -euo pipefail
module=${1:?usage: bench/mutation.sh <module> [mutant-name-pattern ...]}
shift
root=$(cd "$(dirname "$0")/.." && pwd)
work="$root/.mutation/$module"
cd "$root"
mkdir -p "$work"
# the tracked files plus new ones not yet committed (tests being written); not the ignored ones
git ls-files -z --cached --others --exclude-standard | tar --null --ignore-failed-read -T - -cf - | tar -xf - -C "$work"
python - "$module" "$work/pyproject.toml" <<'PY'
import json, os, re, sys, tomllib
from pathlib import Path
module, path = sys.argv[1], Path(sys.argv[2])
text = path.read_text()
tables = tomllib.loads(text)['tool']['eatai']['mutation']
if module not in tables:
    sys.exit(f"unknown module {module!r}: one of {', '.join(tables)}")
spec = tables[module]
tests = os.environ.get('MUTATION_TESTS', '').split() or spec['tests']   # MUTATION_TESTS: another subset
tests = [t for t in tests if (path.parent / t).exists()]
# tests too slow to run once per mutant, covered by faster ones (e.g. a subprocess killed with -9)
deselect = [arg for node in spec.get('deselect', []) for arg in ('--deselect', node)]
# drop the project's [tool.mutmut] table and put this module's in its place
text = re.sub(r'\n\[tool\.mutmut\]\n.*?(?=\n\[)', '\n', text, flags=re.S)
text += ('\n[tool.mutmut]\nsource_paths = ["eatai/"]\n'
         f'only_mutate = {json.dumps(spec["only_mutate"])}\n'
         f'pytest_add_cli_args = {json.dumps(["-p", "no:cacheprovider", *deselect])}\n'
         'process_isolation = "forkserver"\n'
         f'pytest_add_cli_args_test_selection = {json.dumps(tests)}\n')
path.write_text(text)
print(f"mutating {', '.join(spec['only_mutate'])} with {', '.join(tests)}")
PY
cd "$work"
unset PYTHONPATH   # mutmut puts ./mutants first on sys.path; the worktree must not shadow it
# one intra-op thread per worker: the tests use tiny tensors, and two workers already fill two cores
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
start=$(date +%s)
mutmut run --max-children "${MUTMUT_CHILDREN:-2}" "$@" > mutmut-run.log 2>&1 || { tail -30 mutmut-run.log; exit 1; }
end=$(date +%s)
mutmut export-cicd-stats > /dev/null
python - <<PY
import json
s = json.load(open('mutants/mutmut-cicd-stats.json'))
print(f"module $module: {s['total']} mutants, killed {s['killed']}, survived {s['survived']}, "
      f"no tests {s['no_tests']}, timeout {s['timeout']}, suspicious {s['suspicious']}, "
      f"skipped {s['skipped']}; run took $((end - start)) s")
PY
echo "surviving mutants (mutmut show <name> in $work for the diff):"
mutmut results | grep -v ': killed' || true
