#!/usr/bin/env python3
"""Lints every IAM policy the templates write with parliament.

Policies: each role's inline policies, AWS::IAM::Policy and AWS::IAM::ManagedPolicy
documents, and AWS Organizations SCPs. (Trust policies have no Resource, which
parliament refuses as malformed; infra/tests/test_policies.py checks the event
forwarder's trust, cfn-lint and checkov the others.) Intrinsic functions are
replaced by example values of the right shape (ARNs per resource type, example
parameter values), so that parliament can check each action against the resources it
names: unknown actions, resources of the wrong type, Resource "*" where the action can
be scoped, malformed conditions, conditions on keys the action does not support.

Every finding fails the run unless infra/tests/parliament-skips.yaml lists it (template,
policy, issue) with a reason; a listed skip that no longer matches fails too, so the
list stays honest.

Runs with the infrastructure tools' Python (parliament and PyYAML installed there):
  .venv/infra-tools/bin/python infra/tests/lint_iam.py [--allow-stale] TEMPLATE...
"""

import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cfn  # noqa: E402

try:
    from parliament import analyze_policy_string
except ImportError:  # pragma: no cover - reported, not a traceback
    print("FAIL parliament is not installed (tests/scripts/setup.sh --with-infra-tools)")
    sys.exit(2)

import yaml  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SKIPS = ROOT / "infra" / "tests" / "parliament-skips.yaml"
PSEUDO = {"AWS::Partition": "aws", "AWS::Region": "eu-west-1", "AWS::AccountId": "444455556666",
          "AWS::StackName": "ecr-backup", "AWS::URLSuffix": "amazonaws.com"}
EXAMPLE_PARAMS = {
    "BackupVaultArn": "arn:aws:backup:eu-west-1:111122223333:backup-vault:ecr-backup",
    "MonitoringEventBusArn": "arn:aws:events:eu-west-1:111122223333:event-bus/ecr-backup-monitor",
    "BreakGlassRoleArn": "arn:aws:iam::444455556666:role/break-glass",
    "BreakGlassPrincipalArn": "arn:aws:iam::111122223333:role/break-glass",
    "BreakGlassRoleName": "break-glass",
    "NamePrefix": "ecr-backup",
    "VaultName": "ecr-backup",
    "OrganizationId": "o-abcdefghij",
}


def example_arn(logical_id, resource, attribute):
    """An ARN (or name) of the right shape for !GetAtt logical_id.attribute."""
    kind = resource.get("Type", "")
    name = logical_id.lower()
    region, account = PSEUDO["AWS::Region"], PSEUDO["AWS::AccountId"]
    arns = {
        "AWS::S3::Bucket": f"arn:aws:s3:::ecr-backup-{name}",
        "AWS::SQS::Queue": f"arn:aws:sqs:{region}:{account}:ecr-backup-{name}",
        "AWS::Logs::LogGroup": f"arn:aws:logs:{region}:{account}:log-group:/ecr-backup/{name}:*",
        "AWS::KMS::Key": f"arn:aws:kms:{region}:{account}:key/1234abcd-12ab-34cd-56ef-1234567890ab",
        "AWS::Backup::BackupVault": f"arn:aws:backup:{region}:{account}:backup-vault:ecr-backup",
        "AWS::Backup::LogicallyAirGappedBackupVault": f"arn:aws:backup:{region}:{account}:backup-vault:ecr-backup",
        "AWS::Events::EventBus": f"arn:aws:events:{region}:{account}:event-bus/ecr-backup-monitor",
        "AWS::Events::Rule": f"arn:aws:events:{region}:{account}:rule/ecr-backup-{name}",
        "AWS::SNS::Topic": f"arn:aws:sns:{region}:{account}:ecr-backup-{name}",
        "AWS::IAM::Role": f"arn:aws:iam::{account}:role/ecr-backup-{name}",
        "AWS::Lambda::Function": f"arn:aws:lambda:{region}:{account}:function:ecr-backup-{name}",
        "AWS::Serverless::Function": f"arn:aws:lambda:{region}:{account}:function:ecr-backup-{name}",
    }
    if attribute in ("Arn", "BackupVaultArn") and kind in arns:
        return arns[kind]
    if attribute == "QueueName":
        return f"ecr-backup-{name}"
    return f"example-{name}-{attribute.lower()}"


def resolve(value, template):
    """value with every intrinsic replaced by an example of the right shape."""
    resources = template.get("Resources") or {}
    params = template.get("Parameters") or {}

    def variable(name):
        if name in PSEUDO:
            return PSEUDO[name]
        if name in EXAMPLE_PARAMS:
            return EXAMPLE_PARAMS[name]
        if name in params:
            default = params[name].get("Default")
            return str(default) if default not in (None, "") else f"example-{name.lower()}"
        if "." in name:
            logical, attribute = name.split(".", 1)
            if logical in resources:
                return example_arn(logical, resources[logical], attribute)
        if name in resources:
            kind = resources[name].get("Type", "")
            if kind in ("AWS::SQS::Queue",):
                return f"https://sqs.eu-west-1.amazonaws.com/444455556666/ecr-backup-{name.lower()}"
            if kind == "AWS::SNS::Topic":
                return example_arn(name, resources[name], "Arn")
            return f"ecr-backup-{name.lower()}"
        return f"example-{name.lower()}"

    if isinstance(value, list):
        return [resolve(v, template) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        (key, arg), = value.items()
        if key == "Ref":
            return variable(arg)
        if key == "Fn::GetAtt":
            target = arg.split(".", 1) if isinstance(arg, str) else arg
            return variable(f"{target[0]}.{target[1]}")
        if key == "Fn::Sub":
            text, extra = (arg[0], arg[1]) if isinstance(arg, list) else (arg, {})
            local = {k: resolve(v, template) for k, v in (extra or {}).items()}
            return re.sub(r"\$\{([^}!]+)\}", lambda m: str(local.get(m.group(1), variable(m.group(1)))), text)
        if key == "Fn::If":
            return resolve(arg[1], template)
        if key == "Fn::Select":
            items = resolve(arg[1], template)
            return items[int(arg[0])] if isinstance(items, list) and len(items) > int(arg[0]) else "example"
        if key == "Fn::Split":
            return str(resolve(arg[1], template)).split(arg[0])
        if key == "Fn::Join":
            return arg[0].join(str(x) for x in cfn.as_list(resolve(arg[1], template)))
    return {k: resolve(v, template) for k, v in value.items() if not cfn.is_no_value(v)}


def policies(template):
    """(policy label, document) of every IAM policy in the template."""
    found = []
    for rid, resource in (template.get("Resources") or {}).items():
        kind = resource.get("Type")
        p = resource.get("Properties") or {}
        if kind == "AWS::IAM::Role":
            for policy in cfn.as_list(p.get("Policies")):
                found.append((f"{rid}/{policy.get('PolicyName')}", policy.get("PolicyDocument")))
        elif kind in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            found.append((rid, p.get("PolicyDocument")))
        elif kind == "AWS::Organizations::Policy" and p.get("Type") == "SERVICE_CONTROL_POLICY":
            found.append((rid, p.get("Content")))
    return [(label, doc) for label, doc in found if doc]


def findings(template_path):
    template = cfn.load(template_path)
    out = []
    for label, document in policies(template):
        text = json.dumps(resolve(document, template))
        analyzed = analyze_policy_string(text, include_community_auditors=False)
        for finding in analyzed.findings:
            out.append((Path(template_path).name, label, finding.issue, json.dumps(finding.detail, default=str)[:300]))
    return out


def main(argv):
    allow_stale = "--allow-stale" in argv
    templates = [a for a in argv if not a.startswith("--")]
    skips = yaml.safe_load(SKIPS.read_text(encoding="utf-8")) if SKIPS.is_file() else []
    skips = skips or []
    failed = 0
    for skip in skips:
        if not str(skip.get("reason", "")).strip():
            print(f"FAIL parliament skip without a reason: {skip}")
            failed += 1
    used = set()
    count = 0
    skipped = 0
    for path in templates:
        for name, label, issue, detail in findings(path):
            count += 1
            match = [i for i, s in enumerate(skips) if s.get("template") == name and s.get("policy") == label
                     and s.get("issue") == issue]
            if match:
                used.update(match)
                skipped += 1
                continue
            failed += 1
            print(f"FAIL parliament {name} {label}: {issue} {detail}")
    if not allow_stale:
        for i, skip in enumerate(skips):
            if i not in used:
                failed += 1
                print(f"FAIL parliament skip matches no finding any more (remove it): {skip}")
    print(f"parliament: {count} findings, {skipped} skipped with a reason, {failed} failures")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
