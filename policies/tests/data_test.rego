# The data files are policy too: a typo there opens or closes things as surely as one in a rule. These tests
# check their shape, so that a bad edit fails `tollgate policy test` (and the bundle is not swapped in)
# instead of changing decisions silently.
package tollgate_test.data

known_scopes := {
	"dns:write", "zones:manage", "registrar:register", "tokens:create",
	"workers:deploy", "certs:manage", "billing:spend", "accounts:manage", "credentials:export",
}

# --- actions/data.yaml ---------------------------------------------------------------------------------

bad_actions contains name if {
	some name, entry in data.actions
	not good_action(entry)
}

good_action(entry) if {
	is_array(entry.scopes)
	count([s | some s in entry.scopes; not s in known_scopes]) == 0
	object.get(entry, "body", "required") in {"required", "readable"}
	is_boolean(object.get(entry, "money", false))
	count(object.keys(entry) - {"scopes", "body", "money"}) == 0
}

test_every_action_entry_is_well_formed if count(bad_actions) == 0

test_a_bad_action_entry_is_caught if {
	bad := bad_actions with data.actions as {"x.write": {"scopes": ["dns:wirte"]}, "y.write": {"scopes": [], "body": "sometimes"}, "z.write": {"scope": ["dns:write"]}}
	bad == {"x.write", "y.write", "z.write"}
}

# Every action the catalog defines is mapped (the list mirrors policies/catalog/*/data.yaml).
catalog_actions := {
	"cloudflare.token.read", "cloudflare.token.create", "cloudflare.token.update", "cloudflare.token.roll",
	"cloudflare.token.delete", "cloudflare.token.verify", "cloudflare.token.permission_groups",
	"cloudflare.credential.read",
	"cloudflare.domain.read", "cloudflare.domain.search", "cloudflare.domain.check", "cloudflare.domain.register",
	"cloudflare.domain.update", "cloudflare.domain.transfer_in", "cloudflare.domain.legacy_update",
	"cloudflare.zone.read", "cloudflare.zone.create", "cloudflare.zone.delete", "cloudflare.zone.plan",
	"cloudflare.subscription.read", "cloudflare.dns.read", "cloudflare.dns.create", "cloudflare.dns.batch",
	"cloudflare.dns.import", "cloudflare.dns.update", "cloudflare.dns.delete", "cloudflare.dnssec.read",
	"cloudflare.dnssec.change", "cloudflare.account.subscription", "cloudflare.cert.read",
	"cloudflare.cert.pack.order", "cloudflare.cert.custom.upload", "cloudflare.cert.custom.change",
	"cloudflare.cert.origin.create", "cloudflare.cert.origin.revoke", "cloudflare.worker.read",
	"cloudflare.worker.deploy", "cloudflare.worker.version", "cloudflare.worker.rollout",
	"cloudflare.worker.delete", "cloudflare.account.read", "cloudflare.account.create",
	"cloudflare.account.delete", "stripe.payment.create", "stripe.payment.confirm", "stripe.payment.capture",
	"stripe.payment.cancel", "stripe.subscription.cancel",
	"stripe.subscription.create", "stripe.subscription.update", "stripe.checkout.create", "stripe.invoice.item",
	"stripe.invoice.create", "stripe.invoice.finalize", "stripe.invoice.pay", "stripe.payment_link.create",
	"stripe.payment_link.update", "stripe.read", "stripe.credential.read", "stripe.customer.create", "stripe.customer.update",
	"stripe.customer.delete", "stripe.product.create", "stripe.product.update", "stripe.product.delete",
	"stripe.price.create", "stripe.price.update",
}

test_every_catalog_action_is_mapped if {
	catalog_actions == {name | some name, _ in data.actions}
}

# Every write the catalog defines needs at least one scope (reads need none).
test_every_write_needs_a_scope if {
	reads := {name | some name in catalog_actions; data.tollgate_test.fixtures.risks[name] == "read"}
	unscoped := {name | some name in catalog_actions; not name in reads; count(data.actions[name].scopes) == 0}
	count(unscoped) == 0
	count({name | some name in reads; count(data.actions[name].scopes) > 0}) == 0
}

# --- budgets/data.yaml ---------------------------------------------------------------------------------

good_budget(entry) if {
	object.get(entry, "budget", "agent-provider-month") in {"agent-provider-month", "team-provider-month"}
	cents_or_absent(entry, "cap_cents")
	cents_or_absent(entry, "approve_above_cents")
}

cents_or_absent(entry, key) if not key in object.keys(entry)

cents_or_absent(entry, key) if {
	is_number(entry[key])
	entry[key] == floor(entry[key])
	entry[key] >= 0
}

test_budget_default_is_complete if {
	d := data.budgets["default"]
	good_budget(d)
	object.keys(d) == {"budget", "cap_cents", "approve_above_cents"}
	d.budget == "agent-provider-month"
}

test_budget_overrides_are_well_formed if {
	count([n | some n, e in data.budgets.teams; not good_budget(e)]) == 0
	count([n | some n, e in data.budgets.agents; not good_budget(e)]) == 0
}

# --- prices/data.yaml ----------------------------------------------------------------------------------

whole_cents(x) if {
	is_number(x)
	x == floor(x)
	x >= 0
}

test_domain_prices_are_whole_cents if {
	count([t | some t, p in data.prices.domains; some _, c in p; not whole_cents(c)]) == 0
	count([t | some t, p in data.prices.domains; not whole_cents(data.tollgate.lib.get(p, "registration_cents"))]) == 0
	count([t | some t, p in data.prices.domains; not whole_cents(data.tollgate.lib.get(p, "renewal_cents"))]) == 0
}

test_plan_prices_are_whole_cents if {
	count([1 | some _, plan in data.prices.zone_plans; some _, c in plan; not whole_cents(c)]) == 0
	count([1 | some _, plan in data.prices.account_plans; some _, c in plan; not whole_cents(c)]) == 0
	is_string(data.prices.default_frequency)
}

test_stripe_prices_and_rates_are_numbers if {
	count([1 | some _, p in data.prices.stripe_prices; not whole_cents(data.tollgate.lib.get(p, "unit_amount_cents"))]) == 0
	count([1 | some c, r in data.prices.currency_rates; not positive_rate(c, r)]) == 0
	whole_cents(data.prices.checkout_adjustable_max)
}

# Shipping rates by id: exactly {amount_cents: whole cents}.
test_stripe_shipping_rates_are_whole_cents if {
	count([id | some id, r in data.prices.stripe_shipping_rates; not good_shipping_rate(r)]) == 0
}

good_shipping_rate(r) if {
	is_object(r)
	object.keys(r) == {"amount_cents"}
	whole_cents(r.amount_cents)
}

# The tax ceiling is a fraction >= 0; a ceiling below the highest rate in use undercounts, so it should be
# generous (a fraction above 1 would be a typo for a percentage).
test_max_tax_rate_is_a_fraction if {
	is_number(data.prices.max_tax_rate)
	data.prices.max_tax_rate >= 0
	data.prices.max_tax_rate <= 1
}

# A Stripe price says how it bills: interval day/week/month/year (interval_count an integer >= 1, default 1),
# or one-time (one_time: true, or interval: null); or nothing, and then it cannot be a subscription's price.
bad_stripe_prices contains id if {
	some id, p in data.prices.stripe_prices
	not good_stripe_price(p)
}

good_stripe_price(p) if {
	is_object(p)
	whole_cents(p.unit_amount_cents)
	count(object.keys(p) - {"unit_amount_cents", "interval", "interval_count", "one_time"}) == 0
	object.get(p, "interval", null) in {null, "day", "week", "month", "year"}
	interval_count_ok(object.get(p, "interval_count", 1))
	is_boolean(object.get(p, "one_time", false))
	not one_time_with_interval(p)
}

interval_count_ok(c) if {
	whole_cents(c)
	c >= 1
}

one_time_with_interval(p) if {
	p.one_time == true
	object.get(p, "interval", null) != null
}

test_stripe_prices_say_how_they_bill if count(bad_stripe_prices) == 0

test_a_bad_stripe_price_is_caught if {
	bad := bad_stripe_prices with data.prices.stripe_prices as {
		"price_ok": {"unit_amount_cents": 1500, "interval": "month", "interval_count": 3},
		"price_once": {"unit_amount_cents": 500, "one_time": true},
		"price_null": {"unit_amount_cents": 500, "interval": null},
		"price_fortnight": {"unit_amount_cents": 1500, "interval": "fortnight"},
		"price_zero_count": {"unit_amount_cents": 1500, "interval": "day", "interval_count": 0},
		"price_string_count": {"unit_amount_cents": 1500, "interval": "day", "interval_count": "2"},
		"price_both": {"unit_amount_cents": 1500, "interval": "week", "one_time": true},
		"price_typo": {"unit_amount_cents": 1500, "intervall": "month"},
	}
	bad == {"price_fortnight", "price_zero_count", "price_string_count", "price_both", "price_typo"}
}

positive_rate(c, r) if {
	regex.match(`^[a-z]{3}$`, c)
	is_number(r)
	r > 0
}

# --- domains/data.yaml ---------------------------------------------------------------------------------

test_tlds_are_lower_case_suffixes if {
	count([t | some t, on in data.domains.allowed_tlds; not regex.match(`^[a-z0-9-]+(\.[a-z0-9-]+)*$`, t)]) == 0
	count([t | some t, on in data.domains.allowed_tlds; not is_boolean(on)]) == 0
}

test_brands_are_lower_case_with_a_known_match if {
	count([b | some b, _ in data.domains.protected_brands; not regex.match(`^[a-z0-9]+$`, b)]) == 0
	count([b | some b, p in data.domains.protected_brands; not data.tollgate.lib.get(p, "match") in {"contains", "prefix"}]) == 0
}

# A precomputed fold must be the real one: a wrong value would let look-alikes through.
wrong_folds contains brand if {
	some brand, p in data.domains.protected_brands
	"folded" in object.keys(p)
	p.folded != data.tollgate.domains.fold(brand)
}

test_precomputed_brand_folds_are_right if count(wrong_folds) == 0

test_a_wrong_brand_fold_is_caught if {
	wrong := wrong_folds with data.domains.protected_brands as {"paypal": {"match": "contains", "folded": "paypal"}, "google": {"match": "contains", "folded": "google"}}
	wrong == {"google"}
}

# Folding must not chain: a replacement value that is itself a key would be replaced again or not, depending
# on the order the engine applies them.
test_lookalike_values_are_not_keys if {
	chars := data.domains.lookalike.characters
	count([k | some k, v in chars; v in object.keys(chars)]) == 0
	seqs := data.domains.lookalike.sequences
	count([k | some k, v in seqs; v in object.keys(seqs)]) == 0
}

test_collapse_is_exactly_the_doubled_letters if {
	data.domains.lookalike.collapse == {concat("", [c, c]): c | some c in split("abcdefghijklmnopqrstuvwxyz", "")}
}

test_registration_settings_are_typed if {
	whole_cents(data.domains.max_years)
	whole_cents(data.domains.approve_years_above)
	is_boolean(data.domains.auto_renew_when_absent)
	data.domains.idn_labels in {"approve", "deny"}
}

# --- billing/data.yaml ---------------------------------------------------------------------------------

# Every action billing.rego judges has a list of known parameters: lower-case parameter names, sorted, no
# repeats; and no action is listed that billing.rego does not judge (its list would never be read).
billing_list_problems contains action if {
	some action, params in data.billing.known_parameters
	not parameter_list(params)
}

billing_list_problems contains action if {
	some action, _ in data.billing.known_parameters
	not data.tollgate.billing.applies with input as {"action": {"name": action}}
}

billing_list_problems contains action if {
	some action in billing_actions
	# lint: defined (data.billing.known_parameters: billing/data.yaml has it; test_billing_parameter_lists_are_well_formed checks its lists)
	not is_array(object.get(data.billing.known_parameters, action, null))
}

billing_actions := {
	"stripe.customer.create", "stripe.customer.update", "stripe.product.create", "stripe.product.update",
	"stripe.price.create", "stripe.price.update",
}

parameter_list(params) if {
	is_array(params)
	count([p | some p in params; not regex.match(`^[a-z][a-z0-9_]*$`, p)]) == 0
	params == sort(params)
	count(params) == count({p | some p in params})
}

test_billing_parameter_lists_are_well_formed if count(billing_list_problems) == 0

test_a_bad_billing_parameter_list_is_caught if {
	problems := billing_list_problems with data.billing.known_parameters as {
		"stripe.customer.create": ["name", "email"],
		"stripe.customer.update": ["email", "email"],
		"stripe.product.create": ["Name"],
		"stripe.price.create": "currency",
		"stripe.invoice.create": ["customer"],
	}
	problems == {
		"stripe.customer.create", "stripe.customer.update", "stripe.product.create", "stripe.price.create",
		"stripe.invoice.create", "stripe.product.update", "stripe.price.update",
	}
}

# The legacy subscription parameters (denied on customers) are plain names, and none of them is listed as a
# known customer parameter.
test_legacy_subscription_parameters_are_names if {
	legacy := data.billing.legacy_subscription_parameters
	parameter_list(sort(legacy))
	count({p | some p in legacy} & {p | some p in data.billing.known_parameters["stripe.customer.create"]}) == 0
	count({p | some p in legacy} & {p | some p in data.billing.known_parameters["stripe.customer.update"]}) == 0
}

# --- tokens/data.yaml ----------------------------------------------------------------------------------

test_permission_group_ids_are_hex if {
	count([id | some id, _ in data.tokens.permission_groups; not regex.match(`^[0-9a-f]{32}$`, id)]) == 0
}

test_permission_groups_are_described if {
	count([id | some id, g in data.tokens.permission_groups; not good_group(g)]) == 0
}

good_group(g) if {
	is_string(g.name)
	g.scope in {"zone", "account", "user"}
	is_boolean(g.grantable)
}

# The groups that mint or edit tokens are marked never grantable.
test_token_minting_groups_are_not_grantable if {
	data.tokens.permission_groups["5bc3f8b21c554832afc660159ab75fa4"].grantable == false
	data.tokens.permission_groups["686d18d5ac6c441c867cbf6771e58a0a"].grantable == false
}

# Every ceiling names known, grantable groups, under the name the table gives them.
ceiling_problems contains sprintf("%s: %s", [owner, id]) if {
	some owner, entry in ceilings
	some id, name in entry.groups
	not ceiling_group_ok(id, name)
}

ceilings[owner] := entry if {
	some owner, entry in {"default": data.tokens["default"]}
}

ceilings[owner] := entry if {
	some team, entry in data.tokens.teams
	owner := concat("", ["team ", team])
}

ceilings[owner] := entry if {
	some agent, entry in data.tokens.agents
	owner := concat("", ["agent ", agent])
}

ceiling_group_ok(id, name) if {
	g := data.tokens.permission_groups[id]
	g.name == name
	g.grantable == true
}

test_ceilings_name_known_grantable_groups if count(ceiling_problems) == 0

test_a_bad_ceiling_is_caught if {
	problems := ceiling_problems with data.tokens.teams as {"web": {"groups": {
		"5bc3f8b21c554832afc660159ab75fa4": "Account API Tokens Write",
		"4755a26eedb94da69e1066d98aa820be": "DNS Read",
		"ffffffffffffffffffffffffffffffff": "Mystery",
	}}}
	count(problems) == 3
}

test_default_ceiling_is_the_documented_one if {
	object.keys(data.tokens["default"].groups) == {
		"82e64a83756745bbbb1c9c2701bf816b", # DNS Read
		"4755a26eedb94da69e1066d98aa820be", # DNS Write
		"c8fed203ed3043cba015a93ad1616f1f", # Zone Read
		"e086da7e2179491d91ee5f35b3ca210a", # Workers Scripts Write
	}
	data.tokens["default"].max_lifetime_seconds == 86400
}

# --- impact/data.yaml ----------------------------------------------------------------------------------

test_dns_types_are_upper_case if {
	count([t | some t, _ in data.impact.dns.approve_types; upper(t) != t]) == 0
	{"NS", "MX", "CAA"} == {t | some t, on in data.impact.dns.approve_types; on == true} & {"NS", "MX", "CAA"}
}

test_zone_names_are_canonical if {
	count([z | some z, n in data.impact.dns.zone_names; not canonical_name(n)]) == 0
}

canonical_name(n) if {
	is_string(n)
	n == lower(n)
	not endswith(n, ".")
}

test_worker_labels_are_strings if {
	count([s | some s, l in data.impact.workers.labels; not is_string(l)]) == 0
}
