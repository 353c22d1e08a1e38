# An agent program for tollgate's SDK compatibility suite (tests/tests/sdk.rs): the real `cloudflare` Python SDK
# (pinned in requirements.txt) pointed at tollgate as deploy/AGENTS.md says, performing one case and printing ONE
# JSON line that says what the SDK returned or raised.
#
# Usage: python cloudflare_agent.py CASE
# Environment: TG_CF_BASE (tollgate's Cloudflare base, .../cloudflare/client/v4), TG_AGENT_KEY (the tg_ key),
# TG_PARAMS (a JSON object of case parameters: zone, name, type, content, max_retries, approval_id, run).
import json
import os
import sys

import cloudflare
from cloudflare import Cloudflare


def lower_headers(headers):
    """The tollgate-relevant response headers, names lower case."""
    if headers is None:
        return {}
    wanted = ("tollgate-decision", "x-should-retry", "retry-after", "x-upstream")
    return {name: headers.get(name) for name in wanted if headers.get(name) is not None}


def describe_error(e):
    """An exception as the agent sees it: class, status, message, what the SDK parsed of the body."""
    out = {"class": type(e).__name__, "message": str(e)}
    body = getattr(e, "body", None)
    out["body"] = body if isinstance(body, (dict, list, str)) or body is None else repr(body)
    out["errors"] = [
        {"code": getattr(err, "code", None), "message": getattr(err, "message", None)}
        for err in (getattr(e, "errors", None) or [])
    ]
    out["tollgate"] = body.get("tollgate") if isinstance(body, dict) else None
    response = getattr(e, "response", None)
    out["status"] = getattr(e, "status_code", None)
    out["headers"] = lower_headers(response.headers if response is not None else None)
    return out


def client(params):
    if params.get("from_env"):
        # An unchanged program: base URL, token and default headers all come from the environment
        # (CLOUDFLARE_BASE_URL, CLOUDFLARE_API_TOKEN, CLOUDFLARE_CUSTOM_HEADERS).
        return Cloudflare(max_retries=0)
    kwargs = {"api_token": os.environ["TG_AGENT_KEY"], "base_url": os.environ["TG_CF_BASE"]}
    if params.get("max_retries") is not None:
        kwargs["max_retries"] = params["max_retries"]
    if params.get("run"):
        kwargs["default_headers"] = {"Tollgate-Run": params["run"]}
    return Cloudflare(**kwargs)


def extra_headers(params):
    return {"Tollgate-Approval": params["approval_id"]} if params.get("approval_id") else None


def run(case, params):
    cf = client(params)
    if case == "zones_list":
        # Auto-pagination: iterating the page fetches page 2, 3, ... until a page comes back empty.
        zones = [zone.id for zone in cf.zones.list(per_page=params.get("per_page", 2))]
        return {"ids": zones}
    if case == "dns_create":
        raw = cf.dns.records.with_raw_response.create(
            zone_id=params["zone"],
            type=params.get("type", "A"),
            name=params["name"],
            content=params.get("content", "192.0.2.10"),
            ttl=300,
            proxied=False,
            extra_headers=extra_headers(params),
        )
        record = raw.parse()
        return {"id": record.id, "name": record.name, "headers": lower_headers(raw.headers)}
    if case == "zone_get":
        raw = cf.zones.with_raw_response.get(zone_id=params["zone"])
        zone = raw.parse()
        return {"id": zone.id, "headers": lower_headers(raw.headers)}
    raise SystemExit(f"unknown case {case!r}")


def main():
    case = sys.argv[1]
    params = json.loads(os.environ.get("TG_PARAMS") or "{}")
    out = {"sdk": f"python cloudflare {cloudflare.__version__}", "case": case}
    try:
        out["result"] = run(case, params)
        out["ok"] = True
    except cloudflare.APIError as e:
        out["ok"] = False
        out["error"] = describe_error(e)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
