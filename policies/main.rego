# tollgate's policy library: the entrypoint, and how the concerns combine into one decision.
#
# Entrypoint: data.tollgate.decision (DESIGN.md, "Policy contract"). It is always defined:
#   {"outcome": "allow" | "deny" | "approve", "reasons": [{"rule", "message"}], "charge"?: {...}}
#
# Each concern lives in its own file and package and contributes reasons to two sets, `deny` and `approve`:
#   body.rego       tollgate.body       a write whose body the policy needs but could not read
#   scopes.rego     tollgate.scopes     agent scopes per action; unknown routes
#   placement.rego  tollgate.placement  the Cloudflare accounts and zones an agent may change
#   spend.rego      tollgate.spend      the charge, its budget and cap; thresholds; unpriced money
#   domains.rego    tollgate.domains    registration: TLDs, brands, years, auto-renew, transfers
#   tokens.rego     tollgate.tokens     token ceilings, resources, expiry, request IP; roll and delete
#   impact.rego     tollgate.impact     high-impact changes that need a human
#   billing.rego    tollgate.billing    Stripe customers, products, prices: parameters that steer money
# Shared helpers are in lib.rego; prices, caps, ceilings, TLDs, brands and the action table in data/.
# Before editing any rule, read README.md, "Writing rules that run on the bytecode VM": the live engine is
# regorus's RVM, and it differs from the interpreter the tests run on.
#
# Precedence: any deny reason -> deny (every deny reason listed); else any approve reason -> approve (every
# approve reason listed); else allow. The charge rides on allow and approve (an approved request reserves it
# when it executes); a denied request spends nothing.
package tollgate

# Reads change nothing and cost nothing: they are allowed before any other rule runs, so a read evaluates this
# one comparison. (Risk comes from the route catalog; an unknown GET is a read, an unknown POST a write.)
# spend.charge is defined for money actions the policy could price; it is attached to approve and allow.
# (spend.applies first: it is already known from `denials`, and so a write that spends nothing skips the
# charge rule.)
# (`denials != set()` rather than `some _ in denials`: see README.md, rule 3 for the bytecode VM.)
decision := {"outcome": "allow", "reasons": []} if {
	input.action.risk == "read"
} else := {"outcome": "deny", "reasons": [r | some r in denials]} if {
	denials != set()
} else := object.union(verdict, {"charge": data.tollgate.spend.charge}) if {
	data.tollgate.spend.applies
	data.tollgate.spend.charge
} else := verdict

verdict := {"outcome": "approve", "reasons": [r | some r in approvals]} if {
	approvals != set()
} else := {"outcome": "allow", "reasons": []}

# Sets of {"rule", "message"}: iteration is in sorted order, so the reason lists are stable.
#
# Body, scopes and placement apply to every write. The other concerns each say which actions they judge
# (`applies`), and are not evaluated at all for the others: this runs on every request.
denials contains r if some r in data.tollgate.body.deny

denials contains r if some r in data.tollgate.scopes.deny

denials contains r if some r in data.tollgate.placement.deny

denials contains r if {
	data.tollgate.spend.applies
	some r in data.tollgate.spend.deny
}

denials contains r if {
	data.tollgate.domains.applies
	some r in data.tollgate.domains.deny
}

denials contains r if {
	data.tollgate.tokens.applies
	some r in data.tollgate.tokens.deny
}

denials contains r if {
	data.tollgate.impact.applies
	some r in data.tollgate.impact.deny
}

denials contains r if {
	data.tollgate.billing.applies
	some r in data.tollgate.billing.deny
}

approvals contains r if {
	data.tollgate.spend.applies
	some r in data.tollgate.spend.approve
}

approvals contains r if {
	data.tollgate.domains.applies
	some r in data.tollgate.domains.approve
}

approvals contains r if {
	data.tollgate.tokens.applies
	some r in data.tollgate.tokens.approve
}

approvals contains r if {
	data.tollgate.impact.applies
	some r in data.tollgate.impact.approve
}

approvals contains r if {
	data.tollgate.billing.applies
	some r in data.tollgate.billing.approve
}
