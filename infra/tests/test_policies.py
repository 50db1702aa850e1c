#!/usr/bin/env python3
"""What the templates must say for a deployment to work and to resist a compromised
source account, checked by meaning on the templates as data (what cfn-guard cannot
express: key policies, vault policies, SCPs, and how rules, alarms, topics and keys
fit together).

One output line per check ("ok   ..." or "FAIL ...: why"), grouped as:

  keys        every KMS key is retained, rotated, has a 30-day deletion window and an
              alias under the protected prefix; its policy denies ScheduleKeyDeletion,
              DisableKey and PutKeyPolicy to every principal but the break-glass role;
              it allows kms:* only to its own account and nothing to everyone; the local
              vault's key lets the backup account copy (Decrypt, DescribeKey, ReEncrypt*,
              GenerateDataKey*, ListGrants, CreateGrant for AWS resources) and no more;
              a topic's key lets EventBridge and CloudWatch use it without conditions.
  buckets     the bucket has a fixed name under the stack's prefix; its policy is
              retained, denies non-TLS requests, deletes and every protection change
              (policy, lifecycle, versioning, encryption, ownership, ACL, replication,
              public access block) to all but the break-glass role, and overwrites
              everywhere but index.json and oci-layout.
  vaults      locked (MinRetentionDays >= 7, compliance mode) and retained; the access
              policy denies deleting or shortening recovery points, restores, copies out
              and vault changes to all but the documented roles, restricts copy targets
              (backup:CopyTargets), and allows nothing but CopyIntoBackupVault from the
              organization or named accounts.
  plan        the plan backs up the bucket into the local vault, copies to the backup
              account, is tagged for the SCP, and gives a first full backup days.
  events      every rule is named under the prefix and has a FailedInvocations alarm;
              job rules catch FAILED, ABORTED, EXPIRED and PARTIAL; topics let their
              rules and alarms publish; every function and dead-letter queue alarms; the
              source forwards backup events, protection changes, break-glass use and
              alarm states to the backup account, which alarms on them and on silence.
  scps        organization.yaml's SCPs deny each protected change to all but the
              break-glass role, protect the break-glass role itself, stay attached and
              under the 5,120-character limit.
  parameters  break-glass roles have no path; retention, warm tier and completion
              window parameters cannot go below AWS's minimums.

Usage: test_policies.py [--quiet] [--template NAME=PATH ...]
  NAME is a template's base name (source-account, backup-account, organization,
  source-global-events ...); PATH replaces infra/NAME.yaml (the mutation test uses it).
  --quiet prints only failures and the summary.
Exit status 1 when a check fails.
"""

import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cfn  # noqa: E402
from cfn import (as_list, branches, condition_keys, condition_values, covers, getatt,  # noqa: E402
                 names_action, principal_is_everyone, ref, refers_to, service_principals,
                 statements, sub_text)

ROOT = Path(__file__).resolve().parents[2]
BREAK_GLASS_PARAMS = {"BreakGlassRoleArn", "BreakGlassPrincipalArn"}
NAME_PREFIXES = ("${AWS::StackName}-", "${VaultName}")
KEY_DESTRUCTION = ["kms:ScheduleKeyDeletion", "kms:DisableKey", "kms:PutKeyPolicy"]
COPY_KEY_ACTIONS = {"kms:decrypt", "kms:describekey", "kms:reencrypt*", "kms:generatedatakey*",
                    "kms:listgrants", "kms:creategrant"}
SERVICE_KEY_ACTIONS = {"kms:encrypt*", "kms:decrypt*", "kms:decrypt", "kms:reencrypt*",
                       "kms:generatedatakey*", "kms:describe*"}
BUCKET_PROTECTION = ["s3:DeleteObject", "s3:DeleteObjectVersion", "s3:DeleteBucket",
                     "s3:PutLifecycleConfiguration", "s3:PutBucketPolicy", "s3:DeleteBucketPolicy",
                     "s3:PutBucketVersioning", "s3:PutEncryptionConfiguration",
                     "s3:PutBucketOwnershipControls", "s3:PutBucketAcl",
                     "s3:PutReplicationConfiguration", "s3:PutBucketPublicAccessBlock"]
JOB_FAILURES = {"FAILED", "ABORTED", "EXPIRED", "PARTIAL"}
SCP_LIMIT = 5120
PROTECT_TAG = "ecr-backup:protected"
BREAK_GLASS_SUB = "arn:${AWS::Partition}:iam::*:role/${BreakGlassRoleName}"


class Results:
    def __init__(self, quiet=False):
        self.passed = 0
        self.failed = 0
        self.quiet = quiet

    def check(self, ok, what, detail=""):
        if ok:
            self.passed += 1
            if not self.quiet:
                print(f"ok   {what}")
        else:
            self.failed += 1
            print(f"FAIL {what}" + (f": {detail}" if detail else ""))
        return ok


# --------------------------------------------------------------------------- template helpers
def resources(template, *types):
    return {k: v for k, v in (template.get("Resources") or {}).items()
            if isinstance(v, dict) and (not types or v.get("Type") in types)}


def props(resource):
    return resource.get("Properties") or {}


def parameter(template, name):
    return (template.get("Parameters") or {}).get(name) or {}


def number_floor(value, template):
    """Smallest value a property can take: a literal, or a parameter's MinValue."""
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    name = ref(value)
    if name:
        low = parameter(template, name).get("MinValue")
        return float(low) if low is not None else None
    return None


def number_default(value, template):
    if isinstance(value, (int, float)):
        return value
    name = ref(value)
    if name:
        default = parameter(template, name).get("Default")
        try:
            return float(default)
        except (TypeError, ValueError):
            return None
    return None


def protected_name(value):
    text = sub_text(value)
    return bool(text) and text.startswith(NAME_PREFIXES)


def exemption_ok(statement, extra_refs=(), extra_subs=(), extra_conditions=()):
    """A Deny may exempt only the break-glass parameter (and the named extras), by
    aws:PrincipalArn, with ArnNotEquals/ArnNotLike; no literal, no wildcard."""
    keys = condition_keys(statement)
    if not keys:
        return True, ""
    arn_keys = {(op, key) for op, key in keys if key.lower() == "aws:principalarn"}
    other = {(op, key) for op, key in keys - arn_keys if (op, key) not in extra_conditions}
    if len(arn_keys) != 1 or other:
        return False, f"condition {sorted(keys)} is not only an aws:PrincipalArn exemption"
    op, key = next(iter(arn_keys))
    if op not in ("ArnNotEquals", "ArnNotLike"):
        return False, f"{op} on aws:PrincipalArn"
    for value in condition_values(statement, op, key):
        name = ref(value)
        if name in BREAK_GLASS_PARAMS or name in extra_refs:
            continue
        if sub_text(value) in extra_subs:
            continue
        return False, f"exempts {json.dumps(value)}"
    return True, ""


def deny_coverage(stmts, required, everyone=True, resource_ok=None, **exempt):
    """Actions of required not denied by a Deny statement that names them, applies to
    everyone, covers the right resources and exempts only the break-glass role."""
    missing = []
    problems = []
    for action in required:
        found = False
        for statement in stmts:
            if statement.get("Effect") != "Deny" or not names_action(statement, action):
                continue
            if "NotAction" in statement or "NotPrincipal" in statement:
                problems.append(f"{statement.get('Sid')}: NotAction/NotPrincipal")
                continue
            if everyone and not principal_is_everyone(statement):
                problems.append(f"{statement.get('Sid')}: not every principal")
                continue
            if resource_ok and not resource_ok(statement, action):
                problems.append(f"{statement.get('Sid')}: resources do not cover {action}")
                continue
            good, why = exemption_ok(statement, **exempt)
            if not good:
                problems.append(f"{statement.get('Sid')}: {why}")
                continue
            found = True
            break
        if not found:
            missing.append(action)
    detail = ""
    if missing:
        detail = "not denied: " + ", ".join(missing)
        if problems:
            detail += " (" + "; ".join(sorted(set(problems))) + ")"
    return not missing, detail


def rule_targets(rule):
    return as_list(props(rule).get("Targets"))


def all_rules(template):
    """(id, name value, bus logical id or None, event pattern, schedule, targets) of every
    EventBridge rule, SAM Schedule events included."""
    found = []
    for rid, rule in resources(template, "AWS::Events::Rule").items():
        p = props(rule)
        found.append((rid, p.get("Name"), ref(p.get("EventBusName")), p.get("EventPattern") or {},
                      p.get("ScheduleExpression"), rule_targets(rule), False))
    for fid, function in resources(template, "AWS::Serverless::Function").items():
        for eid, event in (props(function).get("Events") or {}).items():
            if event.get("Type") in ("Schedule", "ScheduleV2"):
                ep = event.get("Properties") or {}
                found.append((f"{fid}.{eid}", ep.get("Name"), None, {}, ep.get("Schedule"),
                              [{"Arn": {"Fn::GetAtt": [fid, "Arn"]}}], True))
    return found


def alarms(template):
    return resources(template, "AWS::CloudWatch::Alarm")


def dims(alarm):
    return {d.get("Name"): d.get("Value") for d in as_list(props(alarm).get("Dimensions"))}


def alarm_notifies(alarm, template):
    topics = resources(template, "AWS::SNS::Topic")
    return any(ref(a) in topics for a in as_list(props(alarm).get("AlarmActions")))


def topic_key(topic, template):
    att = getatt(props(topic).get("KmsMasterKeyId"))
    if att and att[0] in resources(template, "AWS::KMS::Key"):
        return att[0]
    return None


def pattern_values(pattern, *path):
    node = pattern
    for step in path:
        if not isinstance(node, dict):
            return []
        node = node.get(step)
    return as_list(node)


def event_names(pattern):
    names = []
    for value in pattern_values(pattern, "detail", "eventName"):
        if isinstance(value, str):
            names.append(value)
        elif isinstance(value, dict) and "prefix" in value:
            names.append(str(value["prefix"]) + "*")
    return names


def names_event(pattern, event):
    return any(covers(n, event) for n in event_names(pattern))


# --------------------------------------------------------------------------- keys
def check_keys(name, template, r):
    keys = resources(template, "AWS::KMS::Key")
    aliases = resources(template, "AWS::KMS::Alias")
    vault_keys = {getatt(props(v).get("EncryptionKeyArn"))[0]
                  for v in resources(template, "AWS::Backup::BackupVault").values()
                  if getatt(props(v).get("EncryptionKeyArn"))}
    topic_keys = {}
    for tid, topic in resources(template, "AWS::SNS::Topic").items():
        if topic_key(topic, template):
            topic_keys.setdefault(topic_key(topic, template), []).append(tid)
    for kid, key in keys.items():
        p = props(key)
        label = f"{name}: key {kid}"
        r.check(key.get("DeletionPolicy") == "Retain" and key.get("UpdateReplacePolicy") == "Retain",
                f"{label} is retained when the stack deletes or replaces it")
        r.check(p.get("EnableKeyRotation") in (True, "true") and str(p.get("PendingWindowInDays")) == "30",
                f"{label} rotates and has the 30-day deletion window")
        r.check(p.get("BypassPolicyLockoutSafetyCheck") in (True, "true"),
                f"{label} is created with BypassPolicyLockoutSafetyCheck (its deployer is denied PutKeyPolicy)")
        named = [a for a in aliases.values() if ref(props(a).get("TargetKeyId")) == kid
                 and (sub_text(props(a).get("AliasName")) or "").startswith(
                     ("alias/${AWS::StackName}-", "alias/${VaultName}"))]
        r.check(bool(named), f"{label} has an alias under the protected prefix (the SCP finds keys by alias)")
        stmts = statements(p.get("KeyPolicy"))
        ok, detail = deny_coverage(stmts, KEY_DESTRUCTION,
                                   resource_ok=lambda s, a: as_list(s.get("Resource")) == ["*"])
        r.check(ok, f"{label} denies {', '.join(KEY_DESTRUCTION)} to all but the break-glass role", detail)
        bad = []
        for s in stmts:
            if s.get("Effect") != "Allow":
                continue
            if "NotPrincipal" in s or "NotAction" in s:
                bad.append(f"{s.get('Sid')}: NotPrincipal/NotAction")
                continue
            if principal_is_everyone(s):
                bad.append(f"{s.get('Sid')}: allows every principal")
                continue
            principal = s.get("Principal") or {}
            for p_aws in as_list(principal.get("AWS") if isinstance(principal, dict) else None):
                text = sub_text(p_aws) or ""
                if text == "arn:${AWS::Partition}:iam::${AWS::AccountId}:root":
                    continue
                if kid in vault_keys and text == "arn:${AWS::Partition}:iam::${BackupAccountId}:root":
                    extra = [a for a in cfn.actions(s) if a.lower() not in COPY_KEY_ACTIONS]
                    if extra:
                        bad.append(f"{s.get('Sid')}: grants the backup account {extra}")
                    if any(a.lower() == "kms:creategrant" for a in cfn.actions(s)) and \
                            condition_values(s, "Bool", "kms:GrantIsForAWSResource") != ["true"]:
                        bad.append(f"{s.get('Sid')}: CreateGrant without kms:GrantIsForAWSResource")
                    continue
                bad.append(f"{s.get('Sid')}: allows {json.dumps(p_aws)}")
            for service in service_principals(s):
                extra = [a for a in cfn.actions(s) if a.lower() not in SERVICE_KEY_ACTIONS]
                if extra:
                    bad.append(f"{s.get('Sid')}: lets {service} {extra}")
        r.check(not bad, f"{label} allows kms:* only to its own account and services only to use it",
                "; ".join(bad))
        if kid in vault_keys and name == "source-account":
            granted = set()
            grant_ok = False
            for s in stmts:
                principal = s.get("Principal") or {}
                if s.get("Effect") != "Allow" or not isinstance(principal, dict):
                    continue
                if any(sub_text(x) == "arn:${AWS::Partition}:iam::${BackupAccountId}:root"
                       for x in as_list(principal.get("AWS"))):
                    sub = (principal.get("AWS") or {}).get("Fn::Sub") if isinstance(principal.get("AWS"), dict) else None
                    derived = isinstance(sub, list) and "BackupVaultArn" in json.dumps(sub[1:])
                    if not derived:
                        continue
                    for a in cfn.actions(s):
                        granted.add(a.lower())
                        if a.lower() == "kms:creategrant" and \
                                condition_values(s, "Bool", "kms:GrantIsForAWSResource") == ["true"]:
                            grant_ok = True
            missing = sorted(COPY_KEY_ACTIONS - granted)
            r.check(not missing and grant_ok,
                    f"{label} (local vault) lets the backup account copy its recovery points",
                    f"missing {missing}" if missing else "CreateGrant lacks kms:GrantIsForAWSResource")
        for tid in topic_keys.get(kid, []):
            for service in ("events.amazonaws.com", "cloudwatch.amazonaws.com"):
                needs = (service == "cloudwatch.amazonaws.com" and any(
                    ref(a) == tid for al in alarms(template).values() for a in as_list(props(al).get("AlarmActions")))) \
                    or (service == "events.amazonaws.com" and any(
                        ref(t.get("Arn")) == tid for _, _, _, _, _, targets, _ in all_rules(template) for t in targets))
                if not needs:
                    continue
                usable = any(s.get("Effect") == "Allow" and service in service_principals(s)
                             and names_action(s, "kms:GenerateDataKey") and names_action(s, "kms:Decrypt")
                             and not s.get("Condition") for s in stmts)
                r.check(usable, f"{label} lets {service} encrypt for topic {tid}, with no source condition",
                        "EventBridge's and CloudWatch's KMS calls carry no documented aws:SourceAccount/SourceArn")
    for tid, topic in resources(template, "AWS::SNS::Topic").items():
        r.check(topic_key(topic, template) is not None, f"{name}: topic {tid} is encrypted with a key of this template")


# --------------------------------------------------------------------------- buckets
def check_buckets(name, template, r):
    buckets = resources(template, "AWS::S3::Bucket")
    policies = resources(template, "AWS::S3::BucketPolicy")
    for bid, bucket in buckets.items():
        label = f"{name}: bucket {bid}"
        r.check(protected_name(props(bucket).get("BucketName")),
                f"{label} has a fixed name under the stack's prefix (the SCP protects it by name)")
        mine = [(pid, p) for pid, p in policies.items() if ref(props(p).get("Bucket")) == bid]
        if not r.check(len(mine) == 1, f"{label} has one bucket policy"):
            continue
        pid, policy = mine[0]
        r.check(policy.get("DeletionPolicy") == "Retain" and policy.get("UpdateReplacePolicy") == "Retain",
                f"{label}: policy {pid} is retained with the bucket")
        stmts = statements(props(policy).get("PolicyDocument"))

        def whole_bucket(statement, action=None, bid=bid):
            res = as_list(statement.get("Resource"))
            return "NotResource" not in statement and \
                any(getatt(x) == (bid, "Arn") for x in res) and \
                any(sub_text(x) == "${%s.Arn}/*" % bid for x in res)

        tls = [s for s in stmts if s.get("Effect") == "Deny" and principal_is_everyone(s)
               and any(a in ("s3:*", "*") for a in cfn.actions(s)) and whole_bucket(s)
               and condition_values(s, "Bool", "aws:SecureTransport") == ["false"]
               and len(condition_keys(s)) == 1]
        r.check(bool(tls), f"{label} denies every request without TLS")
        ok, detail = deny_coverage(stmts, BUCKET_PROTECTION, resource_ok=whole_bucket)
        r.check(ok, f"{label} denies deletes and protection changes to all but the break-glass role", detail)
        root_files = {"${%s.Arn}/index.json" % bid, "${%s.Arn}/oci-layout" % bid}
        write_once = [s for s in stmts if s.get("Effect") == "Deny" and principal_is_everyone(s)
                      and names_action(s, "s3:PutObject")
                      and condition_values(s, "Null", "s3:if-none-match") == ["true"]
                      and condition_values(s, "Bool", "s3:ObjectCreationOperation") == ["true"]
                      and "Resource" not in s
                      and {sub_text(x) for x in as_list(s.get("NotResource"))} == root_files]
        r.check(bool(write_once),
                f"{label} denies overwrites (PutObject without If-None-Match) everywhere but index.json and oci-layout")
        allows = [s.get("Sid") for s in stmts if s.get("Effect") == "Allow"]
        r.check(not allows, f"{label} policy grants nothing", f"Allow statements {allows}")


# --------------------------------------------------------------------------- vaults
def check_vaults(name, template, r):
    vaults = resources(template, "AWS::Backup::BackupVault", "AWS::Backup::LogicallyAirGappedBackupVault")
    for vid, vault in vaults.items():
        p = props(vault)
        label = f"{name}: vault {vid}"
        air_gapped = vault.get("Type") == "AWS::Backup::LogicallyAirGappedBackupVault"
        r.check(vault.get("DeletionPolicy") == "Retain", f"{label} is retained")
        r.check(protected_name(p.get("BackupVaultName")) or ref(p.get("BackupVaultName")) == "VaultName",
                f"{label} is named under the protected prefix")
        if air_gapped:
            low = number_floor(p.get("MinRetentionDays"), template)
            r.check(low is not None and low >= 7, f"{label} keeps recovery points at least 7 days", f"floor {low}")
        else:
            lock = p.get("LockConfiguration") or {}
            low = number_floor(lock.get("MinRetentionDays"), template)
            grace = number_floor(lock.get("ChangeableForDays"), template)
            r.check(low is not None and low >= 7 and grace is not None and grace >= 3
                    and lock.get("MaxRetentionDays") is not None,
                    f"{label} has a compliance-mode lock with MinRetentionDays >= 7",
                    f"MinRetentionDays floor {low}, ChangeableForDays floor {grace}")
        stmts = statements(p.get("AccessPolicy"))
        if not r.check(bool(stmts), f"{label} has an access policy"):
            continue
        deletes = ["backup:DeleteRecoveryPoint", "backup:UpdateRecoveryPointLifecycle"]
        ok, detail = deny_coverage(stmts, deletes)
        r.check(ok, f"{label} denies deleting or shortening recovery points", detail)
        changes = ["backup:PutBackupVaultAccessPolicy", "backup:DeleteBackupVaultAccessPolicy",
                   "backup:DeleteBackupVault"] + ([] if air_gapped else ["backup:DeleteBackupVaultLockConfiguration"])
        ok, detail = deny_coverage(stmts, changes)
        r.check(ok, f"{label} lets only the break-glass role change or delete the vault", detail)
        restores = ["backup:StartRestoreJob"] + (["backup:CopyFromBackupVault"] if name == "backup-account" else [])
        ok, detail = deny_coverage(
            stmts, restores, extra_refs=("RestoreOperatorArn",),
            extra_subs=("arn:${AWS::Partition}:iam::${AWS::AccountId}:role/aws-service-role/backup.amazonaws.com/AWSServiceRoleForBackup",),
            extra_conditions=(("BoolIfExists", "aws:PrincipalIsAWSService"),))
        r.check(ok, f"{label} lets only the documented roles restore or copy out", detail)
        targets = []
        for s in stmts:
            if s.get("Effect") != "Deny" or not principal_is_everyone(s) or not names_action(s, "backup:CopyFromBackupVault"):
                continue
            if not s.get("Condition"):
                targets.append("none")
                continue
            keys = condition_keys(s)
            if len(keys) == 1:
                op, key = next(iter(keys))
                if key == "backup:CopyTargets" and op in ("ForAnyValue:ArnNotEquals", "ForAnyValue:ArnNotLike"):
                    values = condition_values(s, op, key)
                    expected = "BackupVaultArn" if name == "source-account" else "RecoveryVaultArns"
                    if [ref(v) for v in values] == [expected]:
                        targets.append(expected)
        r.check(bool(targets), f"{label} restricts where recovery points may be copied (backup:CopyTargets)")
        bad = []
        for s in stmts:
            if s.get("Effect") != "Allow":
                continue
            if [a for a in cfn.actions(s) if a != "backup:CopyIntoBackupVault"] or "NotAction" in s:
                bad.append(f"{s.get('Sid')}: allows {cfn.actions(s) or 'NotAction'}")
                continue
            principal = s.get("Principal")
            if principal_is_everyone(s):
                org = condition_values(s, "StringEquals", "aws:PrincipalOrgID")
                if not org or [ref(v) for v in org] != ["OrganizationId"] or len(condition_keys(s)) != 1:
                    bad.append(f"{s.get('Sid')}: everyone, not only the organization")
            elif not (isinstance(principal, dict) and ref(principal.get("AWS")) == "SourceAccountIds"):
                bad.append(f"{s.get('Sid')}: principal {json.dumps(principal)}")
        r.check(not bad, f"{label} allows only CopyIntoBackupVault, only from the organization or source accounts",
                "; ".join(bad))
        if name == "source-account":
            key = getatt(p.get("EncryptionKeyArn"))
            r.check(key is not None and key[0] != "StoreKey",
                    f"{label} is encrypted with its own key (shared with the backup account), not the bucket's")


# --------------------------------------------------------------------------- plan
def check_plan(name, template, r):
    if name != "source-account":
        return
    plans = resources(template, "AWS::Backup::BackupPlan")
    selections = resources(template, "AWS::Backup::BackupSelection")
    vaults = resources(template, "AWS::Backup::BackupVault")
    buckets = resources(template, "AWS::S3::Bucket")
    if not r.check(len(plans) == 1, f"{name}: one backup plan"):
        return
    pid, plan = next(iter(plans.items()))
    body = props(plan).get("BackupPlan") or {}
    rules = as_list(body.get("BackupPlanRule"))
    r.check((props(plan).get("BackupPlanTags") or {}).get(PROTECT_TAG) == "true",
            f"{name}: the plan is tagged {PROTECT_TAG}=true (the SCP protects it by that tag)")
    good_rules = []
    for rule in rules:
        copies = as_list(rule.get("CopyActions"))
        to_backup = [c for c in copies if ref(c.get("DestinationBackupVaultArn")) == "BackupVaultArn"
                     and (c.get("Lifecycle") or {}).get("DeleteAfterDays") is not None]
        if ref(rule.get("TargetBackupVault")) in vaults and to_backup:
            good_rules.append(rule)
    if not r.check(bool(good_rules), f"{name}: the plan backs up into the local vault and copies to BackupVaultArn"):
        return
    rule = good_rules[0]
    window = number_default(rule.get("CompletionWindowMinutes"), template)
    window_floor = number_floor(rule.get("CompletionWindowMinutes"), template)
    r.check(window is not None and window >= 7 * 24 * 60 and window_floor is not None and window_floor >= 24 * 60,
            f"{name}: the completion window lets a first full backup run for days (default >= 7 days, never < 1 day)",
            f"default {window}, floor {window_floor}")
    local_days = number_floor((rule.get("Lifecycle") or {}).get("DeleteAfterDays"), template)
    r.check(local_days is not None and local_days >= 7,
            f"{name}: local retention cannot go below the local vault lock's 7 days", f"floor {local_days}")
    copy_days = number_floor((rule["CopyActions"][0].get("Lifecycle") or {}).get("DeleteAfterDays"), template)
    r.check(copy_days is not None and copy_days >= 7,
            f"{name}: copy retention cannot go below the backup vault's 7-day minimum", f"floor {copy_days}")
    chosen = [s for s in selections.values()
              if ref(props(s).get("BackupPlanId")) == pid
              and any(getatt(x) == (b, "Arn") for b in buckets for x in as_list((props(s).get("BackupSelection") or {}).get("Resources")))
              and getatt((props(s).get("BackupSelection") or {}).get("IamRoleArn"))]
    r.check(bool(chosen), f"{name}: a selection puts the bucket in the plan")


# --------------------------------------------------------------------------- events and alarms
def check_events(name, template, r):
    all_alarms = alarms(template)
    topics = resources(template, "AWS::SNS::Topic")
    topic_policies = resources(template, "AWS::SNS::TopicPolicy")
    rules = all_rules(template)
    for rid, rname, bus, pattern, schedule, targets, sam in rules:
        label = f"{name}: rule {rid}"
        r.check(protected_name(rname), f"{label} is named under the protected prefix")
        name_text = sub_text(rname)
        found = []
        for aid, alarm in all_alarms.items():
            ap = props(alarm)
            d = dims(alarm)
            if ap.get("Namespace") != "AWS/Events" or ap.get("MetricName") != "FailedInvocations":
                continue
            rule_dim = d.get("RuleName")
            named = (ref(rule_dim) == rid and bus is None) or (name_text and sub_text(rule_dim) == name_text)
            bus_ok = (bus is None and "EventBusName" not in d) or (bus is not None and ref(d.get("EventBusName")) == bus)
            if named and bus_ok and ap.get("ComparisonOperator") == "GreaterThanThreshold" \
                    and str(ap.get("Threshold")) in ("0", "0.0") and ap.get("Statistic") == "Sum" \
                    and alarm_notifies(alarm, template):
                found.append(aid)
        r.check(bool(found), f"{label} has a FailedInvocations alarm that notifies a topic")
        detail_types = [d for d in pattern_values(pattern, "detail-type") if isinstance(d, str)]
        for kind, field in (("Backup Job State Change", "state"), ("Copy Job State Change", "state"),
                            ("Restore Job State Change", "status")):
            if kind not in detail_types:
                continue
            detail = pattern.get("detail") or {}
            if not any(k in detail for k in ("state", "status")):
                continue
            wanted = {"FAILED", "ABORTED"} if field == "status" else JOB_FAILURES
            got = set(pattern_values(pattern, "detail", field))
            r.check(wanted <= got, f"{label} catches {kind} {field} {', '.join(sorted(wanted))}",
                    f"{field} {sorted(got)}" if got else f"the event carries {field}, the rule filters on another field")
        for target in targets:
            tid = ref(target.get("Arn"))
            if tid not in topics:
                continue
            allowed = any(
                s.get("Effect") == "Allow" and "events.amazonaws.com" in service_principals(s)
                and names_action(s, "sns:Publish")
                and any(getatt(v) == (rid, "Arn") for v in
                        (condition_values(s, "ArnEquals", "aws:SourceArn") or []) + (condition_values(s, "ArnLike", "aws:SourceArn") or []))
                for tp in topic_policies.values() if any(ref(t) == tid for t in as_list(props(tp).get("Topics")))
                for s in statements(props(tp).get("PolicyDocument")))
            r.check(allowed, f"{label} may publish to topic {tid} (topic policy, aws:SourceArn of the rule)")
    rule_names = {sub_text(n) for _, n, _, _, _, _, _ in rules if sub_text(n)}
    rule_ids = {rid for rid, _, _, _, _, _, _ in rules}
    for aid, alarm in all_alarms.items():
        ap = props(alarm)
        if ap.get("Namespace") == "AWS/Events" and ap.get("MetricName") == "FailedInvocations":
            value = dims(alarm).get("RuleName")
            r.check(ref(value) in rule_ids or sub_text(value) in rule_names,
                    f"{name}: alarm {aid} watches a rule of this template", "its rule is gone")
    queues = resources(template, "AWS::SQS::Queue")
    for rid, _, _, _, _, targets, _ in rules:
        for target in targets:
            queue = getatt(target.get("Arn"))
            if queue and queue[0] in queues:
                r.check(getatt((target.get("DeadLetterConfig") or {}).get("Arn")) is not None
                        and (target.get("RetryPolicy") or {}).get("MaximumRetryAttempts") is not None,
                        f"{name}: rule {rid} retries delivery to queue {queue[0]} and dead-letters what fails")
    for tid in topics:
        if any(ref(a) == tid for al in all_alarms.values() for a in as_list(props(al).get("AlarmActions"))):
            allowed = any(s.get("Effect") == "Allow" and "cloudwatch.amazonaws.com" in service_principals(s)
                          and names_action(s, "sns:Publish")
                          for tp in topic_policies.values() if any(ref(t) == tid for t in as_list(props(tp).get("Topics")))
                          for s in statements(props(tp).get("PolicyDocument")))
            r.check(allowed, f"{name}: CloudWatch alarms may publish to topic {tid}")
    for aid, alarm in all_alarms.items():
        r.check(protected_name(props(alarm).get("AlarmName")) and alarm_notifies(alarm, template),
                f"{name}: alarm {aid} is named under the protected prefix and notifies a topic")
    functions = resources(template, "AWS::Serverless::Function", "AWS::Lambda::Function")
    for fid, function in functions.items():
        r.check(protected_name(props(function).get("FunctionName")), f"{name}: function {fid} is named under the protected prefix")
        errors = [a for a in all_alarms.values() if props(a).get("Namespace") == "AWS/Lambda"
                  and props(a).get("MetricName") == "Errors" and ref(dims(a).get("FunctionName")) == fid
                  and alarm_notifies(a, template)]
        r.check(bool(errors), f"{name}: function {fid} has an Errors alarm")
        events = (props(function).get("Events") or {}).values()
        triggered = any(e.get("Type") in ("Schedule", "ScheduleV2", "SQS") for e in events) or any(
            getatt(t.get("Arn")) == (fid, "Arn") for _, _, _, _, _, ts, _ in rules for t in ts)
        r.check(triggered, f"{name}: function {fid} is triggered (schedule, queue or rule)")
    for qid, queue in resources(template, "AWS::SQS::Queue").items():
        if "RedriveAllowPolicy" not in props(queue):
            continue
        dlq = [a for a in all_alarms.values() if props(a).get("Namespace") == "AWS/SQS"
               and props(a).get("MetricName") == "ApproximateNumberOfMessagesVisible"
               and getatt(dims(a).get("QueueName")) == (qid, "QueueName")
               and props(a).get("ComparisonOperator") == "GreaterThanThreshold" and alarm_notifies(a, template)]
        r.check(bool(dlq), f"{name}: dead-letter queue {qid} alarms when it holds a message")
    if name == "source-account":
        worker_queues = {getatt((e.get("Properties") or {}).get("Queue"))[0]
                         for f in functions.values() for e in (props(f).get("Events") or {}).values()
                         if e.get("Type") == "SQS" and getatt((e.get("Properties") or {}).get("Queue"))}
        r.check(any("aws.ecr" in pattern_values(p, "source") and "PUSH" in pattern_values(p, "detail", "action-type")
                    and any(getatt(t.get("Arn")) and getatt(t.get("Arn"))[0] in worker_queues for t in ts)
                    for _, _, _, p, _, ts, _ in rules),
                f"{name}: ECR pushes go straight to the worker's queue")
    if name in ("source-account", "source-global-events"):
        check_forwarding(name, template, r)
    if name == "backup-account":
        check_monitoring(name, template, r)


def forwarding_rules(template):
    roles = resources(template, "AWS::IAM::Role")
    found = []
    for rid, _, _, pattern, _, targets, _ in all_rules(template):
        for t in targets:
            if ref(t.get("Arn")) == "MonitoringEventBusArn" and getatt(t.get("RoleArn")) \
                    and getatt(t.get("RoleArn"))[0] in roles:
                found.append((rid, pattern))
    return found


def check_forwarding(name, template, r):
    rules = forwarding_rules(template)
    for rid, role in ((rid, getatt(t.get("RoleArn"))[0]) for rid, _, _, _, _, ts, _ in all_rules(template)
                      for t in ts if ref(t.get("Arn")) == "MonitoringEventBusArn" and getatt(t.get("RoleArn"))):
        rp = props(resources(template, "AWS::IAM::Role")[role])
        trust = statements(rp.get("AssumeRolePolicyDocument"))
        trust_ok = all(service_principals(s) == ["events.amazonaws.com"]
                       and [ref(v) for v in condition_values(s, "StringEquals", "aws:SourceAccount") or []] == ["AWS::AccountId"]
                       for s in trust) and trust
        grants = [s for pol in as_list(rp.get("Policies")) for s in statements(pol.get("PolicyDocument"))]
        grant_ok = all(s.get("Effect") == "Allow" and cfn.actions(s) == ["events:PutEvents"]
                       and [ref(x) for x in as_list(s.get("Resource"))] == ["MonitoringEventBusArn"] for s in grants) and grants \
            and not rp.get("ManagedPolicyArns")
        r.check(bool(trust_ok and grant_ok), f"{name}: rule {rid} forwards with a role that can only put events on the backup account's bus")

    def any_rule(predicate):
        return any(predicate(p) for _, p in rules)

    if name == "source-account":
        r.check(any_rule(lambda p: "aws.backup" in pattern_values(p, "source")
                         and "AWS API Call via CloudTrail" not in pattern_values(p, "detail-type")),
                f"{name}: AWS Backup job events are forwarded to the backup account")
        store_events = ["PutBucketPolicy", "DeleteBucketPolicy", "PutBucketVersioning", "PutBucketLifecycle",
                        "PutBucketEncryption", "PutBucketOwnershipControls", "PutBucketAcl",
                        "PutBucketReplication", "PutBucketPublicAccessBlock", "DeleteBucket"]
        r.check(any_rule(lambda p: pattern_values(p, "detail", "eventSource") == ["s3.amazonaws.com"]
                         and [ref(b) for b in pattern_values(p, "detail", "requestParameters", "bucketName")] == ["BackupBucket"]
                         and all(names_event(p, e) for e in store_events)),
                f"{name}: changes to the bucket's protection are forwarded to the backup account")
        protection = {"kms.amazonaws.com": ["PutKeyPolicy", "ScheduleKeyDeletion", "DisableKey", "DeleteAlias"],
                      "backup.amazonaws.com": ["DeleteBackupPlan", "UpdateBackupPlan", "DeleteBackupSelection",
                                               "DeleteBackupVault", "PutBackupVaultAccessPolicy",
                                               "DeleteBackupVaultLockConfiguration", "UpdateRegionSettings"],
                      "events.amazonaws.com": ["DeleteRule", "DisableRule", "RemoveTargets"],
                      "monitoring.amazonaws.com": ["DeleteAlarms", "DisableAlarmActions"],
                      "lambda.amazonaws.com": ["DeleteFunction20150331", "PutFunctionConcurrency20171031",
                                               "DeleteEventSourceMapping20150331", "UpdateFunctionCode20150331v2"]}
        for source, events in protection.items():
            r.check(any_rule(lambda p, s=source, ev=events: s in pattern_values(p, "detail", "eventSource")
                             and all(names_event(p, e) for e in ev)
                             and not pattern_values(p, "detail", "requestParameters")),
                    f"{name}: {source} calls that undo protection are forwarded ({', '.join(events)})")
        r.check(any_rule(lambda p: names_event(p, "AssumeRole")
                         and [ref(x) for x in pattern_values(p, "detail", "requestParameters", "roleArn")] == ["BreakGlassRoleArn"]),
                f"{name}: every use of the break-glass role is forwarded to the backup account")
        r.check(any_rule(lambda p: pattern_values(p, "source") == ["aws.cloudwatch"]
                         and pattern_values(p, "detail-type") == ["CloudWatch Alarm State Change"]),
                f"{name}: this stack's alarm state changes are forwarded to the backup account")
    else:
        r.check(any_rule(lambda p: pattern_values(p, "detail", "eventSource") == ["iam.amazonaws.com"]
                         and "BreakGlassRoleArn" in json.dumps(pattern_values(p, "detail", "requestParameters", "roleName"))),
                f"{name}: changes to the break-glass role (IAM, us-east-1) are forwarded to the backup account")
        r.check(any_rule(lambda p: names_event(p, "AssumeRole")
                         and [ref(x) for x in pattern_values(p, "detail", "requestParameters", "roleArn")] == ["BreakGlassRoleArn"]),
                f"{name}: use of the break-glass role through the global STS endpoint is forwarded")
        r.check(any_rule(lambda p: pattern_values(p, "detail-type") == ["AWS Console Sign In via CloudTrail"]
                         and pattern_values(p, "detail", "userIdentity", "type") == ["Root"]),
                f"{name}: root sign-ins are forwarded to the backup account")


def check_monitoring(name, template, r):
    buses = resources(template, "AWS::Events::EventBus")
    if not r.check(len(buses) == 1 and all(protected_name(props(b).get("Name")) for b in buses.values()),
                   f"{name}: one monitoring event bus, named under the protected prefix"):
        return
    bus = next(iter(buses))
    bus_policies = [props(p) for p in resources(template, "AWS::Events::EventBusPolicy").values()
                    if ref(props(p).get("EventBusName")) == bus]
    senders = set()
    for p in bus_policies:
        s = p.get("Statement") or {}
        if s.get("Effect") == "Allow" and cfn.actions(s) == ["events:PutEvents"]:
            if principal_is_everyone(s) and [ref(v) for v in condition_values(s, "StringEquals", "aws:PrincipalOrgID") or []] == ["OrganizationId"]:
                senders.add("organization")
            elif isinstance(s.get("Principal"), dict) and ref(s["Principal"].get("AWS")) == "SourceAccountIds":
                senders.add("accounts")
    r.check(senders == {"organization", "accounts"},
            f"{name}: the bus accepts events from the organization or the source accounts only", f"{sorted(senders)}")
    topics = resources(template, "AWS::SNS::Topic")
    on_bus = [(rid, p, ts) for rid, _, b, p, _, ts, _ in all_rules(template) if b == bus
              and any(ref(t.get("Arn")) in topics for t in ts)]
    r.check(any(set(pattern_values(p, "detail-type")) >= {"Backup Job State Change", "Copy Job State Change"}
                for _, p, _ in on_bus), f"{name}: source accounts' failed backup and copy jobs alarm here")
    r.check(any("AWS API Call via CloudTrail" in pattern_values(p, "detail-type")
                and "AWS Console Sign In via CloudTrail" in pattern_values(p, "detail-type")
                and not pattern_values(p, "detail") for _, p, _ in on_bus),
            f"{name}: every forwarded protection change, break-glass use and root sign-in alarms here")
    r.check(any(pattern_values(p, "detail-type") == ["CloudWatch Alarm State Change"] for _, p, _ in on_bus),
            f"{name}: source-stack alarms alarm here")
    local = [p for _, _, b, p, _, ts, _ in all_rules(template) if b is None and any(ref(t.get("Arn")) in topics for t in ts)]
    r.check(any(pattern_values(p, "detail-type") == ["Restore Job State Change"]
                and {"FAILED", "ABORTED"} <= set(pattern_values(p, "detail", "status")) for p in local),
            f"{name}: failed restore jobs (restore tests included) alarm")
    r.check(any(pattern_values(p, "detail-type") == ["Copy Job State Change"]
                and JOB_FAILURES <= set(pattern_values(p, "detail", "state")) for p in local),
            f"{name}: failed copies out of the vault alarm")
    r.check(any(all(names_event(p, e) for e in ("PutKeyPolicy", "ScheduleKeyDeletion", "DisableKey",
                                                  "DeleteBackupVault", "PutBackupVaultAccessPolicy",
                                                  "DeleteBackupVaultLockConfiguration", "StartRestoreJob"))
                for p in local), f"{name}: changes to the vault and its key, and restores, alarm")
    # Freshness: a scheduled function reports fresh sources; the alarm fires on too few or none.
    functions = resources(template, "AWS::Lambda::Function")
    scheduled = [fid for fid in functions for _, _, _, _, schedule, ts, _ in all_rules(template)
                 if schedule and any(getatt(t.get("Arn")) == (fid, "Arn") for t in ts)
                 and any(ref(props(pm).get("FunctionName")) == fid and props(pm).get("Principal") == "events.amazonaws.com"
                         for pm in resources(template, "AWS::Lambda::Permission").values())]
    r.check(bool(scheduled), f"{name}: a function checks the vault's recovery points on a schedule")
    for fid in scheduled:
        role = getatt(props(functions[fid]).get("Role"))
        grants = [s for pol in as_list(props(resources(template, "AWS::IAM::Role").get(role[0], {})).get("Policies"))
                  for s in statements(pol.get("PolicyDocument"))] if role else []
        r.check(any(names_action(s, "backup:ListRecoveryPointsByBackupVault") and s.get("Effect") == "Allow" for s in grants),
                f"{name}: function {fid} may list the vault's recovery points")
    fresh = [a for a in alarms(template).values() if props(a).get("Namespace") == "EcrBackup"
             and props(a).get("MetricName") == "FreshSources"
             and props(a).get("ComparisonOperator") == "LessThanThreshold"
             and ref(props(a).get("Threshold")) == "ExpectedSourceCount"
             and props(a).get("TreatMissingData") == "breaching" and alarm_notifies(a, template)]
    r.check(bool(fresh), f"{name}: silence alarms - too few sources with a fresh recovery point, or no report at all")
    stale = [a for a in alarms(template).values() if props(a).get("Namespace") == "EcrBackup"
             and props(a).get("MetricName") == "StaleSources" and alarm_notifies(a, template)]
    r.check(bool(stale), f"{name}: a source whose copies stopped alarms")


# --------------------------------------------------------------------------- SCPs
SCP_DENIES = {
    # sid-free expectations: (actions, resource Sub text or "*", extra condition keys)
    "bucket protection": (["s3:DeleteBucket", "s3:PutBucketPolicy", "s3:DeleteBucketPolicy", "s3:PutBucketVersioning",
                           "s3:PutLifecycleConfiguration", "s3:PutEncryptionConfiguration",
                           "s3:PutBucketOwnershipControls", "s3:PutBucketAcl", "s3:PutReplicationConfiguration",
                           "s3:PutBucketPublicAccessBlock"],
                          "arn:${AWS::Partition}:s3:::${NamePrefix}*", {}),
    "object deletes": (["s3:DeleteObject", "s3:DeleteObjectVersion"], "arn:${AWS::Partition}:s3:::${NamePrefix}*/*", {}),
    "key destruction": (KEY_DESTRUCTION, "*", {("ForAnyValue:StringLike", "kms:ResourceAliases"): "alias/${NamePrefix}*"}),
    "key aliases": (["kms:DeleteAlias", "kms:UpdateAlias"], "arn:${AWS::Partition}:kms:*:*:alias/${NamePrefix}*", {}),
    "vault changes": (["backup:DeleteBackupVault", "backup:PutBackupVaultAccessPolicy",
                       "backup:DeleteBackupVaultAccessPolicy", "backup:PutBackupVaultLockConfiguration",
                       "backup:DeleteBackupVaultLockConfiguration"],
                      "arn:${AWS::Partition}:backup:*:*:backup-vault:${NamePrefix}*", {}),
    "plan changes": (["backup:DeleteBackupPlan", "backup:UpdateBackupPlan", "backup:DeleteBackupSelection"], "*",
                     {("StringEquals", "aws:ResourceTag/" + PROTECT_TAG): "true"}),
    "plan tag": (["backup:UntagResource", "backup:TagResource"], "*",
                 {("ForAnyValue:StringEquals", "aws:TagKeys"): PROTECT_TAG}),
    "Region opt-out": (["backup:UpdateRegionSettings"], "*", {}),
    "event rules": (["events:DeleteRule", "events:DisableRule", "events:PutRule", "events:PutTargets",
                     "events:RemoveTargets"], "arn:${AWS::Partition}:events:*:*:rule/${NamePrefix}*", {}),
    "event buses": (["events:DeleteEventBus", "events:PutPermission", "events:RemovePermission"],
                    "arn:${AWS::Partition}:events:*:*:event-bus/${NamePrefix}*", {}),
    "alarms": (["cloudwatch:DeleteAlarms", "cloudwatch:DisableAlarmActions", "cloudwatch:PutMetricAlarm"],
               "arn:${AWS::Partition}:cloudwatch:*:*:alarm:${NamePrefix}*", {}),
    "topics": (["sns:DeleteTopic", "sns:SetTopicAttributes", "sns:Unsubscribe"], "arn:${AWS::Partition}:sns:*:*:${NamePrefix}*", {}),
    "functions": (["lambda:DeleteFunction", "lambda:PutFunctionConcurrency"],
                  "arn:${AWS::Partition}:lambda:*:*:function:${NamePrefix}*", {}),
    "queue mappings": (["lambda:DeleteEventSourceMapping", "lambda:UpdateEventSourceMapping"], "*",
                       {("ArnLike", "lambda:FunctionArn"): "arn:${AWS::Partition}:lambda:*:*:function:${NamePrefix}*"}),
}
BREAK_GLASS_ROLE_ACTIONS = ["iam:CreateRole", "iam:DeleteRole", "iam:UpdateAssumeRolePolicy", "iam:AttachRolePolicy",
                            "iam:DetachRolePolicy", "iam:PutRolePolicy", "iam:DeleteRolePolicy",
                            "iam:PutRolePermissionsBoundary", "iam:DeleteRolePermissionsBoundary", "iam:UpdateRole"]


def resolve(value, params):
    """Plain JSON of a value, Ref and Fn::Sub replaced from params (for sizing)."""
    if isinstance(value, dict):
        if ref(value) is not None:
            return params.get(ref(value), ref(value))
        text = sub_text(value)
        if text is not None:
            return re.sub(r"\$\{([^}]+)\}", lambda m: str(params.get(m.group(1), m.group(0))), text)
        return {k: resolve(v, params) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, params) for v in value]
    return value


def check_scps(name, template, r):
    if name != "organization":
        return
    policies = resources(template, "AWS::Organizations::Policy")
    scps = {pid: p for pid, p in policies.items() if props(p).get("Type") == "SERVICE_CONTROL_POLICY"}
    r.check(bool(scps), f"{name}: service control policies are defined")
    stmts = []
    for pid, policy in scps.items():
        p = props(policy)
        r.check(ref(p.get("TargetIds")) == "TargetIds", f"{name}: {pid} is attached to TargetIds")
        content = p.get("Content")
        own = statements(content)
        stmts.extend(own)
        allows = [s.get("Sid") for s in own if s.get("Effect") != "Deny"]
        r.check(not allows, f"{name}: {pid} only denies", f"non-Deny statements {allows}")
        worst = {"AWS::Partition": "aws-us-gov", "NamePrefix": "a" * 20, "BreakGlassRoleName": "b" * 64,
                 "BreakGlassRoleManagerArn": "arn:aws-us-gov:iam::*:role/" + "c" * 64, "AWS::AccountId": "0" * 12}
        size = len(json.dumps(resolve(content, worst), separators=(",", ":")))
        r.check(size <= SCP_LIMIT, f"{name}: {pid} fits the {SCP_LIMIT}-character SCP limit ({size} at most)")

    def exempt_break_glass(s):
        values = condition_values(s, "ArnNotLike", "aws:PrincipalArn") or []
        return [sub_text(v) for v in values] == [BREAK_GLASS_SUB]

    for what, (wanted, resource, extra) in SCP_DENIES.items():
        missing = []
        for action in wanted:
            ok = False
            for s in stmts:
                if s.get("Effect") != "Deny" or not names_action(s, action) or "NotResource" in s or "NotAction" in s:
                    continue
                res = as_list(s.get("Resource"))
                if resource == "*":
                    if res != ["*"]:
                        continue
                elif [sub_text(x) for x in res] != [resource]:
                    continue
                keys = condition_keys(s)
                if keys != {("ArnNotLike", "aws:PrincipalArn")} | set(extra) or not exempt_break_glass(s):
                    continue
                if any([sub_text(v) or v for v in condition_values(s, op, key)] != [val]
                       for (op, key), val in extra.items()):
                    continue
                ok = True
                break
            if not ok:
                missing.append(action)
        r.check(not missing, f"{name}: the SCPs deny {what} to all but the break-glass role",
                "not denied as expected: " + ", ".join(missing))
    leave = [s for s in stmts if s.get("Effect") == "Deny" and names_action(s, "organizations:LeaveOrganization")
             and as_list(s.get("Resource")) == ["*"] and not s.get("Condition")]
    r.check(bool(leave), f"{name}: nobody leaves the organization (which would shed the SCPs)")
    role = [s for s in stmts if s.get("Effect") == "Deny"
            and all(names_action(s, a) for a in BREAK_GLASS_ROLE_ACTIONS)
            and [sub_text(x) for x in as_list(s.get("Resource"))] == ["arn:${AWS::Partition}:iam::*:role/${BreakGlassRoleName}"]
            and condition_keys(s) == {("ArnNotLike", "aws:PrincipalArn")}
            and [ref(v) for v in condition_values(s, "ArnNotLike", "aws:PrincipalArn")] == ["BreakGlassRoleManagerArn"]]
    r.check(bool(role), f"{name}: only the role's provisioner creates or changes the break-glass role (no look-alike)")


# --------------------------------------------------------------------------- parameters
def check_parameters(name, template, r):
    for pname in sorted(BREAK_GLASS_PARAMS | {"RestoreOperatorArn"}):
        spec = parameter(template, pname)
        if not spec:
            continue
        pattern = spec.get("AllowedPattern", "")
        plain = "arn:aws:iam::123456789012:role/break-glass"
        pathed = "arn:aws:iam::123456789012:role/team/break-glass"
        ok = bool(pattern) and re.match(pattern, plain) and not re.match(pattern, pathed) \
            and not re.match(pattern, "arn:aws:iam::123456789012:role/*")
        r.check(bool(ok), f"{name}: {pname} accepts a role without a path only (what the SCPs protect)")
    spec = parameter(template, "WarmTierAfterDays")
    if spec:
        low = spec.get("MinValue")
        r.check(low is not None and float(low) >= 60, f"{name}: WarmTierAfterDays cannot go below AWS's 60-day minimum",
                f"MinValue {low}")
    for tier in resources(template, "AWS::Backup::TieringConfiguration").values():
        for sel in as_list(props(tier).get("ResourceSelection")):
            low = number_floor(sel.get("TieringDownSettingsInDays"), template)
            r.check(low is not None and low >= 60, f"{name}: tiering starts no earlier than 60 days", f"floor {low}")
    for share in resources(template, "AWS::RAM::ResourceShare").values():
        r.check(props(share).get("AllowExternalPrincipals") in (False, "false"),
                f"{name}: the vault is shared only inside the organization")


def check_drill(name, template, r):
    """The restore drill's role (the one granted ECR writes under DrillScratchPrefix) may
    write to the store only its own records (drills/); the guard rule
    iam_ecr_writes_scoped_to_scratch keeps its ECR writes under the prefix."""
    for rid, role in resources(template, "AWS::IAM::Role").items():
        grants = [s for pol in as_list(props(role).get("Policies")) for s in statements(pol.get("PolicyDocument"))]
        if not any("DrillScratchPrefix" in json.dumps(s.get("Resource")) for s in grants):
            continue
        puts = [s for s in grants if s.get("Effect") == "Allow"
                and any(a.lower() in ("s3:putobject", "s3:put*", "s3:*") for a in cfn.actions(s))]
        ok = bool(puts) and all(all((sub_text(x) or "").endswith("/drills/*") for x in as_list(s.get("Resource")))
                                for s in puts)
        r.check(ok, f"{name}: drill role {rid} writes only drill records (drills/*) to the store")


# Metric names of AWS services the dashboards may show (they are not this project's).
AWS_METRICS = {
    "AWS/SQS": {"ApproximateNumberOfMessagesVisible", "ApproximateAgeOfOldestMessage",
                "ApproximateNumberOfMessagesNotVisible", "NumberOfMessagesSent", "NumberOfMessagesDeleted"},
    "AWS/Lambda": {"Errors", "Invocations", "Duration", "Throttles"},
    "AWS/Backup": {"NumberOfCopyJobsCreated", "NumberOfCopyJobsCompleted", "NumberOfCopyJobsFailed",
                   "NumberOfCopyJobsRunning", "NumberOfBackupJobsCompleted", "NumberOfBackupJobsFailed",
                   "NumberOfRecoveryPointsCompleted", "NumberOfRecoveryPointsExpired"},
}
METRIC_LITERAL = re.compile(r'(?:Metric::count\(\s*|name:\s*|"Name":\s*)"([A-Z][A-Za-z]+)"')


def emitted_metrics(template):
    """Every EcrBackup metric name the code emits: Metric::count("X") and name: "X" in the
    Rust sources, "Name": "X" in the template's inline functions."""
    found = set()
    for function in resources(template, "AWS::Lambda::Function").values():
        code = (props(function).get("Code") or {}).get("ZipFile")
        if isinstance(code, str):
            found.update(METRIC_LITERAL.findall(code))
    for rel in ("shared/src", "fanout/src", "worker/src", "drill/src"):
        base = ROOT / rel
        if base.is_dir():
            for path in base.rglob("*.rs"):
                found.update(METRIC_LITERAL.findall(path.read_text(encoding="utf-8", errors="replace")))
    return found


def dashboard_metrics(body):
    """(namespace, metric name) of every metric a dashboard body's widgets show."""
    out = []
    for widget in body.get("widgets", []):
        for row in (widget.get("properties") or {}).get("metrics", []):
            if isinstance(row, list) and len(row) >= 2 and all(isinstance(x, str) for x in row[:2]):
                namespace, metric = row[0], row[1]
                if namespace == ".":
                    continue
                out.append((namespace, metric))
    return out


def check_dashboards(name, template, r):
    dashboards = resources(template, "AWS::CloudWatch::Dashboard")
    if name in ("source-account", "backup-account"):
        r.check(bool(dashboards), f"{name}: has a CloudWatch dashboard")
    emitted = emitted_metrics(template) if dashboards else set()
    for did, dash in dashboards.items():
        text = sub_text(props(dash).get("DashboardBody"))
        if text is None and isinstance(props(dash).get("DashboardBody"), str):
            text = props(dash)["DashboardBody"]
        # ${X} and ${X.Y} stand for a string's text or a number; the rest must be JSON.
        plain = re.sub(r"\$\{[^}]+\}", "0", text or "")
        try:
            body = json.loads(plain)
        except ValueError as error:
            r.check(False, f"{name}: dashboard {did} body is JSON", str(error))
            continue
        r.check(isinstance(body, dict) and body.get("widgets"), f"{name}: dashboard {did} body is JSON with widgets")
        shown = dashboard_metrics(body)
        r.check(bool(shown), f"{name}: dashboard {did} shows metrics")
        for namespace, metric in shown:
            if namespace == "EcrBackup":
                r.check(metric in emitted, f"{name}: dashboard {did} shows {namespace}/{metric}, which the code emits",
                        "no Metric::count(\"%s\") or name: \"%s\" in the sources, nor in an inline function" % (metric, metric))
            else:
                r.check(metric in AWS_METRICS.get(namespace, set()),
                        f"{name}: dashboard {did} shows {namespace}/{metric}, a metric that service publishes")


CHECKS = (check_keys, check_buckets, check_vaults, check_plan, check_events, check_scps, check_parameters,
          check_drill, check_dashboards)


def run(paths, quiet=False, loaded=None):
    """Runs every check on the templates at paths ({name: path}); loaded ({name:
    template}) gives templates already read, which are used instead of their file."""
    r = Results(quiet)
    loaded = loaded or {}
    for name, path in sorted(paths.items()):
        try:
            template = loaded[name] if name in loaded else cfn.load(path)
        except Exception as error:  # noqa: BLE001 - reported as a failure
            r.check(False, f"{name}: template loads", str(error))
            continue
        if not isinstance(template, dict):
            r.check(False, f"{name}: template is a mapping")
            continue
        for check in CHECKS:
            try:
                check(name, template, r)
            except Exception as error:  # noqa: BLE001 - a malformed template fails, never crashes
                r.check(False, f"{name}: {check.__name__} could read the template", f"{type(error).__name__}: {error}")
    print(f"{r.passed} passed, {r.failed} failed")
    return r


def main(argv):
    paths = {p.stem: p for p in sorted((ROOT / "infra").glob("*.yaml"))}
    quiet = False
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--quiet":
            quiet = True
        elif arg == "--template" and args:
            name, _, path = args.pop(0).partition("=")
            paths[name] = Path(path)
        else:
            print(__doc__)
            return 2
    results = run(paths, quiet)
    return 1 if results.failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
