# Domain registration (cloudflare.domain.register, cloudflare.domain.transfer_in) and the registrar settings
# that commit future money (auto-renew) or ease a transfer away (the registrar lock).
#
# A registration is charged at once and is NON-REFUNDABLE, and a domain that imitates a brand is a phishing
# asset with the company's name on the invoice. So: only allowed TLDs, no look-alikes of protected brands,
# multi-year terms and auto-renew only with a human, transfers-in always with a human.
# The scope (registrar:register) is checked by scopes.rego; the price by spend.rego.
#
# The domain arrives canonical in input.action.params.domain_name (lower case, no trailing dot, IDNA punycode).
# Data: domains/data.yaml.
package tollgate.domains

import data.tollgate.lib

registrations := {"cloudflare.domain.register", "cloudflare.domain.transfer_in"}

# The actions this file judges.
applies if input.action.name in renewal_settings

# Actions that can set auto_renew.
renewal_settings := {
	"cloudflare.domain.register",
	"cloudflare.domain.transfer_in",
	"cloudflare.domain.update",
	"cloudflare.domain.legacy_update",
}

# ---------------------------------------------------------------------------------------------------------
# The name
# ---------------------------------------------------------------------------------------------------------

# The domain being registered or transferred, when it is a plausible canonical name.
domain := d if {
	input.action.name in registrations
	d := input.action.params.domain_name
	is_string(d)
	count(d) <= 253
	parts := split(d, ".")
	count(parts) >= 2
	count([p | some p in parts; not ldh_label(p)]) == 0
}

# A DNS label in canonical form: 1-63 of a-z, 0-9 and "-" (punycode labels included).
ldh_label(p) if {
	p != ""
	count(p) <= 63
	trim(p, "abcdefghijklmnopqrstuvwxyz0123456789-") == ""
}

labels := split(domain, ".")

# The label being registered ("example" in example.com) and the suffix it is registered under ("com").
label := labels[0]

suffix := concat(".", array.slice(labels, 1, count(labels)))

deny contains {"rule": "domains.name", "message": msg} if {
	input.action.name in registrations
	not domain
	msg := sprintf("%s needs a domain name in canonical form (e.g. example.com); got %s", [data.tollgate.lib.action_name, lib.show(object.get(data.tollgate.lib.params, "domain_name", null))])
}

# Only allow-listed suffixes: cheap, well-known TLDs the company actually uses. Exotic or premium TLDs are
# where look-alikes and price surprises live.
deny contains {"rule": "domains.tld", "message": msg} if {
	tld := suffix
	is_string(tld)
	not data.domains.allowed_tlds[tld] == true
	allowed := sort([t | some t, on in data.domains.allowed_tlds; on == true])
	msg := sprintf("%s: names under .%s may not be registered; allowed: .%s", [domain, tld, concat(", .", allowed)])
}

# Names that imitate a protected brand are denied, exact domains in allowed_names excepted. The comparison
# (domains/data.yaml, protected_brands): `contains` finds the folded brand anywhere in the folded label,
# `prefix` at its start or as one of its hyphen-separated parts.
deny contains {"rule": "domains.brand", "message": msg} if {
	hits := sort(imitated_brands)
	count(hits) > 0
	msg := sprintf("%s imitates the protected brand %s (look-alike digits, hyphens, doubled letters and added words count); register a name that imitates no brand in domains/data.yaml, or list the exact domain in allowed_names", [domain, concat(", ", hits)])
}

imitated_brands contains brand if {
	is_string(label)
	not data.domains.allowed_names[domain] # lint: defined (label, a string, is split from domain)
	some brand, folded in brand_folds
	data.domains.protected_brands[brand].match != "prefix"
	contains(folded_label, folded)
}

# prefix: the label starts with the brand, or one of its hyphen-separated parts is the brand.
imitated_brands contains brand if {
	is_string(label)
	not data.domains.allowed_names[domain] # lint: defined (label, a string, is split from domain)
	some brand, folded in brand_folds
	data.domains.protected_brands[brand].match == "prefix"
	startswith(folded_label, folded)
}

imitated_brands contains brand if {
	is_string(label)
	not data.domains.allowed_names[domain] # lint: defined (label, a string, is split from domain)
	some brand, folded in brand_folds
	data.domains.protected_brands[brand].match == "prefix"
	folded in folded_parts
}

# Every brand folded: from data when given (tests/data_test.rego checks the value), else folded here.
brand_folds[brand] := folded if {
	some brand, protected in data.domains.protected_brands
	folded := protected.folded
	is_string(folded)
}

brand_folds[brand] := fold(brand) if {
	some brand, protected in data.domains.protected_brands
	not is_string(lib.get(protected, "folded"))
}

folded_label := fold(label)

# The label's hyphen-separated parts, each folded.
folded_parts := {fold(part) | some part in split(label, "-")}

# fold(s): s with look-alike characters and letter groups replaced and doubled letters collapsed, so that
# "paypa1", "pay-pal" and "paypall" all read "paypal" (see lookalike in domains/data.yaml).
fold(s) := collapse(collapse(collapse(strings.replace_n(data.domains.lookalike.sequences, strings.replace_n(data.domains.lookalike.characters, s)))))

collapse(s) := strings.replace_n(data.domains.lookalike.collapse, s)

# Internationalized labels (punycode) can imitate a brand with letters of other scripts, which the folding
# above cannot see: a human looks at them, or they are refused (idn_labels in domains/data.yaml).
approve contains {"rule": "domains.idn", "message": msg} if {
	startswith(label, "xn--")
	data.domains.idn_labels != "deny"
	msg := sprintf("%s is an internationalized name (punycode); the look-alike check cannot read it, so a human must approve it", [domain])
}

deny contains {"rule": "domains.idn", "message": msg} if {
	startswith(label, "xn--")
	data.domains.idn_labels == "deny"
	msg := sprintf("%s is an internationalized name (punycode); domains/data.yaml refuses those (idn_labels: deny); register an ASCII name", [domain])
}

# ---------------------------------------------------------------------------------------------------------
# Term, renewal, transfer
# ---------------------------------------------------------------------------------------------------------

# The registration term: `years`, 1 when absent. Undefined when it is not a whole number in range (denied
# below); spend.rego prices from it.
years := 1 if {
	input.action.name == "cloudflare.domain.register"
	lib.get(data.tollgate.lib.body, "years") == null
} else := y if {
	input.action.name == "cloudflare.domain.register"
	y := data.tollgate.lib.body.years
	lib.is_int(y)
	y >= 1
	y <= data.domains.max_years
}

deny contains {"rule": "domains.years", "message": msg} if {
	input.action.name == "cloudflare.domain.register"
	y := lib.get(data.tollgate.lib.body, "years")
	y != null
	not lib.is_int(y)
	msg := sprintf("years must be a whole number from 1 to %d (a JSON number), not %s", [data.domains.max_years, lib.show(y)])
}

deny contains {"rule": "domains.years", "message": msg} if {
	input.action.name == "cloudflare.domain.register"
	y := data.tollgate.lib.body.years
	lib.is_int(y)
	not in_range(y)
	msg := sprintf("years must be from 1 to %d, not %v", [data.domains.max_years, y])
}

in_range(y) if {
	y >= 1
	y <= data.domains.max_years
}

# Every year past the first is more non-refundable money committed now.
approve contains {"rule": "domains.years", "message": msg} if {
	years > data.domains.approve_years_above
	msg := sprintf("%s for %d years: registrations longer than %d year(s) need a human", [domain, years, data.domains.approve_years_above])
}

# auto_renew: true authorizes Cloudflare to charge the account every year before the domain expires, at
# renewal prices that may change. It must be a JSON boolean.
deny contains {"rule": "domains.auto_renew", "message": msg} if {
	input.action.name in renewal_settings
	a := lib.get(data.tollgate.lib.body, "auto_renew")
	a != null
	not is_boolean(a)
	msg := sprintf("auto_renew must be true or false (a JSON boolean), not %s", [lib.show(a)])
}

approve contains {"rule": "domains.auto_renew", "message": msg} if {
	input.action.name in renewal_settings
	data.tollgate.lib.body.auto_renew == true
	msg := sprintf("%s sets auto_renew: true, which authorizes Cloudflare to charge the account every year before the domain expires, at renewal prices that may change; a human must approve it (%s)", [data.tollgate.lib.action_name, renewal_alternative])
}

# What the agent can send instead: on a registration or transfer-in, leaving auto_renew out is the same as
# false when Cloudflare defaults to no auto-renew (domains/data.yaml, auto_renew_when_absent).
renewal_alternative := "send auto_renew: false, or leave it out: Cloudflare then does not renew" if {
	input.action.name in registrations
	data.domains.auto_renew_when_absent == false
} else := "send auto_renew: false to avoid this"

# An absent auto_renew is what Cloudflare defaults to. Its reference says false for registrations and
# transfers-in, and then nothing here applies; when domains/data.yaml says Cloudflare defaults to true, an
# absent auto_renew commits the same yearly charge as an explicit true.
approve contains {"rule": "domains.auto_renew", "message": msg} if {
	input.action.name in registrations
	data.domains.auto_renew_when_absent == true
	data.tollgate.lib.body
	lib.get(data.tollgate.lib.body, "auto_renew") == null
	msg := sprintf("%s does not set auto_renew, and domains/data.yaml (auto_renew_when_absent: true) says Cloudflare then renews the domain and charges the account every year; send auto_renew: false, or have a human approve it", [data.tollgate.lib.action_name])
}

# A transfer-in moves a domain (and its billing) into the account, is billed and cannot be refunded once the
# registry accepts it; which domain, and whether the company owns it, is for a human to judge.
approve contains {"rule": "domains.transfer_in", "message": msg} if {
	input.action.name == "cloudflare.domain.transfer_in"
	msg := sprintf("transferring %s into the account is billed and irreversible; a human must approve every transfer-in", [object.get(data.tollgate.lib.params, "domain_name", "a domain")])
}

# Turning the registrar lock off (legacy API) lets the domain be transferred away.
approve contains {"rule": "domains.unlock", "message": msg} if {
	input.action.name == "cloudflare.domain.legacy_update"
	data.tollgate.lib.body.locked == false
	msg := sprintf("unlocking %s lets it be transferred to another registrar; a human must approve it", [object.get(data.tollgate.lib.params, "domain_name", "the domain")])
}

deny contains {"rule": "domains.unlock", "message": msg} if {
	input.action.name == "cloudflare.domain.legacy_update"
	l := lib.get(data.tollgate.lib.body, "locked")
	l != null
	not is_boolean(l)
	msg := sprintf("locked must be true or false (a JSON boolean), not %s", [lib.show(l)])
}
