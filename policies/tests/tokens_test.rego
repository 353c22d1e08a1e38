# Token ceilings: permission groups by id inside the agent's ceiling, no escalation groups, resources inside
# the agent's accounts and zones, no wildcards, a short life, a source-IP condition where required; roll and
# delete need a human.
package tollgate_test.tokens

import data.tollgate_test.fixtures as fx

check(name) if fx.check_case(cases[name])

in_12h := "2026-12-01T00:00:00Z"

zone1 := fx.zone_resource(fx.z1)

create(body) := fx.token_create(body)

# The fixture "narrow token": DNS Write on one zone the agent may change, for 12 hours.
narrow := fx.token([fx.dns_write], zone1, in_12h)

# The fixture "broad token": everything an over-eager agent asks for.
broad := {
	"name": "agent-admin",
	"policies": [
		{
			"effect": "allow",
			"resources": {"com.cloudflare.api.account.zone.*": "*"},
			"permission_groups": [{"id": fx.zone_write, "name": "Zone Write"}, {"id": fx.dns_write, "name": "DNS Write"}],
		},
		{
			"effect": "allow",
			"resources": {concat("", ["com.cloudflare.api.account.", fx.acc]): "*"},
			"permission_groups": [{"id": fx.account_tokens_write, "name": "Account API Tokens Write"}],
		},
	],
}

with_policy(p) := object.union(narrow, {"policies": [p]})

with_expiry(e) := object.union(narrow, {"expires_on": e})

# What tollgate recorded of a token this agent minted (the input's `minted_token`).
own_minted := {"id": "tok_1", "minted_by": "ci-bot", "minted_by_this_agent": true, "status": "active", "custody": "vault", "policies": []}

cases := {
	"narrow_token": {"input": create(narrow), "outcome": "allow", "rules": []},
	"narrow_account_token": {
		"input": fx.cf("POST", concat("", ["/accounts/", fx.acc, "/tokens"]), "cloudflare.token.create", {"account_id": fx.acc}, narrow),
		"outcome": "allow", "rules": [],
	},
	"broad_token": {
		"input": create(broad),
		"outcome": "deny", "rules": ["tokens.ceiling", "tokens.escalation", "tokens.resources", "tokens.expiry"],
	},
	"broad_token_update": {
		"input": fx.cf("PUT", "/user/tokens/tok_1", "cloudflare.token.update", {"token_id": "tok_1"}, broad),
		"outcome": "deny", "rules": ["tokens.ceiling", "tokens.escalation", "tokens.resources", "tokens.expiry"],
	},
	"disable_token_update": {
		"input": fx.cf("PUT", "/user/tokens/tok_1", "cloudflare.token.update", {"token_id": "tok_1"}, object.union(narrow, {"status": "disabled"})),
		"outcome": "approve", "rules": ["tokens.disable", "tokens.update"],
	},
	"expire_token_update": {
		"input": fx.cf("PUT", "/user/tokens/tok_1", "cloudflare.token.update", {"token_id": "tok_1"}, object.union(narrow, {"status": "expired"})),
		"outcome": "approve", "rules": ["tokens.disable", "tokens.update"],
	},
	"active_token_update": {
		"input": fx.cf("PUT", "/user/tokens/tok_1", "cloudflare.token.update", {"token_id": "tok_1"}, object.union(narrow, {"status": "active"})),
		"outcome": "approve", "rules": ["tokens.update"],
	},
	"bad_status_token_update": {
		"input": fx.cf("PUT", "/user/tokens/tok_1", "cloudflare.token.update", {"token_id": "tok_1"}, object.union(narrow, {"status": "Disabled"})),
		"outcome": "deny", "rules": ["tokens.malformed"],
	},
	"narrow_token_update": {
		"input": fx.cf("PUT", "/user/tokens/tok_1", "cloudflare.token.update", {"token_id": "tok_1"}, narrow),
		"outcome": "approve", "rules": ["tokens.update"],
	},
	"own_token_update": {
		"input": fx.patch(fx.cf("PUT", "/user/tokens/tok_1", "cloudflare.token.update", {"token_id": "tok_1"}, narrow), {"minted_token": own_minted}),
		"outcome": "allow", "rules": [],
	},
	"own_token_disable": {
		"input": fx.patch(fx.cf("PUT", "/user/tokens/tok_1", "cloudflare.token.update", {"token_id": "tok_1"}, object.union(narrow, {"status": "disabled"})), {"minted_token": own_minted}),
		"outcome": "approve", "rules": ["tokens.disable"],
	},
	"own_token_broad_update": {
		"input": fx.patch(fx.cf("PUT", "/user/tokens/tok_1", "cloudflare.token.update", {"token_id": "tok_1"}, broad), {"minted_token": own_minted}),
		"outcome": "deny", "rules": ["tokens.ceiling", "tokens.escalation", "tokens.resources", "tokens.expiry"],
	},
	"unrecorded_token_update": {
		"input": fx.patch(fx.cf("PUT", "/user/tokens/tok_1", "cloudflare.token.update", {"token_id": "tok_1"}, narrow), {"minted_token": null}),
		"outcome": "approve", "rules": ["tokens.update"],
	},
	"other_agents_token_update": {
		"input": fx.patch(fx.cf("PUT", "/user/tokens/tok_1", "cloudflare.token.update", {"token_id": "tok_1"}, narrow), {"minted_token": object.union(own_minted, {"minted_by": "someone-else", "minted_by_this_agent": false})}),
		"outcome": "approve", "rules": ["tokens.update"],
	},
	"token_needs_tokens_scope": {
		"input": fx.patch(create(narrow), {"agent": {"scopes": ["dns:write"]}}),
		"outcome": "deny", "rules": ["scopes.missing"],
	},
	# --- Ceiling, by id ---
	"group_above_ceiling": {"input": create(fx.token([fx.zone_write], zone1, in_12h)), "outcome": "deny", "rules": ["tokens.ceiling"]},
	"group_unknown_id": {"input": create(fx.token(["0123456789abcdef0123456789abcdef"], zone1, in_12h)), "outcome": "deny", "rules": ["tokens.ceiling"]},
	"escalation_named_innocently": {
		"input": create(with_policy({"effect": "allow", "resources": zone1, "permission_groups": [{"id": fx.account_tokens_write, "name": "DNS Read"}]})),
		"outcome": "deny", "rules": ["tokens.escalation"],
	},
	"user_tokens_write": {"input": create(fx.token([fx.user_tokens_write], zone1, in_12h)), "outcome": "deny", "rules": ["tokens.escalation"]},
	"every_default_group": {
		"input": create(fx.token([fx.dns_read, fx.dns_write, fx.zone_read], zone1, in_12h)),
		"outcome": "allow", "rules": [],
	},
	"workers_on_account": {
		"input": create(fx.token([fx.workers_write], fx.account_resource(fx.acc), in_12h)),
		"outcome": "allow", "rules": [],
	},
	# A deny policy is checked like any other: every group in every entry.
	"deny_effect_still_checked": {
		"input": create(object.union(narrow, {"policies": [narrow.policies[0], {"effect": "deny", "resources": zone1, "permission_groups": [{"id": fx.zone_write}]}]})),
		"outcome": "deny", "rules": ["tokens.ceiling"],
	},
	# --- Resources ---
	"zone_wildcard": {"input": create(fx.token([fx.dns_write], {"com.cloudflare.api.account.zone.*": "*"}, in_12h)), "outcome": "deny", "rules": ["tokens.resources"]},
	"account_wildcard": {"input": create(fx.token([fx.workers_write], {"com.cloudflare.api.account.*": "*"}, in_12h)), "outcome": "deny", "rules": ["tokens.resources"]},
	"other_zone": {"input": create(fx.token([fx.dns_write], fx.zone_resource(fx.other_zone), in_12h)), "outcome": "deny", "rules": ["tokens.resources"]},
	"other_account": {"input": create(fx.token([fx.workers_write], fx.account_resource(fx.other_acc), in_12h)), "outcome": "deny", "rules": ["tokens.resources"]},
	"user_resource": {"input": create(fx.token([fx.dns_read], {"com.cloudflare.api.user.7c5dae5552338874e5053f2534d2767a": "*"}, in_12h)), "outcome": "deny", "rules": ["tokens.resources"]},
	"foreign_resource": {"input": create(fx.token([fx.dns_read], {"com.example.zone.1": "*"}, in_12h)), "outcome": "deny", "rules": ["tokens.resources"]},
	"nested_zone_in_account": {
		"input": create(fx.token([fx.dns_write], {concat("", ["com.cloudflare.api.account.", fx.acc]): zone1}, in_12h)),
		"outcome": "allow", "rules": [],
	},
	"nested_zone_wildcard": {
		"input": create(fx.token([fx.dns_write], {concat("", ["com.cloudflare.api.account.", fx.acc]): {"com.cloudflare.api.account.zone.*": "*"}}, in_12h)),
		"outcome": "deny", "rules": ["tokens.resources"],
	},
	"no_zones_label": {
		"input": fx.patch(create(narrow), {"agent": {"labels": {"zones": null}}}),
		"outcome": "deny", "rules": ["tokens.resources"],
	},
	# --- Shape ---
	"policies_missing": {"input": create({"name": "t", "expires_on": in_12h}), "outcome": "deny", "rules": ["tokens.malformed"]},
	"policies_not_a_list": {"input": create(object.union(narrow, {"policies": "all"})), "outcome": "deny", "rules": ["tokens.malformed"]},
	"groups_not_a_list": {
		"input": create(with_policy({"effect": "allow", "resources": zone1, "permission_groups": fx.dns_write})),
		"outcome": "deny", "rules": ["tokens.malformed"],
	},
	"resources_three_levels": {
		"input": create(with_policy({"effect": "allow", "resources": {concat("", ["com.cloudflare.api.account.", fx.acc]): {concat("", ["com.cloudflare.api.account.zone.", fx.z1]): {"x": "*"}}}, "permission_groups": [{"id": fx.dns_write}]})),
		"outcome": "deny", "rules": ["tokens.malformed"],
	},
	"group_id_not_string": {
		"input": create(with_policy({"effect": "allow", "resources": zone1, "permission_groups": [{"id": 4755}]})),
		"outcome": "deny", "rules": ["tokens.malformed"],
	},
	"policies_empty": {"input": create(object.union(narrow, {"policies": []})), "outcome": "deny", "rules": ["tokens.malformed"]},
	"policy_not_object": {"input": create(object.union(narrow, {"policies": ["all"]})), "outcome": "deny", "rules": ["tokens.malformed"]},
	"effect_unknown": {
		"input": create(with_policy({"effect": "permit", "resources": zone1, "permission_groups": [{"id": fx.dns_write}]})),
		"outcome": "deny", "rules": ["tokens.malformed"],
	},
	"groups_empty": {
		"input": create(with_policy({"effect": "allow", "resources": zone1, "permission_groups": []})),
		"outcome": "deny", "rules": ["tokens.malformed"],
	},
	"group_without_id": {
		"input": create(with_policy({"effect": "allow", "resources": zone1, "permission_groups": [{"name": "DNS Write"}]})),
		"outcome": "deny", "rules": ["tokens.malformed"],
	},
	"resources_not_object": {
		"input": create(with_policy({"effect": "allow", "resources": "*", "permission_groups": [{"id": fx.dns_write}]})),
		"outcome": "deny", "rules": ["tokens.malformed"],
	},
	"resource_value_not_star": {
		"input": create(with_policy({"effect": "allow", "resources": {concat("", ["com.cloudflare.api.account.zone.", fx.z1]): "read"}, "permission_groups": [{"id": fx.dns_write}]})),
		"outcome": "deny", "rules": ["tokens.malformed"],
	},
	"nested_value_not_star": {
		"input": create(with_policy({"effect": "allow", "resources": {concat("", ["com.cloudflare.api.account.", fx.acc]): {concat("", ["com.cloudflare.api.account.zone.", fx.z1]): 1}}, "permission_groups": [{"id": fx.dns_write}]})),
		"outcome": "deny", "rules": ["tokens.malformed"],
	},
	# --- Expiry ---
	"expiry_missing": {"input": create(object.remove(narrow, ["expires_on"])), "outcome": "deny", "rules": ["tokens.expiry"]},
	"expiry_exactly_24h": {"input": create(with_expiry("2026-12-01T12:00:00Z")), "outcome": "allow", "rules": []},
	"expiry_with_offset": {"input": create(with_expiry("2026-12-01T13:00:00+01:00")), "outcome": "allow", "rules": []},
	"expiry_with_fraction": {"input": create(with_expiry("2026-12-01T11:59:59.999Z")), "outcome": "allow", "rules": []},
	"expiry_too_far": {"input": create(with_expiry("2026-12-02T12:00:00Z")), "outcome": "deny", "rules": ["tokens.expiry"]},
	"expiry_one_second_too_far": {"input": create(with_expiry("2026-12-01T12:00:01Z")), "outcome": "deny", "rules": ["tokens.expiry"]},
	"expiry_impossible_date": {"input": create(with_expiry("2026-02-30T00:00:00Z")), "outcome": "deny", "rules": ["tokens.expiry"]},
	"expiry_month_13": {"input": create(with_expiry("2026-13-01T00:00:00Z")), "outcome": "deny", "rules": ["tokens.expiry"]},
	"expiry_hour_24": {"input": create(with_expiry("2026-12-01T24:00:00Z")), "outcome": "deny", "rules": ["tokens.expiry"]},
	"expiry_bad_offset": {"input": create(with_expiry("2026-12-01T10:00:00+25:00")), "outcome": "deny", "rules": ["tokens.expiry"]},
	"expiry_words": {"input": create(with_expiry("tomorrow")), "outcome": "deny", "rules": ["tokens.expiry"]},
	"expiry_date_only": {"input": create(with_expiry("2026-12-01")), "outcome": "deny", "rules": ["tokens.expiry"]},
	"expiry_without_zone": {"input": create(with_expiry("2026-12-01T00:00:00.5")), "outcome": "deny", "rules": ["tokens.expiry"]},
	"expiry_lower_case_zone": {"input": create(with_expiry("2026-12-01T00:00:00z")), "outcome": "deny", "rules": ["tokens.expiry"]},
	"expiry_long_fraction": {"input": create(with_expiry("2026-12-01T00:00:00.1234567890Z")), "outcome": "deny", "rules": ["tokens.expiry"]},
	"expiry_negative_offset": {"input": create(with_expiry("2026-12-01T20:00:00-05:00")), "outcome": "deny", "rules": ["tokens.expiry"]},
	"expiry_offset_with_fraction": {"input": create(with_expiry("2026-12-01T06:00:00.25-05:00")), "outcome": "allow", "rules": []},
	"expiry_not_digits": {"input": create(with_expiry("2026-1x-01T00:00:00Z")), "outcome": "deny", "rules": ["tokens.expiry"]},
	"expiry_number": {"input": create(with_expiry(1796083200)), "outcome": "deny", "rules": ["tokens.expiry"]},
	"expiry_far_future_year": {"input": create(with_expiry("9999-12-31T23:59:59Z")), "outcome": "deny", "rules": ["tokens.expiry"]},
	"expiry_leap_day": {
		"input": fx.patch(create(with_expiry("2028-02-29T12:00:00Z")), {"now": "2028-02-29T00:00:00Z"}),
		"outcome": "allow", "rules": [],
	},
	"expiry_not_a_leap_day": {
		"input": fx.patch(create(with_expiry("2027-02-29T12:00:00Z")), {"now": "2027-02-28T23:00:00Z"}),
		"outcome": "deny", "rules": ["tokens.expiry"],
	},
	"unreadable_clock": {"input": fx.patch(create(narrow), {"now": "now"}), "outcome": "deny", "rules": ["tokens.expiry"]},
	# --- Roll and delete ---
	"roll": {
		"input": fx.cf("PUT", "/user/tokens/tok_1/value", "cloudflare.token.roll", {"token_id": "tok_1"}, {}),
		"outcome": "approve", "rules": ["tokens.roll"],
	},
	"delete": {
		"input": fx.cf("DELETE", concat("", ["/accounts/", fx.acc, "/tokens/tok_1"]), "cloudflare.token.delete", {"account_id": fx.acc, "token_id": "tok_1"}, null),
		"outcome": "approve", "rules": ["tokens.delete"],
	},
	"verify_is_a_read": {
		"input": fx.patch(fx.cf("GET", "/user/tokens/verify", "cloudflare.token.verify", {}, null), {"agent": {"scopes": []}}),
		"outcome": "allow", "rules": [],
	},
}

test_narrow_token if check("narrow_token")

test_narrow_account_token if check("narrow_account_token")

test_broad_token if check("broad_token")

test_broad_token_update if check("broad_token_update")

test_narrow_token_update if check("narrow_token_update")

test_token_needs_tokens_scope if check("token_needs_tokens_scope")

test_group_above_ceiling if check("group_above_ceiling")

test_group_unknown_id if check("group_unknown_id")

test_escalation_named_innocently if check("escalation_named_innocently")

test_user_tokens_write if check("user_tokens_write")

test_every_default_group if check("every_default_group")

test_workers_on_account if check("workers_on_account")

test_deny_effect_still_checked if check("deny_effect_still_checked")

test_zone_wildcard if check("zone_wildcard")

test_account_wildcard if check("account_wildcard")

test_other_zone if check("other_zone")

test_other_account if check("other_account")

test_user_resource if check("user_resource")

test_foreign_resource if check("foreign_resource")

test_nested_zone_in_account if check("nested_zone_in_account")

test_nested_zone_wildcard if check("nested_zone_wildcard")

test_no_zones_label if check("no_zones_label")

test_policies_missing if check("policies_missing")

test_policies_empty if check("policies_empty")

test_policies_not_a_list if check("policies_not_a_list")

test_groups_not_a_list if check("groups_not_a_list")

test_resources_three_levels if check("resources_three_levels")

test_group_id_not_string if check("group_id_not_string")

test_policy_not_object if check("policy_not_object")

test_effect_unknown if check("effect_unknown")

test_groups_empty if check("groups_empty")

test_group_without_id if check("group_without_id")

test_resources_not_object if check("resources_not_object")

test_resource_value_not_star if check("resource_value_not_star")

test_nested_value_not_star if check("nested_value_not_star")

test_expiry_missing if check("expiry_missing")

test_expiry_exactly_24h if check("expiry_exactly_24h")

test_expiry_with_offset if check("expiry_with_offset")

test_expiry_with_fraction if check("expiry_with_fraction")

test_expiry_too_far if check("expiry_too_far")

test_expiry_one_second_too_far if check("expiry_one_second_too_far")

test_expiry_impossible_date if check("expiry_impossible_date")

test_expiry_month_13 if check("expiry_month_13")

test_expiry_hour_24 if check("expiry_hour_24")

test_expiry_bad_offset if check("expiry_bad_offset")

test_expiry_words if check("expiry_words")

test_expiry_date_only if check("expiry_date_only")

test_expiry_not_digits if check("expiry_not_digits")

test_expiry_without_zone if check("expiry_without_zone")

test_expiry_lower_case_zone if check("expiry_lower_case_zone")

test_expiry_long_fraction if check("expiry_long_fraction")

test_expiry_negative_offset if check("expiry_negative_offset")

test_expiry_offset_with_fraction if check("expiry_offset_with_fraction")

test_expiry_number if check("expiry_number")

test_expiry_far_future_year if check("expiry_far_future_year")

test_expiry_leap_day if check("expiry_leap_day")

test_expiry_not_a_leap_day if check("expiry_not_a_leap_day")

test_unreadable_clock if check("unreadable_clock")

test_roll if check("roll")

test_delete if check("delete")

test_verify_is_a_read if check("verify_is_a_read")

# --- Ceilings, lifetimes and IP conditions are data ---------------------------------------------------------

web_ceiling := {"web": {"groups": {
	fx.dns_write: "DNS Write",
	fx.zone_write: "Zone Write",
}}}

test_team_ceiling_allows_more if {
	inp := fx.patch(create(fx.token([fx.zone_write], zone1, in_12h)), {"agent": {"team": "web"}})
	d := fx.decide(inp) with data.tokens.teams as web_ceiling
	d.outcome == "allow"
}

# The team ceiling replaces the default: DNS Read is in the default but not in team web's.
test_team_ceiling_replaces_default if {
	inp := fx.patch(create(fx.token([fx.dns_read], zone1, in_12h)), {"agent": {"team": "web"}})
	d := fx.decide(inp) with data.tokens.teams as web_ceiling
	d.outcome == "deny"
	fx.rules(d) == {"tokens.ceiling"}
	contains(d.reasons[0].message, "team 'web'")
}

test_agent_ceiling_wins_over_team if {
	inp := fx.patch(create(fx.token([fx.zone_write], zone1, in_12h)), {"agent": {"team": "web"}})
	d := fx.decide(inp) with data.tokens.teams as web_ceiling
		with data.tokens.agents as {"deployer": {"groups": {fx.dns_read: "DNS Read"}}}
	d.outcome == "deny"
	contains(d.reasons[0].message, "agent 'deployer'")
}

# A team without an entry gets the default ceiling.
test_team_without_entry_gets_default if {
	inp := fx.patch(create(narrow), {"agent": {"team": "data"}})
	d := fx.decide(inp) with data.tokens.teams as web_ceiling
	d.outcome == "allow"
}

# Escalation groups stay out even when a ceiling lists them.
test_ceiling_cannot_grant_escalation if {
	inp := create(fx.token([fx.account_tokens_write], fx.account_resource(fx.acc), in_12h))
	d := fx.decide(inp) with data.tokens.agents as {"deployer": {"groups": {fx.account_tokens_write: "Account API Tokens Write"}}}
	d.outcome == "deny"
	fx.rules(d) == {"tokens.escalation"}
}

test_lifetime_is_data if {
	inp := create(with_expiry("2026-12-07T12:00:00Z"))
	d := fx.decide(inp) with data.tokens.agents as {"deployer": {"max_lifetime_seconds": 604800}}
	d.outcome == "allow"
	d2 := fx.decide(create(narrow)) with data.tokens.agents as {"deployer": {"max_lifetime_seconds": 3600}}
	d2.outcome == "deny"
}

ip_required := {"deployer": {"require_request_ip": true}}

ip_condition(cidrs) := object.union(narrow, {"condition": {"request_ip": {"in": cidrs, "not_in": []}}})

test_request_ip_required_and_missing if {
	d := fx.decide(create(narrow)) with data.tokens.agents as ip_required
	d.outcome == "deny"
	fx.rules(d) == {"tokens.request_ip"}
}

test_request_ip_required_and_present if {
	d := fx.decide(create(ip_condition(["198.51.100.0/24", "2001:db8::/32"]))) with data.tokens.agents as ip_required
	d.outcome == "allow"
}

test_request_ip_single_address if {
	d := fx.decide(create(ip_condition(["198.51.100.7"]))) with data.tokens.agents as ip_required
	d.outcome == "allow"
}

test_request_ip_everything_is_refused if {
	d := fx.decide(create(ip_condition(["0.0.0.0/0"]))) with data.tokens.agents as ip_required
	d.outcome == "deny"
	d2 := fx.decide(create(ip_condition(["::/0"]))) with data.tokens.agents as ip_required
	d2.outcome == "deny"
}

test_request_ip_garbage_is_refused if {
	d := fx.decide(create(ip_condition(["office", 7]))) with data.tokens.agents as ip_required
	d.outcome == "deny"
	d2 := fx.decide(create(ip_condition([]))) with data.tokens.agents as ip_required
	d2.outcome == "deny"
}

test_request_ip_not_required_by_default if {
	d := fx.decide(create(narrow))
	d.outcome == "allow"
}

test_ceiling_message_names_group_and_ceiling if {
	d := fx.decide(cases.group_above_ceiling.input)
	contains(d.reasons[0].message, "Zone Write")
	contains(d.reasons[0].message, "DNS Write")
	contains(d.reasons[0].message, "default ceiling")
}

test_disable_token_update if check("disable_token_update")

test_expire_token_update if check("expire_token_update")

test_active_token_update if check("active_token_update")

test_bad_status_token_update if check("bad_status_token_update")
