"""Reading CloudFormation templates as data, for the infrastructure checks.

`load(path)` reads a YAML (or JSON) template with the short-form tags (!Ref, !Sub,
!GetAtt ...) turned into their long form ({"Ref": ...}, {"Fn::Sub": ...},
{"Fn::GetAtt": [resource, attribute]}), so a template can be inspected, changed and
written back as JSON (which every tool here reads) without losing its meaning.

The helpers below answer the questions the policy checks ask of a policy document:
which statements it has (both branches of an Fn::If, none for AWS::NoValue), which
actions a statement names, whether a pattern such as kms:* covers an action, who the
principal is, and what an intrinsic refers to.
"""

import fnmatch
import json

import yaml


class CfnLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
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


def load(path):
    """The template at path as plain data (dicts, lists, strings)."""
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    if text.lstrip().startswith("{"):
        return json.loads(text)
    return yaml.load(text, Loader=CfnLoader)  # noqa: S506 - SafeLoader subclass


def dump(template, path):
    """Writes a template loaded with load() as JSON (a valid CloudFormation template)."""
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(template, handle, indent=1, default=str)


# --------------------------------------------------------------------------- values
def as_list(value):
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def is_no_value(value):
    return isinstance(value, dict) and value.get("Ref") == "AWS::NoValue"


def branches(value):
    """The values an Fn::If can take (recursively), without AWS::NoValue."""
    if isinstance(value, dict) and "Fn::If" in value and len(value) == 1:
        args = value["Fn::If"]
        if isinstance(args, list) and len(args) == 3:
            return branches(args[1]) + branches(args[2])
    if is_no_value(value):
        return []
    return [value]


def ref(value):
    """Name in a {"Ref": name}, else None."""
    if isinstance(value, dict) and list(value) == ["Ref"]:
        return value["Ref"]
    return None


def getatt(value):
    """(resource, attribute) of an Fn::GetAtt, else None."""
    if isinstance(value, dict) and list(value) == ["Fn::GetAtt"]:
        target = value["Fn::GetAtt"]
        if isinstance(target, str):
            target = target.split(".", 1)
        if isinstance(target, list) and len(target) == 2:
            return tuple(target)
    return None


def sub_text(value):
    """The template string of an Fn::Sub (either form), else None."""
    if isinstance(value, dict) and list(value) == ["Fn::Sub"]:
        body = value["Fn::Sub"]
        if isinstance(body, list):
            body = body[0]
        return body if isinstance(body, str) else None
    return None


def refers_to(value, logical_id):
    """Whether value is !Ref X, !GetAtt X.*, or a !Sub naming ${X} / ${X.*}."""
    if ref(value) == logical_id:
        return True
    att = getatt(value)
    if att and att[0] == logical_id:
        return True
    text = sub_text(value)
    return bool(text) and ("${%s}" % logical_id in text or "${%s." % logical_id in text)


# --------------------------------------------------------------------------- policies
def statements(document):
    """Statements of a policy document, every Fn::If branch included."""
    if not isinstance(document, dict):
        return []
    found = []
    for item in as_list(document.get("Statement")):
        for branch in branches(item):
            if isinstance(branch, dict):
                found.append(branch)
    return found


def actions(statement):
    return [str(a) for a in as_list(statement.get("Action"))]


def covers(pattern, action):
    """Whether an IAM action pattern (wildcards allowed, any case) covers action."""
    return fnmatch.fnmatchcase(action.lower(), str(pattern).lower())


def names_action(statement, action):
    return any(covers(p, action) for p in actions(statement))


def principal_is_everyone(statement):
    principal = statement.get("Principal")
    if principal == "*":
        return True
    if isinstance(principal, dict):
        return "*" in as_list(principal.get("AWS"))
    return False


def service_principals(statement):
    principal = statement.get("Principal")
    if isinstance(principal, dict):
        return [str(s) if isinstance(s, str) else sub_text(s) or "" for s in as_list(principal.get("Service"))]
    return []


def condition_keys(statement):
    """{(operator, key)} of a statement's Condition."""
    found = set()
    condition = statement.get("Condition") or {}
    if isinstance(condition, dict):
        for operator, block in condition.items():
            if isinstance(block, dict):
                for key in block:
                    found.add((operator, key))
    return found


def condition_values(statement, operator, key):
    block = (statement.get("Condition") or {}).get(operator) or {}
    if not isinstance(block, dict) or key not in block:
        return None
    values = []
    for value in as_list(block[key]):
        values.extend(branches(value))
    return values
