# An agent program for tollgate's SDK compatibility suite (tests/tests/sdk.rs): the real `stripe` Python SDK
# (pinned in requirements.txt) pointed at tollgate as deploy/AGENTS.md says, performing one case and printing ONE
# JSON line that says what the SDK returned or raised.
#
# Usage: python stripe_agent.py CASE
# Environment: TG_STRIPE_BASE (tollgate's Stripe base, .../stripe), TG_AGENT_KEY (the tg_ key), TG_PARAMS (a
# JSON object of case parameters: amount, idempotency_key, approval_id, max_retries, limit, run).
#
# Two client styles, both from deploy/AGENTS.md: `StripeClient(key, base_addresses={"api": base})` for most
# cases, and the module-level `stripe.api_key` / `stripe.api_base` for the *_module cases (whose default
# retry count differs: see the retry cases in sdk.rs).
import json
import os
import sys

import stripe

WANTED_HEADERS = (
    "tollgate-decision",
    "tollgate-approval-id",
    "idempotency-key",
    "idempotent-replayed",
    "stripe-should-retry",
    "retry-after",
    "x-upstream",
)


def pick_headers(headers):
    """The tollgate-relevant response headers, names lower case (the SDK's mapping may be case-sensitive)."""
    if not headers:
        return {}
    lowered = {str(k).lower(): v for k, v in dict(headers).items()}
    return {name: lowered[name] for name in WANTED_HEADERS if name in lowered}


def describe_error(e):
    body = e.json_body if isinstance(e.json_body, dict) else None
    err = e.error
    return {
        "class": type(e).__name__,
        "status": e.http_status,
        "message": e.user_message,
        # stripe-python sets `code` only for some statuses (400, 402, 404); `error.code` is the parsed body's.
        "code": e.code,
        "error_code": getattr(err, "code", None) if err is not None else None,
        "error_type": getattr(err, "type", None) if err is not None else None,
        "tollgate": body.get("tollgate") if body else None,
        "body": body,
        "headers": pick_headers(e.headers),
    }


def client(params):
    kwargs = {"base_addresses": {"api": os.environ["TG_STRIPE_BASE"]}}
    if params.get("max_retries") is not None:
        kwargs["max_network_retries"] = params["max_retries"]
    if params.get("run"):
        # Attribution headers on every request: a requests.Session with default headers as the HTTP client.
        import requests

        session = requests.Session()
        session.headers.update({"Tollgate-Run": params["run"]})
        kwargs["http_client"] = stripe.RequestsClient(session=session)
    return stripe.StripeClient(os.environ["TG_AGENT_KEY"], **kwargs)


def request_options(params):
    options = {}
    if params.get("idempotency_key"):
        options["idempotency_key"] = params["idempotency_key"]
    if params.get("approval_id"):
        options["headers"] = {"Tollgate-Approval": params["approval_id"]}
    return options


def intent(pi):
    headers = pi.last_response.headers if pi.last_response is not None else {}
    return {"id": pi.id, "amount": getattr(pi, "amount", None), "headers": pick_headers(headers)}


def payment_params(params):
    return {"amount": params["amount"], "currency": params.get("currency", "usd")}


def run(case, params):
    if case == "customers_list":
        client_ = client(params)
        page = client_.v1.customers.list(params={"limit": params.get("limit", 2)})
        # auto_paging_iter follows has_more with starting_after=<last id>.
        return {"ids": [c.id for c in page.auto_paging_iter()]}
    if case == "payment_create":
        pi = client(params).v1.payment_intents.create(
            params=payment_params(params), options=request_options(params)
        )
        return intent(pi)
    if case == "payment_twice":
        # The same call twice with one Idempotency-Key, as an agent retrying after a lost answer would.
        c = client(params)
        first = c.v1.payment_intents.create(params=payment_params(params), options=request_options(params))
        second = c.v1.payment_intents.create(params=payment_params(params), options=request_options(params))
        return {"first": intent(first), "second": intent(second)}
    if case == "payment_create_module":
        # The module-level style: stripe.api_key / stripe.api_base, and the module's default retries.
        stripe.api_key = os.environ["TG_AGENT_KEY"]
        stripe.api_base = os.environ["TG_STRIPE_BASE"]
        if params.get("max_retries") is not None:
            stripe.max_network_retries = params["max_retries"]
        pi = stripe.PaymentIntent.create(**payment_params(params))
        return intent(pi)
    raise SystemExit(f"unknown case {case!r}")


def main():
    case = sys.argv[1]
    params = json.loads(os.environ.get("TG_PARAMS") or "{}")
    out = {
        "sdk": f"python stripe {stripe.VERSION}",
        "case": case,
        "default_module_retries": stripe.max_network_retries,
    }
    try:
        out["result"] = run(case, params)
        out["ok"] = True
    except stripe.StripeError as e:
        out["ok"] = False
        out["error"] = describe_error(e)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
