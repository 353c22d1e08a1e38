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
#   {"what": "...", "malformed": why}   a field the price depends on has the wrong type, or a value the
#                                       provider would refuse: denied
# The charge is the sum of the priced lines, plus `tax` where Stripe may add tax.
#
# A line is the most its thing can bill inside the current budget window (input.spend.window_start ..
# window_end, a UTC calendar month): one-off money once; recurring money (Stripe subscriptions, subscription
# items, Checkout in subscription mode, payment links) once per billing its schedule puts in the window
# (interval and interval_count; backdate_start_date, trial_end, trial_period_days, billing_cycle_anchor,
# proration_behavior), so a daily price is charged for every day left in the month. Where a bound would need
# a guess (a price id without interval, a quantity the request does not give, a payment link without a
# session limit, no window_end) the line is unpriced. Where Stripe may add tax, the priced total is raised by
# data.prices.max_tax_rate (`tax`). README.md, "Money rules", states every rule, the upper-bound choices and
# their sources.
#
# Prices, caps and thresholds are data: prices/data.yaml and budgets/data.yaml.
package tollgate.spend

import data.tollgate.lib

# The actions this file judges: those actions/data.yaml marks as money.
applies if data.actions[input.action.name].money == true

# ---------------------------------------------------------------------------------------------------------
# Decisions
# ---------------------------------------------------------------------------------------------------------

# Types are checked, not coerced: an amount of "12.5", "-3", "1e3" or 12.5 is refused rather than rounded,
# defaulted or read as something the provider would read differently.
deny contains {"rule": "spend.malformed", "message": msg} if {
	some line in lines
	is_string(line.malformed)
	msg := sprintf("%s: %s", [data.tollgate.lib.action_name, line.malformed])
}

# A single charge larger than the whole cap can never be admitted by the ledger; refusing it here keeps it
# from waiting for a human first.
deny contains {"rule": "spend.cap", "message": msg} if {
	c := charge
	c.cents > c.cap_cents
	msg := sprintf("%s costs %s, more than the whole %s cap of %s for %s; nothing above the cap can be spent", [data.tollgate.lib.action_name, lib.usd(c.cents), c.budget, lib.usd(c.cap_cents), data.tollgate.lib.agent_desc])
}

# A charge needs a budget the ledger knows and a cap in integer cents.
deny contains {"rule": "spend.budget", "message": msg} if {
	priced
	not budget_ok
	msg := sprintf("%s costs money, but the budget for %s in budgets/data.yaml is not usable (%v); budget must be agent-provider-month, account-provider-month, or team-provider-month for an agent with a team, and cap_cents and approve_above_cents integers >= 0", [data.tollgate.lib.action_name, data.tollgate.lib.agent_desc, budget])
}

# A single charge above the threshold (default $50) needs a human, even within the cap.
approve contains {"rule": "spend.threshold", "message": msg} if {
	c := charge
	c.cents > budget.approve_above_cents
	msg := sprintf("%s costs %s, above the %s a single request may spend without approval", [data.tollgate.lib.action_name, lib.usd(c.cents), lib.usd(budget.approve_above_cents)])
}

# Money whose amount the request and data do not determine needs a human.
approve contains {"rule": "spend.unpriced", "message": msg} if {
	some line in lines
	is_string(line.unpriced)
	msg := sprintf("%s: %s: %s; a human must approve it%s", [data.tollgate.lib.action_name, line.what, line.unpriced, counted])
}

# Tax on priced money, when prices/data.yaml has no max_tax_rate to bound it.
approve contains {"rule": "spend.unpriced", "message": msg} if {
	is_string(tax.unpriced)
	msg := sprintf("%s: tax: %s; a human must approve it%s", [data.tollgate.lib.action_name, tax.unpriced, counted])
}

# A money action with no line at all (a new money action nobody priced yet) needs a human. A DELETE cancels
# or removes and never starts a charge.
approve contains {"rule": "spend.unpriced", "message": msg} if {
	data.actions[input.action.name].money == true
	input.request.method != "DELETE"
	count(lines) == 0
	msg := sprintf("%s costs money, and the policy cannot price it from this request; a human must approve it", [data.tollgate.lib.action_name])
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

# The priced lines, and the tax Stripe may add to them.
base_cents := sum([line.cents | some line in lines; is_number(line.cents)])

cents := base_cents + tax.cents if is_number(tax.cents)

else := base_cents

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

budget_ok if {
	budget.budget == "account-provider-month"
	limits_ok
}

limits_ok if {
	lib.is_int(budget.cap_cents)
	budget.cap_cents >= 0
	lib.is_int(budget.approve_above_cents)
	budget.approve_above_cents >= 0
}

# ---------------------------------------------------------------------------------------------------------
# Stripe. Form bodies: every value is a string; amounts are integers in the currency's smallest unit. The body
# is the merge of the query string and the form (Stripe reads both), so only the body is read.
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

# Creating an invoice makes a draft, but a draft that advances by itself (auto_advance) is finalized about an
# hour later and charged (collection_method=charge_automatically) without another request: it bills the
# customer's pending invoice items and shipping_cost, whose total is not in the request, and skips the human
# that finalize and pay need. Only a draft that cannot advance by itself bills nothing now: auto_advance=false
# given explicitly (its default has changed across API versions), and no automatically_finalizes_at.
lines contains invoice_create_line if input.action.name == "stripe.invoice.create"

invoice_create_line := {"what": "draft invoice", "cents": 0} if {
	lib.get(data.tollgate.lib.body, "auto_advance") == "false"
	lib.get(data.tollgate.lib.body, "automatically_finalizes_at") == null
} else := {"what": "invoice", "unpriced": "an invoice that may advance by itself (without auto_advance=false, or with automatically_finalizes_at) is finalized and charged later without another request, for its pending invoice items and shipping, whose total is not in the request (create it with auto_advance=false and finalize it separately)"}

# --- Subscriptions -------------------------------------------------------------------------------------------
# Recurring money is charged as the most it can bill inside the current budget window: each item's price x
# quantity, once for every billing the schedule puts before the window's end (`billed`, below). README.md,
# "Money rules", gives the reasoning and sources.

# A new subscription: its items on the subscription's schedule (backdate_start_date, trial_end,
# trial_period_days, billing_cycle_anchor, proration_behavior), add_invoice_items once.
lines contains line if {
	input.action.name == "stripe.subscription.create"
	some line in item_lines("items", lib.get(data.tollgate.lib.body, "items"), create_ctx)
}

# A new subscription without items bills nothing Stripe would accept: refuse it rather than guess.
lines contains {"what": "items", "malformed": "a subscription needs items (items[0][price] or items[0][price_data][unit_amount], with items[0][quantity])"} if {
	input.action.name == "stripe.subscription.create"
	lib.get(data.tollgate.lib.body, "items") == null
}

# add_invoice_items are one-off: billed once, on the first invoice (create) or the next one (update).
lines contains line if {
	input.action.name in {"stripe.subscription.create", "stripe.subscription.update"}
	not subscription_item_route
	some line in item_lines("add_invoice_items", lib.get(data.tollgate.lib.body, "add_invoice_items"), once_ctx)
}

# Updating a subscription (POST /v1/subscriptions/{id}): the items it names bill from now, plus one period for
# the proration of the current, already started period (unless proration_behavior=none).
lines contains line if {
	input.action.name == "stripe.subscription.update"
	not subscription_item_route
	some line in item_lines("items", lib.get(data.tollgate.lib.body, "items"), update_ctx)
}

# Updating a subscription without items can still bill (billing_cycle_anchor=now, trial_end=now,
# proration_behavior=always_invoice ...): the cost is not in the request.
lines contains {"what": "subscription", "unpriced": "this update names no items, and what it bills (prorations, a new billing cycle, the end of a trial) is not in the request"} if {
	input.action.name == "stripe.subscription.update"
	not subscription_item_route
	lib.get(data.tollgate.lib.body, "items") == null
	lib.get(data.tollgate.lib.body, "add_invoice_items") == null
}

# Restarting the billing cycle or ending the trial now invoices every item of the subscription, also those
# the request does not name.
lines contains {"what": key, "unpriced": sprintf("%s=now bills the subscription's other items too, whose prices are not in the request", [key])} if {
	input.action.name == "stripe.subscription.update"
	not subscription_item_route
	some key in ["billing_cycle_anchor", "trial_end"]
	lib.get(data.tollgate.lib.body, key) == "now"
	update_names_items
}

update_names_items if lib.get(data.tollgate.lib.body, "items") != null

update_names_items if lib.get(data.tollgate.lib.body, "add_invoice_items") != null

# /v1/subscription_items[/{id}]: one item, its fields at the top level, billed like an item of an update.
lines contains line if {
	input.action.name == "stripe.subscription.update"
	subscription_item_route
	is_object(data.tollgate.lib.body)
	line := priced_item("subscription item", data.tollgate.lib.body, item_route_ctx)
}

subscription_item_route if startswith(lower(input.request.path), "/v1/subscription_items")

# /v1/subscription_items/{id} changes an existing item (POST /v1/subscription_items adds one).
existing_item_route := true if {
	is_object(input.action.params)
	is_string(input.action.params.subscription_item_id)
} else := false

# --- Checkout and payment links ------------------------------------------------------------------------------

# Checkout sessions fix what the payer will be charged: in payment mode the sum of line_items; in subscription
# mode recurring line_items on the schedule of subscription_data (from now: the payer completes it later, if
# at all) and one-time line_items once; and in either, every optional item and the dearest shipping option
# (`session_extras`). A session in setup mode only saves a payment method.
lines contains line if {
	input.action.name == "stripe.checkout.create"
	lib.get(data.tollgate.lib.body, "mode") != "setup"
	some line in item_lines("line_items", lib.get(data.tollgate.lib.body, "line_items"), checkout_ctx)
}

# The payer may add every optional item, at its largest quantity, and picks the dearest shipping option.
lines contains line if {
	input.action.name == "stripe.checkout.create"
	lib.get(data.tollgate.lib.body, "mode") != "setup"
	some line in session_extras(checkout_ctx)
}

# subscription_data[items] (older API versions' way of starting a subscription from Checkout) adds items
# whose prices are not read here.
lines contains {"what": "subscription_data[items]", "unpriced": "subscription_data[items] adds subscription items (an older API version's form) that the policy does not price"} if {
	input.action.name == "stripe.checkout.create"
	lib.get(data.tollgate.lib.body, "mode") != "setup"
	lib.get(lib.get(data.tollgate.lib.body, "subscription_data"), "items") != null
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

# A payment link can be paid any number of times: it is priced only when restrictions[completed_sessions][limit]
# bounds the sessions, at limit x one session (priced like Checkout: recurring prices on the schedule of
# subscription_data, one-time prices once; optional items and the dearest shipping option added).
lines contains line if {
	input.action.name == "stripe.payment_link.create"
	some line in payment_link_lines
}

payment_link_lines := [{"what": "payment link", "unpriced": "a payment link can be paid any number of times, and without restrictions[completed_sessions][limit] nothing bounds what it bills"}] if {
	session_limit == null
} else := [{"what": "restrictions[completed_sessions][limit]", "malformed": sprintf("must be a positive integer (a string of digits such as \"10\"), not %s", [lib.show(session_limit)])}] if {
	not positive_int(session_limit)
} else := [{"what": "line_items", "malformed": "a payment link needs line_items (line_items[0][price] with line_items[0][quantity])"}] if {
	lib.get(data.tollgate.lib.body, "line_items") == null
} else := [times(line, lib.form_int(session_limit)) | some line in link_session_lines]

link_session_lines := array.concat(item_lines("line_items", data.tollgate.lib.body.line_items, link_ctx), session_extras(link_ctx))

session_limit := lib.get(lib.get(lib.get(data.tollgate.lib.body, "restrictions"), "completed_sessions"), "limit") if {
	is_object(data.tollgate.lib.body)
} else := null

# What a session can add to its line_items: every optional item, taken at its largest quantity (Checkout's
# adjustable quantities, priced like line_items), and the dearest shipping option.
session_extras(ctx) := array.concat(
	item_lines("optional_items", lib.get(data.tollgate.lib.body, "optional_items"), ctx),
	shipping_lines(lib.get(data.tollgate.lib.body, "shipping_options")),
)

# shipping_lines(options): the payer picks one of the shipping options, so the dearest priced one is charged
# (once per session: Checkout offers shipping in payment mode only); an option that cannot be priced is a line
# of its own (unpriced or malformed).
shipping_lines(options) := [{"what": "shipping_options", "malformed": sprintf("shipping_options must be a list (shipping_options[0][shipping_rate]=...), not %s", [lib.show(options)])}] if {
	options != null
	not is_array(options)
} else := array.concat([line | some line in ls; not is_number(object.get(line, "cents", null))], dearest(ls)) if {
	is_array(options)
	ls := [shipping_line(sprintf("shipping_options[%d]", [i]), o) | some i, o in options]
} else := []

dearest(ls) := [{"what": "shipping_options (the dearest option)", "cents": max(cs)}] if {
	cs := [line.cents | some line in ls; is_number(object.get(line, "cents", null))]
	count(cs) > 0
} else := []

# shipping_line(what, o): a shipping rate id priced from prices/data.yaml stripe_shipping_rates, or
# shipping_rate_data[fixed_amount][amount] in [currency] (amounts in other currencies, currency_options, are
# not priced).
shipping_line(what, o) := {"what": what, "malformed": sprintf("%s must be an object with shipping_rate or shipping_rate_data, not %s", [what, lib.show(o)])} if {
	not is_object(o)
} else := {"what": what, "malformed": sprintf("%s[shipping_rate] must be a shipping rate id string, not %s", [what, lib.show(o.shipping_rate)])} if {
	lib.get(o, "shipping_rate") != null
	not is_string(o.shipping_rate)
} else := {"what": what, "cents": r.amount_cents} if {
	r := data.prices.stripe_shipping_rates[o.shipping_rate]
	lib.is_int(r.amount_cents)
} else := {"what": what, "unpriced": sprintf("shipping rate %s is not in prices/data.yaml stripe_shipping_rates", [o.shipping_rate])} if {
	is_string(o.shipping_rate)
} else := {"what": what, "malformed": sprintf("%s needs shipping_rate (an id) or shipping_rate_data (an object with fixed_amount[amount] and fixed_amount[currency]); its shipping_rate_data is %s", [what, lib.show(lib.get(o, "shipping_rate_data"))])} if {
	not is_object(lib.get(o, "shipping_rate_data"))
} else := {"what": what, "unpriced": "shipping_rate_data[fixed_amount][currency_options] charges other amounts in other currencies, which are not priced"} if {
	lib.get(lib.get(o.shipping_rate_data, "fixed_amount"), "currency_options") != null
} else := stripe_amount(sprintf("%s[shipping_rate_data][fixed_amount][amount]", [what]), lib.get(lib.get(o.shipping_rate_data, "fixed_amount"), "amount"), lib.get(lib.get(o.shipping_rate_data, "fixed_amount"), "currency"))

# times(line, n): a priced line for n sessions.
times(line, n) := {"what": sprintf("%s x %d sessions", [line.what, n]), "cents": line.cents * n} if {
	is_number(line.cents)
} else := line

# Updating a payment link changes what it sells or who may pay it; only deactivating it (active=false and
# nothing else) is known to bill nothing.
lines contains {"what": "deactivation", "cents": 0} if {
	input.action.name == "stripe.payment_link.update"
	only_deactivates
}

lines contains {"what": "payment link", "unpriced": "an update of a payment link (anything but active=false alone) changes what it sells or how often it can be paid, and that is not priced from the request"} if {
	input.action.name == "stripe.payment_link.update"
	not only_deactivates
}

only_deactivates if {
	lib.get(data.tollgate.lib.body, "active") == "false"
	count(data.tollgate.lib.body) == 1
}

# --- Invoice items -------------------------------------------------------------------------------------------

# Invoice items: an `amount` in `currency`, or a price (id or price_data) x quantity, once.
lines contains line if {
	input.action.name == "stripe.invoice.item"
	lib.get(data.tollgate.lib.body, "amount") != null
	line := stripe_amount("amount", data.tollgate.lib.body.amount, lib.get(data.tollgate.lib.body, "currency"))
	is_object(line)
}

lines contains line if {
	input.action.name == "stripe.invoice.item"
	lib.get(data.tollgate.lib.body, "amount") == null
	is_object(data.tollgate.lib.body)
	line := priced_item("invoice item", data.tollgate.lib.body, once_ctx)
}

# --- Tax -----------------------------------------------------------------------------------------------------
# Tax rates (tax_rates, dynamic_tax_rates, default_tax_rates) and Stripe Tax (automatic_tax[enabled]) add tax
# on top of the prices, by a rate the request does not carry. Where tax may be added, the priced total is
# raised by data.prices.max_tax_rate, a conservative ceiling reviewers set (rounding up); without it the tax
# is unpriced. An update or an invoice item joins a subscription or invoice whose own tax settings are not in
# the request, so it is always taxed.
tax := {"cents": lib.mul_ceil(base_cents, rate)} if {
	taxed
	base_cents > 0
	rate := data.prices.max_tax_rate
	is_number(rate)
	rate >= 0
} else := {"unpriced": "Stripe may add tax to it (tax rates or automatic_tax here, or those of the subscription or invoice it joins), and prices/data.yaml has no max_tax_rate to bound it"} if {
	taxed
	base_cents > 0
}

taxed if input.action.name in {"stripe.subscription.update", "stripe.invoice.item"}

taxed if {
	input.action.name in {"stripe.subscription.create", "stripe.checkout.create", "stripe.payment_link.create"}
	tax_requested
}

tax_requested if given(lib.get(data.tollgate.lib.body, "default_tax_rates"))

tax_requested if given(lib.get(lib.get(data.tollgate.lib.body, "subscription_data"), "default_tax_rates"))

# automatic_tax[enabled] counts as on unless it is "false".
tax_requested if {
	e := lib.get(lib.get(data.tollgate.lib.body, "automatic_tax"), "enabled")
	given(e)
	e != "false"
}

tax_requested if {
	some key in ["items", "line_items", "add_invoice_items", "optional_items"]
	list := lib.get(data.tollgate.lib.body, key)
	is_array(list)
	some item in list
	some field in ["tax_rates", "dynamic_tax_rates"]
	given(lib.get(item, field))
}

# given(v): a field is set (an empty string clears a list in a Stripe form).
given(v) if {
	v != null
	v != ""
}

# --- Amounts and currencies ----------------------------------------------------------------------------------

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
} else := {"what": what, "cents": lib.mul_ceil(n, rate)} if {
	rate := data.prices.currency_rates[lower(currency)]
	is_number(rate)
	rate > 0
} else := {"what": what, "unpriced": sprintf("it is in %s, and prices/data.yaml has no currency_rates entry to convert it to US cents (only usd is priced without one)", [lower(currency)])}

valid_currency(c) if {
	is_string(c)
	count(c) == 3
	trim(lower(c), "abcdefghijklmnopqrstuvwxyz") == ""
}

# positive_int(s): a form integer >= 1.
positive_int(s) if {
	n := lib.form_int(s)
	is_number(n)
	n >= 1
}

# --- Items ---------------------------------------------------------------------------------------------------
# An item is priced in a context (ctx):
#   kind      recurring  a subscription item: needs a recurring price, billed `billed` times (ctx.sched)
#             once       billed once (add_invoice_items, invoice items, Checkout in payment mode)
#             either     Checkout in subscription mode, payment links: recurring prices as `recurring`,
#                        one-time prices once
#   checkout  Checkout's adjustable quantities apply
#   sched     the billing schedule (`subscription_schedule`, `update_schedule`), or null for `once`
#   update    the item may be an existing one (items[n][id], /v1/subscription_items/{id}), whose quantity
#             stays what it was when the request does not set it
#   existing  the request changes an existing item whatever its fields say (/v1/subscription_items/{id})
#   remove    items[n][deleted]=true with items[n][id] removes that item (POST /v1/subscriptions/{id} only)
once_ctx := {"kind": "once", "checkout": false, "sched": null, "update": false, "existing": false, "remove": false}

create_ctx := {"kind": "recurring", "checkout": false, "sched": schedule, "update": false, "existing": false, "remove": false}

update_ctx := {"kind": "recurring", "checkout": false, "sched": update_schedule, "update": true, "existing": false, "remove": true}

item_route_ctx := {"kind": "recurring", "checkout": false, "sched": update_schedule, "update": true, "existing": existing_item_route, "remove": false}

# Checkout in payment mode bills once; in subscription mode (or without a mode, which an older API version may
# read from the prices) recurring prices recur.
checkout_ctx := {"kind": "once", "checkout": true, "sched": null, "update": false, "existing": false, "remove": false} if {
	lib.get(data.tollgate.lib.body, "mode") == "payment"
} else := {"kind": "either", "checkout": true, "sched": schedule, "update": false, "existing": false, "remove": false}

link_ctx := {"kind": "either", "checkout": true, "sched": schedule, "update": false, "existing": false, "remove": false}

# item_lines(key, items, ctx): one line per element of a Stripe list (items[0][...], items[1][...]).
item_lines(key, items, ctx) := [{"what": key, "malformed": sprintf("%s must be a list (%s[0][price]=...), not %s", [key, key, lib.show(items)])}] if {
	items != null
	not is_array(items)
} else := [line |
	some i, item in items
	line := priced_item(sprintf("%s[%d]", [key, i]), item, ctx)
] if {
	is_array(items)
}

else := []

# priced_item(what, item, ctx): item_line, or, should it ever be undefined, a line that needs a human (an
# undefined line would otherwise drop the item from the charge).
priced_item(what, item, ctx) := line if {
	line := item_line(what, item, ctx)
	is_object(line)
} else := {"what": what, "unpriced": "the policy could not price it"}

# item_line(what, item, ctx): what an item bills: price x quantity, times the billings in the window.
item_line(what, item, ctx) := {"what": what, "malformed": sprintf("%s must be an object with price or price_data and quantity, not %s", [what, lib.show(item)])} if {
	not is_object(item)
} else := {"what": what, "cents": 0} if {
	# items[n][deleted]=true with items[n][id] removes that existing item from the subscription being updated:
	# it adds nothing. Anywhere else `deleted` removes nothing, and the item is priced as if it were absent;
	# so is a deleted item that also sets a price (priced as a change of that item).
	ctx.remove == true
	item.deleted == "true"
	is_string(lib.get(item, "id"))
	not has_price(item)
} else := {"what": what, "malformed": sprintf("quantity must be a string of digits, not %s", [lib.show(item.quantity)])} if {
	lib.get(item, "quantity") != null
	not lib.form_int(item.quantity)
} else := {"what": what, "malformed": sprintf("adjustable_quantity[maximum] must be a string of digits, not %s", [lib.show(item.adjustable_quantity.maximum)])} if {
	lib.get(lib.get(item, "adjustable_quantity"), "maximum") != null
	not lib.form_int(item.adjustable_quantity.maximum)
} else := {"what": what, "unpriced": "it changes an existing subscription item and keeps its current quantity, which is not in the request"} if {
	ctx.update == true
	lib.get(item, "quantity") == null
	changes_existing(item, ctx)
	has_price(item)
} else := charge_line(what, price_of(item), quantity(item, ctx.checkout), ctx)

changes_existing(item, ctx) if ctx.existing == true

changes_existing(item, ctx) if lib.get(item, "id") != null

has_price(item) if lib.get(item, "price") != null

has_price(item) if lib.get(item, "price_data") != null

has_price(item) if lib.get(item, "plan") != null

# adjustable_quantity[enabled] counts as on unless it is "false".
adjustable(item) if {
	e := lib.get(lib.get(item, "adjustable_quantity"), "enabled")
	e != null
	e != "false"
}

# How many units are charged: the payer's maximum when Checkout lets them adjust it, else quantity, else 1.
quantity(item, checkout) := n if {
	checkout
	adjustable(item)
	n := lib.form_int(item.adjustable_quantity.maximum)
	is_number(n)
} else := data.prices.checkout_adjustable_max if {
	checkout
	adjustable(item)
} else := lib.form_int(item.quantity) if {
	lib.get(item, "quantity") != null
} else := 1

# charge_line(what, p, q, ctx): the line for q units of price p (`price_of`) in context ctx.
charge_line(what, p, q, ctx) := object.union({"what": what}, p) if {
	problem(p)
} else := in_usd(what, p.unit * q, p.currency) if {
	ctx.kind == "once"
} else := in_usd(what, p.unit * q, p.currency) if {
	ctx.kind == "either"
	p.recurring.once == true
} else := object.union({"what": what}, p.recurring.problem) if {
	is_object(p.recurring.problem)
} else := object.union({"what": what}, ctx.sched) if {
	problem(ctx.sched)
} else := in_usd(what, (p.unit * q) * charged_periods(p.recurring, ctx.sched), p.currency)

problem(o) if is_string(o.malformed)

problem(o) if is_string(o.unpriced)

# price_of(item): the item's unit price {"unit", "currency", "recurring"} (inline price_data, or a price id
# from prices/data.yaml), or a problem {"malformed"} / {"unpriced"}.
price_of(item) := {"malformed": sprintf("price_data must be an object, not %s", [lib.show(item.price_data)])} if {
	lib.get(item, "price_data") != null
	not is_object(item.price_data)
} else := {"malformed": sprintf("price_data[unit_amount] must be a string of digits, not %s", [lib.show(item.price_data.unit_amount)])} if {
	lib.get(item.price_data, "unit_amount") != null
	not lib.form_int(item.price_data.unit_amount)
} else := {"unit": lib.form_int(item.price_data.unit_amount), "currency": lib.get(item.price_data, "currency"), "recurring": inline_recurring(item.price_data)} if {
	lib.get(item.price_data, "unit_amount") != null
} else := {"unpriced": "price_data has no integer unit_amount (unit_amount_decimal or a custom amount cannot be priced)"} if {
	is_object(item.price_data)
} else := {"malformed": sprintf("price must be a price id string, not %s", [lib.show(item.price)])} if {
	lib.get(item, "price") != null
	not is_string(item.price)
} else := {"unit": p.unit_amount_cents, "currency": "usd", "recurring": data_recurring(item.price, p)} if {
	p := data.prices.stripe_prices[item.price]
	lib.is_int(p.unit_amount_cents)
} else := {"unpriced": sprintf("price %s is not in prices/data.yaml stripe_prices", [item.price])} if {
	is_string(item.price)
} else := {"unpriced": "it has neither price nor price_data, so its cost is not in the request"}

# How a price recurs: {"interval", "count"}; {"once": true, "problem"} for a one-time price (the problem is
# what it means where a recurring price is needed); or {"problem"} when how it recurs is bad or unknown.
intervals := {"day", "week", "month", "year"}

inline_recurring(pd) := {"once": true, "problem": {"malformed": "price_data has no recurring[interval], and a subscription needs a recurring price (price_data[recurring][interval]=day, week, month or year)"}} if {
	lib.get(pd, "recurring") == null
} else := {"problem": {"malformed": sprintf("price_data[recurring] must be an object with interval (day, week, month or year), not %s", [lib.show(pd.recurring)])}} if {
	not is_object(pd.recurring)
} else := {"problem": {"malformed": sprintf("price_data[recurring][interval] must be day, week, month or year, not %s", [lib.show(lib.get(pd.recurring, "interval"))])}} if {
	not lib.get(pd.recurring, "interval") in intervals
} else := {"problem": {"malformed": sprintf("price_data[recurring][interval_count] must be a positive integer (a string of digits such as \"3\"), not %s", [lib.show(pd.recurring.interval_count)])}} if {
	lib.get(pd.recurring, "interval_count") != null
	not positive_int(pd.recurring.interval_count)
} else := {"problem": {"unpriced": "the price is metered (recurring[usage_type]=metered): it bills reported usage, which is not in the request"}} if {
	lib.get(pd.recurring, "usage_type") == "metered"
} else := {"interval": pd.recurring.interval, "count": lib.form_int(pd.recurring.interval_count)} if {
	lib.get(pd.recurring, "interval_count") != null
} else := {"interval": pd.recurring.interval, "count": 1}

# A price from prices/data.yaml: `interval` (+ `interval_count`, default 1) for a recurring price;
# `one_time: true` or `interval: null` for a one-time price; neither: unknown.
data_recurring(id, p) := {"once": true, "problem": {"unpriced": sprintf("prices/data.yaml marks price %s one-time, and a subscription needs a recurring price (Stripe would refuse it; check the data)", [id])}} if {
	p.one_time == true
} else := {"once": true, "problem": {"unpriced": sprintf("prices/data.yaml marks price %s one-time, and a subscription needs a recurring price (Stripe would refuse it; check the data)", [id])}} if {
	"interval" in object.keys(p)
	p.interval == null
} else := {"interval": p.interval, "count": c} if {
	object.get(p, "interval", null) in intervals
	c := object.get(p, "interval_count", 1)
	lib.is_int(c)
	c >= 1
} else := {"problem": {"unpriced": sprintf("prices/data.yaml does not say how often price %s bills (interval day, week, month or year, integer interval_count >= 1; or one_time: true)", [id])}}

# --- Billing schedules ---------------------------------------------------------------------------------------
# Times are seconds since the epoch. The budget window is a UTC calendar month: [window_start, window_end).

# The request time and the window's end, each {"s": seconds, "months": `month_ceil`}; or {"unpriced"} when
# either is missing or not RFC 3339 (recurring money then needs a human, never a guess).
clock := {"now": {"s": now, "months": month_ceil(now_ns)}, "end": {"s": end, "months": month_ceil(end_ns)}} if {
	end_ns := lib.rfc3339_ns(input.spend.window_end)
	is_number(end_ns)
	now_ns := lib.rfc3339_ns(input.now)
	is_number(now_ns)
	now_ns < end_ns
	now := floor(now_ns / 1000000000)
	end := ceil(end_ns / 1000000000)
} else := {"unpriced": "the budget window's end (input.spend.window_end) is missing, not an RFC 3339 time, or not after input.now, so what a recurring price bills inside the window cannot be counted"}

# The schedule a recurring price bills on:
#   start    when the first paid period starts: the trial's end, else backdate_start_date, else now
#   back     backdate_start_date when a trial follows it (the backdated time is billed at once), else null
#   anchor   billing_cycle_anchor (seconds), or null
#   extra    one more period for a proration whose end is not in the request (an update's current period,
#            billing_cycle_anchor_config)
#   prorate  prorations are billed (not proration_behavior=none, or a backdated start: see README.md)
# or {"malformed"} / {"unpriced"}.

# New subscriptions read their own fields; Checkout and payment links read subscription_data.
schedule := subscription_schedule(data.tollgate.lib.body) if {
	input.action.name == "stripe.subscription.create"
} else := subscription_schedule(lib.get(data.tollgate.lib.body, "subscription_data"))

# A malformed schedule field is refused even when no item could be priced.
lines contains {"what": "schedule", "malformed": s.malformed} if {
	schedule_read
	s := schedule
	is_string(s.malformed)
}

schedule_read if input.action.name in {"stripe.subscription.create", "stripe.payment_link.create"}

schedule_read if {
	input.action.name == "stripe.checkout.create"
	lib.get(data.tollgate.lib.body, "mode") == "subscription"
}

subscription_schedule(f) := {"unpriced": clock.unpriced} if {
	is_string(clock.unpriced)
} else := {"malformed": timestamp_message("backdate_start_date", f)} if {
	not timestamp_or_absent(lib.get(f, "backdate_start_date"))
} else := {"malformed": timestamp_message("trial_end", f)} if {
	lib.get(f, "trial_end") != "now"
	not timestamp_or_absent(lib.get(f, "trial_end"))
} else := {"malformed": sprintf("trial_period_days must be a string of digits, not %s", [lib.show(lib.get(f, "trial_period_days"))])} if {
	lib.get(f, "trial_period_days") != null
	not lib.form_int(lib.get(f, "trial_period_days"))
} else := {"malformed": timestamp_message("billing_cycle_anchor", f)} if {
	not timestamp_or_absent(lib.get(f, "billing_cycle_anchor"))
} else := schedule_of(f, clock.now.s, backdate(f, clock.now.s), trial_start(f, clock.now.s))

schedule_of(f, now, cycle, trial) := {
	"start": first_paid(cycle, trial),
	"back": backdated_before_trial(cycle, trial, now),
	"anchor": anchor_of(f),
	"extra": has_object(f, "billing_cycle_anchor_config"),
	"prorate": prorates(f, first_paid(cycle, trial), now),
}

timestamp_message(key, f) := sprintf("%s must be a unix timestamp in seconds (a string of digits such as \"1798761600\")%s, not %s", [key, now_allowed(key), lib.show(lib.get(f, key))])

now_allowed(key) := " or \"now\"" if key == "trial_end"

else := ""

# A timestamp in a Stripe form: unix seconds as a string of digits, up to 2200-01-01 (where lib.rfc3339_ns
# stops too; Stripe accepts nothing that far out).
timestamp(v) := n if {
	n := lib.form_int(v)
	is_number(n)
	n <= 7258118400
}

timestamp_or_absent(v) if v == null

timestamp_or_absent(v) if {
	t := timestamp(v)
	is_number(t)
}

# The cycle start: backdate_start_date when it is in the past, else now.
backdate(f, now) := c if {
	c := timestamp(lib.get(f, "backdate_start_date"))
	is_number(c)
	c < now
} else := now

# The trial's end: trial_end when in the future, now + trial_period_days; the earlier of the two; null for no
# trial (trial_end=now or in the past, trial_period_days=0; trial_from_plan is not read: charging from now is
# the upper bound).
trial_start(f, now) := min(ends) if {
	ends := [t | some t in [trial_end_at(f, now), trial_days_end(f, now)]; t != null]
	count(ends) > 0
} else := null

trial_end_at(f, now) := t if {
	t := timestamp(lib.get(f, "trial_end"))
	is_number(t)
	t > now
} else := null

trial_days_end(f, now) := now + (d * 86400) if {
	d := lib.form_int(lib.get(f, "trial_period_days"))
	is_number(d)
	d > 0
} else := null

first_paid(cycle, trial) := trial if trial != null

else := cycle

backdated_before_trial(cycle, trial, now) := cycle if {
	trial != null
	cycle < now
} else := null

anchor_of(f) := a if {
	a := timestamp(lib.get(f, "billing_cycle_anchor"))
	is_number(a)
} else := null

has_object(f, key) := true if is_object(lib.get(f, key))

else := false

# proration_behavior=none drops the proration up to a future anchor, but never lowers a backdated start.
prorates(f, start, now) := true if start < now

else := false if lib.get(f, "proration_behavior") == "none"

else := true

# An update bills its items from now, plus one period: the proration for the rest of the subscription's
# current period, whose end is not in the request (none with proration_behavior=none).
update_schedule := {"unpriced": clock.unpriced} if {
	is_string(clock.unpriced)
} else := {"start": clock.now.s, "back": null, "anchor": null, "extra": true, "prorate": prorates(data.tollgate.lib.body, clock.now.s, clock.now.s)}

# charged_periods(r, s): the billings in the window, but at least one. A trial or an anchor past the window's
# end bills nothing this month and then bills every month through Stripe's own scheduler, which no request
# through tollgate judges: charging one period makes the cap (and the approval threshold) bound every new
# recurring commitment, not only the part that falls in this window.
charged_periods(r, s) := 1 if {
	n := billed(r, s)
	is_number(n)
	n < 1
} else := billed(r, s)

# billed(r, s): how many times a price recurring as r ({"interval", "count"}) bills inside the window under
# schedule s: the backdated periods before a trial, then from the first paid period to the window's end.
billed(r, s) := billings(r, s.back, clock.now) + from_start(r, s) if s.back != null

else := from_start(r, s)

# A future anchor: the first invoice prorates [start, anchor), then full periods bill from the anchor. Any other
# anchor (or one the request does not date): one more period for the proration, then periods from the start.
from_start(r, s) := anchor_proration(r, s) + billings(r, s.anchor, clock.end) if {
	s.anchor != null
	s.anchor > s.start
} else := extra_period(s) + billings(r, s.start, clock.end)

# The proration of [start, anchor), in full prices: no more than the periods that start in it (`billings`), nor
# than the shortest possible periods it spans. Billed with the first invoice, so only when that is in the window.
anchor_proration(r, s) := min([
	ceil((s.anchor - s.start) / shortest(r)),
	billings(r, s.start, {"s": s.anchor, "months": month_ceil(s.anchor * 1000000000)}),
]) if {
	s.prorate == true
	s.start < clock.end.s
} else := 0

extra_period(s) := 1 if {
	s.prorate == true
	s.start < clock.end.s
	s.extra == true
} else := 1 if {
	s.prorate == true
	s.start < clock.end.s
	s.anchor != null
} else := 0

# The shortest a period can be, in seconds: months of 28 days, years of 365.
shortest(r) := r.count * 86400 if r.interval == "day"

else := r.count * 604800 if r.interval == "week"

else := r.count * 2419200 if r.interval == "month"

else := r.count * 31536000

# billings(r, from, to): how many of the period starts from, from + p, from + 2p ... fall before `to`
# ({"s", "months"}). Days and weeks have fixed lengths (UTC). Months and years count calendar months, as if
# `from` were the first of its month: Stripe bills on the same day of the month (clamped to the month's end),
# so this never counts fewer billings than Stripe makes, and is exact for windows that are calendar months.
billings(r, from, to) := 0 if {
	from >= to.s
} else := ceil((to.s - from) / (r.count * 86400)) if {
	r.interval == "day"
} else := ceil((to.s - from) / (r.count * 604800)) if {
	r.interval == "week"
} else := ceil((to.months - month_index(from * 1000000000)) / r.count) if {
	r.interval == "month"
} else := ceil((to.months - month_index(from * 1000000000)) / (r.count * 12))

# month_index(ns): year x 12 + month - 1 of a time in nanoseconds (UTC).
month_index(ns) := ((d[0] * 12) + d[1]) - 1 if {
	d := time.date(ns)
	is_array(d)
}

# month_ceil(ns): the index of the first month that starts at or after ns: the periods of a monthly price
# that start before ns are those whose months are before this one.
month_ceil(ns) := month_index(ns) if {
	d := time.date(ns)
	d[2] == 1
	time.clock(ns) == [0, 0, 0]
	ns % 1000000000 == 0
} else := month_index(ns) + 1

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
} else := {"what": sprintf("registration of .%s", [suffix]), "unpriced": sprintf("prices/data.yaml has no registration price for .%s", [suffix])}

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
} else := {"what": sprintf("transfer of .%s", [suffix]), "unpriced": sprintf("prices/data.yaml has no renewal price for .%s", [suffix])}

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
	not is_string(lib.get(lib.get(body, "rate_plan"), "id"))
} else := {"what": what, "malformed": sprintf("frequency must be a string such as \"monthly\", not %s", [lib.show(body.frequency)])} if {
	lib.get(body, "frequency") != null
	not is_string(lib.get(body, "frequency"))
} else := {"what": sprintf("%s %s (%s)", [what, body.rate_plan.id, frequency(body)]), "cents": price} if {
	price := data.prices[table][body.rate_plan.id][frequency(body)]
	lib.is_int(price)
} else := {"what": sprintf("%s %s", [what, body.rate_plan.id]), "unpriced": sprintf("prices/data.yaml %s has no %s price for rate plan %s", [table, frequency(body), body.rate_plan.id])}

frequency(body) := body.frequency if is_string(body.frequency)

else := data.prices.default_frequency
