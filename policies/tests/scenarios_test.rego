# End-to-end scenarios with realistic bodies from PROVIDERS.md, one agent per role, the way the proxy would
# present them. Each scenario checks the whole decision: outcome, every reason, and the charge.
package tollgate_test.scenarios

import data.tollgate_test.fixtures as fx

check(name) if fx.check_case(cases[name])

# A DNS agent: DNS in two zones of one account, nothing else.
dns_agent := {"name": "dns-bot", "team": "web", "scopes": ["dns:write"], "labels": {"env": "prod", "zones": concat(",", [fx.z1, fx.z2])}}

# A billing agent for Stripe.
billing_agent := {"name": "billing-bot", "team": "payments", "scopes": ["billing:spend"], "labels": {}}

# A registrar agent.
registrar_agent := {"name": "domains-bot", "team": null, "scopes": ["registrar:register"], "labels": {"accounts": fx.acc}}

# The same request made by another agent (the whole agent replaced, labels included).
acting(agent, inp) := object.union(object.remove(inp, ["agent"]), {"agent": object.union({"id": "0b4f5a0e-3c1e-4c43-9d1c-2f7f1f6c9a11"}, agent)})

cases := {
	# POST /accounts/{id}/registrar/registrations {"domain_name": "acme-widgets.com", "years": 1, ...}
	"registrar_registers_a_com": {
		"input": acting(registrar_agent, fx.register("acme-widgets.com", {"years": 1, "contacts": {"registrant": {"email": "hostmaster@acme.example"}}})),
		"outcome": "allow", "rules": [], "cents": 1044,
	},
	"registrar_registers_a_lookalike_for_years": {
		"input": acting(registrar_agent, fx.register("stripe-billing.com", {"years": 5, "auto_renew": true})),
		"outcome": "deny", "rules": ["domains.brand"], "cents": null,
	},
	"registrar_may_not_change_dns": {
		"input": acting(registrar_agent, fx.dns_create(fx.z1, {"type": "A", "name": "www.example.com", "content": "198.51.100.4"})),
		"outcome": "deny", "rules": ["scopes.missing", "placement.zone"],
	},
	"dns_agent_changes_ns": {
		"input": acting(dns_agent, fx.dns_create(fx.z1, {"type": "NS", "name": "sub.example.com", "content": "ns1.other-dns.example", "ttl": 86400})),
		"outcome": "approve", "rules": ["impact.dns_record_type"], "cents": null,
	},
	"dns_agent_adds_www": {
		"input": acting(dns_agent, fx.dns_create(fx.z2, {"type": "CNAME", "name": "www.example.org", "content": "example.pages.dev", "proxied": true})),
		"outcome": "allow", "rules": [],
	},
	"dns_agent_mints_a_broad_token": {
		"input": acting(dns_agent, fx.token_create({"name": "all-zones", "policies": [{"effect": "allow", "resources": {"com.cloudflare.api.account.zone.*": "*"}, "permission_groups": [{"id": fx.dns_write}]}], "expires_on": "2027-11-30T12:00:00Z"})),
		"outcome": "deny", "rules": ["scopes.missing", "tokens.resources", "tokens.expiry"],
	},
	"billing_agent_takes_60_dollars": {
		"input": acting(billing_agent, fx.payment({"amount": "6000", "currency": "usd", "customer": "cus_NffrFeUfNV2Hib", "confirm": "true", "payment_method": "pm_card_visa"})),
		"outcome": "approve", "rules": ["spend.threshold"], "cents": 6000,
	},
	"billing_agent_starts_a_subscription": {
		"input": acting(billing_agent, fx.subscription({"customer": "cus_NffrFeUfNV2Hib", "items": [{"price_data": fx.price_data("1500"), "quantity": "3"}], "payment_behavior": "default_incomplete"})),
		"outcome": "allow", "rules": [], "cents": 4500,
	},
	# The steps before a subscription (issue #15): the product, its price and the customer, each allowed and
	# none of them a charge; then the subscription, priced.
	"billing_agent_creates_a_product": {
		"input": acting(billing_agent, fx.product_create({"name": "Team plan", "metadata": {"sku": "team"}})),
		"outcome": "allow", "rules": [], "cents": null,
	},
	"billing_agent_creates_its_price": {
		"input": acting(billing_agent, fx.price_create({"currency": "usd", "unit_amount": "1500", "recurring": {"interval": "month"}, "product": "prod_NWjs8kKbJWmuuc", "nickname": "Team monthly"})),
		"outcome": "allow", "rules": [], "cents": null,
	},
	"billing_agent_creates_the_customer": {
		"input": acting(billing_agent, fx.customer_create({"email": "jenny.rosen@example.com", "name": "Jenny Rosen", "payment_method": "pm_1NtxGp2eZvKYlo2CkdqHnZ1y", "invoice_settings": {"default_payment_method": "pm_1NtxGp2eZvKYlo2CkdqHnZ1y"}})),
		"outcome": "allow", "rules": [], "cents": null,
	},
	"billing_agent_redirects_a_customers_payments": {
		"input": acting(billing_agent, fx.customer_update("cus_NffrFeUfNV2Hib", {"invoice_settings": {"default_payment_method": "pm_other"}, "balance": "-100000"})),
		"outcome": "approve", "rules": ["billing.payment_method", "billing.balance"], "cents": null,
	},
	"billing_agent_deletes_a_customer": {
		"input": acting(billing_agent, fx.stripe("DELETE", "/v1/customers/cus_NffrFeUfNV2Hib", "stripe.customer.delete", {"customer_id": "cus_NffrFeUfNV2Hib"}, null)),
		"outcome": "approve", "rules": ["impact.delete"], "cents": null,
	},
	"billing_agent_may_not_touch_cloudflare": {
		"input": acting(billing_agent, fx.cf("POST", concat("", ["/zones/", fx.z1, "/subscription"]), "cloudflare.zone.plan", {"zone_id": fx.z1}, {"rate_plan": {"id": "pro"}, "frequency": "monthly"})),
		"outcome": "deny", "rules": ["placement.zone"],
	},
}

test_registrar_registers_a_com if check("registrar_registers_a_com")

test_registrar_registers_a_lookalike_for_years if check("registrar_registers_a_lookalike_for_years")

test_registrar_may_not_change_dns if check("registrar_may_not_change_dns")

test_dns_agent_changes_ns if check("dns_agent_changes_ns")

test_dns_agent_adds_www if check("dns_agent_adds_www")

test_dns_agent_mints_a_broad_token if check("dns_agent_mints_a_broad_token")

test_billing_agent_takes_60_dollars if check("billing_agent_takes_60_dollars")

test_billing_agent_starts_a_subscription if check("billing_agent_starts_a_subscription")

test_billing_agent_may_not_touch_cloudflare if check("billing_agent_may_not_touch_cloudflare")

test_billing_agent_creates_a_product if check("billing_agent_creates_a_product")

test_billing_agent_creates_its_price if check("billing_agent_creates_its_price")

test_billing_agent_creates_the_customer if check("billing_agent_creates_the_customer")

test_billing_agent_redirects_a_customers_payments if check("billing_agent_redirects_a_customers_payments")

test_billing_agent_deletes_a_customer if check("billing_agent_deletes_a_customer")
