"""The ``membershipctl`` commands: small typed functions over :class:`~membershipctl.client.Client`.

Every command prints a table (or a line) for people and the API's JSON with ``--json``;
failures print one line on stderr and exit with the codes of :mod:`membershipctl.client`.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, TypeVar
from urllib.parse import quote

import typer
import yaml
from rich.console import Console
from rich.table import Table

from shared.settings import SERVICES

from .client import OK, REFUSED, UNAVAILABLE, USAGE, Client, CliError
from .importer import Kind

T = TypeVar("T")

app = typer.Typer(
    name="membershipctl",
    help="Operate the membership platform: chains and keys, audit, imports, dead letters, pipeline health, "
    "and the programme's operations. Service URLs come from MEMBERSHIP_URL_<SERVICE> (default: make run's).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
chains_app = typer.Typer(help="Chains (platform keys create and change them).", no_args_is_help=True)
keys_app = typer.Typer(help="API keys of a chain: create, list, rotate, revoke.", no_args_is_help=True)
dead_app = typer.Typer(help="Dead letters of each service's consumer: list, re-drive, discard.", no_args_is_help=True)
policy_app = typer.Typer(help="The chain's tier policy (programme).", no_args_is_help=True)
reviews_app = typer.Typer(help="Tier reviews.", no_args_is_help=True)
expiry_app = typer.Typer(help="Points expiry.", no_args_is_help=True)
referrals_app = typer.Typer(help="Referral completion.", no_args_is_help=True)
schedules_app = typer.Typer(help="Benefits' scheduled grants (birthday vouchers).", no_args_is_help=True)
import_app = typer.Typer(
    help="Load a chain's existing members and POS history (CSV or NDJSON), resumable.", no_args_is_help=True
)
rebuild_app = typer.Typer(help="Rebuild derived views from the services that own the data.", no_args_is_help=True)
member_app = typer.Typer(help="A member's personal data (PIPL): export everything held, erase.", no_args_is_help=True)
app.add_typer(chains_app, name="chains")
app.add_typer(keys_app, name="keys")
app.add_typer(dead_app, name="dead-letters")
app.add_typer(policy_app, name="policy")
app.add_typer(reviews_app, name="reviews")
app.add_typer(expiry_app, name="expiry")
app.add_typer(referrals_app, name="referrals")
app.add_typer(schedules_app, name="schedules")
app.add_typer(import_app, name="import")
app.add_typer(rebuild_app, name="rebuild")
app.add_typer(member_app, name="member")

out = Console()
err = Console(stderr=True)


@dataclass
class State:
    key: str | None = None
    json: bool = False
    client: Client | None = None

    def api(self) -> Client:
        if self.client is None:
            self.client = Client(self.key)
        return self.client


state = State()


@app.callback()
def _options(
    key: Annotated[str | None, typer.Option("--key", envvar="MEMBERSHIP_KEY", help="API key to act with.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the API's JSON (for scripts).")] = False,
) -> None:
    state.key, state.json, state.client = key, as_json, None


def run(action: Callable[[], T]) -> T:
    """Run a command's body; a CliError becomes one line on stderr and its exit code."""
    try:
        return action()
    except CliError as exc:
        if state.json and exc.problem is not None:
            print(json.dumps(exc.problem), flush=True)
        err.print(f"error: {exc.message}", highlight=False, markup=False)
        raise typer.Exit(exc.code) from None


def show(doc: Any, columns: Iterable[str] | None = None, title: str | None = None) -> None:
    """``--json``: the document; otherwise a table of ``doc`` (a list of rows) or of its fields."""
    if state.json:
        print(json.dumps(doc, ensure_ascii=False, default=str), flush=True)
        return
    rows = doc if isinstance(doc, list) else [doc]
    cols = list(columns) if columns is not None else (list(rows[0]) if rows else [])
    if isinstance(doc, dict) and len(cols) > 5:  # one record of many fields reads best as a column
        table = Table("field", "value", title=title, show_header=False)
        for c in cols:
            table.add_row(c, _cell(doc.get(c)))
        out.print(table)
        return
    table = Table(*cols, title=title, show_lines=False)
    for row in rows:
        table.add_row(*(_cell(row.get(c)) for c in cols))
    out.print(table)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


DURATION = re.compile(r"^(\d+)([smhdw])$")


def since_instant(text: str | None) -> datetime | None:
    """``2d``, ``12h``, ``30m``... ago, or an ISO-8601 instant."""
    if text is None:
        return None
    m = DURATION.match(text.strip())
    if m:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}[m.group(2)]
        return datetime.now(UTC) - timedelta(**{unit: int(m.group(1))})
    try:
        at = datetime.fromisoformat(text)
    except ValueError as exc:
        raise typer.BadParameter("a duration like 2d/12h/30m or an ISO-8601 instant") from exc
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None


AsOf = Annotated[str | None, typer.Option("--as-of", help="ISO-8601 instant to run as of (default: now).")]
Service = Annotated[str, typer.Option("--service", "-s", help=f"One of {', '.join(SERVICES)}.")]


def _as_of_body(as_of: str | None) -> dict[str, Any] | None:
    if as_of is None:
        return None
    try:
        at = datetime.fromisoformat(as_of)
    except ValueError as exc:
        raise typer.BadParameter("an ISO-8601 instant, e.g. 2026-12-01T00:00:00+08:00") from exc
    return {"as_of": (at if at.tzinfo else at.replace(tzinfo=UTC)).isoformat()}


def _service(name: str) -> str:
    if name not in SERVICES:
        raise typer.BadParameter(f"unknown service {name!r}; one of {', '.join(SERVICES)}")
    return name


# ---- bootstrap ----------------------------------------------------------------------------------


@app.command()
def bootstrap(
    chain_id: Annotated[str, typer.Option(help="The first chain's id (lower-case letters, digits, '-').")],
    name: Annotated[str, typer.Option(help="The chain's name.")],
    timezone: Annotated[str, typer.Option(help="The chain's IANA time zone.")] = "Asia/Shanghai",
) -> None:
    """Create the first chain and its first key (scopes ops + platform) on a fresh database.

    Talks to the database (MEMBERSHIP_DATABASE_URL), not to an API: there is no key yet. Refuses
    when any key exists. The key is printed once: keep it in your secret store.
    """
    from .bootstrap import bootstrap as do_bootstrap

    created = run(lambda: asyncio.run(do_bootstrap(chain_id=chain_id, name=name, timezone=timezone)))
    if state.json:
        show(created)
        return
    out.print(f"chain {created['chain_id']} created; its first key ({created['key_id']}, scopes ops platform):")
    out.print(created["key"], highlight=False, markup=False)
    out.print("This is the only time the key is shown.")


# ---- chains -------------------------------------------------------------------------------------

CHAIN_COLUMNS = ("chain_id", "name", "timezone", "webhook_url", "created_at")


@chains_app.command("create")
def chains_create(
    chain_id: str,
    name: Annotated[str, typer.Option(help="The chain's name.")],
    timezone: Annotated[str, typer.Option(help="IANA time zone.")] = "Asia/Shanghai",
    webhook_url: Annotated[str | None, typer.Option(help="Where tier-ups and other events are posted.")] = None,
) -> None:
    """Onboard a chain (platform key). Then create its first ops key with `keys create --chain-id`."""
    body = {"chain_id": chain_id, "name": name, "timezone": timezone, "webhook_url": webhook_url}
    show(run(lambda: state.api().post("enrollment", "/v1/chains", body)), CHAIN_COLUMNS)


@chains_app.command("show")
def chains_show(chain_id: str) -> None:
    """A chain's settings."""
    show(run(lambda: state.api().get("enrollment", f"/v1/chains/{chain_id}")), CHAIN_COLUMNS)


@chains_app.command("update")
def chains_update(
    chain_id: str,
    name: Annotated[str | None, typer.Option(help="New name.")] = None,
    timezone: Annotated[str | None, typer.Option(help="New IANA time zone.")] = None,
    webhook_url: Annotated[str | None, typer.Option(help="New webhook URL.")] = None,
) -> None:
    """Change a chain's name, time zone or webhook (platform key)."""
    body = {k: v for k, v in {"name": name, "timezone": timezone, "webhook_url": webhook_url}.items() if v}
    if not body:
        raise typer.BadParameter("nothing to change: give --name, --timezone or --webhook-url")
    show(run(lambda: state.api().call("PATCH", "enrollment", f"/v1/chains/{chain_id}", body=body)), CHAIN_COLUMNS)


# ---- keys ---------------------------------------------------------------------------------------

KEY_COLUMNS = (
    "key_id",
    "name",
    "prefix",
    "scopes",
    "clinic_id",
    "created_at",
    "last_used_at",
    "expires_at",
    "revoked_at",
)


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="What the key is for (e.g. 'pos clinic-7').")],
    scope: Annotated[list[str], typer.Option("--scope", help="pos, app, ops or platform; repeat for several.")],
    clinic_id: Annotated[str | None, typer.Option(help="Bind a pos key to one clinic.")] = None,
    expires_at: Annotated[str | None, typer.Option(help="ISO-8601 instant the key stops working.")] = None,
    chain_id: Annotated[str | None, typer.Option(help="Another chain (platform keys only).")] = None,
) -> None:
    """Create a key; its secret is printed once."""
    body = {
        "name": name,
        "scopes": scope,
        "clinic_id": clinic_id,
        "chain_id": chain_id,
        "expires_at": iso(since_instant(expires_at)) if expires_at else None,
    }
    created = run(lambda: state.api().post("enrollment", "/v1/keys", body))
    if state.json:
        show(created)
        return
    show(created, KEY_COLUMNS)
    out.print(f"secret (shown once): {created['key']}", highlight=False, markup=False)


@keys_app.command("list")
def keys_list(
    chain_id: Annotated[str | None, typer.Option(help="Another chain (platform keys only).")] = None,
) -> None:
    """The chain's keys (no secrets)."""
    keys = run(lambda: state.api().get("enrollment", "/v1/keys", params={"chain_id": chain_id}))
    show(keys["items"] if not state.json else keys, KEY_COLUMNS)


@keys_app.command("rotate")
def keys_rotate(
    key_id: str,
    grace_seconds: Annotated[int | None, typer.Option(help="How long the old secret keeps working.")] = None,
) -> None:
    """A new secret for the key; the old one keeps working for the grace period (default 24 h)."""
    body = {"grace_seconds": grace_seconds} if grace_seconds is not None else None
    rotated = run(lambda: state.api().post("enrollment", f"/v1/keys/{key_id}/rotate", body))
    if state.json:
        show(rotated)
        return
    out.print(f"new secret (shown once): {rotated['key']}", highlight=False, markup=False)
    out.print(f"the previous secret works until {rotated['previous_valid_until']}")


@keys_app.command("revoke")
def keys_revoke(key_id: str) -> None:
    """Revoke a key at once (every service refuses it within seconds)."""
    run(lambda: state.api().call("DELETE", "enrollment", f"/v1/keys/{key_id}", expect_json=False))
    show({"key_id": key_id, "revoked": True}) if state.json else out.print(f"{key_id} revoked")


# ---- audit --------------------------------------------------------------------------------------


@app.command()
def audit(
    since: Annotated[str | None, typer.Option(help="2d, 12h, 30m... ago, or an ISO-8601 instant.")] = None,
    action: Annotated[str | None, typer.Option(help="e.g. policy.update, points.adjust, key.revoke.")] = None,
    target: Annotated[str | None, typer.Option(help="e.g. member:<id>, key:<id>.")] = None,
    service: Annotated[list[str] | None, typer.Option("--service", "-s", help="Only these services.")] = None,
) -> None:
    """Every change made with ops or platform keys, merged from the services in time order."""
    params = {"since": iso(since_instant(since)), "action": action, "target": target}
    services = [_service(s) for s in service] if service else list(SERVICES)

    def gather() -> list[dict[str, Any]]:
        entries = []
        for s in services:
            entries += [{**e, "service": s} for e in state.api().pages(s, "/v1/audit", params)]
        return sorted(entries, key=lambda e: (e["at"], e["audit_id"]))

    show(run(gather), ("at", "service", "actor_name", "action", "target", "correlation_id"), title="audit")


# ---- personal data (SPEC §8) --------------------------------------------------------------------


def merged_export(client: Client, member_id: str) -> dict[str, Any]:
    """The five services' exports of a member in one document; a service that holds nothing on the
    member (404) is there as null. Enrollment not knowing the member is an error."""
    path = f"/v1/members/{quote(member_id, safe='')}/export"
    services: dict[str, Any] = {}
    for s in SERVICES:
        try:
            services[s] = client.get(s, path)["data"]
        except CliError as exc:
            if s == "enrollment" or (exc.problem or {}).get("status") != 404:
                raise
            services[s] = None
    return {"member_id": member_id, "exported_at": datetime.now(UTC).isoformat(), "services": services}


@member_app.command("export")
def member_export(
    member_id: str,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the JSON here (else stdout).")] = None,
) -> None:
    """Everything the platform holds on a member (ops key), merged from the five services into one JSON
    document: {member_id, exported_at, services: {enrollment: {table: [rows]}, points: ..., ...}}."""
    doc = run(lambda: merged_export(state.api(), member_id))
    text = json.dumps(doc, ensure_ascii=False, indent=2, default=str)
    if output is None:
        print(text, flush=True)
        return
    output.write_text(text + "\n", encoding="utf-8")
    if not state.json:
        held = {s: sum(len(rows) for rows in (d or {}).values()) for s, d in doc["services"].items()}
        out.print(f"{member_id}: " + ", ".join(f"{s} {n} rows" for s, n in held.items()) + f" -> {output}")


@member_app.command("erase")
def member_erase(
    member_id: str,
    yes: Annotated[bool, typer.Option("--yes", help="Confirm: the erasure cannot be undone.")] = False,
) -> None:
    """Erase a member (ops key): personal data deleted or anonymised on every service, the data key
    destroyed; purchases and ledger entries stay under the member_id. Asks for --yes."""
    if not yes:
        raise typer.BadParameter("erasure cannot be undone: pass --yes")
    path = f"/v1/members/{quote(member_id, safe='')}"
    show(run(lambda: state.api().call("DELETE", "enrollment", path)), ("member_id", "status", "erased_at"))


# ---- dead letters -------------------------------------------------------------------------------

DEAD_COLUMNS = ("dead_letter_id", "service", "type", "event_id", "status", "attempts", "first_failed_at", "error")


@dead_app.command("list")
def dead_list(
    service: Annotated[list[str] | None, typer.Option("--service", "-s", help="Only these services.")] = None,
    status: Annotated[str | None, typer.Option(help="parked, redriven or discarded.")] = "parked",
    type: Annotated[str | None, typer.Option("--type", help="Event type, e.g. PurchaseRecorded.")] = None,
) -> None:
    """The chain's dead letters on every consuming service."""
    services = [_service(s) for s in service] if service else list(SERVICES)

    def gather() -> list[dict[str, Any]]:
        items = []
        for s in services:
            found = state.api().pages(s, "/v1/dead-letters", {"status": status, "type": type})
            items += [{**d, "service": s, "error": d["error"][:80]} for d in found]
        return items

    show(run(gather), DEAD_COLUMNS, title="dead letters")


@dead_app.command("redrive")
def dead_redrive(
    dead_letter_id: Annotated[str | None, typer.Argument(help="One dead letter (else: all parked).")] = None,
    service: Service = "points",
    type: Annotated[str | None, typer.Option("--type", help="Only this event type (all parked).")] = None,
    since: Annotated[str | None, typer.Option(help="Only those failed since (all parked).")] = None,
) -> None:
    """Apply a parked dead letter again through the service's handlers (once), or all parked ones."""
    s = _service(service)
    if dead_letter_id is not None:
        show(run(lambda: state.api().post(s, f"/v1/dead-letters/{dead_letter_id}/redrive")))
        return
    body = {"type": type, "since": iso(since_instant(since))}
    result = run(lambda: state.api().post(s, "/v1/dead-letters/redrive", body))
    show(result)
    if result["still_failing"]:
        raise typer.Exit(REFUSED)


@dead_app.command("discard")
def dead_discard(dead_letter_id: str, service: Service = "points") -> None:
    """Give up on a parked dead letter (kept, marked discarded)."""
    show(
        run(lambda: state.api().post(_service(service), f"/v1/dead-letters/{dead_letter_id}/discard")),
        DEAD_COLUMNS[:1] + DEAD_COLUMNS[2:7],
    )


# ---- the programme's operations -------------------------------------------------------------------


def _document(path: Path) -> Any:
    try:
        text = path.read_text()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc}", USAGE) from exc
    try:
        return yaml.safe_load(text)  # JSON is YAML too
    except yaml.YAMLError as exc:
        raise CliError(f"{path} is neither JSON nor YAML: {exc}", USAGE) from exc


@policy_app.command("get")
def policy_get(
    version: Annotated[int | None, typer.Option(help="A stored version (default: current).")] = None,
) -> None:
    """The chain's tier policy (as JSON)."""
    path = "/v1/policy" if version is None else f"/v1/policy/versions/{version}"
    doc = run(lambda: state.api().get("tiering", path))
    print(json.dumps(doc, ensure_ascii=False, indent=None if state.json else 2), flush=True)


@policy_app.command("put")
def policy_put(file: Annotated[Path, typer.Argument(help="The policy document, JSON or YAML.")]) -> None:
    """Store a new policy version (nobody moves until a review or a recalculation)."""
    stored = run(lambda: state.api().call("PUT", "tiering", "/v1/policy", body=_document(file)))
    show(stored) if state.json else out.print(f"policy version {stored['version']} stored")


@policy_app.command("simulate")
def policy_simulate(file: Annotated[Path, typer.Argument(help="The proposed policy, JSON or YAML.")]) -> None:
    """How the chain's members would sort into tiers under a proposed policy; changes nothing."""
    result = run(lambda: state.api().post("tiering", "/v1/policy/simulate", {"policy": _document(file)}))
    print(json.dumps(result, ensure_ascii=False, indent=None if state.json else 2), flush=True)


@app.command()
def recalculate(
    wait: Annotated[bool, typer.Option(help="Follow the job until it ends.")] = False,
) -> None:
    """Re-evaluate every member of the chain under the current policy (a background job)."""
    started = run(lambda: state.api().post("tiering", "/v1/policy/recalculate"))
    if not wait:
        show(started)
        return
    import time

    while True:
        job = run(lambda: state.api().get("tiering", f"/v1/policy/recalculations/{started['job_id']}"))
        if job.get("status") not in ("pending", "running"):
            show(job)
            return
        time.sleep(1)


@reviews_app.command("run")
def reviews_run(as_of: AsOf = None) -> None:
    """Run the chain's tier reviews due now (or as of --as-of)."""
    show(run(lambda: state.api().post("tiering", "/v1/reviews/run", _as_of_body(as_of))))


@app.command()
def override(
    member_id: str,
    tier: Annotated[str, typer.Option(help="The tier to set.")],
    reason: Annotated[str, typer.Option(help="Why (kept in the audit log).")],
    until: Annotated[str | None, typer.Option(help="ISO-8601 instant the floor holds until.")] = None,
) -> None:
    """Set a member's tier at once, held as a floor until --until (default: their next review)."""
    body = {"to_tier": tier, "reason": reason, "until": (_as_of_body(until) or {}).get("as_of")}
    show(run(lambda: state.api().post("tiering", f"/v1/members/{member_id}/tier/override", body)))


@app.command()
def adjust(
    member_id: str,
    delta: Annotated[int, typer.Option(help="Points to add (negative: to take).")],
    reason: Annotated[str, typer.Option(help="Why (kept in the ledger and the audit log).")],
) -> None:
    """Correct a member's points."""
    body = {"delta": delta, "reason": reason}
    show(run(lambda: state.api().post("points", f"/v1/members/{member_id}/points/adjustments", body)))


@expiry_app.command("run")
def expiry_run(as_of: AsOf = None) -> None:
    """Announce and expire the chain's points due now (or as of --as-of)."""
    show(run(lambda: state.api().post("points", "/v1/points/expiry/run", _as_of_body(as_of))))


@referrals_app.command("run")
def referrals_run(as_of: AsOf = None) -> None:
    """Complete the chain's referrals due now (or as of --as-of)."""
    show(run(lambda: state.api().post("enrollment", "/v1/referrals/run", _as_of_body(as_of))))


@schedules_app.command("run")
def schedules_run(as_of: AsOf = None) -> None:
    """Grant the chain's birthday vouchers due now (or as of --as-of)."""
    show(run(lambda: state.api().post("benefits", "/v1/benefits/schedules/run", _as_of_body(as_of))))


# ---- pipeline health ----------------------------------------------------------------------------


def _status_table(rows: list[dict[str, Any]]) -> Table:
    def up(flag: bool) -> str:
        return "[green]up[/green]" if flag else "[red]DOWN[/red]"

    table = Table(
        "service",
        "api",
        "worker",
        "consumer lag",
        "outbox backlog",
        "oldest unpublished",
        "dead letters",
        "last error",
        title="membership pipeline",
    )
    for r in rows:
        lag = ", ".join(f"{t.removeprefix('membership.')}={n}" for t, n in sorted(r["consumer_lag"].items())) or "-"
        age = r["outbox_oldest_age_seconds"]
        table.add_row(
            r["service"],
            up(r["api_up"]),
            up(r["worker_up"]),
            lag,
            _cell(r["outbox_backlog"]),
            f"{age:.1f} s" if age is not None else "-",
            _cell(r["dead_letters_parked"]),
            (r["last_error"] or "-")[:60],
        )
    return table


@app.command()
def status(
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Refresh until Ctrl-C.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes with --watch.")] = 2.0,
) -> None:
    """Every service: API and worker up, consumer lag per topic, outbox backlog and its oldest row's
    age, dead letters parked, last error. Exits 3 when a process is down."""
    from .status import healthy, pipeline_status

    rows = run(lambda: pipeline_status(state.api()))
    if watch and not state.json:
        import time

        from rich.live import Live

        with Live(_status_table(rows), console=out, refresh_per_second=4) as live:
            try:
                while True:
                    time.sleep(interval)
                    rows = pipeline_status(state.api())
                    live.update(_status_table(rows))
            except KeyboardInterrupt:
                pass
    elif state.json:
        print(json.dumps(rows, default=str), flush=True)
    else:
        out.print(_status_table(rows))
    if not healthy(rows):
        raise typer.Exit(UNAVAILABLE)


# ---- bulk import --------------------------------------------------------------------------------

ImportFile = Annotated[Path, typer.Argument(help="CSV (with a header row) or NDJSON (.ndjson/.jsonl).")]
BatchSize = Annotated[int, typer.Option(help="Rows per request (one transaction each), at most 1000.")]
Restart = Annotated[bool, typer.Option(help="Ignore FILE.progress and start from the first row.")]


def _import(kind: Kind, file: Path, batch_size: int, restart: bool) -> None:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from .importer import import_file, progress_path, rejects_path

    resuming = progress_path(file).exists() and not restart
    columns = (
        TextColumn(f"importing {kind}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TextColumn("{task.fields[rows]} rows, {task.fields[rate]} rows/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err, disable=state.json) as bar:
        task = bar.add_task(kind, total=max(1, file.stat().st_size) if file.is_file() else 1, rows=0, rate="-")

        def moved(done: int, total: int, s: Any) -> None:
            bar.update(task, completed=done, total=max(1, total), rows=s.rows, rate=f"{s.rows_per_second:,.0f}")

        summary = run(
            lambda: import_file(state.api(), kind, file, batch_size=batch_size, restart=restart, on_progress=moved)
        )
    doc = {
        "file": str(file),
        "kind": kind,
        "resumed_at_row": summary.resumed_at_row if resuming else 0,
        "rows": summary.rows,
        "created": summary.created,
        "exists": summary.exists,
        "rejected": summary.rejected,
        "seconds": round(summary.seconds, 2),
        "rows_per_second": round(summary.rows_per_second, 1),
        "rejects_file": str(rejects_path(file)) if summary.rejected else None,
    }
    show(doc, list(doc), title=f"import {kind}")
    if summary.rejected:
        raise typer.Exit(REFUSED)


@import_app.command("members")
def import_members(file: ImportFile, batch_size: BatchSize = 500, restart: Restart = False) -> None:
    """Enrol a file of members (phone, name, birthday, home_clinic_id, source; optional member_id,
    enrolled_at, email, consents). Rows already enrolled are counted as exists."""
    _import("members", file, batch_size, restart)


@import_app.command("purchases")
def import_purchases(file: ImportFile, batch_size: BatchSize = 500, restart: Restart = False) -> None:
    """Record a file of past purchases (as POST /v1/purchases; occurred_at may be years back). Points,
    tiers and benefits come out as if the history had been lived; no member is notified of it."""
    _import("purchases", file, batch_size, restart)


# ---- rebuild ------------------------------------------------------------------------------------


@rebuild_app.command("status-view")
def rebuild_status_view(
    service: Annotated[
        list[str] | None,
        typer.Option("--service", "-s", help="Only these owners (points, tiering, benefits); default all three."),
    ] = None,
    page_size: Annotated[
        int, typer.Option(min=1, max=1000, help="Members per snapshot request (one transaction each).")
    ] = 500,
    timeout: Annotated[
        float, typer.Option(min=0, help="Seconds to wait for enrollment to apply the snapshots.")
    ] = 300.0,
) -> None:
    """Rebuild enrollment's member status view of the chain from points, tiering and benefits.

    Each owner re-publishes every member's state as a snapshot event (in order with the member's
    other events, while the platform keeps running); then the command waits until enrollment has
    applied them. Safe to run again. Exits 3 when enrollment has not caught up within --timeout.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .rebuild import OWNERS, publish, wait_applied

    owners = list(dict.fromkeys(service)) if service else list(OWNERS)
    unknown = [s for s in owners if s not in OWNERS]
    if unknown:
        raise typer.BadParameter(f"not an owner of the status view: {', '.join(unknown)}; one of {', '.join(OWNERS)}")
    columns = (
        TextColumn("{task.description:<22}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[note]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, disable=state.json) as bar:
        tasks = {s: bar.add_task(f"{s} snapshots", total=None, note="members") for s in owners}

        def paged(s: str, published: int, total: int | None) -> None:
            bar.update(tasks[s], completed=published, total=total)

        result = run(lambda: publish(state.api(), owners, limit=page_size, on_page=paged))
        for s in owners:  # a member enrolled meanwhile may make the count pass the first page's total
            done = result.services[s].published
            bar.update(tasks[s], completed=done, total=max(done, result.services[s].total or 0))
        waiting = bar.add_task("enrollment applying", total=None, note="")
        started = time.monotonic()
        result.applied = run(
            lambda: wait_applied(
                state.api(), owners, timeout=timeout, on_wait=lambda what: bar.update(waiting, note=what)
            )
        )
        result.wait_seconds = time.monotonic() - started
        bar.update(waiting, total=1, completed=1 if result.applied else 0)
    doc = result.document()
    if state.json:
        show(doc)
    else:
        rows = [{"service": s, **r} for s, r in doc["services"].items()]
        show(rows, ("service", "published", "pages", "total"), title="status view rebuild")
        verdict = "applied by enrollment" if result.applied else f"NOT yet applied by enrollment after {timeout:.0f} s"
        out.print(
            f"{doc['published']} snapshots published in {doc['publish_seconds']} s; {verdict}"
            f" (waited {doc['wait_seconds']} s)",
            highlight=False,
            markup=False,
        )
    if not result.applied:
        err.print("error: enrollment has not applied the snapshots in time; see `membershipctl status`", markup=False)
        raise typer.Exit(UNAVAILABLE)


def main() -> None:
    try:
        app()
    finally:
        if state.client is not None:
            state.client.close()


__all__ = ["OK", "UNAVAILABLE", "app", "main"]
