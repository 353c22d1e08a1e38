# Agent scopes: which kinds of change an agent may make at all. Every write needs the scopes that
# actions/data.yaml lists for its action; reads need none. Scopes are granted when an agent is created
# (`tollgate agents create NAME --scope dns:write`), so this is the first, coarsest gate.
package tollgate.scopes

import data.tollgate.lib

# A write to a route outside the catalog is denied: tollgate cannot tell what it does, so no scope, price or
# ceiling can apply to it. (Reads of unknown routes are allowed by main.rego before this runs.)
deny contains {"rule": "scopes.unknown_route", "message": msg} if {
	input.action.name == "unknown"
	msg := sprintf("%v %v is not a route in the catalog (policies/catalog); writes are allowed only to catalogued routes, reads to any route", [input.request.method, input.request.path])
}

# A catalogued action that actions/data.yaml does not map is denied: adding a route to the catalog must not
# open it before someone has decided which scope it needs. (So is an input without an action name, which the
# proxy never builds.)
deny contains {"rule": "scopes.unmapped", "message": msg} if {
	not data.actions[action_name]
	action_name != "unknown"
	msg := sprintf("%s has no entry in actions/data.yaml, so no scope can allow it; writes are allowed only for mapped actions", [action_name])
}

action_name := input.action.name if is_string(input.action.name)

else := "a request without an action name"

# The agent must hold every scope the action needs (one reason per missing scope).
deny contains {"rule": "scopes.missing", "message": msg} if {
	some scope in data.actions[input.action.name].scopes
	not scope in data.tollgate.lib.agent_scopes
	msg := sprintf("%s needs scope %s, which %s does not hold (it holds: %s)", [data.tollgate.lib.action_name, scope, data.tollgate.lib.agent_desc, lib.listing(data.tollgate.lib.agent_scopes)])
}
