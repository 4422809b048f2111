"""Changes flowing back from ServiceNow: change cursors, notifications, journal rows and the
Business Rules that send the notifications.

The cursor is a position in the order ``(sys_updated_on, sys_id)``, both the instance's own:
``sys_updated_on`` has whole seconds, and many records can share one, so a page can end inside
a second and the next one resumes after that record's ``sys_id`` within it (``^NQ`` ORs the two
halves of that condition).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs

from ticketing_core.errors import InvalidInput
from ticketing_core.models import JournalEntry, Notice
from ticketing_core.notifications import SIGNATURE_HEADER, TIMESTAMP_HEADER

MAX_BATCH = 100  # records per list request, and ids per sys_idIN read
CHANGE_ORDER = "ORDERBYsys_updated_on^ORDERBYsys_id"
JOURNAL_KINDS = {"work_notes": "work_note", "comments": "comment"}
JOURNAL_FIELDS = ("sys_id", "element", "element_id", "value", "sys_created_on", "sys_created_by")
EVENTS = ("update", "journal")
GLIDE_TIME = "%Y-%m-%d %H:%M:%S"

_CURSOR_VERSION = "sn1"
_SYS_ID = re.compile(r"[0-9a-f]{32}")
_GLIDE_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}")
_MOD_COUNT = re.compile(r"[0-9]{1,10}")
_USER_NAME_MAX = 255


@attrs.frozen(order=True)
class Cursor:
    """A position in the order of changes: after ``sys_id`` at ``updated_on``; with no
    ``sys_id``, before every record of ``updated_on``; with neither, before everything."""

    updated_on: str = ""
    sys_id: str = ""

    def encode(self) -> str:
        return f"{_CURSOR_VERSION}|{self.updated_on}|{self.sys_id}"

    @classmethod
    def decode(cls, text: str) -> Cursor:
        parts = text.split("|")
        if len(parts) != 3 or not cls._valid(*parts):
            raise InvalidInput(
                "not a ServiceNow change cursor: pass back one that changed_since returned"
            )
        return cls(parts[1], parts[2])

    @staticmethod
    def _valid(version: str, updated_on: str, sys_id: str) -> bool:
        return (
            version == _CURSOR_VERSION
            and (not updated_on or bool(_GLIDE_TIME.fullmatch(updated_on)))
            and (not sys_id or bool(updated_on and _SYS_ID.fullmatch(sys_id)))
        )

    def minus(self, seconds: float) -> Cursor:
        """The position ``seconds`` earlier, before every record of that (whole) second."""
        if not self.updated_on or seconds <= 0:
            return self
        earlier = datetime.strptime(self.updated_on, GLIDE_TIME) - timedelta(seconds=seconds)
        return Cursor(earlier.strftime(GLIDE_TIME))  # microseconds dropped: a floor

    def query(self) -> str:
        """The encoded query for the changes after this position, in their order."""
        on, sys_id = self.updated_on, self.sys_id
        if not on:
            return CHANGE_ORDER
        if not sys_id:
            return f"sys_updated_on>={on}^{CHANGE_ORDER}"
        return f"sys_updated_on>{on}^NQsys_updated_on={on}^sys_id>{sys_id}^{CHANGE_ORDER}"

    @classmethod
    def of(cls, record: Mapping[str, Any]) -> Cursor:
        """The position of a record read with ``sysparm_display_value=all`` or raw."""
        return cls(_raw(record.get("sys_updated_on")), _raw(record.get("sys_id")))


def _raw(value: Any) -> str:
    return str(value.get("value") or "") if isinstance(value, Mapping) else str(value or "")


def glide_time(moment: datetime) -> str:
    """``moment`` as the instance stores times (UTC, whole seconds, floored); naive is UTC."""
    utc = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return utc.strftime(GLIDE_TIME)


def journal_query(table: str, sys_id: str, after: datetime | None) -> str:
    """``sys_journal_field`` rows: the record's work notes and comments, oldest first."""
    terms = [f"element_id={sys_id}", f"name={table}", f"elementIN{','.join(JOURNAL_KINDS)}"]
    if after is not None:
        terms.append(f"sys_created_on>={glide_time(after)}")
    return "^".join([*terms, "ORDERBYsys_created_on", "ORDERBYsys_id"])


def journal_entry(row: Mapping[str, Any]) -> JournalEntry:
    return JournalEntry(
        id=str(row["sys_id"]),
        ticket_id=str(row["element_id"]),
        kind=JOURNAL_KINDS[row["element"]],
        text=str(row.get("value") or ""),
        author=str(row.get("sys_created_by") or ""),
        created_at=datetime.strptime(row["sys_created_on"], GLIDE_TIME).replace(tzinfo=UTC),
    )


# ---- notifications --------------------------------------------------------------------------


def read_notice(body: Any, table: str) -> Notice:
    """What a notification from the generated rules names, checked field by field; anything
    else is :class:`InvalidInput` saying which field is wrong (never quoting it)."""
    if not isinstance(body, Mapping):
        raise InvalidInput("a ServiceNow notification is a JSON object")
    if body.get("table") != table:
        raise InvalidInput(f"the notification's table must be {table!r}", field="table")
    sys_id = _field(body, "sys_id", _SYS_ID, "32 lowercase hexadecimal characters")
    event = body.get("event")
    if event not in EVENTS:
        raise InvalidInput(f"event must be one of {', '.join(EVENTS)}", field="event")
    count = _field(body, "sys_mod_count", _MOD_COUNT, "a whole number as text")
    _field(body, "sys_updated_on", _GLIDE_TIME, "a time as YYYY-MM-DD HH:MM:SS")
    by = body.get("sys_updated_by")
    if not isinstance(by, str) or not 0 < len(by) <= _USER_NAME_MAX or not by.isprintable():
        raise InvalidInput("sys_updated_by must be a user name", field="sys_updated_by")
    return Notice(ticket_id=sys_id, event=event, updated_by=by, revision=int(count))


def _field(body: Mapping[str, Any], name: str, shape: re.Pattern[str], what: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not shape.fullmatch(value):
        raise InvalidInput(f"{name} must be {what}", field=name)
    return value


# ---- the Business Rules ---------------------------------------------------------------------

_SETUP = """\
ServiceNow set-up for changes flowing back to {endpoint}

As an administrator, open System Definition > Business Rules and create the two rules below,
with "Advanced" checked. Both run async (after the change is saved, never slowing it down) and
skip the changes of {user}, the integration's own user. A notification only names the record:
the host reads it again with its own credentials. A notification lost on the way (rules do not
retry) is caught by the host's reconciling poll. The scripts hold the signing secret: let only
administrators read Business Rules.

--- Rule 1 ----------------------------------------------------------------------------------
Name:       ticketing: notify on {table} changes
Table:      {table}
When:       async        Insert: checked        Update: checked
Condition:  gs.getUserName() != {user_js}
Script:
(function executeRule(current, previous /* null in an async rule */) {{
    ticketingNotify(JSON.stringify({{
        table: current.getTableName(),
        sys_id: current.getUniqueValue(),
        sys_mod_count: current.getValue('sys_mod_count'),
        sys_updated_on: current.getValue('sys_updated_on'),
        sys_updated_by: current.getValue('sys_updated_by'),
        event: 'update'
    }}));
{notify}
}})(current, previous);

--- Rule 2 ----------------------------------------------------------------------------------
Name:       ticketing: notify on {table} work notes and comments
Table:      sys_journal_field
When:       async        Insert: checked
Condition:  current.name == {table_js} && (current.element == 'work_notes' || current.element == 'comments') && gs.getUserName() != {user_js}
Script:
(function executeRule(current, previous /* null in an async rule */) {{
    var record = new GlideRecord(current.getValue('name'));
    if (!record.get(current.getValue('element_id')))
        return;
    ticketingNotify(JSON.stringify({{
        table: current.getValue('name'),
        sys_id: current.getValue('element_id'),
        sys_mod_count: record.getValue('sys_mod_count'),
        sys_updated_on: current.getValue('sys_created_on'),
        sys_updated_by: current.getValue('sys_created_by'),
        event: 'journal'
    }}));
{notify}
}})(current, previous);
"""  # noqa: E501 - a condition is pasted as one line

_NOTIFY = """\
    // POST body to the host, signed: {signature_header}: v1=<base64 HMAC-SHA256 of "<timestamp>.<body>">
    function ticketingNotify(body) {{
        var key = {key_js}; // the secret, base64-encoded as generateMac wants its key
        var timestamp = String(Math.floor(new GlideDateTime().getNumericValue() / 1000));
        var mac = new GlideCertificateEncryption().generateMac(key, 'HmacSHA256', timestamp + '.' + body);
        var request = new sn_ws.RESTMessageV2();
        request.setEndpoint({endpoint_js});
        request.setHttpMethod('post');
        request.setRequestHeader('Content-Type', 'application/json');
        request.setRequestHeader('{timestamp_header}', timestamp);
        request.setRequestHeader('{signature_header}', 'v1=' + mac);
        request.setRequestBody(body);
        request.setHttpTimeout(10000);
        request.execute();
    }}"""


def business_rules(endpoint: str, secret: str, user: str, table: str) -> str:
    """The text of the two async Business Rules that notify ``endpoint``, signed with
    ``secret``, of every change to ``table`` and its journal not made by ``user``."""
    notify = _NOTIFY.format(
        key_js=_js(base64.b64encode(secret.encode()).decode()),
        endpoint_js=_js(endpoint),
        timestamp_header=TIMESTAMP_HEADER,
        signature_header=SIGNATURE_HEADER,
    )
    return _SETUP.format(
        endpoint=endpoint,
        table=table,
        user=user,
        user_js=_js(user),
        table_js=_js(table),
        notify=notify,
    )


def _js(text: str) -> str:
    """A JavaScript string literal (JSON's, all ASCII, so U+2028 and quotes cannot break out)."""
    return json.dumps(text, ensure_ascii=True)
