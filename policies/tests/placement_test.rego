# placement.account / placement.zone: writes only to the accounts and zones in the agent's labels.
package tollgate_test.placement

import data.tollgate_test.fixtures as fx

check(name) if fx.check_case(cases[name])

a_record := {"type": "A", "name": "www.example.com", "content": "198.51.100.4"}

deploy(account) := fx.cf("PUT", concat("", ["/accounts/", account, "/workers/scripts/blog"]), "cloudflare.worker.deploy", {"account_id": account, "script_name": "blog"}, {"metadata": {"main_module": "index.js"}, "parts": []})

zone_create(body) := fx.cf("POST", "/zones", "cloudflare.zone.create", {}, body)

# A $10 payment on a connected account (or the platform account without headers).
on_account(headers) := fx.patch(fx.payment({"amount": "1000", "currency": "usd"}), {"request": {"headers": headers}})

stripe_agent(label) := {"agent": {"labels": {"stripe_accounts": label}}}

cases := {
	"zone_in_label": {"input": fx.dns_create(fx.z2, a_record), "outcome": "allow", "rules": []},
	"zone_outside_label": {"input": fx.dns_create(fx.other_zone, a_record), "outcome": "deny", "rules": ["placement.zone"]},
	"no_zones_label": {
		"input": fx.patch(fx.dns_create(fx.z1, a_record), {"agent": {"labels": {"zones": null}}}),
		"outcome": "deny", "rules": ["placement.zone"],
	},
	"empty_zones_label": {
		"input": fx.patch(fx.dns_create(fx.z1, a_record), {"agent": {"labels": {"zones": " , "}}}),
		"outcome": "deny", "rules": ["placement.zone"],
	},
	"label_with_spaces": {
		"input": fx.patch(fx.dns_create(fx.z2, a_record), {"agent": {"labels": {"zones": concat("", [fx.z1, " , ", fx.z2, " "])}}}),
		"outcome": "allow", "rules": [],
	},
	"account_in_label": {"input": deploy(fx.acc), "outcome": "allow", "rules": []},
	"account_outside_label": {"input": deploy(fx.other_acc), "outcome": "deny", "rules": ["placement.account"]},
	"no_accounts_label": {
		"input": fx.patch(deploy(fx.acc), {"agent": {"labels": {"accounts": null}}}),
		"outcome": "deny", "rules": ["placement.account"],
	},
	"zone_create_in_account": {
		"input": zone_create({"account": {"id": fx.acc}, "name": "example.com", "type": "full"}),
		"outcome": "allow", "rules": [],
	},
	"zone_create_other_account": {
		"input": zone_create({"account": {"id": fx.other_acc}, "name": "example.com", "type": "full"}),
		"outcome": "deny", "rules": ["placement.account"],
	},
	"zone_create_without_account": {
		"input": zone_create({"name": "example.com", "type": "full"}),
		"outcome": "deny", "rules": ["placement.account"],
	},
	"zone_create_account_not_a_string": {
		"input": zone_create({"account": {"id": 12345}, "name": "example.com"}),
		"outcome": "deny", "rules": ["placement.account"],
	},
	"zone_create_account_is_a_string": {
		"input": zone_create({"account": fx.acc, "name": "example.com"}),
		"outcome": "deny", "rules": ["placement.account"],
	},
	"stripe_platform_account": {"input": on_account({}), "outcome": "allow", "rules": []},
	"stripe_account_without_label": {
		"input": on_account({"stripe-account": "acct_reviewed"}),
		"outcome": "deny", "rules": ["placement.stripe_account"],
	},
	"stripe_account_in_label": {
		"input": fx.patch(on_account({"stripe-account": "acct_reviewed"}), stripe_agent("acct_reviewed, acct_2")),
		"outcome": "allow", "rules": [],
	},
	"stripe_account_outside_label": {
		"input": fx.patch(on_account({"stripe-account": "acct_OTHER"}), stripe_agent("acct_reviewed")),
		"outcome": "deny", "rules": ["placement.stripe_account"],
	},
	"stripe_context_outside_label": {
		"input": fx.patch(on_account({"stripe-context": "acct_OTHER"}), stripe_agent("acct_reviewed")),
		"outcome": "deny", "rules": ["placement.stripe_account"],
	},
	"stripe_account_listed_context_not": {
		"input": fx.patch(on_account({"stripe-account": "acct_reviewed", "stripe-context": "acct_OTHER"}), stripe_agent("acct_reviewed")),
		"outcome": "deny", "rules": ["placement.stripe_account"],
	},
	"account_token_other_account": {
		"input": fx.cf("POST", concat("", ["/accounts/", fx.other_acc, "/tokens"]), "cloudflare.token.create", {"account_id": fx.other_acc}, fx.token([fx.dns_write], fx.zone_resource(fx.z1), "2026-12-01T00:00:00Z")),
		"outcome": "deny", "rules": ["placement.account"],
	},
}

test_zone_in_label if check("zone_in_label")

test_zone_outside_label if check("zone_outside_label")

test_no_zones_label if check("no_zones_label")

test_empty_zones_label if check("empty_zones_label")

test_label_with_spaces if check("label_with_spaces")

test_account_in_label if check("account_in_label")

test_account_outside_label if check("account_outside_label")

test_no_accounts_label if check("no_accounts_label")

test_zone_create_in_account if check("zone_create_in_account")

test_zone_create_other_account if check("zone_create_other_account")

test_zone_create_without_account if check("zone_create_without_account")

test_zone_create_account_not_a_string if check("zone_create_account_not_a_string")

test_zone_create_account_is_a_string if check("zone_create_account_is_a_string")

test_account_token_other_account if check("account_token_other_account")

test_placement_message_lists_allowed_zones if {
	d := fx.decide(cases.zone_outside_label.input)
	contains(d.reasons[0].message, fx.other_zone)
	contains(d.reasons[0].message, fx.z1)
}

test_stripe_platform_account if check("stripe_platform_account")

test_stripe_account_without_label if check("stripe_account_without_label")

test_stripe_account_in_label if check("stripe_account_in_label")

test_stripe_account_outside_label if check("stripe_account_outside_label")

test_stripe_context_outside_label if check("stripe_context_outside_label")

test_stripe_account_listed_context_not if check("stripe_account_listed_context_not")
