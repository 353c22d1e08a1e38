# Test fixtures: builders for realistic policy inputs (the exact shape proxy/src/policy.rs builds) and the
# check helper that the case tables use. Ids, bodies and prices follow PROVIDERS.md.
package tollgate_test.fixtures

now := "2026-11-30T12:00:00Z"

# The budget window `now` is in: a UTC calendar month, end exclusive.
window_start := "2026-11-01T00:00:00Z"

window_end := "2026-12-01T00:00:00Z"

# Cloudflare ids: the agent's account and two zones it may change; another account and zone it may not.
acc := "023e105f4ecef8ad9ca31a8372d0c353"

z1 := "372e67954025e0ba6aaa6d586b9e0b59"

z2 := "9a7806061c88ada191ed06f989cc3dac"

other_acc := "01a7362d577a6c3019a474fd6f485823"

other_zone := "d41d8cd98f00b204e9800998ecf8427e"

# Permission group ids (tokens/data.yaml).
dns_read := "82e64a83756745bbbb1c9c2701bf816b"

dns_write := "4755a26eedb94da69e1066d98aa820be"

zone_read := "c8fed203ed3043cba015a93ad1616f1f"

zone_write := "e6d2666161e84845a636613608cee8d5"

workers_write := "e086da7e2179491d91ee5f35b3ca210a"

account_tokens_write := "5bc3f8b21c554832afc660159ab75fa4"

user_tokens_write := "686d18d5ac6c441c867cbf6771e58a0a"

all_scopes := [
	"dns:write", "zones:manage", "registrar:register", "tokens:create",
	"workers:deploy", "certs:manage", "billing:spend", "accounts:manage", "credentials:export",
]

# An agent with every scope, no team, one account and two zones.
agent := {
	"id": "01a22a3e-8bd9-7692-938a-9fe1ed50dfa8",
	"name": "deployer",
	"team": null,
	"scopes": all_scopes,
	"labels": {"env": "dev", "accounts": acc, "zones": concat(",", [z1, z2])},
}

empty_sha := "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

some_sha := "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

sha(body) := empty_sha if body == null

else := some_sha

# Risk of every catalog action (policies/catalog/*/data.yaml), so cases only name the action.
risks := {
	"cloudflare.token.read": "read", "cloudflare.token.create": "high", "cloudflare.token.update": "high",
	"cloudflare.token.roll": "irreversible", "cloudflare.token.delete": "irreversible",
	"cloudflare.token.verify": "read", "cloudflare.token.permission_groups": "read",
	"cloudflare.credential.read": "high",
	"cloudflare.domain.read": "read", "cloudflare.domain.search": "read", "cloudflare.domain.check": "read",
	"cloudflare.domain.register": "irreversible", "cloudflare.domain.update": "high",
	"cloudflare.domain.transfer_in": "irreversible", "cloudflare.domain.legacy_update": "high",
	"cloudflare.zone.read": "read", "cloudflare.zone.create": "write", "cloudflare.zone.delete": "irreversible",
	"cloudflare.zone.plan": "high", "cloudflare.subscription.read": "read",
	"cloudflare.dns.read": "read", "cloudflare.dns.create": "write", "cloudflare.dns.batch": "high",
	"cloudflare.dns.import": "high", "cloudflare.dns.update": "write", "cloudflare.dns.delete": "irreversible",
	"cloudflare.dnssec.read": "read", "cloudflare.dnssec.change": "high",
	"cloudflare.account.subscription": "high", "cloudflare.cert.read": "read",
	"cloudflare.cert.pack.order": "high", "cloudflare.cert.custom.upload": "high",
	"cloudflare.cert.custom.change": "high", "cloudflare.cert.origin.create": "high",
	"cloudflare.cert.origin.revoke": "irreversible", "cloudflare.worker.read": "read",
	"cloudflare.worker.deploy": "high", "cloudflare.worker.version": "write", "cloudflare.worker.rollout": "high",
	"cloudflare.worker.delete": "irreversible", "cloudflare.account.read": "read",
	"cloudflare.account.create": "high", "cloudflare.account.delete": "irreversible",
	"stripe.payment.create": "high", "stripe.payment.confirm": "high", "stripe.payment.capture": "high",
	"stripe.payment.cancel": "high", "stripe.subscription.cancel": "high",
	"stripe.subscription.create": "high", "stripe.subscription.update": "high", "stripe.checkout.create": "high",
	"stripe.invoice.item": "high", "stripe.invoice.create": "high", "stripe.invoice.finalize": "high",
	"stripe.invoice.pay": "high", "stripe.payment_link.create": "high", "stripe.payment_link.update": "high",
	"stripe.customer.create": "write", "stripe.customer.update": "high", "stripe.customer.delete": "irreversible",
	"stripe.product.create": "write", "stripe.product.update": "high", "stripe.product.delete": "irreversible",
	"stripe.price.create": "write", "stripe.price.update": "high",
	"stripe.read": "read", "stripe.credential.read": "high",
}

risk_of(action, method) := r if {
	r := risks[action]
} else := "read" if method in {"GET", "HEAD", "OPTIONS"}

else := "write"

# A Cloudflare request as the proxy presents it: path after /client/v4, JSON body (or null).
cf(method, path, action, params, body) := {
	"agent": agent,
	"run": {"id": "run-42", "on_behalf_of": "alice@example.com"},
	"request": {
		"provider": "cloudflare", "method": method, "path": concat("", ["/client/v4", path]), "query": {},
		"headers": {"content-type": "application/json"}, "body": body, "body_sha256": sha(body),
	},
	"action": {"name": action, "risk": risk_of(action, method), "params": params},
	"spend": {"window": "2026-11", "window_start": window_start, "window_end": window_end, "agent_provider_cents": spent(method)},
	"approval": null,
	"now": now,
}

# A Stripe request: a form body, so every leaf value is a string.
stripe(method, path, action, params, body) := {
	"agent": agent,
	"run": {"id": "run-42", "on_behalf_of": "alice@example.com"},
	"request": {
		"provider": "stripe", "method": method, "path": path, "query": {},
		"headers": {"content-type": "application/x-www-form-urlencoded"}, "body": body, "body_sha256": sha(body),
	},
	"action": {"name": action, "risk": risk_of(action, method), "params": params},
	"spend": {"window": "2026-11", "window_start": window_start, "window_end": window_end, "agent_provider_cents": spent(method)},
	"approval": null,
	"now": now,
}

spent(method) := null if method == "GET"

else := 4200

# patch(input, changes): a deep merge, e.g. patch(x, {"agent": {"scopes": []}}).
patch(inp, changes) := object.union(inp, changes)

# ---------------------------------------------------------------------------------------------------------
# Frequently used requests
# ---------------------------------------------------------------------------------------------------------

dns_create(zone, body) := cf("POST", concat("", ["/zones/", zone, "/dns_records"]), "cloudflare.dns.create", {"zone_id": zone}, body)

dns_patch(body) := cf("PATCH", concat("", ["/zones/", z1, "/dns_records/rec1"]), "cloudflare.dns.update", {"zone_id": z1, "dns_record_id": "rec1"}, body)

register(domain, body) := cf("POST", concat("", ["/accounts/", acc, "/registrar/registrations"]), "cloudflare.domain.register", {"account_id": acc, "domain_name": domain}, object.union({"domain_name": domain, "privacy_mode": "redaction", "auto_renew": false}, body))

token_create(body) := cf("POST", "/user/tokens", "cloudflare.token.create", {}, body)

# A token document: one policy, given groups and resources, expiring `expires`.
token(groups, resources, expires) := {
	"name": "ci-deploy",
	"policies": [{"effect": "allow", "resources": resources, "permission_groups": [{"id": g} | some g in groups]}],
	"not_before": "2026-11-30T12:00:00Z",
	"expires_on": expires,
}

zone_resource(z) := {concat("", ["com.cloudflare.api.account.zone.", z]): "*"}

account_resource(a) := {concat("", ["com.cloudflare.api.account.", a]): "*"}

payment(body) := stripe("POST", "/v1/payment_intents", "stripe.payment.create", {}, body)

subscription(body) := stripe("POST", "/v1/subscriptions", "stripe.subscription.create", {}, body)

checkout(body) := stripe("POST", "/v1/checkout/sessions", "stripe.checkout.create", {}, body)

customer_create(body) := stripe("POST", "/v1/customers", "stripe.customer.create", {}, body)

customer_update(id, body) := stripe("POST", concat("", ["/v1/customers/", id]), "stripe.customer.update", {"customer_id": id}, body)

product_create(body) := stripe("POST", "/v1/products", "stripe.product.create", {}, body)

product_update(id, body) := stripe("POST", concat("", ["/v1/products/", id]), "stripe.product.update", {"product_id": id}, body)

price_create(body) := stripe("POST", "/v1/prices", "stripe.price.create", {}, body)

price_update(id, body) := stripe("POST", concat("", ["/v1/prices/", id]), "stripe.price.update", {"price_id": id}, body)

# An inline Stripe price: price_data with unit_amount cents in usd.
price_data(cents) := {"currency": "usd", "product": "prod_NWjs8kKbJWmuuc", "unit_amount": cents, "recurring": {"interval": "month"}}

# ---------------------------------------------------------------------------------------------------------
# Checking a decision
# ---------------------------------------------------------------------------------------------------------

# decide(input): the decision, as the proxy would get it.
decide(inp) := d if {
	d := data.tollgate.decision with input as inp
}

rules(d) := {r.rule | some r in d.reasons}

# expect(inp, outcome, rule_ids): the outcome, exactly these reason rules, and well-formed output.
expect(inp, outcome, rule_ids) if {
	d := decide(inp)
	d.outcome == outcome
	rules(d) == {r | some r in rule_ids}
	well_formed(d)
}

# The contract: a deny or approve gives a reason; every reason names a rule and says something; a charge is a
# non-negative integer number of cents against a known budget, and never rides on a deny.
well_formed(d) if {
	d.outcome in {"allow", "deny", "approve"}
	is_array(d.reasons)
	count([r | some r in d.reasons; not good_reason(r)]) == 0
	reasons_if_needed(d)
	charge_ok(d)
}

good_reason(r) if {
	is_string(r.rule)
	r.rule != ""
	is_string(r.message)
	count(r.message) > 20
}

reasons_if_needed(d) if d.outcome == "allow"

reasons_if_needed(d) if count(d.reasons) > 0

charge_ok(d) if not d.charge

charge_ok(d) if {
	d.outcome != "deny"
	is_number(d.charge.cents)
	d.charge.cents == floor(d.charge.cents)
	d.charge.cents >= 0
	d.charge.budget in {"agent-provider-month", "team-provider-month"}
	is_number(d.charge.cap_cents)
}

# cents(inp): the charge a request states.
cents(inp) := decide(inp).charge.cents

no_charge(inp) if not decide(inp).charge

# check_case(c): a case from a table: {"input", "outcome", "rules"}, optionally "cents" (the charge; null for
# none).
check_case(c) if {
	expect(c.input, c.outcome, c.rules)
	charge_as_expected(c)
}

charge_as_expected(c) if not "cents" in object.keys(c)

charge_as_expected(c) if {
	c.cents == null
	no_charge(c.input)
}

charge_as_expected(c) if {
	is_number(c.cents)
	cents(c.input) == c.cents
}
