#!/usr/bin/env bash
# Proves the infrastructure templates:
#   1. cfn-lint passes on every template (infra/*.yaml);
#   2. every cfn-guard rule (infra/rules/*.guard) passes or skips on every template and
#      passes on at least one of them (a rule that applies nowhere proves nothing);
#   3. every rule fails (cfn-guard exit 19) on its broken template
#      infra/rules/tests/<rule>-fail.yaml, which every other rule passes or skips,
#      so each broken template breaks exactly its own rule;
#   4. infra/tests/test_code_in_step.py: code, infra/code-calls.json and the template agree;
#   5. infra/tests/test_policies.py: what the templates must say to deploy and to resist a
#      compromised source account (key, bucket and vault policies, SCPs, rules, alarms);
#   6. checkov on every template: any finding not in infra/tests/checkov-skips.yaml (each
#      skip with its reason) fails, and so does a skip that no longer matches;
#   7. parliament on every IAM policy and SCP (infra/tests/lint_iam.py), with the skips of
#      infra/tests/parliament-skips.yaml;
#   8. infra/tests/mutate.py: every realistic regression of the templates it knows is
#      caught by one of the checks above ("N/N mutants caught").
#
# Needs: cfn-lint (pip install cfn-lint; used from ${VENV:-.venv}/bin if there),
#        cfn-guard 3 (cargo install --locked cfn-guard), python3 with PyYAML (a
#        dependency of cfn-lint: the venv's python is used when present), and checkov
#        and parliament in ${VENV:-.venv}/infra-tools (tests/scripts/setup.sh
#        --with-infra-tools installs them, pinned).
# Usage: bash infra/check.sh        (from any directory; exits non-zero on any failure)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV_DIR="${VENV:-.venv}"
# The checks import each other (infra/tests/cfn.py); leave no __pycache__ in the tree.
export PYTHONDONTWRITEBYTECODE=1
passed=0
failed=0
pass() { passed=$((passed + 1)); printf 'ok   %s\n' "$*"; }
fail() { failed=$((failed + 1)); printf 'FAIL %s\n' "$*"; }
die() { printf 'infra/check.sh: %s\n' "$*" >&2; exit 2; }

# ---------------------------------------------------------------- tools
if [[ -x "$VENV_DIR/bin/cfn-lint" ]]; then
    CFN_LINT="$VENV_DIR/bin/cfn-lint"
elif command -v cfn-lint >/dev/null 2>&1; then
    CFN_LINT="$(command -v cfn-lint)"
else
    die "cfn-lint not found in $VENV_DIR/bin or on PATH; install it: pip install cfn-lint"
fi

if command -v cfn-guard >/dev/null 2>&1; then
    CFN_GUARD="$(command -v cfn-guard)"
elif [[ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cfn-guard" ]]; then
    CFN_GUARD="${CARGO_HOME:-$HOME/.cargo}/bin/cfn-guard"
else
    die "cfn-guard not found on PATH or in ${CARGO_HOME:-$HOME/.cargo}/bin; install it: cargo install --locked cfn-guard"
fi
guard_version="$("$CFN_GUARD" --version 2>/dev/null || true)"
[[ "$guard_version" =~ \ 3\. ]] || die "cfn-guard 3.x required, found: ${guard_version:-unknown}"

if [[ -x "$VENV_DIR/bin/python" ]]; then
    PYTHON="$VENV_DIR/bin/python"
elif command -v python3 >/dev/null 2>&1; then
    PYTHON="$(command -v python3)"
else
    die "python3 not found"
fi

INFRA_PYTHON="$VENV_DIR/infra-tools/bin/python"
[[ -x "$INFRA_PYTHON" && -x "$VENV_DIR/infra-tools/bin/checkov" ]] ||
    die "checkov and parliament not found in $VENV_DIR/infra-tools; install them: bash tests/scripts/setup.sh --with-infra-tools"

started=$SECONDS
shopt -s nullglob
templates=(infra/*.yaml)
rules=(infra/rules/*.guard)
(( ${#templates[@]} > 0 )) || die "no templates in infra/"
(( ${#rules[@]} > 0 )) || die "no rules in infra/rules/"

# Runs cfn-guard; prints its exit code. Output goes to $guard_log.
guard_log="$(mktemp)"
trap 'rm -f "$guard_log"' EXIT
guard() {
    local rc=0
    "$CFN_GUARD" validate --rules "$1" --data "$2" --show-summary all >"$guard_log" 2>&1 || rc=$?
    echo "$rc"
}
# Status (PASS/SKIP/FAIL) of the last single-rule run.
guard_status() { sed -n 's/.* Status = \([A-Z]*\).*/\1/p' "$guard_log" | head -n 1; }

# ---------------------------------------------------------------- 1. cfn-lint
echo "== cfn-lint ($("$CFN_LINT" --version 2>&1)) on every template"
for template in "${templates[@]}"; do
    if out="$("$CFN_LINT" --format parseable -- "$template" 2>&1)"; then
        pass "cfn-lint $template"
    else
        fail "cfn-lint $template"
        printf '%s\n' "$out" | sed 's/^/       /'
    fi
done

# ---------------------------------------------------------------- 2. rules on the real templates
echo "== cfn-guard ($guard_version): every rule on the real templates"
for rule in "${rules[@]}"; do
    name="$(basename "$rule" .guard)"
    statuses=()
    ok=1
    applied=0
    for template in "${templates[@]}"; do
        rc="$(guard "$rule" "$template")"
        status="$(guard_status)"
        statuses+=("$(basename "$template" .yaml)=${status:-rc$rc}")
        if [[ "$rc" != 0 ]]; then
            ok=0
            fail "$name on $template (exit $rc)"
            sed 's/^/       /' "$guard_log" | head -n 60
        fi
        [[ "$status" == PASS ]] && applied=1
    done
    if (( ok )); then
        if (( applied )); then
            pass "$name: ${statuses[*]}"
        else
            fail "$name applies to no real template (${statuses[*]})"
        fi
    fi
done

# ---------------------------------------------------------------- 3. rules on their broken templates
echo "== cfn-guard: each rule fails on its broken template, and only that rule"
for rule in "${rules[@]}"; do
    name="$(basename "$rule" .guard)"
    broken="infra/rules/tests/$name-fail.yaml"
    if [[ ! -f "$broken" ]]; then
        fail "$name has no broken template $broken"
        continue
    fi
    rc="$(guard "$rule" "$broken")"
    if [[ "$rc" != 19 ]]; then
        fail "$name did not fail on $broken (exit $rc, expected 19): the rule does not catch what it should"
        sed 's/^/       /' "$guard_log" | head -n 40
        continue
    fi
    others=()
    for other in "${rules[@]}"; do
        [[ "$other" == "$rule" ]] && continue
        orc="$(guard "$other" "$broken")"
        [[ "$orc" == 0 ]] || others+=("$(basename "$other" .guard)(exit $orc)")
    done
    if (( ${#others[@]} == 0 )); then
        pass "$name fails on $(basename "$broken") (exit 19); every other rule passes it"
    else
        fail "$broken also breaks: ${others[*]}"
    fi
done
for broken in infra/rules/tests/*-fail.yaml; do
    name="$(basename "$broken" -fail.yaml)"
    [[ -f "infra/rules/$name.guard" ]] || fail "$broken has no rule infra/rules/$name.guard"
done

# ---------------------------------------------------------------- 4. code and template in step
echo "== code, infra/code-calls.json and infra/source-account.yaml in step"
if "$PYTHON" infra/tests/test_code_in_step.py; then
    pass "infra/tests/test_code_in_step.py"
else
    fail "infra/tests/test_code_in_step.py (see the FAIL lines above)"
fi

# ---------------------------------------------------------------- 5. policies by meaning
echo "== what the templates must say (infra/tests/test_policies.py)"
if out="$("$PYTHON" infra/tests/test_policies.py --quiet 2>&1)"; then
    pass "infra/tests/test_policies.py: ${out##*$'\n'}"
else
    fail "infra/tests/test_policies.py"
    printf '%s\n' "$out" | sed 's/^/       /'
fi

# ---------------------------------------------------------------- 6. checkov
echo "== checkov ($("$VENV_DIR/infra-tools/bin/checkov" --version 2>/dev/null)) on every template"
if out="$("$INFRA_PYTHON" infra/tests/run_checkov.py "${templates[@]}" 2>&1)"; then
    pass "${out##*$'\n'}"
else
    fail "checkov"
    printf '%s\n' "$out" | sed 's/^/       /'
fi

# ---------------------------------------------------------------- 7. parliament
echo "== parliament ($("$INFRA_PYTHON" -m pip show parliament 2>/dev/null | sed -n 's/^Version: //p')) on every IAM policy and SCP"
if out="$("$INFRA_PYTHON" infra/tests/lint_iam.py "${templates[@]}" 2>&1)"; then
    pass "${out##*$'\n'}"
else
    fail "parliament"
    printf '%s\n' "$out" | sed 's/^/       /'
fi

# ---------------------------------------------------------------- 8. mutation test
echo "== mutation test (infra/tests/mutate.py): every regression is caught by some check"
if out="$("$PYTHON" infra/tests/mutate.py 2>&1)"; then
    pass "${out##*$'\n'}"
else
    fail "mutation test"
    printf '%s\n' "$out" | grep -v '^ok ' | sed 's/^/       /'
fi

echo "== $passed passed, $failed failed ($((SECONDS - started)) s)"
(( failed == 0 ))
