#!/usr/bin/env python3
"""Keep the Lambda code, infra/code-calls.json and infra/source-account.yaml in step.

Checks, one output line each:
  * environment: every variable in code-calls.json for a function ("environment") is
    set in that function's Environment in the template, and the template sets no other
    (variables listed as "optional_environment" are read only if set, and the template
    must leave them unset); every "ECR_BACKUP_..." string literal in fanout/src or
    worker/src is declared for that function; one in shared/src is declared for some
    function (or as CLI-only).
    If the sources hold no such literal yet, the lists in code-calls.json are used alone
    (a note says so).
  * permissions: every action in code-calls.json for a function is allowed by a
    statement of that function's role (inline policies and AWS::IAM::Policy /
    ManagedPolicy resources attached to it) and not denied there; and the role allows
    nothing beyond those actions and what the Lambda runtime itself needs (logs).
  * build: the template's BuildProperties.Binary is the crate's [[bin]] name.
  * queue: the worker's queue hides messages for >= 6 x the worker timeout, and the
    worker reports partial batch failures.
  * metrics: each metric in code-calls.json has the "no data for 26 hours" alarm, or, with
    "alarm_when": "above_zero", an alarm on any non-zero count, or, with "alarm_when":
    "above_threshold" and "threshold", an alarm on a Maximum above it whose missing data
    breaches (a value reported daily that must keep coming).

Run from anywhere: paths are relative to the repository root (two levels up).
ECR_BACKUP_SOURCE_TEMPLATE, if set, names another template to check instead of
infra/source-account.yaml (the mutation test, infra/tests/mutate.py, uses it).
Needs Python 3.9+ and PyYAML (a dependency of cfn-lint, so present in its venv).
"""

import fnmatch
import json
import os
import re
import sys
from pathlib import Path

try:
    import yaml
except ImportError:  # pragma: no cover - reported as a failure, not a traceback
    print("FAIL PyYAML is not installed (pip install pyyaml; cfn-lint depends on it)")
    sys.exit(1)

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = Path(os.environ.get("ECR_BACKUP_SOURCE_TEMPLATE") or ROOT / "infra" / "source-account.yaml")
CONTRACT = ROOT / "infra" / "code-calls.json"
SOURCE_DIRS = {"fanout": "fanout/src", "worker": "worker/src", "drill": "drill/src"}
SHARED_DIR = "shared/src"
ENV_LITERAL = re.compile(r'"(ECR_BACKUP_[A-Z0-9_]+)"')
# Granted for the Lambda runtime (its log stream), not called by the code.
RUNTIME_ACTIONS = {"logs:createlogstream", "logs:putlogevents"}
FANOUT_SILENCE_SECONDS = 26 * 3600


# --------------------------------------------------------------------------- YAML
class CfnLoader(yaml.SafeLoader):
    """SafeLoader that turns CloudFormation short-form tags into their long form."""


def _construct(node, loader):
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_mapping(node, deep=True)


def _register(tag, key):
    def constructor(loader, node):
        value = _construct(node, loader)
        if key == "Fn::GetAtt" and isinstance(value, str):
            value = value.split(".", 1)
        return {key: value}

    CfnLoader.add_constructor("!" + tag, constructor)


for _tag in ("Base64", "Cidr", "FindInMap", "GetAtt", "GetAZs", "ImportValue", "Join",
             "Select", "Split", "Sub", "Transform", "And", "Equals", "If", "Not", "Or",
             "Contains", "EachMemberEquals", "EachMemberIn", "RefAll", "ValueOf",
             "ValueOfAll", "Length", "ToJsonString"):
    _register(_tag, "Fn::" + _tag)
_register("Ref", "Ref")
_register("Condition", "Condition")


def load_template(path):
    with open(path, encoding="utf-8") as handle:
        return yaml.load(handle, Loader=CfnLoader)  # noqa: S506 - SafeLoader subclass


# --------------------------------------------------------------------------- checks
class Results:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, ok, what, detail=""):
        if ok:
            self.passed += 1
            print(f"ok   {what}")
        else:
            self.failed += 1
            print(f"FAIL {what}" + (f": {detail}" if detail else ""))

    @staticmethod
    def note(text):
        print(f"note {text}")


def as_list(value):
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def logical_id(ref):
    """Logical ID named by !Ref X or !GetAtt X.Arn, else None."""
    if isinstance(ref, dict):
        if "Ref" in ref:
            return ref["Ref"]
        if "Fn::GetAtt" in ref:
            return as_list(ref["Fn::GetAtt"])[0]
    return None


def resolve_number(value, template):
    """A literal number, or a !Ref to a parameter's Default."""
    if isinstance(value, (int, float)):
        return value
    name = logical_id(value)
    if name and name in template.get("Parameters", {}):
        default = template["Parameters"][name].get("Default")
        try:
            return float(default)
        except (TypeError, ValueError):
            return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def role_statements(template, role_id):
    resources = template.get("Resources", {})
    role = resources.get(role_id, {})
    docs = [p.get("PolicyDocument", {}) for p in as_list(role.get("Properties", {}).get("Policies"))]
    for res in resources.values():
        if res.get("Type") in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            props = res.get("Properties", {})
            if any(logical_id(r) == role_id for r in as_list(props.get("Roles"))):
                docs.append(props.get("PolicyDocument", {}))
    return [s for doc in docs for s in as_list(doc.get("Statement"))]


def matches(action, patterns):
    return any(fnmatch.fnmatchcase(action.lower(), str(p).lower()) for p in patterns)


def source_literals(rel_dir):
    """ECR_BACKUP_* string literals in the .rs files under rel_dir (a set)."""
    base = ROOT / rel_dir
    found = set()
    if base.is_dir():
        for path in sorted(base.rglob("*.rs")):
            found.update(ENV_LITERAL.findall(path.read_text(encoding="utf-8", errors="replace")))
    return found


def crate_bin_names(crate):
    path = ROOT / crate / "Cargo.toml"
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8")
    try:
        import tomllib  # Python 3.11+

        data = tomllib.loads(text)
        names = [b.get("name") for b in data.get("bin", [])]
        if not names:
            names = [data.get("package", {}).get("name")]
        return [n for n in names if n]
    except ImportError:
        match = re.search(r'\[\[bin\]\][^\[]*?name\s*=\s*"([^"]+)"', text, re.S)
        if match:
            return [match.group(1)]
        match = re.search(r'\[package\][^\[]*?name\s*=\s*"([^"]+)"', text, re.S)
        return [match.group(1)] if match else []


def function_environment(template, function):
    merged = dict(template.get("Globals", {}).get("Function", {})
                  .get("Environment", {}).get("Variables", {}) or {})
    merged.update(function.get("Properties", {}).get("Environment", {}).get("Variables", {}) or {})
    return merged


def main():
    results = Results()
    template = load_template(TEMPLATE)
    contract = json.loads(CONTRACT.read_text(encoding="utf-8"))
    resources = template.get("Resources", {})
    functions = {k: v for k, v in contract.items() if isinstance(v, dict) and "actions" in v}
    cli_only = set(contract.get("cli_only_environment", []))

    # ------------------------------------------------------------ environment
    per_dir = {name: source_literals(rel) for name, rel in SOURCE_DIRS.items()}
    shared = source_literals(SHARED_DIR)
    if not shared and not any(per_dir.values()):
        results.note("no ECR_BACKUP_* literals in fanout/src, worker/src or shared/src yet; "
                     "the environment lists of infra/code-calls.json stand in for the code")

    for name, spec in functions.items():
        res_id = spec["template_resource"]
        function = resources.get(res_id)
        results.check(function is not None and function.get("Type") in
                      ("AWS::Serverless::Function", "AWS::Lambda::Function"),
                      f"{name}: template has function {res_id}")
        if function is None:
            continue
        env = function_environment(template, function)
        wanted = set(spec.get("environment", []))
        optional = set(spec.get("optional_environment", []))
        for var in sorted(wanted):
            results.check(var in env, f"{name}: environment sets {var}",
                          f"missing from {res_id}.Environment.Variables")
        for var in sorted(optional):
            results.check(var not in env, f"{name}: environment leaves optional {var} unset",
                          "listed as optional_environment in code-calls.json but set in the template")
        extra = sorted(set(env) - wanted - optional)
        results.check(not extra, f"{name}: environment sets nothing the code does not read",
                      f"not in code-calls.json: {', '.join(extra)}")
        for var in sorted(per_dir.get(name, set())):
            results.check(var in env or var in optional,
                          f"{name}: {SOURCE_DIRS[name]} reads {var}, declared for {name}",
                          f"add {var} to {res_id}.Environment.Variables and code-calls.json "
                          "(or to optional_environment)")

    declared = set().union(*(set(s.get("environment", [])) | set(s.get("optional_environment", []))
                             for s in functions.values()))
    for var in sorted(shared):
        results.check(var in declared or var in cli_only,
                      f"shared: {SHARED_DIR} reads {var}, a function (or the CLI) is declared to get it",
                      "list it under a function's environment or optional_environment, "
                      "or cli_only_environment, in code-calls.json")

    # ------------------------------------------------------------ permissions
    for name, spec in functions.items():
        function = resources.get(spec["template_resource"])
        if function is None:
            continue
        role_id = logical_id(function.get("Properties", {}).get("Role"))
        role = resources.get(role_id or "", {})
        results.check(role.get("Type") == "AWS::IAM::Role",
                      f"{name}: runs under a role of the template ({role_id})")
        statements = role_statements(template, role_id) if role_id else []
        allows = [s for s in statements if s.get("Effect") == "Allow"]
        denies = [s for s in statements if s.get("Effect") == "Deny"]
        for action in spec["actions"]:
            allowed = any(matches(action, as_list(s.get("Action"))) for s in allows)
            denied = any(matches(action, as_list(s.get("Action"))) for s in denies)
            results.check(allowed and not denied, f"{name}: role allows {action}",
                          "denied" if denied else f"no Allow statement in {role_id} grants it")
        needed = {a.lower() for a in spec["actions"]} | RUNTIME_ACTIONS
        granted = sorted({str(a) for s in allows for a in as_list(s.get("Action"))
                          if str(a).lower() not in needed})
        results.check(not granted, f"{name}: role allows nothing the code does not call",
                      f"granted but not in code-calls.json: {', '.join(granted)}")

    # ------------------------------------------------------------ build
    for name, spec in functions.items():
        function = resources.get(spec["template_resource"])
        crate = spec.get("crate")
        if function is None or not crate:
            continue
        binary = function.get("Metadata", {}).get("BuildProperties", {}).get("Binary")
        names = crate_bin_names(crate)
        if names is None:
            results.note(f"{crate}/Cargo.toml not found; build binary of {name} not checked")
            continue
        results.check(binary in names,
                      f"{name}: BuildProperties.Binary {binary!r} is a binary of crate {crate}/",
                      f"crate binaries: {names}")
        props = function.get("Properties", {})
        results.check(props.get("Handler") == "bootstrap" and
                      str(props.get("Runtime", "")).startswith("provided."),
                      f"{name}: custom runtime with handler bootstrap")

    # ------------------------------------------------------------ queue
    worker = resources.get(functions.get("worker", {}).get("template_resource", ""), {})
    wprops = worker.get("Properties", {})
    sqs_events = [e.get("Properties", {}) for e in (wprops.get("Events") or {}).values()
                  if e.get("Type") == "SQS"]
    results.check(bool(sqs_events), "worker: fed by an SQS event source")
    timeout = resolve_number(wprops.get("Timeout", 3), template)
    for event in sqs_events:
        queue_id = logical_id(event.get("Queue"))
        queue = resources.get(queue_id or "", {})
        visibility = resolve_number(queue.get("Properties", {}).get("VisibilityTimeout", 30), template)
        ok = None not in (timeout, visibility) and visibility >= 6 * timeout
        results.check(ok, f"worker: {queue_id} VisibilityTimeout {visibility} >= 6 x Timeout {timeout}")
        results.check("ReportBatchItemFailures" in as_list(event.get("FunctionResponseTypes")),
                      "worker: SQS event source reports partial batch failures")

    # ------------------------------------------------------------ metrics
    alarms = [r.get("Properties", {}) for r in resources.values()
              if r.get("Type") == "AWS::CloudWatch::Alarm"]
    for name, spec in functions.items():
        for metric in spec.get("metrics", []):
            found = None
            for alarm in alarms:
                dims = {d.get("Name"): d.get("Value") for d in as_list(alarm.get("Dimensions"))}
                if (alarm.get("Namespace") == metric["namespace"]
                        and alarm.get("MetricName") == metric["name"]
                        and dims == metric.get("dimensions", {})):
                    found = alarm
                    break
            label = f"{name}: alarm on {metric['namespace']}/{metric['name']} {metric.get('dimensions', {})}"
            results.check(found is not None, label, "no alarm with that namespace, name and dimensions")
            if found is None:
                continue
            if metric.get("alarm_when") == "above_zero":
                # A count of images not backed up: any one of them alarms, and no data
                # (no run) is the silence alarms' business, not this one's.
                any_ok = (found.get("Statistic") == "Sum"
                          and found.get("ComparisonOperator") == "GreaterThanThreshold"
                          and resolve_number(found.get("Threshold"), template) == 0
                          and found.get("TreatMissingData") == "notBreaching")
                results.check(any_ok, f"{name}: that alarm fires on any {metric['name']}",
                              "expected Sum > 0, missing data not breaching")
                continue
            if metric.get("alarm_when") == "above_threshold":
                above_ok = (found.get("Statistic") == "Maximum"
                            and found.get("ComparisonOperator") == "GreaterThanThreshold"
                            and resolve_number(found.get("Threshold"), template) == metric["threshold"]
                            and found.get("TreatMissingData") == "breaching")
                results.check(above_ok, f"{name}: that alarm fires on {metric['name']} above {metric['threshold']} or no report",
                              f"expected Maximum > {metric['threshold']}, missing data breaching")
                continue
            period = resolve_number(found.get("Period"), template) or 0
            evaluations = resolve_number(found.get("EvaluationPeriods"), template) or 0
            to_alarm = resolve_number(found.get("DatapointsToAlarm", evaluations), template)
            silent_ok = (found.get("Statistic") == "Sum"
                         and found.get("ComparisonOperator") == "LessThanThreshold"
                         and resolve_number(found.get("Threshold"), template) == 1
                         and found.get("TreatMissingData") == "breaching"
                         and period * evaluations == FANOUT_SILENCE_SECONDS
                         and to_alarm == evaluations)
            results.check(silent_ok, f"{name}: that alarm fires after 26 hours without a run",
                          "expected Sum < 1 over 26 h, every datapoint breaching, missing data breaching")
        if spec.get("metrics"):
            literals = "".join(p.read_text(encoding="utf-8", errors="replace")
                               for d in (SOURCE_DIRS.get(name, ""), SHARED_DIR)
                               if d and (ROOT / d).is_dir() for p in (ROOT / d).rglob("*.rs"))
            for metric in spec["metrics"]:
                if f'"{metric["name"]}"' not in literals:
                    results.note(f"{name}: metric name \"{metric['name']}\" not found in the sources yet")

    print(f"{results.passed} passed, {results.failed} failed")
    return 1 if results.failed else 0


if __name__ == "__main__":
    sys.exit(main())
