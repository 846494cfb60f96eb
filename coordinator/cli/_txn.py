"""`concordctl txn`: compare-and-swap over several keys in one atomic transaction.

    concordctl txn --if 'config = v1' --if 'version(lock-owner) = 0' \\
                   --then 'put config v2' --then 'put lock-owner me' \\
                   --else 'get config'

A compare is `KEY OP VALUE` (the key's value), or `FIELD(KEY) OP NUMBER` with FIELD one of
`version`, `create`, `mod`, `lease`, or `lock(NAME) OP TOKEN` (the lock's current fencing
token: a guarded write only the current holder can make). OP is one of `=`, `!=`, `<`, `>`.
An operation is `put KEY VALUE`, `del KEY` or `get KEY`. Every compare must hold for the
`--then` operations to run, else the `--else` ones run; both sides see one revision. Exit 0
if the compares held, 1 if not (as `cas`), 2 for a malformed compare or operation.
"""

from __future__ import annotations

import re
import shlex
import sys
from typing import Any

import click

from coordinator.client import Compare, Delete, Get, Put, TxnOp, TxnOpResult

from ._common import Ctx, emit
from ._connect import run

_FIELDS = {
    "version": "version",
    "create": "create_revision",
    "mod": "mod_revision",
    "lease": "lease",
    "lock": "lock_token",
}
_FIELD_CMP = re.compile(r"^\s*(\w+)\((.+)\)\s*(!=|=|<|>)\s*(\S+)\s*$")
_VALUE_CMP = re.compile(r"^\s*(\S+?)\s*(!=|=|<|>)\s*(.*?)\s*$")


def parse_compare(text: str) -> Compare:
    """One `--if`; click.BadParameter (with the accepted forms) if malformed."""
    m = _FIELD_CMP.match(text)
    if m:
        field, key, op, operand = m.groups()
        if field not in _FIELDS:
            raise click.BadParameter(
                f"{text!r}: unknown field {field!r}; use one of {', '.join(_FIELDS)} "
                "(or KEY OP VALUE to compare the value)",
                param_hint="--if",
            )
        if not operand.isdigit():
            raise click.BadParameter(
                f"{text!r}: {field}(...) compares a number, not {operand!r}", param_hint="--if"
            )
        return Compare(key.strip().encode(), _FIELDS[field], op, int(operand))
    m = _VALUE_CMP.match(text)
    if not m or not m.group(1):
        raise click.BadParameter(
            f"{text!r} is not a compare: write KEY = VALUE, or version(KEY) = N "
            "(fields: version, create, mod, lease, lock; operators: = != < >)",
            param_hint="--if",
        )
    key, op, value = m.groups()
    return Compare(key.encode(), "value", op, value.encode())


def parse_op(text: str, hint: str) -> TxnOp:
    """One `--then`/`--else`: put KEY VALUE | del KEY | get KEY."""
    try:
        words = shlex.split(text)
    except ValueError as err:
        raise click.BadParameter(f"{text!r}: {err}", param_hint=hint) from None
    verb = words[0].lower() if words else ""
    if verb == "put" and len(words) == 3:
        return Put(words[1].encode(), words[2].encode())
    if verb in ("del", "delete") and len(words) == 2:
        return Delete(words[1].encode())
    if verb == "get" and len(words) == 2:
        return Get(words[1].encode())
    raise click.BadParameter(
        f"{text!r} is not an operation: write 'put KEY VALUE', 'del KEY' or 'get KEY' "
        "(quote values with spaces)",
        param_hint=hint,
    )


def _result_row(op: TxnOp, r: TxnOpResult) -> dict[str, Any]:
    key = op.key.decode(errors="replace")
    if isinstance(op, Put):
        return {"op": "put", "key": key, "value": "", "revision": r.revision}
    if isinstance(op, Delete):
        return {"op": "del", "key": key, "value": f"{r.deleted} deleted", "revision": ""}
    if not r.kvs:
        return {"op": "get", "key": key, "value": "(absent)", "revision": ""}
    kv = r.kvs[0]
    return {
        "op": "get",
        "key": key,
        "value": kv.value.decode(errors="replace"),
        "revision": kv.mod_revision,
    }


@click.command()
@click.option("--if", "compares", multiple=True, metavar="COMPARE", help="Repeatable.")
@click.option("--then", "then", multiple=True, metavar="OP", help="Run if every compare holds.")
@click.option("--else", "otherwise", multiple=True, metavar="OP", help="Run otherwise.")
@click.pass_obj
def txn(
    ctx: Ctx, compares: tuple[str, ...], then: tuple[str, ...], otherwise: tuple[str, ...]
) -> None:
    """Atomically: if every --if holds, run the --then operations, else the --else ones.

    COMPARE: KEY = VALUE, or version(KEY) = N (fields: version, create, mod, lease, and
    lock(NAME) = TOKEN for a lock's current fencing token); operators = != < >.
    OP: put KEY VALUE | del KEY | get KEY. Exit 1 if the compares did not hold.
    """
    if not (then or otherwise):
        raise click.UsageError("give at least one --then or --else operation")
    cmps = [parse_compare(c) for c in compares]
    success = [parse_op(o, "--then") for o in then]
    failure = [parse_op(o, "--else") for o in otherwise]
    resp = run(ctx, lambda c: c.txn(cmps, success, failure))
    ran = success if resp.succeeded else failure
    rows = [
        {"succeeded": resp.succeeded, **_result_row(op, r)}
        for op, r in zip(ran, resp.results, strict=True)
    ]
    if not rows:
        rows = [{"succeeded": resp.succeeded, "op": "", "key": "", "value": "", "revision": ""}]
    emit(ctx, rows, ["succeeded", "op", "key", "value", "revision"])
    if not resp.succeeded:
        sys.exit(1)
