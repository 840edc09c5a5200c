"""The ops page, rendered on the server: a shell at `/` and HTML fragments it loads.

No front-end build and nothing from outside: one page with an inline stylesheet and a small
inline script (both allowed by a per-response nonce, everything else refused by the Content
Security Policy). The shell holds no data; its script asks for the API token, keeps it in
sessionStorage, and fetches the fragments (`/ui/pipeline`, `/ui/exceptions`,
`/ui/customers/{id}`) with it. Every value shown is escaped; personal data arrives masked.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from html import escape
from typing import Any

from canonical.money import UnknownCurrencyError, format_minor


def security_headers(nonce: str) -> dict[str, str]:
    """Only the page's own inline style and script run; it talks to its own origin only."""
    return {
        "Content-Security-Policy": (
            f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
            "connect-src 'self'; img-src 'self' data:; form-action 'self'; base-uri 'none'; "
            "frame-ancestors 'none'"
        ),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }


def _e(value: Any) -> str:
    return "" if value is None else escape(str(value), quote=True)


def humanize_age(seconds: float | None) -> str:
    """`93784` → `1d 2h`; `754` → `12m 34s`; `8.2` → `8s`."""
    if seconds is None:
        return "-"
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {s}s"
    return f"{s}s"


def money(amount: Any, currency: Any) -> str:
    if not isinstance(amount, int) or not isinstance(currency, str):
        return "-"
    try:
        return format_minor(amount, currency)
    except UnknownCurrencyError:
        return f"{amount} {currency} (minor units)"


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], cls: str = "", empty: str = "none") -> str:
    """`rows` hold HTML already escaped by the caller."""
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    if not body:
        return f'<p class="empty">{_e(empty)}</p>'
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    return f'<table class="{_e(cls)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def render_error(status: int, detail: str) -> str:
    return f'<p class="error" data-status="{status}">{status}: {_e(detail)}</p>'


def render_pipeline(p: Mapping[str, Any]) -> str:
    workers = _table(
        ("worker", "ready", "rebalancing", "recovering", "answer"),
        (
            (
                _e(w["worker"]),
                "yes" if w.get("ready") else "no",
                "yes" if w.get("rebalancing") else "no",
                "yes" if w.get("in_recovery") else "no",
                _e(w.get("error") or w.get("status")),
            )
            for w in p.get("workers", ())
        ),
        "workers",
    )
    stages = _table(
        ("stage", "topics", "partitions assigned", "backlog (lag)", "held by"),
        (
            (
                _e(stage),
                _e(", ".join(s["topics"])),
                f"{s['assigned']} / {s['expected']}",
                f'<span class="lag">{s["lag"]}</span>'
                + (f' <span class="muted">({s["unknown_lag"]} unknown)</span>' if s["unknown_lag"] else ""),
                "<br>".join(f"{_e(w)}: {len(parts)}" for w, parts in sorted(s["workers"].items())),
            )
            for stage, s in p.get("stages", {}).items()
        ),
        "stages",
    )
    return f"<h2>Pipeline</h2>{stages}<h3>Workers</h3>{workers}"


def render_exceptions(e: Mapping[str, Any]) -> str:
    by_reason = _table(
        ("reason", "open", "oldest"),
        (
            (_e(reason), str(r["count"]), _e(humanize_age(r.get("oldest_age_s"))))
            for reason, r in e.get("by_reason", {}).items()
        ),
        "by-reason",
        "no open exceptions",
    )
    rows = []
    for item in e.get("items", ()):
        xid = _e(item["exception_id"])
        customer = item.get("customer_id")
        who = (
            f'<a href="#" class="customer" data-customer="{_e(customer)}">{_e(customer)}</a>'
            if customer
            else _e(item.get("entity_id") or "-")
        )
        actions = (
            f'<button type="button" data-action="replay" data-id="{xid}">Replay</button>'
            if item.get("replayable") and item.get("status") == "open"
            else ""
        )
        if item.get("status") != "resolved":
            actions += f' <button type="button" data-action="resolve" data-id="{xid}">Resolve</button>'
        rows.append(
            (
                f'<span title="{_e(item["first_seen"])}">{_e(humanize_age(item.get("age_s")))}</span>',
                _e(item["reason"]),
                _e(item["status"]),
                who,
                _e(item["message"]),
                actions,
            )
        )
    listing = _table(("age", "reason", "status", "customer", "message", ""), rows, "exceptions", "none")
    note = ""
    if not e.get("complete", True):
        note = (
            '<p class="error">incomplete: no worker answered for partitions '
            f"{_e(', '.join(map(str, e.get('missing_partitions', ()))))}</p>"
        )
    return (
        f'<h2>Exceptions <span class="muted">({e.get("matched", 0)} open)</span></h2>{note}{by_reason}'
        f'<h3>Oldest first</h3><div id="exception-list" data-count="{len(rows)}">{listing}</div>'
    )


def render_customer(c: Mapping[str, Any]) -> str:
    cid = _e(c["customer_id"])
    if not c.get("found"):
        return (
            f'<div class="customer-360" data-customer="{cid}" data-found="no"><p>No customer {cid}.</p></div>'
        )
    ids = c["identities"]
    master = c.get("master") or {}
    identity_rows = [
        ("canonical id", _e(ids["canonical_id"])),
        ("CRM account", _e(ids.get("crm_account_id") or "-")),
        ("Stripe customer(s)", _e(", ".join(ids.get("stripe_customer_ids") or ()) or "-")),
        ("ERP external id", _e(ids.get("erp_external_id") or "-")),
        ("ERP internal id", _e(ids.get("erp_internal_id") or "-")),
    ]
    master_rows = [
        ("name", _e(master.get("name") or "-")),
        ("e-mail", _e(master.get("email") or "-")),
        ("country / currency", _e(f"{master.get('country') or '-'} / {master.get('currency') or '-'}")),
        ("tax ids", _e(", ".join(master.get("tax_ids") or ()) or "-")),
        ("subsidiary", _e(master.get("subsidiary") or "-")),
    ]
    contracts = _table(
        ("contract", "status", "amendment", "effective", "ends"),
        (
            (
                _e(k["contract_id"]),
                _e(k["status"]),
                str(k["amendment_number"]),
                _e(k["effective_date"]),
                _e(k["end_date"] or "-"),
            )
            for k in c.get("contracts", ())
        ),
        "contracts",
    )
    invoices = _table(
        ("invoice", "status", "total", "ERP status", "ERP document", "ERP id"),
        (
            (
                _e(i["invoice_id"]),
                _e(i["status"]),
                _e(money(i["total"], i["currency"])),
                _e(i["erp_status"]),
                _e(i["document_number"] or "-"),
                _e(i["erp_internal_id"] or "-"),
            )
            for i in c.get("invoices", ())
        ),
        "invoices",
    )
    payments = _table(
        ("payment / credit memo", "idempotency key", "ERP id"),
        [
            (_e(p["payment_id"]), _e(p["idempotency_key"]), _e(p["erp_internal_id"] or "pending"))
            for p in c.get("payments", ())
        ]
        + [
            (_e(m["credit_memo_id"]), _e(m["idempotency_key"]), _e(m["erp_internal_id"] or "pending"))
            for m in c.get("credit_memos", ())
        ],
        "payments",
    )
    ledger = _table(
        ("command", "idempotency key", "state", "attempts", "ERP document"),
        (
            (
                _e(entry["command"]),
                _e(entry["idempotency_key"]),
                _e(entry["state"]),
                str(entry["attempts"]),
                _e(entry["document_number"] or entry["erp_internal_id"] or "-"),
            )
            for entry in c.get("ledger", {}).get("entries", ())
        ),
        "ledger",
    )
    exceptions = _table(
        ("age", "reason", "message"),
        (
            (_e(humanize_age(x.get("age_s"))), _e(x["reason"]), _e(x["message"]))
            for x in c.get("open_exceptions", ())
        ),
        "customer-exceptions",
        "no open exceptions",
    )

    def pairs(rows: list[tuple[str, str]]) -> str:
        return "<dl>" + "".join(f"<dt>{_e(k)}</dt><dd>{v}</dd>" for k, v in rows) + "</dl>"

    return (
        f'<div class="customer-360" data-customer="{cid}" data-found="yes">'
        f"<h2>Customer {cid}</h2>"
        f'<div class="cols"><section><h3>Identities</h3>{pairs(identity_rows)}</section>'
        f"<section><h3>Master record</h3>{pairs(master_rows)}</section></div>"
        f"<h3>Contracts</h3>{contracts}<h3>Invoices</h3>{invoices}"
        f"<h3>Payments and credit memos</h3>{payments}<h3>ERP ledger</h3>{ledger}"
        f"<h3>Open exceptions</h3>{exceptions}</div>"
    )


_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d232a;background:#f6f7f9}
header{background:#1d3557;color:#fff;padding:10px 20px;display:flex;gap:24px;align-items:center}
header h1{font-size:18px;margin:0}header .muted{color:#c9d3df}
main{padding:12px 20px;display:grid;gap:16px}
section.panel{background:#fff;border:1px solid #dde2e8;border-radius:6px;padding:8px 16px}
table{border-collapse:collapse;width:100%;margin:4px 0 12px}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #eceff3;vertical-align:top}
th{background:#f0f3f6;font-weight:600}
.muted{color:#6b7785}.error{color:#b00020}.empty{color:#6b7785;font-style:italic}
.lag{font-weight:600}dl{display:grid;grid-template-columns:max-content auto;gap:2px 12px}
dt{color:#6b7785}dd{margin:0}.cols{display:grid;grid-template-columns:1fr 1fr;gap:16px}
form{display:flex;gap:8px;align-items:center}input{padding:4px 6px}
button{padding:3px 10px;cursor:pointer}#action-result{min-height:1.4em}
"""

_SCRIPT = """
(() => {
  const KEY = "ledgerflow-token";
  const $ = (id) => document.getElementById(id);
  const token = () => sessionStorage.getItem(KEY) || "";
  const auth = () => ({Authorization: "Bearer " + token()});
  async function load(id, url) {
    const el = $(id);
    el.setAttribute("aria-busy", "true");
    try {
      const r = await fetch(url, {headers: auth()});
      el.innerHTML = await r.text();
      el.dataset.status = String(r.status);
    } catch (err) {
      el.textContent = "request failed: " + err;
      el.dataset.status = "0";
    }
    el.removeAttribute("aria-busy");
  }
  function refresh() {
    $("token-state").textContent = token() ? "token set" : "no token: enter it above";
    if (!token()) return Promise.resolve();
    return Promise.all([load("pipeline", "/ui/pipeline"), load("exceptions", "/ui/exceptions")]);
  }
  function showCustomer(id) {
    if (id) return load("customer", "/ui/customers/" + encodeURIComponent(id));
  }
  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem(KEY, $("token").value.trim());
    $("token").value = "";
    refresh();
  });
  $("search-form").addEventListener("submit", (e) => {
    e.preventDefault();
    showCustomer($("customer-id").value.trim());
  });
  document.addEventListener("click", async (e) => {
    const link = e.target.closest("a[data-customer]");
    if (link) {
      e.preventDefault();
      $("customer-id").value = link.dataset.customer;
      showCustomer(link.dataset.customer);
      return;
    }
    const button = e.target.closest("button[data-action]");
    if (!button) return;
    button.disabled = true;
    const out = $("action-result");
    const what = button.dataset.action + " " + button.dataset.id;
    try {
      const url = "/exceptions/" + encodeURIComponent(button.dataset.id) + "/" + button.dataset.action;
      const r = await fetch(url, {method: "POST", headers: auth()});
      const body = await r.json().catch(() => ({}));
      out.dataset.status = String(r.status);
      out.dataset.outcome = body.outcome || body.status || body.error || "";
      const said = r.ok ? (body.outcome || body.status) : (body.detail || body.error || r.status);
      out.textContent = what + ": " + said;
      out.className = r.ok ? "" : "error";
    } catch (err) {
      out.textContent = what + ": " + err;
      out.className = "error";
    }
    setTimeout(refresh, 1500);
  });
  $("refresh").addEventListener("click", refresh);
  refresh();
  setInterval(() => { if (!document.hidden) refresh(); }, 15000);
})();
"""


def render_shell(nonce: str, worker: str) -> str:
    n = _e(nonce)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ledgerflow operations</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style nonce="{n}">{_STYLE}</style></head>
<body>
<header><h1>ledgerflow operations</h1><span class="muted">served by {_e(worker)}</span>
<form id="token-form" autocomplete="off"><input id="token" type="password" placeholder="API token"
 aria-label="API token"><button type="submit">Use token</button></form>
<span id="token-state" class="muted"></span><button type="button" id="refresh">Refresh</button></header>
<main>
<section class="panel" id="pipeline" aria-live="polite"></section>
<section class="panel"><div id="exceptions" aria-live="polite"></div><p id="action-result"></p></section>
<section class="panel"><h2>Customer 360</h2>
<form id="search-form"><input id="customer-id" placeholder="canonical customer id (cust-…)"
 aria-label="customer id" size="40"><button type="submit">Search</button></form>
<div id="customer" aria-live="polite"></div></section>
</main>
<script nonce="{n}">{_SCRIPT}</script>
</body></html>
"""
