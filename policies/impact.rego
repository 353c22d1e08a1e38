# High-impact changes: allowed for an agent that holds the scope, but only after a human has looked. These are
# the changes whose mistakes are outages, hijacks or losses that no later request can undo: mail and
# delegation records, the zone apex, deletes (Stripe customers and products too), bulk DNS, DNSSEC,
# certificates, production Workers.
#
# Data: impact/data.yaml (record types, zone names, production Worker scripts).
package tollgate.impact

import data.tollgate.lib

# The actions this file judges.
applies if input.action.name in {
	"cloudflare.dns.create", "cloudflare.dns.update", "cloudflare.dns.delete", "cloudflare.dns.batch",
	"cloudflare.dns.import", "cloudflare.dnssec.change", "cloudflare.cert.pack.order",
	"cloudflare.cert.custom.upload", "cloudflare.cert.custom.change", "cloudflare.cert.origin.revoke",
	"cloudflare.zone.delete", "cloudflare.worker.delete", "cloudflare.account.delete",
	"cloudflare.account.subscription", "cloudflare.worker.deploy", "cloudflare.worker.rollout",
	"stripe.customer.delete", "stripe.product.delete", "stripe.payment.cancel", "stripe.subscription.cancel",
}

# What main.rego reads. DNS record writes are judged by the record rules only, every other action by the
# per-action rules only, so that each request evaluates just the rules that can apply to it.
# (The record writes are spelled out rather than named by a helper rule: on the VM a rule costs about as
# much as everything else a DNS create runs here; see README.md, "Cost".)
approve := record_approvals if input.action.name in {"cloudflare.dns.create", "cloudflare.dns.update"}

else := action_approvals

deny := record_denials if input.action.name in {"cloudflare.dns.create", "cloudflare.dns.update"}

else := set()

# ---------------------------------------------------------------------------------------------------------
# DNS records (create, update)
# ---------------------------------------------------------------------------------------------------------

# The record a create or update writes (body.rego denies a record write whose body is not an object). Only
# the record rules read it, and only deny and approve above call those, for record writes.
record := input.request.body if is_object(input.request.body)

# NS moves the zone's delegation, MX its mail, CAA who may issue its certificates: each is a takeover lever.
record_approvals contains {"rule": "impact.dns_record_type", "message": msg} if {
	type := object.get(record, "type", null)
	is_string(type)
	data.impact.dns.approve_types[upper(type)] == true
	msg := sprintf("%s of a %s record: changes to %s records need a human", [data.tollgate.lib.action_name, upper(type), concat(", ", sort(object.keys(data.impact.dns.approve_types)))])
}

# The apex carries the zone's own address and mail: changing it changes the whole site. The apex is "@" or
# the zone's own name when impact/data.yaml knows it ...
record_approvals contains {"rule": "impact.dns_apex", "message": msg} if {
	record_name in {"@", object.get(data.impact.dns.zone_names, object.get(data.tollgate.lib.params, "zone_id", ""), "@")}
	msg := apex_message
}

# ... and otherwise any two-label name ("example.com"), the apex of a zone under a one-label TLD.
record_approvals contains {"rule": "impact.dns_apex", "message": msg} if {
	is_string(record_name)
	not data.impact.dns.zone_names[object.get(data.tollgate.lib.params, "zone_id", "")]
	count(split(record_name, ".")) == 2
	msg := apex_message
}

# The record's name, lower case, without a trailing dot ("Example.COM." -> "example.com").
record_name := trim_suffix(lower(name), ".") if {
	name := object.get(record, "name", null)
	is_string(name)
}

apex_message := sprintf("%s of %s, the zone apex: changes to the apex need a human", [data.tollgate.lib.action_name, record.name])

# A PATCH may leave the type or the name out; then the policy cannot tell which record it changes. (A create
# or a PUT without them is refused by Cloudflare itself.)
record_approvals contains {"rule": rule, "message": msg} if {
	input.request.method == "PATCH"
	some field, rule in {"type": "impact.dns_record_type", "name": "impact.dns_apex"}
	object.get(record, field, null) == null
	msg := sprintf("%s does not say the record %s, so it could change an NS, MX or CAA record or the zone apex; include \"%s\", or have a human approve it", [data.tollgate.lib.action_name, field, field])
}

# Both must be strings when present: a type of 1 or a name of ["www"] is refused, not guessed at.
record_denials contains {"rule": "impact.dns_record", "message": msg} if {
	record
	not is_string(object.get(record, "type", ""))
	msg := sprintf("%s: type must be a string such as \"A\" or \"CNAME\", not %s", [data.tollgate.lib.action_name, lib.show(record.type)])
}

record_denials contains {"rule": "impact.dns_record", "message": msg} if {
	record
	not is_string(object.get(record, "name", ""))
	msg := sprintf("%s: name must be a string such as \"www.example.com\", not %s", [data.tollgate.lib.action_name, lib.show(record.name)])
}

# ---------------------------------------------------------------------------------------------------------
# Other DNS changes
# ---------------------------------------------------------------------------------------------------------

# A delete cannot be undone by the agent: the record's content is gone.
action_approvals contains {"rule": "impact.dns_delete", "message": msg} if {
	input.action.name == "cloudflare.dns.delete"
	msg := sprintf("deleting DNS record %v in zone %v needs a human", [object.get(data.tollgate.lib.params, "dns_record_id", "?"), object.get(data.tollgate.lib.params, "zone_id", "?")])
}

# Many changes in one call (or a whole zone file) are too many to judge record by record.
action_approvals contains {"rule": "impact.dns_bulk", "message": msg} if {
	input.action.name in {"cloudflare.dns.batch", "cloudflare.dns.import"}
	msg := sprintf("%s changes many records at once; bulk DNS changes need a human", [data.tollgate.lib.action_name])
}

# A wrong DNSSEC state makes the zone unresolvable for validating resolvers.
action_approvals contains {"rule": "impact.dnssec", "message": msg} if {
	input.action.name == "cloudflare.dnssec.change"
	msg := sprintf("%s %s changes DNSSEC, which can make the zone unresolvable; a human must approve it", [input.request.method, input.request.path])
}

# ---------------------------------------------------------------------------------------------------------
# Certificates
# ---------------------------------------------------------------------------------------------------------

# Ordering (paid), uploading (a private key), replacing or removing a certificate, or revoking an origin
# certificate can break TLS for every visitor or origin.
certificate_actions := {
	"cloudflare.cert.pack.order",
	"cloudflare.cert.custom.upload",
	"cloudflare.cert.custom.change",
	"cloudflare.cert.origin.revoke",
}

action_approvals contains {"rule": "impact.certificates", "message": msg} if {
	input.action.name in certificate_actions
	msg := sprintf("%s changes the certificates visitors or origins rely on; a human must approve it", [data.tollgate.lib.action_name])
}

# ---------------------------------------------------------------------------------------------------------
# Deletes of whole things, subscriptions, production Workers
# ---------------------------------------------------------------------------------------------------------

# A Stripe customer is deleted for good, and its active subscriptions are cancelled at once (Stripe's API
# reference); a product can be deleted only while no price uses it, and cannot be restored either.
deletes := {
	"cloudflare.zone.delete", "cloudflare.worker.delete", "cloudflare.account.delete",
	"stripe.customer.delete", "stripe.product.delete", "stripe.payment.cancel",
}

action_approvals contains {"rule": "impact.delete", "message": msg} if {
	input.action.name in deletes
	msg := sprintf("%s (%s) cannot be undone%s; a human must approve it", [data.tollgate.lib.action_name, input.request.path, object.get(delete_effects, data.tollgate.lib.action_name, "")])
}

# What else a delete does, for its message.
delete_effects := {"stripe.customer.delete": ", and Stripe cancels the customer's active subscriptions at once"}

# Cancelling a subscription (e.g. Workers Paid) can take down whatever relied on the paid plan.
action_approvals contains {"rule": "impact.subscription_cancel", "message": msg} if {
	input.action.name == "cloudflare.account.subscription"
	input.request.method == "DELETE"
	msg := sprintf("cancelling subscription %v may take down what depends on it; a human must approve it", [object.get(data.tollgate.lib.params, "subscription_id", input.request.path)])
}

# A Stripe subscription cancelled stops what the customer pays for at once (`invoice_now` also bills what is
# pending).
action_approvals contains {"rule": "impact.subscription_cancel", "message": msg} if {
	input.action.name == "stripe.subscription.cancel"
	msg := sprintf("cancelling Stripe subscription %v stops the service it pays for at once; a human must approve it", [object.get(data.tollgate.lib.params, "subscription_id", input.request.path)])
}

# A deploy or rollout to a production script serves live traffic at once.
action_approvals contains {"rule": "impact.production_worker", "message": msg} if {
	input.action.name in {"cloudflare.worker.deploy", "cloudflare.worker.rollout"}
	script := input.action.params.script_name
	production(input.action.params.account_id, script)
	msg := sprintf("%s to Worker %s, which impact/data.yaml labels production; a human must approve it", [data.tollgate.lib.action_name, script])
}

production(_, script) if data.impact.workers.labels[script] == "production"

production(account, script) if data.impact.workers.labels[concat("/", [account, script])] == "production"
