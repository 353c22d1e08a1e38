# Cloudflare API tokens minted or rewritten through tollgate (cloudflare.token.create, cloudflare.token.update,
# on /user/tokens and /accounts/{account_id}/tokens).
#
# A token is a credential that outlives the request and bypasses tollgate entirely, so it must never carry
# more than the agent could do through tollgate: every permission group inside the agent's ceiling (by id:
# Cloudflare ignores the name sent beside it), no group that can mint tokens or grant access, only the
# accounts and zones the agent may change, no wildcards, a short life, and where required a source-IP
# condition. Rolling or deleting a token breaks whatever uses it, so a human approves those.
#
# Data: tokens/data.yaml (known permission groups, ceilings per agent / team / default, lifetime, request IP).
package tollgate.tokens

import data.tollgate.lib

token_writes := {"cloudflare.token.create", "cloudflare.token.update"}

# The actions this file judges.
applies if input.action.name in {
	"cloudflare.token.create",
	"cloudflare.token.update",
	"cloudflare.token.roll",
	"cloudflare.token.delete",
}

# The token document in the body (body.rego denies a token write whose body is unreadable).
token := input.request.body if {
	input.action.name in token_writes
	is_object(input.request.body)
}

policies := token.policies if is_array(token.policies)

# ---------------------------------------------------------------------------------------------------------
# The agent's ceiling: agents[name], else teams[team], else default; a field the entry leaves out comes from
# default.
# ---------------------------------------------------------------------------------------------------------

entry := [e, sprintf("agent '%s'", [input.agent.name])] if {
	e := data.tokens.agents[input.agent.name]
	is_object(e)
} else := [e, sprintf("team '%s'", [input.agent.team])] if {
	e := data.tokens.teams[input.agent.team]
	is_object(e)
} else := [{}, "default"]

setting(key) := v if {
	v := entry[0][key]
	v != null
} else := data.tokens["default"][key]

ceiling := c if {
	c := setting("groups")
	is_object(c)
} else := {}

ceiling_owner := sprintf("the ceiling of %s", [entry[1]]) if is_object(entry[0].groups)

else := "the default ceiling"

ceiling_names := concat(", ", sort([name | some _, name in ceiling])) if count(ceiling) > 0

else := "nothing"

max_lifetime := v if {
	v := setting("max_lifetime_seconds")
	lib.is_int(v)
} else := 0

# ---------------------------------------------------------------------------------------------------------
# Shape: the fields the checks below rely on must have the documented types, or the token is refused.
# ---------------------------------------------------------------------------------------------------------

deny contains {"rule": "tokens.malformed", "message": sprintf("%s: %s", [data.tollgate.lib.action_name, problem])} if {
	some problem in shape_problems
}

shape_problems contains "policies must be a non-empty list of {effect, resources, permission_groups}" if {
	token
	not non_empty_array(lib.get(token, "policies"))
}

shape_problems contains sprintf("status must be \"active\", \"disabled\" or \"expired\", not %s", [lib.show(token.status)]) if {
	lib.get(token, "status") != null
	not token.status in {"active", "disabled", "expired"}
}

shape_problems contains sprintf("policies[%d] must be an object, not %s", [i, lib.show(p)]) if {
	some i, p in policies
	not is_object(p)
}

shape_problems contains sprintf("policies[%d].effect must be \"allow\" or \"deny\", not %s", [i, lib.show(lib.get(p, "effect"))]) if {
	some i, p in policies
	is_object(p)
	not lib.get(p, "effect") in {"allow", "deny"}
}

shape_problems contains sprintf("policies[%d].permission_groups must be a non-empty list of {\"id\": ...}", [i]) if {
	some i, p in policies
	is_object(p)
	not non_empty_array(lib.get(p, "permission_groups"))
}

shape_problems contains sprintf("policies[%d].permission_groups[%d] must be an object with a string id, not %s", [i, j, lib.show(g)]) if {
	some i, p in policies
	is_array(p.permission_groups)
	some j, g in p.permission_groups
	not is_string(lib.get(g, "id"))
}

shape_problems contains sprintf("policies[%d].resources must be a non-empty object of resource -> \"*\"", [i]) if {
	some i, p in policies
	is_object(p)
	not non_empty_object(lib.get(p, "resources"))
}

shape_problems contains sprintf("policies[%d].resources[%s] must be \"*\" or an object of zone resources -> \"*\", not %s", [i, k, lib.show(v)]) if {
	some i, p in policies
	is_object(p.resources)
	some k, v in p.resources
	v != "*"
	not is_object(v)
}

shape_problems contains sprintf("policies[%d].resources[%s][%s] must be \"*\", not %s", [i, k, k2, lib.show(v2)]) if {
	some i, p in policies
	is_object(p.resources)
	some k, v in p.resources
	is_object(v)
	some k2, v2 in v
	v2 != "*"
}

non_empty_array(a) if {
	is_array(a)
	count(a) > 0
}

non_empty_object(o) if {
	is_object(o)
	count(o) > 0
}

# ---------------------------------------------------------------------------------------------------------
# Permission groups, by id
# ---------------------------------------------------------------------------------------------------------

requested contains id if {
	some p in policies
	is_array(p.permission_groups)
	some g in p.permission_groups
	id := g.id
	is_string(id)
}

# An id the policy does not know could be anything, including a token-minting group: outside every ceiling.
deny contains {"rule": "tokens.ceiling", "message": msg} if {
	some id in requested
	not data.tokens.permission_groups[id]
	msg := sprintf("permission group id %s is not a known group (tokens/data.yaml), so it is outside every ceiling; %s allows: %s", [id, ceiling_owner, ceiling_names])
}

# Every grantable group must be inside the agent's ceiling.
deny contains {"rule": "tokens.ceiling", "message": msg} if {
	some id in requested
	group := data.tokens.permission_groups[id]
	group.grantable == true
	not ceiling[id]
	msg := sprintf("permission group '%s' (%s) is above %s for %s, which allows: %s", [group.name, id, ceiling_owner, data.tollgate.lib.agent_desc, ceiling_names])
}

# Groups that can mint or edit tokens or grant account access are never granted: a token holding one could
# mint itself a token above any ceiling. The check is by id, whatever name the request sends.
deny contains {"rule": "tokens.escalation", "message": msg} if {
	some id in requested
	group := data.tokens.permission_groups[id]
	is_object(group)
	not lib.get(group, "grantable") == true
	msg := sprintf("permission group '%s' (%s) can mint or edit tokens or grant access, and is never granted to a token minted through tollgate", [group.name, id])
}

# ---------------------------------------------------------------------------------------------------------
# Resources: only the accounts and zones the agent may change (its `accounts` and `zones` labels), by id.
# ---------------------------------------------------------------------------------------------------------

zone_prefix := "com.cloudflare.api.account.zone."

account_prefix := "com.cloudflare.api.account."

user_prefix := "com.cloudflare.api.user."

# Every resource key, including zones nested under an account ({account: {zone: "*"}}).
resources contains k if {
	some p in policies
	is_object(p.resources)
	some k, _ in p.resources
}

resources contains k if {
	some p in policies
	is_object(p.resources)
	some _, nested in p.resources
	is_object(nested)
	some k, _ in nested
}

allowed_accounts := a if {
	a := data.tollgate.lib.agent_accounts
	is_set(a)
} else := set()

allowed_zones := z if {
	z := data.tollgate.lib.agent_zones
	is_set(z)
} else := set()

reach := sprintf("%s may change accounts [%s] and zones [%s]", [data.tollgate.lib.agent_desc, concat(", ", sort(allowed_accounts)), concat(", ", sort(allowed_zones))])

# A wildcard reaches every zone or account, present and future.
deny contains {"rule": "tokens.resources", "message": msg} if {
	some k in resources
	contains(k, "*")
	msg := sprintf("resource %s is a wildcard; name each account or zone by id (%s)", [k, reach])
}

# A user resource reaches every account the user belongs to.
deny contains {"rule": "tokens.resources", "message": msg} if {
	some k in resources
	not contains(k, "*")
	startswith(k, user_prefix)
	msg := sprintf("resource %s is a user: it reaches every account of that user; name accounts or zones by id instead (%s)", [k, reach])
}

deny contains {"rule": "tokens.resources", "message": msg} if {
	some k in resources
	not contains(k, "*")
	startswith(k, zone_prefix)
	zone := substring(k, count(zone_prefix), -1)
	not zone in allowed_zones
	msg := sprintf("resource %s: zone %s is not one the agent may change (%s)", [k, zone, reach])
}

deny contains {"rule": "tokens.resources", "message": msg} if {
	some k in resources
	not contains(k, "*")
	startswith(k, account_prefix)
	not startswith(k, zone_prefix)
	account := substring(k, count(account_prefix), -1)
	not account in allowed_accounts
	msg := sprintf("resource %s: account %s is not one the agent may change (%s)", [k, account, reach])
}

deny contains {"rule": "tokens.resources", "message": msg} if {
	some k in resources
	not contains(k, "*")
	not startswith(k, account_prefix)
	not startswith(k, user_prefix)
	msg := sprintf("resource %s is not a Cloudflare account or zone resource; use com.cloudflare.api.account.<id> or com.cloudflare.api.account.zone.<id> (%s)", [k, reach])
}

# ---------------------------------------------------------------------------------------------------------
# Lifetime and source addresses
# ---------------------------------------------------------------------------------------------------------

# The request time, which the proxy always sends as "2026-11-30T12:00:00Z". Its shape is checked (cheaply:
# it is not agent input) so that a malformed value is a tokens.expiry denial rather than a builtin error.
now_ns := time.parse_rfc3339_ns(input.now) if {
	is_string(input.now)
	count(input.now) == 20
	endswith(input.now, "Z")
	substring(input.now, 10, 1) == "T"
	substring(input.now, 4, 1) == "-"
	lib.digits(strings.replace_n({"-": "", "T": "", ":": ""}, trim_suffix(input.now, "Z")))
}

# A token must expire, soon: a leaked or forgotten token then dies on its own.
deny contains {"rule": "tokens.expiry", "message": msg} if {
	token
	lib.get(token, "expires_on") == null
	msg := sprintf("%s: expires_on is required: an RFC 3339 time such as 2026-12-01T12:00:00Z, at most %s hours after now", [data.tollgate.lib.action_name, lib.hours(max_lifetime)])
}

deny contains {"rule": "tokens.expiry", "message": msg} if {
	token
	e := lib.get(token, "expires_on")
	e != null
	not lib.rfc3339_ns(e)
	msg := sprintf("%s: expires_on must be an RFC 3339 date-time such as 2026-12-01T12:00:00Z, not %s", [data.tollgate.lib.action_name, lib.show(e)])
}

deny contains {"rule": "tokens.expiry", "message": msg} if {
	token
	expires := lib.rfc3339_ns(token.expires_on)
	(expires - now_ns) > (max_lifetime * 1000000000)
	msg := sprintf("%s: expires_on %s is %s hours after now; the most allowed for %s is %s hours", [data.tollgate.lib.action_name, token.expires_on, lib.hours((expires - now_ns) / 1000000000), data.tollgate.lib.agent_desc, lib.hours(max_lifetime)])
}

# Without a readable clock the lifetime cannot be checked: refuse rather than skip the check.
deny contains {"rule": "tokens.expiry", "message": msg} if {
	token
	not now_ns
	msg := sprintf("%s: the request time %s is not an RFC 3339 time, so the token's lifetime cannot be checked", [data.tollgate.lib.action_name, lib.show(object.get(input, "now", null))])
}

# Where data requires it, the token only works from listed source networks.
deny contains {"rule": "tokens.request_ip", "message": msg} if {
	token
	setting("require_request_ip") == true
	not request_ip_ok
	msg := sprintf("%s: tokens minted by %s must carry condition.request_ip.in, a list of source CIDRs such as 198.51.100.0/24 (not 0.0.0.0/0 or ::/0); got %s", [data.tollgate.lib.action_name, data.tollgate.lib.agent_desc, lib.show(object.get(object.get(token, "condition", {}), "request_ip", null))])
}

request_ip_ok if {
	cidrs := token.condition.request_ip["in"]
	non_empty_array(cidrs)
	count([c | some c in cidrs; not restrictive_cidr(c)]) == 0
}

# A CIDR or a single address, but not a /0 that matches everything.
restrictive_cidr(c) if {
	is_string(c)
	net.cidr_is_valid(c)
	not endswith(c, "/0")
}

restrictive_cidr(c) if {
	is_string(c)
	not contains(c, "/")
	net.cidr_is_valid(concat("", [c, "/32"]))
}

restrictive_cidr(c) if {
	is_string(c)
	not contains(c, "/")
	net.cidr_is_valid(concat("", [c, "/128"]))
}

# ---------------------------------------------------------------------------------------------------------
# Roll and delete
# ---------------------------------------------------------------------------------------------------------

# A roll issues a new secret and kills the old one at once: whatever still uses the old secret breaks.
approve contains {"rule": "tokens.roll", "message": msg} if {
	input.action.name == "cloudflare.token.roll"
	msg := sprintf("rolling token %v kills its current secret at once, breaking whatever still uses it; a human must approve it", [object.get(data.tollgate.lib.params, "token_id", "?")])
}

# Rewriting a token changes what whatever holds it can do: narrowing, expiring or disabling it cuts that off
# (like deleting it), re-enabling or widening it (within the ceiling) hands out more — and the token may be
# another agent's, or the very credential tollgate forwards with (`GET …/tokens/verify` shows its id).
# tollgate records the tokens minted through it (`input.minted_token`, null for a token it never saw minted,
# and it refuses by itself to rewrite a token another agent minted: `tollgate.token_owner`). An agent may
# rewrite a token it minted within the ceiling; any other update needs a human. The ceiling checks above still
# deny what no human may approve, and disabling needs a human either way (below).
approve contains {"rule": "tokens.update", "message": msg} if {
	input.action.name == "cloudflare.token.update"
	not own_token
	msg := sprintf("rewriting token %v changes or cuts off what its holder can do, and tollgate has no record that this agent minted it; a human must approve it", [object.get(data.tollgate.lib.params, "token_id", "?")])
}

# The token this call is about was minted through tollgate by this agent (or one of its handles).
own_token if lib.get(lib.get(input, "minted_token"), "minted_by_this_agent") == true

# Disabling (or expiring) a token through an update cuts off whatever uses it, exactly like deleting it.
approve contains {"rule": "tokens.disable", "message": msg} if {
	input.action.name == "cloudflare.token.update"
	status := lib.get(token, "status")
	is_string(status)
	status != "active"
	msg := sprintf("setting token %v to status %s cuts off whatever uses it, like deleting it; a human must approve it", [object.get(data.tollgate.lib.params, "token_id", "?"), lib.show(status)])
}

# A delete cannot be undone, and may cut off a running system.
approve contains {"rule": "tokens.delete", "message": msg} if {
	input.action.name == "cloudflare.token.delete"
	msg := sprintf("deleting token %v cannot be undone and cuts off whatever uses it; a human must approve it", [object.get(data.tollgate.lib.params, "token_id", "?")])
}
