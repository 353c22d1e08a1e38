# Spend: what a request will cost, in integer US cents, against which budget and cap; which charges need a
# human; and which money actions cannot be priced from the request (those need a human too: a price the
# policy cannot determine is never a free allow).
#
# The policy states the charge; the ledger reserves it atomically against the budget window and refuses it
# over the cap (`budget_exceeded`), so concurrent requests cannot overspend. The policy itself compares a charge
# only with the cap and the approval threshold, never with what was spent so far.
#
# A request's cost is a set of `lines`, one per priced thing (an amount, a subscription item, a registration),
# each one of:
#   {"what": "...", "cents": n}         priced
#   {"what": "...", "unpriced": why}    not priceable from the request and data: needs a human
#   {"what": "...", "malformed": why}   a field the price depends on has the wrong type: denied
# The charge is the sum of the priced lines.
#
# Prices, caps and thresholds are data: data/prices.yaml and data/budgets.yaml.
package tollgate.spend

import data.tollgate.lib

# The actions this file judges: those data/actions.yaml marks as money.
applies if data.actions[input.action.name].money == true

# ---------------------------------------------------------------------------------------------------------
# Decisions
# ---------------------------------------------------------------------------------------------------------

# Types are checked, not coerced: an amount of "12.5", "-3", "1e3" or 12.5 is refused rather than rounded,
# defaulted or read as something the provider would read differently.
deny contains {"rule": "spend.malformed", "message": msg} if {
	some line in lines
	is_string(line.malformed)
	msg := sprintf("%s: %s", [input.action.name, line.malformed])
}

# A single charge larger than the whole cap can never be admitted by the ledger; refusing it here keeps it
# from waiting for a human first.
deny contains {"rule": "spend.cap", "message": msg} if {
	c := charge
	c.cents > c.cap_cents
	msg := sprintf("%s costs %s, more than the whole %s cap of %s for %s; nothing above the cap can be spent", [input.action.name, lib.usd(c.cents), c.budget, lib.usd(c.cap_cents), data.tollgate.lib.agent_desc])
}

# A charge needs a budget the ledger knows and a cap in integer cents.
deny contains {"rule": "spend.budget", "message": msg} if {
	priced
	not budget_ok
	msg := sprintf("%s costs money, but the budget for %s in data/budgets.yaml is not usable (%v); budget must be agent-provider-month, or team-provider-month for an agent with a team, and cap_cents and approve_above_cents integers >= 0", [input.action.name, data.tollgate.lib.agent_desc, budget])
}

# A single charge above the threshold (default $50) needs a human, even within the cap.
approve contains {"rule": "spend.threshold", "message": msg} if {
	c := charge
	c.cents > budget.approve_above_cents
	msg := sprintf("%s costs %s, above the %s a single request may spend without approval", [input.action.name, lib.usd(c.cents), lib.usd(budget.approve_above_cents)])
}

# Money whose amount the request and data do not determine needs a human.
approve contains {"rule": "spend.unpriced", "message": msg} if {
	some line in lines
	is_string(line.unpriced)
	msg := sprintf("%s: %s: %s; a human must approve it%s", [input.action.name, line.what, line.unpriced, counted])
}

# A money action with no line at all (a new money action nobody priced yet) needs a human. A DELETE cancels
# or removes and never starts a charge.
approve contains {"rule": "spend.unpriced", "message": msg} if {
	data.actions[input.action.name].money == true
	input.request.method != "DELETE"
	count(lines) == 0
	msg := sprintf("%s costs money, and the policy cannot price it from this request; a human must approve it", [input.action.name])
}

counted := sprintf(" (only the priced part, %s, is counted against the budget)", [lib.usd(cents)]) if priced

else := " (it is not counted against the budget)"

# ---------------------------------------------------------------------------------------------------------
# The charge
# ---------------------------------------------------------------------------------------------------------

priced if {
	some line in lines
	is_number(line.cents)
}

cents := sum([line.cents | some line in lines; is_number(line.cents)])

# Only for the actions this file judges (main.rego reads it for every write).
charge := {"cents": cents, "budget": budget.budget, "cap_cents": budget.cap_cents} if {
	applies
	priced
	budget_ok
}

# The budget entry that applies: agents[name], else teams[team], else none; missing fields from default.
budget := object.union(data.budgets["default"], specific_budget)

specific_budget := e if {
	e := data.budgets.agents[input.agent.name]
	is_object(e)
} else := e if {
	e := data.budgets.teams[input.agent.team]
	is_object(e)
} else := {}

budget_ok if {
	budget.budget == "agent-provider-month"
	limits_ok
}

budget_ok if {
	budget.budget == "team-provider-month"
	is_string(input.agent.team)
	limits_ok
}

limits_ok if {
	lib.is_int(budget.cap_cents)
	budget.cap_cents >= 0
	lib.is_int(budget.approve_above_cents)
	budget.approve_above_cents >= 0
}

# ---------------------------------------------------------------------------------------------------------
# Stripe. Form bodies: every value is a string; amounts are integers in the currency's smallest unit.
# ---------------------------------------------------------------------------------------------------------

# Payment intents: `amount` in `currency`. Charged at creation, because an intent created with confirm=true
# charges at once and any intent fixes the amount.
lines contains line if {
	input.action.name == "stripe.payment.create"
	line := stripe_amount("amount", lib.get(data.tollgate.lib.body, "amount"), lib.get(data.tollgate.lib.body, "currency"))
	is_object(line)
}

# Confirming or capturing an existing intent moves the intent's money, whose amount and currency are not in
# this request (amount_to_capture has no currency).
lines contains {"what": "payment intent", "unpriced": "it moves the money of an existing payment intent, whose amount and currency are not in the request"} if {
	input.action.name in {"stripe.payment.confirm", "stripe.payment.capture"}
}

# Finalizing or paying an invoice charges its amount due, which the request does not carry.
lines contains {"what": "invoice", "unpriced": "it charges the amount due of an existing invoice, which is not in the request"} if {
	input.action.name in {"stripe.invoice.finalize", "stripe.invoice.pay"}
}

# Subscriptions bill the sum of their items (price x quantity) up front, plus any one-off add_invoice_items.
lines contains line if {
	input.action.name in {"stripe.subscription.create", "stripe.subscription.update"}
	not subscription_item_route
	some list in ["items", "add_invoice_items"]
	some line in item_lines(list, lib.get(data.tollgate.lib.body, list), false)
}

# A new subscription without items bills nothing Stripe would accept: refuse it rather than guess.
lines contains {"what": "items", "malformed": "a subscription needs items (items[0][price] or items[0][price_data][unit_amount], with items[0][quantity])"} if {
	input.action.name == "stripe.subscription.create"
	lib.get(data.tollgate.lib.body, "items") == null
}

# Updating a subscription without items can still bill (billing_cycle_anchor=now, trial_end=now,
# proration_behavior=always_invoice ...): the cost is not in the request.
lines contains {"what": "subscription", "unpriced": "this update names no items, and what it bills (prorations, a new billing cycle, the end of a trial) is not in the request"} if {
	input.action.name == "stripe.subscription.update"
	not subscription_item_route
	lib.get(data.tollgate.lib.body, "items") == null
	lib.get(data.tollgate.lib.body, "add_invoice_items") == null
}

# /v1/subscription_items[/{id}]: one item, its fields at the top level.
lines contains line if {
	input.action.name == "stripe.subscription.update"
	subscription_item_route
	line := item_line("subscription item", data.tollgate.lib.body, false)
	is_object(line)
}

subscription_item_route if startswith(lower(input.request.path), "/v1/subscription_items")

# Checkout sessions fix what the payer will be charged: the sum of line_items. A session in setup mode only
# saves a payment method.
lines contains line if {
	input.action.name == "stripe.checkout.create"
	lib.get(data.tollgate.lib.body, "mode") != "setup"
	some line in item_lines("line_items", lib.get(data.tollgate.lib.body, "line_items"), true)
}

lines contains {"what": "line_items", "unpriced": "a checkout session without line_items has no price in the request"} if {
	input.action.name == "stripe.checkout.create"
	lib.get(data.tollgate.lib.body, "mode") != "setup"
	lib.get(data.tollgate.lib.body, "line_items") == null
}

lines contains {"what": "setup mode", "cents": 0} if {
	input.action.name == "stripe.checkout.create"
	lib.get(data.tollgate.lib.body, "mode") == "setup"
}

# Invoice items: an `amount` in `currency`, or a price (id or price_data) x quantity.
lines contains line if {
	input.action.name == "stripe.invoice.item"
	lib.get(data.tollgate.lib.body, "amount") != null
	line := stripe_amount("amount", data.tollgate.lib.body.amount, lib.get(data.tollgate.lib.body, "currency"))
	is_object(line)
}

lines contains line if {
	input.action.name == "stripe.invoice.item"
	lib.get(data.tollgate.lib.body, "amount") == null
	line := item_line("invoice item", data.tollgate.lib.body, false)
	is_object(line)
}

# stripe_amount(what, amount, currency): a line for an amount in a currency.
stripe_amount(what, amount, currency) := {"what": what, "malformed": sprintf("%s is required: an integer in the currency's smallest unit, e.g. \"1999\" for $19.99", [what])} if {
	amount == null
} else := {"what": what, "malformed": sprintf("%s must be a string of digits (an integer in the currency's smallest unit, e.g. \"1999\" for $19.99), not %s", [what, lib.show(amount)])} if {
	not lib.form_int(amount)
} else := in_usd(what, lib.form_int(amount), currency)

# in_usd(what, n, currency): n smallest units of currency as US cents: usd as is, others at the data rate.
in_usd(what, n, currency) := {"what": what, "malformed": sprintf("currency must be a three-letter ISO code such as \"usd\", not %s", [lib.show(currency)])} if {
	not valid_currency(currency)
} else := {"what": what, "cents": n} if {
	lower(currency) == "usd"
} else := {"what": what, "cents": ceil(n * rate)} if {
	rate := data.prices.currency_rates[lower(currency)]
	is_number(rate)
	rate > 0
} else := {"what": what, "unpriced": sprintf("it is in %s, and data/prices.yaml has no currency_rates entry to convert it to US cents (only usd is priced without one)", [lower(currency)])}

valid_currency(c) if {
	is_string(c)
	count(c) == 3
	trim(lower(c), "abcdefghijklmnopqrstuvwxyz") == ""
}

# item_lines(key, items, checkout): one line per element of a Stripe list (items[0][...], items[1][...]).
item_lines(key, items, checkout) := [{"what": key, "malformed": sprintf("%s must be a list (%s[0][price]=...), not %s", [key, key, lib.show(items)])}] if {
	items != null
	not is_array(items)
} else := [line |
	some i, item in items
	line := item_line(sprintf("%s[%d]", [key, i]), item, checkout)
	is_object(line)
] if {
	is_array(items)
}

else := []

# item_line(what, item, checkout): an item's price x quantity.
item_line(what, item, checkout) := {"what": what, "malformed": "must be an object with price or price_data and quantity"} if {
	not is_object(item)
} else := {"what": what, "cents": 0} if {
	# items[n][deleted]=true removes an item from a subscription: it adds nothing.
	item.deleted == "true"
} else := {"what": what, "malformed": sprintf("quantity must be a string of digits, not %s", [lib.show(item.quantity)])} if {
	lib.get(item, "quantity") != null
	not lib.form_int(item.quantity)
} else := {"what": what, "malformed": sprintf("adjustable_quantity[maximum] must be a string of digits, not %s", [lib.show(item.adjustable_quantity.maximum)])} if {
	lib.get(lib.get(item, "adjustable_quantity"), "maximum") != null
	not lib.form_int(item.adjustable_quantity.maximum)
} else := unit_line(what, item, quantity(item, checkout))

# How many units are charged: the payer's maximum when Checkout lets them adjust it, else quantity, else 1.
quantity(item, checkout) := n if {
	checkout
	item.adjustable_quantity.enabled == "true"
	n := lib.form_int(item.adjustable_quantity.maximum)
	is_number(n)
} else := data.prices.checkout_adjustable_max if {
	checkout
	item.adjustable_quantity.enabled == "true"
} else := lib.form_int(item.quantity) if {
	lib.get(item, "quantity") != null
} else := 1

# unit_line(what, item, q): the unit price of an item (inline price_data, or a price id from data) x q.
unit_line(what, item, q) := {"what": what, "malformed": sprintf("price_data must be an object, not %s", [lib.show(item.price_data)])} if {
	lib.get(item, "price_data") != null
	not is_object(item.price_data)
} else := {"what": what, "malformed": sprintf("price_data[unit_amount] must be a string of digits, not %s", [lib.show(item.price_data.unit_amount)])} if {
	lib.get(item.price_data, "unit_amount") != null
	not lib.form_int(item.price_data.unit_amount)
} else := in_usd(what, lib.form_int(item.price_data.unit_amount) * q, lib.get(item.price_data, "currency")) if {
	lib.get(item.price_data, "unit_amount") != null
} else := {"what": what, "unpriced": "price_data has no integer unit_amount (unit_amount_decimal or a custom amount cannot be priced)"} if {
	is_object(item.price_data)
} else := {"what": what, "malformed": sprintf("price must be a price id string, not %s", [lib.show(item.price)])} if {
	lib.get(item, "price") != null
	not is_string(item.price)
} else := {"what": what, "cents": p.unit_amount_cents * q} if {
	p := data.prices.stripe_prices[item.price]
	lib.is_int(p.unit_amount_cents)
} else := {"what": what, "unpriced": sprintf("price %s is not in data/prices.yaml stripe_prices", [item.price])} if {
	is_string(item.price)
} else := {"what": what, "unpriced": "it has neither price nor price_data, so its cost is not in the request"}

# ---------------------------------------------------------------------------------------------------------
# Cloudflare
# ---------------------------------------------------------------------------------------------------------

# Registration: year 1 at the registration price, each further year at the renewal price. Years and the
# domain's suffix are validated by domains.rego; an invalid value leaves no line (and domains.rego denies).
lines contains line if {
	input.action.name == "cloudflare.domain.register"
	suffix := data.tollgate.domains.suffix
	is_string(suffix)
	years := data.tollgate.domains.years
	is_number(years)
	line := registration_line(suffix, years)
	is_object(line)
}

registration_line(suffix, years) := {"what": sprintf("registration of .%s for %d year(s)", [suffix, years]), "cents": p.registration_cents + ((years - 1) * p.renewal_cents)} if {
	p := data.prices.domains[suffix]
	lib.is_int(p.registration_cents)
	lib.is_int(p.renewal_cents)
} else := {"what": sprintf("registration of .%s", [suffix]), "unpriced": sprintf("data/prices.yaml has no registration price for .%s", [suffix])}

# A transfer-in is billed one year (it extends the registration by a year).
lines contains line if {
	input.action.name == "cloudflare.domain.transfer_in"
	suffix := data.tollgate.domains.suffix
	is_string(suffix)
	line := transfer_line(suffix)
	is_object(line)
}

transfer_line(suffix) := {"what": sprintf("transfer of .%s", [suffix]), "cents": p.transfer_cents} if {
	p := data.prices.domains[suffix]
	lib.is_int(p.transfer_cents)
} else := {"what": sprintf("transfer of .%s", [suffix]), "cents": p.renewal_cents} if {
	p := data.prices.domains[suffix]
	lib.is_int(p.renewal_cents)
} else := {"what": sprintf("transfer of .%s", [suffix]), "unpriced": sprintf("data/prices.yaml has no renewal price for .%s", [suffix])}

# Zone plans and account subscriptions: rate_plan.id at `frequency`, from the plan tables. Recurring money:
# the first period is charged.
lines contains line if {
	input.action.name == "cloudflare.zone.plan"
	line := plan_line("zone plan", "zone_plans", data.tollgate.lib.body)
	is_object(line)
}

lines contains line if {
	input.action.name == "cloudflare.account.subscription"
	input.request.method != "DELETE"
	line := plan_line("account subscription", "account_plans", data.tollgate.lib.body)
	is_object(line)
}

plan_line(what, table, body) := {"what": what, "malformed": sprintf("rate_plan.id must be a string such as \"pro\", not %s", [lib.show(lib.get(lib.get(body, "rate_plan"), "id"))])} if {
	not is_string(body.rate_plan.id)
} else := {"what": what, "malformed": sprintf("frequency must be a string such as \"monthly\", not %s", [lib.show(body.frequency)])} if {
	lib.get(body, "frequency") != null
	not is_string(body.frequency)
} else := {"what": sprintf("%s %s (%s)", [what, body.rate_plan.id, frequency(body)]), "cents": price} if {
	price := data.prices[table][body.rate_plan.id][frequency(body)]
	lib.is_int(price)
} else := {"what": sprintf("%s %s", [what, body.rate_plan.id]), "unpriced": sprintf("data/prices.yaml %s has no %s price for rate plan %s", [table, frequency(body), body.rate_plan.id])}

frequency(body) := body.frequency if is_string(body.frequency)

else := data.prices.default_frequency
