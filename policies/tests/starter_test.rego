package tollgate_test

import data.tollgate

read_input := {"action": {"name": "cloudflare.zone.read", "risk": "read", "params": {}},
	"request": {"method": "GET", "path": "/client/v4/zones"}}

test_reads_are_allowed if {
	tollgate.decision.outcome == "allow" with input as read_input
}

test_unknown_writes_are_denied if {
	d := tollgate.decision with input as {"action": {"name": "unknown", "risk": "write", "params": {}},
		"request": {"method": "POST", "path": "/client/v4/x"}}
	d.outcome == "deny"
	d.reasons[0].rule == "starter.unknown_write"
}

test_high_impact_needs_approval if {
	d := tollgate.decision with input as {"action": {"name": "cloudflare.token.create", "risk": "high", "params": {}},
		"request": {"method": "POST", "path": "/client/v4/user/tokens"}}
	d.outcome == "approve"
}

test_known_writes_are_allowed if {
	tollgate.decision.outcome == "allow" with input as {"action": {"name": "cloudflare.dns.create", "risk": "write", "params": {}},
		"request": {"method": "POST", "path": "/client/v4/zones/z/dns_records"}}
}
