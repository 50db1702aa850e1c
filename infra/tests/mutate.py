#!/usr/bin/env python3
"""Mutation test of the infrastructure checks: every realistic regression of the
templates must be caught by at least one check.

Each mutation is found by meaning, not by text: the templates are loaded as data
(infra/tests/cfn.py) and every deny statement, key, vault, rule, alarm ... they hold is
a target. A mutant is one template with one regression, written back (as JSON, which is
YAML) in place of the original in a scratch copy of infra/; then the checks run on it,
fastest first, until one fails:

  policies  infra/tests/test_policies.py        (in-process; skipped if the tree has none)
  code      infra/tests/test_code_in_step.py    (source-account.yaml only)
  guard     every cfn-guard rule of infra/rules/
  cfn-lint  the mutant template
  parliament, checkov  (infra/tests/lint_iam.py, run_checkov.py; if the tree has them
            and the infrastructure tools are installed)

A mutant no check fails "survives". The run prints one line per mutant and
"N/N mutants caught", and exits 1 if any survives, 2 if the unmutated templates do not
pass every check to begin with (then nothing would be proven).

Usage: mutate.py [--root DIR] [--list] [--only SUBSTRING]
  --root DIR   take the templates and the checks from DIR (a tree with infra/, e.g. an
               older commit: git archive <commit> infra | tar -x -C DIR); mutations
               whose target is not there are reported as not applicable.
  --list       print the mutants without running the checks.
  --only S     run only the mutants whose label contains S.
Tools: cfn-lint from ${VENV:-.venv}/bin, cfn-guard on PATH or in ~/.cargo/bin,
checkov and parliament from ${VENV:-.venv}/infra-tools/bin.
"""

import contextlib
import copy
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cfn  # noqa: E402
from cfn import as_list, branches, getatt, ref, refers_to, sub_text  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- navigation
def resources(template, *types):
    return [(rid, r) for rid, r in (template.get("Resources") or {}).items()
            if isinstance(r, dict) and (not types or r.get("Type") in types)]


def policy_paths(resource):
    """Paths (from the resource) of the policy documents a resource holds."""
    kind = resource.get("Type")
    p = resource.get("Properties") or {}
    paths = {
        "AWS::KMS::Key": [("Properties", "KeyPolicy")],
        "AWS::S3::BucketPolicy": [("Properties", "PolicyDocument")],
        "AWS::Backup::BackupVault": [("Properties", "AccessPolicy")],
        "AWS::Backup::LogicallyAirGappedBackupVault": [("Properties", "AccessPolicy")],
        "AWS::Organizations::Policy": [("Properties", "Content")],
        "AWS::SNS::TopicPolicy": [("Properties", "PolicyDocument")],
        "AWS::SQS::QueuePolicy": [("Properties", "PolicyDocument")],
    }.get(kind, [])
    if kind == "AWS::IAM::Role":
        paths = [("Properties", "Policies", i, "PolicyDocument") for i in range(len(as_list(p.get("Policies"))))]
    return [path for path in paths if get(resource, path)]


def get(node, path):
    for step in path:
        try:
            node = node[step]
        except (KeyError, IndexError, TypeError):
            return None
    return node


def statement_items(doc):
    """(index, statement) of a document's statements; Fn::If items give their first
    dict branch."""
    found = []
    for i, item in enumerate(as_list(doc.get("Statement"))):
        dicts = [b for b in branches(item) if isinstance(b, dict)]
        if dicts:
            found.append((i, dicts[0], item is not dicts[0]))
    return found


def statements_of(template, rid, path):
    resource = template["Resources"][rid]
    doc = get(resource, path)
    return as_list(doc.get("Statement")) if isinstance(doc, dict) else []


def drop_resource(template, rid):
    """Removes a resource and what only exists for it: list entries that name it, and
    resources (alarms, permissions) that would otherwise dangle."""
    gone = [rid]
    while gone:
        current = gone.pop()
        (template.get("Resources") or {}).pop(current, None)
        for other_id, other in list((template.get("Resources") or {}).items()):
            prune_lists(other, current)
            if mentions(other.get("Properties"), current):
                gone.append(other_id)
            if current in as_list(other.get("DependsOn")):
                other["DependsOn"] = [d for d in as_list(other["DependsOn"]) if d != current]
        for key in list((template.get("Outputs") or {})):
            if mentions(template["Outputs"][key], current):
                del template["Outputs"][key]


def prune_lists(node, rid):
    if isinstance(node, dict):
        for value in node.values():
            prune_lists(value, rid)
    elif isinstance(node, list):
        node[:] = [v for v in node if not refers_to(v, rid)]
        for value in node:
            prune_lists(value, rid)


def mentions(node, rid):
    if refers_to(node, rid):
        return True
    if isinstance(node, dict):
        return any(mentions(v, rid) for v in node.values())
    if isinstance(node, list):
        return any(mentions(v, rid) for v in node)
    return False


def sid(statement, index):
    return statement.get("Sid") or f"#{index}"


# --------------------------------------------------------------------------- mutations
# Each generator takes {name: template} and yields (template name, label, function that
# mutates a copy of that template in place).

def drop_each_deny(ts):
    """Drop each Deny statement of every key, bucket, vault policy and SCP in turn."""
    for name, t in ts.items():
        for rid, res in resources(t, "AWS::KMS::Key", "AWS::S3::BucketPolicy", "AWS::Backup::BackupVault",
                                  "AWS::Backup::LogicallyAirGappedBackupVault", "AWS::Organizations::Policy"):
            for path in policy_paths(res):
                for i, s, _ in statement_items(get(res, path)):
                    if s.get("Effect") == "Deny":
                        def m(t, rid=rid, path=path, i=i):
                            del get(t["Resources"][rid], path)["Statement"][i]
                        yield name, f"drop deny {sid(s, i)} from {rid}", m


def key_mutations(ts):
    for name, t in ts.items():
        for rid, res in resources(t, "AWS::KMS::Key"):
            path = ("Properties", "KeyPolicy")
            denies = [(i, s) for i, s, wrapped in statement_items(res["Properties"].get("KeyPolicy") or {})
                      if s.get("Effect") == "Deny" and not wrapped]
            for i, s in denies:
                def flip(t, rid=rid, i=i):
                    t["Resources"][rid]["Properties"]["KeyPolicy"]["Statement"][i]["Effect"] = "Allow"
                yield name, f"flip key deny {sid(s, i)} of {rid} to Allow", flip
                for action in ("kms:PutKeyPolicy", "kms:ScheduleKeyDeletion", "kms:DisableKey"):
                    if action in as_list(s.get("Action")):
                        def drop_action(t, rid=rid, i=i, action=action):
                            st = t["Resources"][rid]["Properties"]["KeyPolicy"]["Statement"][i]
                            st["Action"] = [a for a in as_list(st["Action"]) if a != action]
                        yield name, f"remove {action} from the deny of {rid}", drop_action

                def widen(t, rid=rid, i=i):
                    st = t["Resources"][rid]["Properties"]["KeyPolicy"]["Statement"][i]
                    st["Condition"] = {"ArnNotLike": {"aws:PrincipalArn": "arn:aws:iam::*:role/*"}}
                yield name, f"widen the break-glass exemption of {rid}'s deny to every role", widen

                def narrow(t, rid=rid, i=i):
                    st = t["Resources"][rid]["Properties"]["KeyPolicy"]["Statement"][i]
                    st["Principal"] = {"AWS": "arn:aws:iam::111122223333:role/someone"}
                yield name, f"deny of {rid} applies to one role instead of everyone", narrow

            def no_retain(t, rid=rid):
                t["Resources"][rid].pop("DeletionPolicy", None)
            yield name, f"key {rid} deleted with its stack (no DeletionPolicy Retain)", no_retain

            def short_window(t, rid=rid):
                t["Resources"][rid]["Properties"]["PendingWindowInDays"] = 7
            yield name, f"key {rid} deletion window 7 days", short_window

            def allow_everyone(t, rid=rid):
                t["Resources"][rid]["Properties"]["KeyPolicy"]["Statement"].append(
                    {"Sid": "Everyone", "Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "kms:Decrypt", "Resource": "*"})
            yield name, f"key {rid} lets every principal decrypt", allow_everyone

            for aid, alias in resources(t, "AWS::KMS::Alias"):
                if ref((alias.get("Properties") or {}).get("TargetKeyId")) == rid:
                    def no_alias(t, aid=aid):
                        del t["Resources"][aid]
                    yield name, f"key {rid} loses its alias {aid} (the SCP finds keys by alias)", no_alias
            for i, s, _ in statement_items(res["Properties"].get("KeyPolicy") or {}):
                services = as_list((s.get("Principal") or {}).get("Service") if isinstance(s.get("Principal"), dict) else None)
                if s.get("Effect") == "Allow" and "events.amazonaws.com" in services:
                    def source_condition(t, rid=rid, i=i):
                        t["Resources"][rid]["Properties"]["KeyPolicy"]["Statement"][i]["Condition"] = {
                            "StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}
                    yield name, f"{rid}: EventBridge's key use put back under aws:SourceAccount", source_condition

                    def drop_events(t, rid=rid, i=i):
                        del t["Resources"][rid]["Properties"]["KeyPolicy"]["Statement"][i]
                    yield name, f"{rid}: EventBridge may no longer use the topic key", drop_events
                text = sub_text((s.get("Principal") or {}).get("AWS") if isinstance(s.get("Principal"), dict) else None) or ""
                if s.get("Effect") == "Allow" and "BackupAccountId" in text:
                    if "kms:CreateGrant" in as_list(s.get("Action")):
                        def no_grant_condition(t, rid=rid, i=i):
                            t["Resources"][rid]["Properties"]["KeyPolicy"]["Statement"][i].pop("Condition", None)
                        yield name, f"{rid}: CreateGrant for the backup account without kms:GrantIsForAWSResource", no_grant_condition
                    def drop_copy(t, rid=rid, i=i):
                        del t["Resources"][rid]["Properties"]["KeyPolicy"]["Statement"][i]
                    yield name, f"{rid}: backup account loses statement {sid(s, i)} (copies fail)", drop_copy

                    def widen_copy(t, rid=rid, i=i):
                        t["Resources"][rid]["Properties"]["KeyPolicy"]["Statement"][i]["Action"] = "kms:*"
                    yield name, f"{rid}: backup account granted kms:* on the key", widen_copy


def bucket_mutations(ts):
    for name, t in ts.items():
        for pid, policy in resources(t, "AWS::S3::BucketPolicy"):
            def no_retain(t, pid=pid):
                t["Resources"][pid].pop("DeletionPolicy", None)
                t["Resources"][pid].pop("UpdateReplacePolicy", None)
            yield name, f"bucket policy {pid} not retained", no_retain
            for i, s, _ in statement_items(policy["Properties"]["PolicyDocument"]):
                if s.get("Effect") != "Deny":
                    continue
                if "NotResource" in s:
                    def widen_not_resource(t, pid=pid, i=i):
                        st = t["Resources"][pid]["Properties"]["PolicyDocument"]["Statement"][i]
                        bucket = ref(t["Resources"][pid]["Properties"]["Bucket"])
                        st["NotResource"] = as_list(st["NotResource"]) + [{"Fn::Sub": "${%s.Arn}/repositories/*" % bucket}]
                    yield name, f"overwrite deny of {pid} exempts repositories/ (NotResource widened)", widen_not_resource
                actions = as_list(s.get("Action"))
                for action in ("s3:PutBucketPolicy", "s3:PutEncryptionConfiguration", "s3:PutBucketOwnershipControls",
                               "s3:PutBucketAcl", "s3:PutReplicationConfiguration", "s3:DeleteObjectVersion"):
                    if action in actions:
                        def drop_action(t, pid=pid, i=i, action=action):
                            st = t["Resources"][pid]["Properties"]["PolicyDocument"]["Statement"][i]
                            st["Action"] = [a for a in as_list(st["Action"]) if a != action]
                        yield name, f"bucket deny of {pid} no longer covers {action}", drop_action
                if s.get("Condition") and "aws:PrincipalArn" in str(s.get("Condition")):
                    def widen(t, pid=pid, i=i):
                        st = t["Resources"][pid]["Properties"]["PolicyDocument"]["Statement"][i]
                        st["Condition"] = {"ArnNotLike": {"aws:PrincipalArn": {"Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:role/*"}}}
                    yield name, f"bucket deny of {pid} exempts every role of the account", widen

                    def not_principal(t, pid=pid, i=i):
                        st = t["Resources"][pid]["Properties"]["PolicyDocument"]["Statement"][i]
                        del st["Principal"]
                        st["NotPrincipal"] = {"AWS": {"Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:root"}}
                    yield name, f"bucket deny of {pid} becomes NotPrincipal the account (exempts all of it)", not_principal

            def public_read(t, pid=pid):
                bucket = ref(t["Resources"][pid]["Properties"]["Bucket"])
                t["Resources"][pid]["Properties"]["PolicyDocument"]["Statement"].append(
                    {"Sid": "PublicRead", "Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
                     "Resource": {"Fn::Sub": "${%s.Arn}/*" % bucket}})
            yield name, f"bucket policy {pid} allows everyone to read", public_read
        for bid, bucket in resources(t, "AWS::S3::Bucket"):
            p = bucket.get("Properties") or {}
            if "BucketName" in p:
                def unnamed(t, bid=bid):
                    del t["Resources"][bid]["Properties"]["BucketName"]
                yield name, f"bucket {bid} loses its fixed name (the SCP no longer finds it)", unnamed

            def unversioned(t, bid=bid):
                t["Resources"][bid]["Properties"]["VersioningConfiguration"] = {"Status": "Suspended"}
            yield name, f"bucket {bid} versioning suspended", unversioned

            def public(t, bid=bid):
                t["Resources"][bid]["Properties"]["PublicAccessBlockConfiguration"]["RestrictPublicBuckets"] = False
            yield name, f"bucket {bid} public access block loosened", public


def role_mutations(ts):
    for name, t in ts.items():
        for rid, role in resources(t, "AWS::IAM::Role"):
            trust = get(role, ("Properties", "AssumeRolePolicyDocument", "Statement")) or []
            lambda_role = any("lambda.amazonaws.com" in str(s.get("Principal")) for s in trust)
            if not (role.get("Properties") or {}).get("Policies"):
                continue

            def typo(t, rid=rid):
                statements = t["Resources"][rid]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
                last = statements[-1]
                actions = as_list(last["Action"])
                last["Action"] = [actions[0][:-1]] + actions[1:]
            yield name, f"role {rid}: an action name misspelt (its permission silently missing)", typo
            if lambda_role:
                def s3_star(t, rid=rid):
                    t["Resources"][rid]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"].append(
                        {"Sid": "Everything", "Effect": "Allow", "Action": "s3:*", "Resource": "*"})
                yield name, f"Lambda role {rid} gets s3:* on *", s3_star

                def star_resource(t, rid=rid):
                    statements = t["Resources"][rid]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
                    target = next((s for s in statements if "Condition" not in s and s.get("Resource") != "*"), statements[-1])
                    target["Resource"] = "*"
                    target.pop("Condition", None)
                yield name, f"Lambda role {rid}: a statement's Resource becomes \"*\"", star_resource

                def deleter(t, rid=rid):
                    t["Resources"][rid]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"].append(
                        {"Sid": "Delete", "Effect": "Allow", "Action": ["s3:DeleteObjectVersion"],
                         "Resource": {"Fn::Sub": "arn:${AWS::Partition}:s3:::*"}})
                yield name, f"Lambda role {rid} may delete object versions", deleter

                def ecr_writer(t, rid=rid):
                    t["Resources"][rid]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"].append(
                        {"Sid": "ChangeSettings", "Effect": "Allow",
                         "Action": ["ecr:PutLifecyclePolicy", "ecr:SetRepositoryPolicy"],
                         "Resource": {"Fn::Sub": "arn:${AWS::Partition}:ecr:${AWS::Region}:${AWS::AccountId}:repository/*"}})
                yield name, f"Lambda role {rid} may change repository settings (ecr:PutLifecyclePolicy, ecr:SetRepositoryPolicy)", ecr_writer

                def ecr_deleter(t, rid=rid):
                    t["Resources"][rid]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"].append(
                        {"Sid": "DeleteRepositories", "Effect": "Allow", "Action": "ecr:DeleteRepository",
                         "Resource": {"Fn::Sub": "arn:${AWS::Partition}:ecr:${AWS::Region}:${AWS::AccountId}:repository/*"}})
                yield name, f"Lambda role {rid} may delete ECR repositories", ecr_deleter

                def ecr_wildcard(t, rid=rid):
                    t["Resources"][rid]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"].append(
                        {"Sid": "AllOfEcr", "Effect": "Allow", "Action": "ecr:Get*",
                         "Resource": {"Fn::Sub": "arn:${AWS::Partition}:ecr:${AWS::Region}:${AWS::AccountId}:repository/*"}})
                yield name, f"Lambda role {rid} gets an ECR wildcard action (ecr:Get*)", ecr_wildcard

                for i, s in enumerate(get(role, ("Properties", "Policies", 0, "PolicyDocument", "Statement")) or []):
                    if s.get("Resource") == "*" and "ecr:GetRegistryPolicy" in as_list(s.get("Action")):
                        def registry_writer(t, rid=rid, i=i):
                            st = t["Resources"][rid]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"][i]
                            st["Action"] = as_list(st["Action"]) + ["ecr:PutRegistryPolicy"]
                        yield name, f"Lambda role {rid}: ecr:PutRegistryPolicy joins the registry settings reads", registry_writer

                def managed(t, rid=rid):
                    t["Resources"][rid]["Properties"]["ManagedPolicyArns"] = [
                        {"Fn::Sub": "arn:${AWS::Partition}:iam::aws:policy/AdministratorAccess"}]
                yield name, f"Lambda role {rid} gets a managed policy (AdministratorAccess)", managed
            elif "events.amazonaws.com" in str(trust):
                def forwarder_star(t, rid=rid):
                    t["Resources"][rid]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"][0]["Resource"] = "*"
                yield name, f"event forwarder role {rid} may put events on any bus", forwarder_star

                def open_trust(t, rid=rid):
                    for s in t["Resources"][rid]["Properties"]["AssumeRolePolicyDocument"]["Statement"]:
                        s.pop("Condition", None)
                yield name, f"event forwarder role {rid} trusted without aws:SourceAccount", open_trust


def vault_mutations(ts):
    for name, t in ts.items():
        for vid, vault in resources(t, "AWS::Backup::BackupVault", "AWS::Backup::LogicallyAirGappedBackupVault"):
            p = vault.get("Properties") or {}
            if "LockConfiguration" in p:
                def unlock(t, vid=vid):
                    del t["Resources"][vid]["Properties"]["LockConfiguration"]
                yield name, f"vault {vid} loses its lock", unlock

                def governance(t, vid=vid):
                    t["Resources"][vid]["Properties"]["LockConfiguration"].pop("ChangeableForDays", None)
                yield name, f"vault {vid} lock in governance mode (no ChangeableForDays)", governance

                def one_day(t, vid=vid):
                    t["Resources"][vid]["Properties"]["LockConfiguration"]["MinRetentionDays"] = 1
                yield name, f"vault {vid} lock MinRetentionDays 1", one_day
            elif "MinRetentionDays" in p:
                def one_day_ag(t, vid=vid):
                    t["Resources"][vid]["Properties"]["MinRetentionDays"] = 1
                yield name, f"vault {vid} MinRetentionDays 1", one_day_ag
            if p.get("AccessPolicy"):
                def backup_star(t, vid=vid):
                    t["Resources"][vid]["Properties"]["AccessPolicy"]["Statement"].append(
                        {"Sid": "Everything", "Effect": "Allow", "Principal": {"AWS": {"Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:root"}},
                         "Action": "backup:*", "Resource": "*"})
                yield name, f"vault {vid} policy allows backup:*", backup_star

                def anyone_copies(t, vid=vid):
                    t["Resources"][vid]["Properties"]["AccessPolicy"]["Statement"].append(
                        {"Sid": "AnyoneCopiesIn", "Effect": "Allow", "Principal": "*", "Action": "backup:CopyIntoBackupVault", "Resource": "*"})
                yield name, f"vault {vid} lets anyone copy in", anyone_copies
                for i, s, wrapped in statement_items(p["AccessPolicy"]):
                    if wrapped or s.get("Effect") != "Deny":
                        continue
                    if "backup:StartRestoreJob" in as_list(s.get("Action")):
                        def restore_open(t, vid=vid, i=i):
                            st = t["Resources"][vid]["Properties"]["AccessPolicy"]["Statement"][i]
                            st["Condition"] = {"ArnNotLike": {"aws:PrincipalArn": "arn:aws:iam::*:role/*"}}
                        yield name, f"vault {vid}: any role may restore", restore_open
                    if "backup:CopyTargets" in str(s.get("Condition")):
                        def any_target(t, vid=vid, i=i):
                            st = t["Resources"][vid]["Properties"]["AccessPolicy"]["Statement"][i]
                            st["Condition"] = {"ForAnyValue:ArnNotLike": {"backup:CopyTargets": "arn:aws:backup:*:*:backup-vault:*"}}
                        yield name, f"vault {vid}: copies may go to any vault (backup:CopyTargets widened)", any_target
            if name == "source-account" and getatt(p.get("EncryptionKeyArn")):
                def store_key(t, vid=vid):
                    t["Resources"][vid]["Properties"]["EncryptionKeyArn"] = {"Fn::GetAtt": ["StoreKey", "Arn"]}
                yield name, f"vault {vid} encrypted with the bucket's key again (not shared: copies fail)", store_key
            if "EncryptionKeyArn" in p:
                def default_key(t, vid=vid):
                    del t["Resources"][vid]["Properties"]["EncryptionKeyArn"]
                yield name, f"vault {vid} with the default AWS managed key", default_key


def plan_mutations(ts):
    for name, t in ts.items():
        for pid, plan in resources(t, "AWS::Backup::BackupPlan"):
            def no_copies(t, pid=pid):
                for rule in t["Resources"][pid]["Properties"]["BackupPlan"]["BackupPlanRule"]:
                    rule.pop("CopyActions", None)
            yield name, f"plan {pid} loses its CopyActions", no_copies

            def elsewhere(t, pid=pid):
                for rule in t["Resources"][pid]["Properties"]["BackupPlan"]["BackupPlanRule"]:
                    for copy_action in rule.get("CopyActions", []):
                        copy_action["DestinationBackupVaultArn"] = "arn:aws:backup:eu-west-1:999999999999:backup-vault:elsewhere"
            yield name, f"plan {pid} copies to another account's vault", elsewhere

            def one_day(t, pid=pid):
                for rule in t["Resources"][pid]["Properties"]["BackupPlan"]["BackupPlanRule"]:
                    rule["CompletionWindowMinutes"] = 1440
            yield name, f"plan {pid}: a first full backup gets one day", one_day
            if (plan["Properties"].get("BackupPlanTags") or {}):
                def untagged(t, pid=pid):
                    del t["Resources"][pid]["Properties"]["BackupPlanTags"]
                yield name, f"plan {pid} untagged (the SCP no longer protects it)", untagged
        for sid_, _ in resources(t, "AWS::Backup::BackupSelection"):
            def no_selection(t, sid_=sid_):
                drop_resource(t, sid_)
            yield name, f"drop the backup selection {sid_}", no_selection


def event_mutations(ts):
    for name, t in ts.items():
        for aid, _ in resources(t, "AWS::CloudWatch::Alarm"):
            def no_alarm(t, aid=aid):
                drop_resource(t, aid)
            yield name, f"drop alarm {aid}", no_alarm
        for rid, rule in resources(t, "AWS::Events::Rule"):
            def no_rule(t, rid=rid):
                drop_resource(t, rid)
            yield name, f"drop rule {rid} (and its alarm)", no_rule
            pattern = (rule.get("Properties") or {}).get("EventPattern") or {}
            detail = pattern.get("detail") or {}
            if "PARTIAL" in as_list(detail.get("state")):
                def no_partial(t, rid=rid):
                    d = t["Resources"][rid]["Properties"]["EventPattern"]["detail"]
                    d["state"] = [s for s in d["state"] if s != "PARTIAL"]
                yield name, f"rule {rid} misses PARTIAL jobs", no_partial
            if "FAILED" in as_list(detail.get("state")) or "FAILED" in as_list(detail.get("status")):

                def wrong_field(t, rid=rid):
                    d = t["Resources"][rid]["Properties"]["EventPattern"]["detail"]
                    if "state" in d:
                        d["status"] = d.pop("state")
                    else:
                        d["state"] = d.pop("status")
                yield name, f"rule {rid} filters on the field its events do not carry", wrong_field

                def only_failed(t, rid=rid):
                    d = t["Resources"][rid]["Properties"]["EventPattern"]["detail"]
                    for key in ("state", "status"):
                        if key in d:
                            d[key] = ["FAILED"]
                yield name, f"rule {rid} catches FAILED only (ABORTED, EXPIRED missed)", only_failed
            for i, target in enumerate(as_list((rule.get("Properties") or {}).get("Targets"))):
                if "RoleArn" in target:
                    def no_role(t, rid=rid, i=i):
                        del t["Resources"][rid]["Properties"]["Targets"][i]["RoleArn"]
                    yield name, f"rule {rid} forwards without a role (refused across accounts)", no_role
                if "DeadLetterConfig" in target:
                    def no_dlq(t, rid=rid, i=i):
                        del t["Resources"][rid]["Properties"]["Targets"][i]["DeadLetterConfig"]
                    yield name, f"rule {rid} drops undeliverable events (no dead-letter queue)", no_dlq
        for fid, function in resources(t, "AWS::Serverless::Function"):
            for eid, event in ((function.get("Properties") or {}).get("Events") or {}).items():
                if event.get("Type") == "Schedule":
                    def no_schedule(t, fid=fid, eid=eid):
                        del t["Resources"][fid]["Properties"]["Events"][eid]
                    yield name, f"function {fid} no longer scheduled ({eid})", no_schedule
        for qid, queue in resources(t, "AWS::SQS::Queue"):
            p = queue.get("Properties") or {}
            if "RedrivePolicy" in p:
                def no_redrive(t, qid=qid):
                    del t["Resources"][qid]["Properties"]["RedrivePolicy"]
                yield name, f"queue {qid} loses its redrive policy (no dead-letter queue)", no_redrive
            if p.get("SqsManagedSseEnabled"):
                def plain(t, qid=qid):
                    t["Resources"][qid]["Properties"]["SqsManagedSseEnabled"] = False
                yield name, f"queue {qid} unencrypted", plain
        for tid, _ in resources(t, "AWS::SNS::Topic"):
            def plain_topic(t, tid=tid):
                del t["Resources"][tid]["Properties"]["KmsMasterKeyId"]
            yield name, f"topic {tid} unencrypted", plain_topic
        for lid, group in resources(t, "AWS::Logs::LogGroup"):
            if "KmsKeyId" in (group.get("Properties") or {}):
                def plain_logs(t, lid=lid):
                    del t["Resources"][lid]["Properties"]["KmsKeyId"]
                yield name, f"log group {lid} unencrypted", plain_logs
        for aid, alarm in resources(t, "AWS::CloudWatch::Alarm"):
            p = alarm.get("Properties") or {}
            if p.get("TreatMissingData") == "breaching" and p.get("Namespace") == "EcrBackup":
                def silent(t, aid=aid):
                    t["Resources"][aid]["Properties"]["TreatMissingData"] = "notBreaching"
                yield name, f"alarm {aid} ignores silence (missing data not breaching)", silent
        for bid, _ in resources(t, "AWS::Events::EventBusPolicy"):
            def open_bus(t, bid=bid):
                st = t["Resources"][bid]["Properties"]["Statement"]
                st["Principal"] = "*"
                st.pop("Condition", None)
            yield name, f"bus policy {bid} lets anyone send events", open_bus


def scp_mutations(ts):
    for name, t in ts.items():
        for pid, policy in resources(t, "AWS::Organizations::Policy"):
            def detached(t, pid=pid):
                t["Resources"][pid]["Properties"]["TargetIds"] = ["ou-abcd-00000000"]
            yield name, f"SCP {pid} attached to a fixed OU instead of TargetIds", detached
            content = policy["Properties"]["Content"]
            for i, s, _ in statement_items(content):
                if "aws:PrincipalArn" in str(s.get("Condition")):
                    def widen(t, pid=pid, i=i):
                        st = t["Resources"][pid]["Properties"]["Content"]["Statement"][i]
                        for op in st["Condition"].values():
                            if "aws:PrincipalArn" in op:
                                op["aws:PrincipalArn"] = "arn:aws:iam::*:role/*"
                    yield name, f"SCP {pid} statement {sid(s, i)} exempts every role", widen
                if s.get("Sid") == "BucketProtection":
                    def no_policy_deny(t, pid=pid, i=i):
                        st = t["Resources"][pid]["Properties"]["Content"]["Statement"][i]
                        st["Action"] = [a for a in st["Action"] if a != "s3:PutBucketPolicy"]
                    yield name, "SCP lets root rewrite the bucket policy (no s3:PutBucketPolicy)", no_policy_deny

                    def one_bucket(t, pid=pid, i=i):
                        st = t["Resources"][pid]["Properties"]["Content"]["Statement"][i]
                        st["Resource"] = "arn:aws:s3:::ecr-backup-legacy-bucket"
                    yield name, "SCP protects one literal bucket instead of the prefix", one_bucket


def parameter_mutations(ts):
    for name, t in ts.items():
        params = t.get("Parameters") or {}
        for pname, spec in params.items():
            if pname in ("BreakGlassRoleArn", "BreakGlassPrincipalArn"):
                def pathed(t, pname=pname):
                    t["Parameters"][pname]["AllowedPattern"] = "^arn:aws[a-z-]*:iam::[0-9]{12}:role/.+$"
                yield name, f"{pname} accepts role paths (and wildcards)", pathed
            if pname in ("WarmTierAfterDays", "LocalRetentionDays", "MaxReceiveCount", "ChangeableForDays",
                         "LocalVaultChangeableForDays", "MinRetentionDays", "CopyRetentionDays",
                         "BackupCompletionWindowMinutes") and "MinValue" in spec:
                def lower(t, pname=pname):
                    t["Parameters"][pname]["MinValue"] = 1 if pname != "WarmTierAfterDays" else 0
                yield name, f"{pname} MinValue lowered", lower


def lambda_mutations(ts):
    for name, t in ts.items():
        for fid, function in resources(t, "AWS::Serverless::Function"):
            p = function.get("Properties") or {}
            if any(e.get("Type") == "SQS" for e in (p.get("Events") or {}).values()):
                def slow(t, fid=fid):
                    t["Resources"][fid]["Properties"]["Timeout"] = 901
                yield name, f"function {fid} timeout beyond what the queue's visibility covers", slow

                def no_partial(t, fid=fid):
                    for e in t["Resources"][fid]["Properties"]["Events"].values():
                        if e.get("Type") == "SQS":
                            e["Properties"].pop("FunctionResponseTypes", None)
                yield name, f"function {fid} fails whole batches (no partial batch response)", no_partial
            if "Role" in p:
                def sam_policies(t, fid=fid):
                    t["Resources"][fid]["Properties"]["Policies"] = ["AmazonS3FullAccess"]
                yield name, f"function {fid} gets SAM Policies beside its role", sam_policies


def drill_mutations(ts):
    """The restore drill's role: it may write to ECR only under the scratch prefix, and to
    the store only its own records."""
    for name, t in ts.items():
        for rid, role in resources(t, "AWS::IAM::Role"):
            for pi, policy in enumerate(as_list((role.get("Properties") or {}).get("Policies"))):
                for i, s in enumerate(as_list((policy.get("PolicyDocument") or {}).get("Statement"))):
                    if not isinstance(s, dict) or "DrillScratchPrefix" not in str(s.get("Resource")):
                        continue

                    def every_repository(t, rid=rid, pi=pi, i=i):
                        st = t["Resources"][rid]["Properties"]["Policies"][pi]["PolicyDocument"]["Statement"][i]
                        st["Resource"] = {"Fn::Sub": "arn:${AWS::Partition}:ecr:${AWS::Region}:${AWS::AccountId}:repository/*"}
                    yield name, f"drill role {rid} may push to and delete every repository", every_repository

                    def second_statement(t, rid=rid, pi=pi):
                        t["Resources"][rid]["Properties"]["Policies"][pi]["PolicyDocument"]["Statement"].append(
                            {"Sid": "PushAnywhere", "Effect": "Allow", "Action": ["ecr:PutImage", "ecr:BatchDeleteImage"],
                             "Resource": {"Fn::Sub": "arn:${AWS::Partition}:ecr:${AWS::Region}:${AWS::AccountId}:repository/team/*"}})
                    yield name, f"drill role {rid} also may push to and delete team/* repositories", second_statement

                    def prefix_only(t, rid=rid, pi=pi, i=i):
                        st = t["Resources"][rid]["Properties"]["Policies"][pi]["PolicyDocument"]["Statement"][i]
                        st["Resource"] = {"Fn::Sub": "arn:${AWS::Partition}:ecr:${AWS::Region}:${AWS::AccountId}:repository/${DrillScratchPrefix}*"}
                    yield name, f"drill role {rid}: scratch prefix without its slash (matches ecr-backup-drill-prod too)", prefix_only
                for i, s in enumerate(as_list((policy.get("PolicyDocument") or {}).get("Statement"))):
                    if isinstance(s, dict) and "/drills/" in str(s.get("Resource")):
                        def whole_store(t, rid=rid, pi=pi, i=i):
                            st = t["Resources"][rid]["Properties"]["Policies"][pi]["PolicyDocument"]["Statement"][i]
                            st["Resource"] = {"Fn::Sub": "${BackupBucket.Arn}/*"}
                        yield name, f"drill role {rid} may write any object of the store, not only drill records", whole_store


GENERATORS = (drop_each_deny, key_mutations, bucket_mutations, role_mutations, vault_mutations,
              plan_mutations, event_mutations, scp_mutations, parameter_mutations, lambda_mutations,
              drill_mutations)


# --------------------------------------------------------------------------- checks
class Checks:
    """Runs the checks of one tree (scratch copy of infra/) against a mutant."""

    def __init__(self, source_root, scratch):
        self.scratch = scratch
        self.infra = scratch / "infra"
        venv = Path(os.environ.get("VENV") or REPO / ".venv")
        if not venv.is_absolute():
            venv = REPO / venv
        self.cfn_lint = shutil.which("cfn-lint", path=str(venv / "bin")) or shutil.which("cfn-lint")
        self.guard = shutil.which("cfn-guard") or str(Path.home() / ".cargo" / "bin" / "cfn-guard")
        self.python = str(venv / "bin" / "python") if (venv / "bin" / "python").exists() else sys.executable
        tools = venv / "infra-tools" / "bin" / "python"
        self.tools_python = str(tools) if tools.exists() else None
        self.policies = None
        if (self.infra / "tests" / "test_policies.py").is_file():
            sys.path.insert(0, str(self.infra / "tests"))
            import importlib
            self.policies = importlib.import_module("test_policies")
        self.loaded = {}
        self.names = [n for n in ("policies", "code", "guard", "cfn-lint", "parliament", "checkov") if self.available(n)]

    def available(self, check):
        tests = self.infra / "tests"
        return {
            "policies": self.policies is not None,
            "code": (tests / "test_code_in_step.py").is_file(),
            "guard": Path(self.guard).exists() and any((self.infra / "rules").glob("*.guard")),
            "cfn-lint": bool(self.cfn_lint),
            "parliament": bool(self.tools_python) and (tests / "lint_iam.py").is_file(),
            "checkov": bool(self.tools_python) and (tests / "run_checkov.py").is_file(),
        }[check]

    def templates(self):
        return {p.stem: p for p in sorted(self.infra.glob("*.yaml"))}

    def fails(self, check, name, path, mutant=None):
        """Whether check fails for the template `name` at path (True: mutant caught);
        mutant, if given, is that template as data (saves reading it back)."""
        if check == "policies":
            loaded = dict(self.loaded)
            if mutant is not None:
                loaded[name] = copy.deepcopy(mutant)
            else:
                loaded.pop(name, None)
            with contextlib.redirect_stdout(io.StringIO()):
                results = self.policies.run(self.templates(), quiet=True, loaded=loaded)
            return results.failed > 0
        if check == "code":
            if name != "source-account":
                return False
            run = subprocess.run([self.python, str(self.infra / "tests" / "test_code_in_step.py")],
                                 capture_output=True, text=True, check=False)
            return run.returncode != 0
        if check == "guard":
            run = subprocess.run([self.guard, "validate", "--rules", str(self.infra / "rules"), "--data", str(path)],
                                 capture_output=True, text=True, check=False)
            return run.returncode != 0
        if check == "cfn-lint":
            run = subprocess.run([self.cfn_lint, "--format", "parseable", "--", str(path)],
                                 capture_output=True, text=True, check=False)
            return run.returncode != 0
        if check == "parliament":
            run = subprocess.run([self.tools_python, str(self.infra / "tests" / "lint_iam.py"), "--allow-stale", str(path)],
                                 capture_output=True, text=True, check=False)
            return run.returncode != 0
        if check == "checkov":
            run = subprocess.run([self.tools_python, str(self.infra / "tests" / "run_checkov.py"), "--allow-stale", str(path)],
                                 capture_output=True, text=True, check=False)
            return run.returncode != 0
        raise ValueError(check)

    def unmutated_failures(self):
        """Checks that fail on the unmutated (round-tripped) templates, each run once on
        all of them."""
        paths = [str(p) for p in self.templates().values()]
        failing = []
        for check in self.names:
            if check == "policies":
                bad = self.fails("policies", None, None)
            elif check == "code":
                bad = self.fails("code", "source-account", None)
            elif check == "guard":
                bad = any(self.fails("guard", None, p) for p in paths)
            else:
                tool = {"cfn-lint": [self.cfn_lint, "--format", "parseable", "--"],
                        "parliament": [self.tools_python, str(self.infra / "tests" / "lint_iam.py"), "--allow-stale"],
                        "checkov": [self.tools_python, str(self.infra / "tests" / "run_checkov.py"), "--allow-stale"]}[check]
                bad = subprocess.run(tool + paths, capture_output=True, text=True, check=False).returncode != 0
            if bad:
                failing.append(check)
        return failing

    def first_failing(self, name, path, mutant=None):
        for check in self.names:
            if self.fails(check, name, path, mutant):
                return check
        return None


def scratch_copy(source_root, scratch):
    shutil.copytree(source_root / "infra", scratch / "infra",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    # The code-in-step check reads the Lambda sources and crates: link them read-only.
    # From the tree under test if it has them (an exported commit), else this one.
    for entry in ("fanout", "worker", "drill", "shared", "Cargo.toml"):
        for base in (source_root, REPO):
            if (base / entry).exists():
                (scratch / entry).symlink_to(base / entry)
                break


def main(argv):
    root = REPO
    only = None
    list_only = False
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--root" and args:
            root = Path(args.pop(0)).resolve()
        elif arg == "--only" and args:
            only = args.pop(0)
        elif arg == "--list":
            list_only = True
        else:
            print(__doc__)
            return 2
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ecr-backup-mutants-") as tmp:
        scratch = Path(tmp)
        scratch_copy(root, scratch)
        checks = Checks(root, scratch)
        originals = {name: cfn.load(path) for name, path in checks.templates().items()}
        checks.loaded = {name: copy.deepcopy(t) for name, t in originals.items()}
        # Round-trip every template as the mutants are written, and prove the checks pass
        # on them: a check that already fails would "catch" every mutant.
        for name, template in originals.items():
            cfn.dump(template, checks.infra / f"{name}.yaml")
        mutants = []
        for generator in GENERATORS:
            for name, label, mutate in generator(originals):
                if only and only not in label:
                    continue
                mutants.append((generator.__name__, name, label, mutate))
        print(f"== mutation test: {len(mutants)} mutants of {len(originals)} templates; "
              f"checks: {', '.join(checks.names)}")
        if list_only:
            for kind, name, label, _ in mutants:
                print(f"     {name}: {label}")
            return 0
        broken = checks.unmutated_failures()
        if broken:
            for check in broken:
                print(f"FAIL the unmutated templates already fail {check}: fix that first")
            return 2
        caught = 0
        survivors = []
        by_check = {}
        for kind, name, label, mutate in mutants:
            template = copy.deepcopy(originals[name])
            path = checks.infra / f"{name}.yaml"
            try:
                mutate(template)
            except Exception as error:  # noqa: BLE001 - a generator bug is a failure
                print(f"FAIL {name}: {label}: mutation could not be applied ({error})")
                survivors.append(label)
                continue
            cfn.dump(template, path)
            try:
                check = checks.first_failing(name, path, template)
            finally:
                cfn.dump(originals[name], path)
            if check:
                caught += 1
                by_check[check] = by_check.get(check, 0) + 1
                print(f"ok   caught by {check:<10} {name}: {label}")
            else:
                survivors.append(f"{name}: {label}")
                print(f"FAIL SURVIVED              {name}: {label}")
        elapsed = time.monotonic() - started
        print(f"== first catch by check: " + ", ".join(f"{c} {n}" for c, n in sorted(by_check.items(), key=lambda x: -x[1])))
        print(f"== {caught}/{len(mutants)} mutants caught ({elapsed:.0f} s)")
        return 0 if caught == len(mutants) and mutants else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
