# The entrypoint: reads, precedence (deny over approve over allow), the charge, and the output contract.
package tollgate_test.main

import data.tollgate_test.fixtures as fx

# Reads are allowed whoever asks, wherever, with no charge: an agent with no scopes and no labels.
nobody := {"scopes": [], "labels": {}}

test_reads_are_allowed_without_scopes_or_labels if {
	inp := fx.patch(fx.cf("GET", "/zones", "cloudflare.zone.read", {}, null), {"agent": nobody})
	fx.expect(inp, "allow", [])
	fx.no_charge(inp)
}

test_reads_of_other_zones_are_allowed if {
	fx.expect(fx.cf("GET", concat("", ["/zones/", fx.other_zone, "/dns_records"]), "cloudflare.dns.read", {"zone_id": fx.other_zone}, null), "allow", [])
}

test_unknown_reads_are_allowed if {
	fx.expect(fx.cf("GET", "/zones/z/firewall/rules", "unknown", {}, null), "allow", [])
}

# domain.check is a POST but a read: no scope, no placement, no charge.
test_domain_check_is_a_read if {
	inp := fx.patch(fx.cf("POST", concat("", ["/accounts/", fx.other_acc, "/registrar/domain-check"]), "cloudflare.domain.check", {"account_id": fx.other_acc, "domains": "paypa1.com,example.xyz"}, {"domains": ["paypa1.com", "example.xyz"]}), {"agent": nobody})
	fx.expect(inp, "allow", [])
}

test_stripe_reads_are_allowed if {
	fx.expect(fx.stripe("GET", "/v1/customers/cus_123", "stripe.read", {"object": "customers/cus_123"}, null), "allow", [])
}

# An ordinary write within scope and placement is allowed with no reasons and no charge.
test_ordinary_write_is_allowed if {
	inp := fx.dns_create(fx.z1, {"type": "A", "name": "www.example.com", "content": "198.51.100.4", "ttl": 3600, "proxied": true})
	fx.expect(inp, "allow", [])
	fx.no_charge(inp)
}

# Deny wins over approve, and only the deny reasons are listed: an NS change (approve) in a zone the agent
# may not change (deny).
test_deny_wins_over_approve if {
	inp := fx.dns_create(fx.other_zone, {"type": "NS", "name": "example.com", "content": "ns1.evil.example"})
	fx.expect(inp, "deny", ["placement.zone"])
}

# Every deny reason is listed, not just the first.
test_all_deny_reasons_are_listed if {
	inp := fx.patch(fx.dns_create(fx.other_zone, {"type": "A", "name": "www.example.com", "content": "198.51.100.4"}), {"agent": {"scopes": []}})
	fx.expect(inp, "deny", ["placement.zone", "scopes.missing"])
}

# Every approve reason is listed, and the charge rides on the approval.
test_all_approve_reasons_are_listed_with_the_charge if {
	inp := fx.register("example.com", {"years": 3, "auto_renew": true})
	fx.expect(inp, "approve", ["domains.years", "domains.auto_renew"])
	fx.cents(inp) == 3132
}

# A denied request states no charge.
test_a_deny_carries_no_charge if {
	inp := fx.payment({"amount": "15000", "currency": "usd"})
	fx.expect(inp, "deny", ["spend.cap"])
	fx.no_charge(inp)
}

# The decision is defined for inputs the proxy would never build, and then it denies.
test_decision_is_defined_for_an_empty_input if {
	d := data.tollgate.decision with input as {}
	d.outcome == "deny"
}

test_decision_is_defined_for_a_nonsense_action if {
	d := data.tollgate.decision with input as {"action": {"name": 7, "risk": ["write"]}, "request": {"method": "POST", "path": "/x"}}
	d.outcome == "deny"
}

# Messages say what was wrong and what is allowed.
test_messages_name_what_is_allowed if {
	d := fx.decide(fx.register("example.xyz", {}))
	some r in d.reasons
	r.rule == "domains.tld"
	contains(r.message, ".xyz")
	contains(r.message, ".com")
}
