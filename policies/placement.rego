# Where an agent may act: the Cloudflare accounts and zones it may change, from its labels
# (`--label accounts=acc1,acc2 --label zones=z1,z2`, comma-separated ids), and the Stripe connected accounts it
# may act on (`--label stripe_accounts=acct_1,acct_2`). An agent trusted with DNS in one zone must not be able
# to change another team's zone or account, nor move money on another connected account. Reads are not
# restricted (main.rego allows them first); an agent without the label may change no account (or zone) at all,
# and on Stripe may act only on the platform account itself (no Stripe-Account / Stripe-Context header).
#
# The ids come from the path (input.action.params: account_id, zone_id), and for zone.create from the body,
# which names the account the zone is created in. A token's own resources are checked in tokens.rego.
package tollgate.placement

import data.tollgate.lib

# The account in the path (tokens, registrar, Workers, subscriptions ...).
deny contains {"rule": "placement.account", "message": msg} if {
	account := input.action.params.account_id
	is_string(account)
	not lib.listed("accounts", account)
	msg := outside("account", account, "accounts", allowed_accounts)
}

# The account a new zone is created in (named in the body).
deny contains {"rule": "placement.account", "message": msg} if {
	input.action.name == "cloudflare.zone.create"
	account := data.tollgate.lib.body.account.id
	is_string(account)
	not lib.listed("accounts", account)
	msg := outside("account", account, "accounts", allowed_accounts)
}

deny contains {"rule": "placement.zone", "message": msg} if {
	zone := input.action.params.zone_id
	is_string(zone)
	not lib.listed("zones", zone)
	msg := outside("zone", zone, "zones", allowed_zones)
}

# zone.create must name the account it creates the zone in, as a string id.
deny contains {"rule": "placement.account", "message": msg} if {
	input.action.name == "cloudflare.zone.create"
	data.tollgate.lib.body
	not is_string(lib.get(lib.get(data.tollgate.lib.body, "account"), "id"))
	msg := sprintf("cloudflare.zone.create must name the account as account.id (a string); got account %s", [lib.show(lib.get(data.tollgate.lib.body, "account"))])
}

# A Stripe write on a connected account: `Stripe-Account: acct_…` (or a `Stripe-Context`) makes Stripe act on
# that account, so the value must be one the agent's stripe_accounts label lists, exactly as sent.
deny contains {"rule": "placement.stripe_account", "message": msg} if {
	input.request.provider == "stripe"
	some header in ["stripe-account", "stripe-context"]
	account := input.request.headers[header]
	is_string(account)
	not lib.listed("stripe_accounts", account)
	msg := stripe_outside(header, account)
}

stripe_outside(header, account) := sprintf("%s acts on connected account %s (%s), but %s has no 'stripe_accounts' label, so it may act only on the platform account; give it --label stripe_accounts=<acct ids>", [data.tollgate.lib.action_name, account, header, data.tollgate.lib.agent_desc]) if {
	not input.agent.labels.stripe_accounts
} else := sprintf("%s acts on connected account %s (%s), which is not among the accounts %s may act on (%s)", [data.tollgate.lib.action_name, account, header, data.tollgate.lib.agent_desc, lib.listing(stripe_accounts)])

stripe_accounts := a if {
	a := data.tollgate.lib.label_set("stripe_accounts")
	is_set(a)
} else := set()

allowed_accounts := a if {
	a := data.tollgate.lib.agent_accounts
	is_set(a)
} else := set()

allowed_zones := z if {
	z := data.tollgate.lib.agent_zones
	is_set(z)
} else := set()

outside(kind, id, label, allowed) := sprintf("%s changes %s %s, but %s has no '%s' label, so it may change no %s; give it --label %s=<ids>", [data.tollgate.lib.action_name, kind, id, data.tollgate.lib.agent_desc, label, kind, label]) if {
	not input.agent.labels[label]
} else := sprintf("%s changes %s %s, which is not among the %ss %s may change (%s)", [data.tollgate.lib.action_name, kind, id, kind, data.tollgate.lib.agent_desc, lib.listing(allowed)])
