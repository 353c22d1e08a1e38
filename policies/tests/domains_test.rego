# Domain registration: TLD allow-list, brand look-alikes, term, auto-renew, transfers, the registrar lock.
package tollgate_test.domains

import data.tollgate_test.fixtures as fx

check(name) if fx.check_case(cases[name])

# A registration of `domain` with the given body fields (auto_renew false unless overridden).
reg(domain, body) := fx.register(domain, body)

# A registration whose body has no auto_renew key at all (the SDKs send none unless asked).
reg_without_auto_renew(domain, body) := fx.cf("POST", concat("", ["/accounts/", fx.acc, "/registrar/registrations"]), "cloudflare.domain.register", {"account_id": fx.acc, "domain_name": domain}, object.union({"domain_name": domain, "privacy_mode": "redaction"}, body))

transfer_with(domain, body) := fx.cf("POST", concat("", ["/accounts/", fx.acc, "/registrar/registrations/", domain, "/transfer-in"]), "cloudflare.domain.transfer_in", {"account_id": fx.acc, "domain_name": domain}, body)

transfer(domain) := fx.cf("POST", concat("", ["/accounts/", fx.acc, "/registrar/registrations/", domain, "/transfer-in"]), "cloudflare.domain.transfer_in", {"account_id": fx.acc, "domain_name": domain}, {"auth_code": "X7#k2-redacted", "auto_renew": false})

update(domain, body) := fx.cf("PATCH", concat("", ["/accounts/", fx.acc, "/registrar/registrations/", domain]), "cloudflare.domain.update", {"account_id": fx.acc, "domain_name": domain}, body)

legacy(domain, body) := fx.cf("PUT", concat("", ["/accounts/", fx.acc, "/registrar/domains/", domain]), "cloudflare.domain.legacy_update", {"account_id": fx.acc, "domain_name": domain}, body)

brand_denied := ["domains.brand"]

cases := {
	# The fixture: a one-year .com registration, privacy on, auto-renew off.
	"register_com": {"input": reg("acme-widgets.com", {"years": 1}), "outcome": "allow", "rules": [], "cents": 1044},
	"register_without_years": {"input": reg("acme-widgets.com", {}), "outcome": "allow", "rules": [], "cents": 1044},
	"register_needs_registrar_scope": {
		"input": fx.patch(reg("acme-widgets.com", {}), {"agent": {"scopes": ["dns:write", "billing:spend"]}}),
		"outcome": "deny", "rules": ["scopes.missing"],
	},
	# --- TLDs ---
	"tld_not_allowed": {"input": reg("acme-widgets.xyz", {}), "outcome": "deny", "rules": ["domains.tld"]},
	"second_level_suffix_not_allowed": {"input": reg("acme-widgets.co.uk", {}), "outcome": "deny", "rules": ["domains.tld"]},
	"subdomain_not_registrable": {"input": reg("shop.acme-widgets.com", {}), "outcome": "deny", "rules": ["domains.tld"]},
	"allowed_tld_without_price": {"input": reg("acme-widgets.dev", {}), "outcome": "approve", "rules": ["spend.unpriced"], "cents": null},
	# --- Names ---
	"name_missing": {
		"input": fx.patch(reg("acme-widgets.com", {}), {"action": {"params": {"domain_name": null}}}),
		"outcome": "deny", "rules": ["domains.name"],
	},
	"name_not_canonical": {"input": reg("Acme Widgets.com", {}), "outcome": "deny", "rules": ["domains.name"]},
	"brand_exact": {"input": reg("paypal.com", {}), "outcome": "deny", "rules": brand_denied},
	"brand_digit_swap": {"input": reg("paypa1.com", {}), "outcome": "deny", "rules": brand_denied},
	"brand_zero_for_o": {"input": reg("g00gle.io", {}), "outcome": "deny", "rules": brand_denied},
	"brand_hyphenated": {"input": reg("pay-pal.net", {}), "outcome": "deny", "rules": brand_denied},
	"brand_doubled_letter": {"input": reg("paypall.org", {}), "outcome": "deny", "rules": brand_denied},
	"brand_plus_word": {"input": reg("paypal-login.com", {}), "outcome": "deny", "rules": brand_denied},
	"word_plus_brand": {"input": reg("securestripe.dev", {}), "outcome": "deny", "rules": brand_denied},
	"brand_rn_for_m": {"input": reg("rnicrosoft-support.com", {}), "outcome": "deny", "rules": brand_denied},
	"brand_i_for_l": {"input": reg("cloudfiare.app", {}), "outcome": "deny", "rules": brand_denied},
	"brand_prefix_mode": {"input": reg("app1e-id.com", {}), "outcome": "deny", "rules": brand_denied},
	"brand_prefix_mode_part": {"input": reg("my-apple.com", {}), "outcome": "deny", "rules": brand_denied},
	"brand_prefix_mode_inner_word": {"input": reg("pineapple.com", {}), "outcome": "allow", "rules": [], "cents": 1044},
	"brand_prefix_mode_similar_word": {"input": reg("maple.com", {}), "outcome": "allow", "rules": [], "cents": 1044},
	"idn_needs_a_human": {"input": reg("xn--bcher-kva.com", {}), "outcome": "approve", "rules": ["domains.idn"], "cents": 1044},
	# --- Term ---
	"years_two": {"input": reg("acme-widgets.com", {"years": 2}), "outcome": "approve", "rules": ["domains.years"], "cents": 2088},
	"years_as_string": {"input": reg("acme-widgets.com", {"years": "10"}), "outcome": "deny", "rules": ["domains.years"]},
	"years_fraction": {"input": reg("acme-widgets.com", {"years": 1.5}), "outcome": "deny", "rules": ["domains.years"]},
	"years_zero": {"input": reg("acme-widgets.com", {"years": 0}), "outcome": "deny", "rules": ["domains.years"]},
	"years_eleven": {"input": reg("acme-widgets.com", {"years": 11}), "outcome": "deny", "rules": ["domains.years"]},
	# --- Auto-renew ---
	"auto_renew_true": {"input": reg("acme-widgets.com", {"auto_renew": true}), "outcome": "approve", "rules": ["domains.auto_renew"], "cents": 1044},
	"auto_renew_as_string": {"input": reg("acme-widgets.com", {"auto_renew": "true"}), "outcome": "deny", "rules": ["domains.auto_renew"]},
	# Cloudflare defaults auto_renew to false on registrations and transfers-in (domains/data.yaml,
	# auto_renew_when_absent): leaving it out, as the SDKs do unless asked, renews nothing.
	"auto_renew_absent": {"input": reg_without_auto_renew("acme-widgets.com", {}), "outcome": "allow", "rules": [], "cents": 1044},
	"auto_renew_absent_for_two_years": {"input": reg_without_auto_renew("acme-widgets.com", {"years": 2}), "outcome": "approve", "rules": ["domains.years"], "cents": 2088},
	"auto_renew_null": {
		"input": fx.patch(reg("acme-widgets.com", {}), {"request": {"body": {"auto_renew": null}}}),
		"outcome": "allow", "rules": [], "cents": 1044,
	},
	"auto_renew_false": {"input": reg("acme-widgets.com", {"auto_renew": false}), "outcome": "allow", "rules": [], "cents": 1044},
	"transfer_in_without_auto_renew": {"input": transfer_with("acme-widgets.com", {"auth_code": "X7#k2-redacted"}), "outcome": "approve", "rules": ["domains.transfer_in"], "cents": 1044},
	"transfer_in_auto_renew_true": {"input": transfer_with("acme-widgets.com", {"auth_code": "X7#k2-redacted", "auto_renew": true}), "outcome": "approve", "rules": ["domains.transfer_in", "domains.auto_renew"], "cents": 1044},
	"update_auto_renew_on": {"input": update("acme-widgets.com", {"auto_renew": true}), "outcome": "approve", "rules": ["domains.auto_renew"]},
	"update_auto_renew_off": {"input": update("acme-widgets.com", {"auto_renew": false}), "outcome": "allow", "rules": []},
	"update_auto_renew_as_number": {"input": update("acme-widgets.com", {"auto_renew": 1}), "outcome": "deny", "rules": ["domains.auto_renew"]},
	# --- Transfer-in ---
	"transfer_in": {"input": transfer("acme-widgets.com"), "outcome": "approve", "rules": ["domains.transfer_in"], "cents": 1044},
	"transfer_in_of_a_lookalike": {"input": transfer("g1thub.com"), "outcome": "deny", "rules": brand_denied},
	"transfer_in_outside_tlds": {"input": transfer("acme-widgets.ru"), "outcome": "deny", "rules": ["domains.tld"]},
	# --- Registrar lock (legacy API) ---
	"legacy_unlock": {"input": legacy("acme-widgets.com", {"locked": false}), "outcome": "approve", "rules": ["domains.unlock"]},
	"legacy_lock": {"input": legacy("acme-widgets.com", {"locked": true}), "outcome": "allow", "rules": []},
	"legacy_lock_as_string": {"input": legacy("acme-widgets.com", {"locked": "no"}), "outcome": "deny", "rules": ["domains.unlock"]},
}

test_register_com if check("register_com")

test_register_without_years if check("register_without_years")

test_register_needs_registrar_scope if check("register_needs_registrar_scope")

test_tld_not_allowed if check("tld_not_allowed")

test_second_level_suffix_not_allowed if check("second_level_suffix_not_allowed")

test_subdomain_not_registrable if check("subdomain_not_registrable")

test_allowed_tld_without_price if check("allowed_tld_without_price")

test_name_missing if check("name_missing")

test_name_not_canonical if check("name_not_canonical")

test_brand_exact if check("brand_exact")

test_brand_digit_swap if check("brand_digit_swap")

test_brand_zero_for_o if check("brand_zero_for_o")

test_brand_hyphenated if check("brand_hyphenated")

test_brand_doubled_letter if check("brand_doubled_letter")

test_brand_plus_word if check("brand_plus_word")

test_word_plus_brand if check("word_plus_brand")

test_brand_rn_for_m if check("brand_rn_for_m")

test_brand_i_for_l if check("brand_i_for_l")

test_brand_prefix_mode if check("brand_prefix_mode")

test_brand_prefix_mode_part if check("brand_prefix_mode_part")

test_brand_prefix_mode_inner_word if check("brand_prefix_mode_inner_word")

test_brand_prefix_mode_similar_word if check("brand_prefix_mode_similar_word")

test_idn_needs_a_human if check("idn_needs_a_human")

test_years_two if check("years_two")

test_years_as_string if check("years_as_string")

test_years_fraction if check("years_fraction")

test_years_zero if check("years_zero")

test_years_eleven if check("years_eleven")

test_auto_renew_true if check("auto_renew_true")

test_auto_renew_as_string if check("auto_renew_as_string")

test_auto_renew_absent if check("auto_renew_absent")

test_auto_renew_absent_for_two_years if check("auto_renew_absent_for_two_years")

test_auto_renew_null if check("auto_renew_null")

test_auto_renew_false if check("auto_renew_false")

test_transfer_in_without_auto_renew if check("transfer_in_without_auto_renew")

test_transfer_in_auto_renew_true if check("transfer_in_auto_renew_true")

test_update_auto_renew_on if check("update_auto_renew_on")

test_update_auto_renew_off if check("update_auto_renew_off")

test_update_auto_renew_as_number if check("update_auto_renew_as_number")

test_transfer_in if check("transfer_in")

test_transfer_in_of_a_lookalike if check("transfer_in_of_a_lookalike")

test_transfer_in_outside_tlds if check("transfer_in_outside_tlds")

test_legacy_unlock if check("legacy_unlock")

test_legacy_lock if check("legacy_lock")

test_legacy_lock_as_string if check("legacy_lock_as_string")

# --- Data-driven settings ----------------------------------------------------------------------------------

test_allowed_names_exempt_a_brand if {
	d := fx.decide(reg("paypal-partners.com", {})) with data.domains.allowed_names as {"paypal-partners.com": "our reseller site"}
	d.outcome == "allow"
}

test_idn_can_be_refused if {
	d := fx.decide(reg("xn--bcher-kva.com", {})) with data.domains.idn_labels as "deny"
	d.outcome == "deny"
	fx.rules(d) == {"domains.idn"}
}

# If Cloudflare's default changes, reviewers set auto_renew_when_absent: true and an absent auto_renew needs a
# human, on registrations and transfers-in alike; an explicit false is still allowed.
test_auto_renew_absent_can_be_held if {
	d := fx.decide(cases.auto_renew_absent.input) with data.domains.auto_renew_when_absent as true
	d.outcome == "approve"
	fx.rules(d) == {"domains.auto_renew"}
	contains(d.reasons[0].message, "auto_renew_when_absent: true")
	d2 := fx.decide(cases.transfer_in_without_auto_renew.input) with data.domains.auto_renew_when_absent as true
	fx.rules(d2) == {"domains.transfer_in", "domains.auto_renew"}
	d3 := fx.decide(cases.auto_renew_false.input) with data.domains.auto_renew_when_absent as true
	d3.outcome == "allow"
}

# The message for an explicit true says what it authorizes and what to send instead: on a registration,
# leaving auto_renew out is enough while Cloudflare defaults to false; on an update it is not.
test_auto_renew_message_names_the_alternative if {
	d := fx.decide(cases.auto_renew_true.input)
	contains(d.reasons[0].message, "charge the account every year")
	contains(d.reasons[0].message, "or leave it out")
	d2 := fx.decide(cases.update_auto_renew_on.input)
	contains(d2.reasons[0].message, "send auto_renew: false to avoid this")
	d3 := fx.decide(cases.auto_renew_true.input) with data.domains.auto_renew_when_absent as true
	contains(d3.reasons[0].message, "send auto_renew: false to avoid this")
}

test_tld_list_is_data if {
	d := fx.decide(reg("acme-widgets.xyz", {})) with data.domains.allowed_tlds as {"xyz": true}
	d.outcome == "approve"
	fx.rules(d) == {"spend.unpriced"}
}

test_tld_price_is_data if {
	inp := reg("acme-widgets.dev", {"years": 2})
	d := fx.decide(inp) with data.prices.domains as {"dev": {"registration_cents": 1200, "renewal_cents": 1500}}
	d.charge.cents == 2700
}

test_transfer_price_is_data if {
	d := fx.decide(transfer("acme-widgets.com")) with data.prices.domains as {"com": {"registration_cents": 1044, "renewal_cents": 1044, "transfer_cents": 999}}
	d.charge.cents == 999
}

test_transfer_of_unpriced_tld if {
	d := fx.decide(transfer("acme-widgets.io"))
	d.outcome == "approve"
	fx.rules(d) == {"domains.transfer_in", "spend.unpriced"}
}

# A brand added without a precomputed fold is folded at evaluation time.
test_brand_without_precomputed_fold if {
	d := fx.decide(reg("acme-c0rp.com", {})) with data.domains.protected_brands as {"acmecorp": {"match": "contains"}}
	d.outcome == "deny"
	fx.rules(d) == {"domains.brand"}
}

test_brand_message_names_the_brand if {
	d := fx.decide(cases.brand_digit_swap.input)
	contains(d.reasons[0].message, "paypal")
	contains(d.reasons[0].message, "allowed_names")
}
