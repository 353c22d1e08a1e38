# Scopes: writes need the scopes actions/data.yaml lists; unknown and unmapped routes are closed to writes.
package tollgate_test.scopes

import data.tollgate_test.fixtures as fx

check(name) if fx.check_case(cases[name])

a_record := {"type": "A", "name": "www.example.com", "content": "198.51.100.4", "ttl": 3600}

cases := {
	"scope_held": {"input": fx.dns_create(fx.z1, a_record), "outcome": "allow", "rules": []},
	"scope_missing": {
		"input": fx.patch(fx.dns_create(fx.z1, a_record), {"agent": {"scopes": ["workers:deploy"]}}),
		"outcome": "deny", "rules": ["scopes.missing"],
	},
	"no_scopes_at_all": {
		"input": fx.patch(fx.dns_create(fx.z1, a_record), {"agent": {"scopes": []}}),
		"outcome": "deny", "rules": ["scopes.missing"],
	},
	"unknown_route_write": {
		"input": fx.cf("POST", "/zones/z/firewall/rules", "unknown", {}, {}),
		"outcome": "deny", "rules": ["scopes.unknown_route"],
	},
	"unknown_stripe_write": {
		"input": fx.stripe("POST", "/v1/refunds", "unknown", {}, {"payment_intent": "pi_123"}),
		"outcome": "deny", "rules": ["scopes.unknown_route"],
	},
	"unmapped_action": {
		"input": fx.cf("POST", "/zones/z1/hold", "cloudflare.zone.hold", {}, {}),
		"outcome": "deny", "rules": ["scopes.unmapped"],
	},
	"account_create_needs_accounts_manage": {
		"input": fx.patch(fx.cf("POST", "/accounts", "cloudflare.account.create", {}, {"name": "tenant-7", "type": "standard"}), {"agent": {"scopes": ["zones:manage"]}}),
		"outcome": "deny", "rules": ["scopes.missing"],
	},
	"account_create_with_accounts_manage": {
		"input": fx.cf("POST", "/accounts", "cloudflare.account.create", {}, {"name": "tenant-7", "type": "standard"}),
		"outcome": "allow", "rules": [],
	},
	"stripe_needs_billing_spend": {
		"input": fx.patch(fx.stripe("POST", "/v1/invoices", "stripe.invoice.create", {}, {"customer": "cus_123"}), {"agent": {"scopes": ["dns:write"]}}),
		"outcome": "deny", "rules": ["scopes.missing"],
	},
	"stripe_invoice_draft_allowed": {
		"input": fx.stripe("POST", "/v1/invoices", "stripe.invoice.create", {}, {"customer": "cus_123", "auto_advance": "false"}),
		"outcome": "allow", "rules": [], "cents": 0,
	},
	"tunnel_token_needs_credentials_export": {
		"input": fx.patch(fx.cf("GET", concat("", ["/accounts/", fx.acc, "/cfd_tunnel/t1/token"]), "cloudflare.credential.read", {"account_id": fx.acc, "tunnel_id": "t1"}, null), {"agent": {"scopes": ["dns:write", "tokens:create", "accounts:manage"]}}),
		"outcome": "deny", "rules": ["scopes.missing"],
	},
	"tunnel_token_with_credentials_export": {
		"input": fx.cf("GET", concat("", ["/accounts/", fx.acc, "/warp_connector/t1/token"]), "cloudflare.credential.read", {"account_id": fx.acc, "tunnel_id": "t1"}, null),
		"outcome": "allow", "rules": [],
	},
	"issuing_card_needs_credentials_export": {
		"input": fx.patch(fx.stripe("GET", "/v1/issuing/cards/ic_123", "stripe.credential.read", {"card_id": "ic_123"}, null), {"agent": {"scopes": ["billing:spend"]}}),
		"outcome": "deny", "rules": ["scopes.missing"],
	},
	"apps_secret_with_credentials_export": {
		"input": fx.stripe("GET", "/v1/apps/secrets/find", "stripe.credential.read", {}, null),
		"outcome": "allow", "rules": [],
	},
	"worker_version_needs_workers_deploy": {
		"input": fx.patch(fx.cf("POST", concat("", ["/accounts/", fx.acc, "/workers/scripts/api/versions"]), "cloudflare.worker.version", {"account_id": fx.acc, "script_name": "api"}, {"metadata": {"main_module": "index.js"}, "parts": []}), {"agent": {"scopes": ["dns:write"]}}),
		"outcome": "deny", "rules": ["scopes.missing"],
	},
}

test_scope_held if check("scope_held")

test_scope_missing if check("scope_missing")

test_tunnel_token_needs_credentials_export if check("tunnel_token_needs_credentials_export")

test_tunnel_token_with_credentials_export if check("tunnel_token_with_credentials_export")

test_issuing_card_needs_credentials_export if check("issuing_card_needs_credentials_export")

test_apps_secret_with_credentials_export if check("apps_secret_with_credentials_export")

test_no_scopes_at_all if check("no_scopes_at_all")

test_unknown_route_write if check("unknown_route_write")

test_unknown_stripe_write if check("unknown_stripe_write")

test_unmapped_action if check("unmapped_action")

test_account_create_needs_accounts_manage if check("account_create_needs_accounts_manage")

test_account_create_with_accounts_manage if check("account_create_with_accounts_manage")

test_stripe_needs_billing_spend if check("stripe_needs_billing_spend")

test_stripe_invoice_draft_allowed if check("stripe_invoice_draft_allowed")

test_worker_version_needs_workers_deploy if check("worker_version_needs_workers_deploy")

# The message names the missing scope and what the agent holds.
test_scope_message_names_missing_and_held if {
	d := fx.decide(cases.scope_missing.input)
	contains(d.reasons[0].message, "dns:write")
	contains(d.reasons[0].message, "workers:deploy")
}

# An action mapped in data but not to a scope the agent holds: a data change alone opens or closes it.
test_scope_table_is_data if {
	d := fx.decide(cases.scope_held.input) with data.actions["cloudflare.dns.create"] as {"scopes": ["zones:manage"], "body": "required"}
	d.outcome == "allow"
	d2 := fx.decide(cases.scope_missing.input) with data.actions["cloudflare.dns.create"] as {"scopes": ["workers:deploy"], "body": "required"}
	d2.outcome == "allow"
}
