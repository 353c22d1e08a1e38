# The starter policy: reads pass, ordinary writes to known routes pass, high-impact and irreversible
# actions need a human, and writes to routes outside the catalog are denied.
#
# Entrypoint: data.tollgate.decision (see DESIGN.md, "Policy contract"). The full library (scopes, spend,
# domains, token ceilings) replaces this file.
package tollgate

decision := {"outcome": "allow", "reasons": []} if {
	input.action.risk == "read"
} else := {"outcome": "deny", "reasons": [{
	"rule": "starter.unknown_write",
	"message": sprintf("%s %s is not in the route catalog; writes to unknown routes are denied", [input.request.method, input.request.path]),
}]} if {
	input.action.name == "unknown"
} else := {"outcome": "approve", "reasons": [{
	"rule": "starter.high_impact",
	"message": sprintf("%s is %s: a human must approve it", [input.action.name, input.action.risk]),
}]} if {
	input.action.risk in {"high", "irreversible"}
} else := {"outcome": "allow", "reasons": []}
