# Spend: charges in integer cents, the budget and cap, the $50 approval threshold, unpriced money, and types
# checked rather than coerced.
package tollgate_test.spend

import data.tollgate_test.fixtures as fx

check(name) if fx.check_case(cases[name])

usd(amount) := fx.payment({"amount": amount, "currency": "usd", "payment_method_types": ["card"]})

sub_update(path, params, body) := fx.stripe("POST", path, "stripe.subscription.update", params, body)

invoice_item(body) := fx.stripe("POST", "/v1/invoiceitems", "stripe.invoice.item", {}, body)

zone_plan(body) := fx.cf("POST", concat("", ["/zones/", fx.z1, "/subscription"]), "cloudflare.zone.plan", {"zone_id": fx.z1}, body)

account_sub(body) := fx.cf("POST", concat("", ["/accounts/", fx.acc, "/subscriptions"]), "cloudflare.account.subscription", {"account_id": fx.acc}, body)

# --- Recurring money: times and builders -------------------------------------------------------------------
# The window is November 2026 (fixtures: window_end 2026-12-01T00:00:00Z = 1796083200); `now` is
# 2026-11-30T12:00:00Z, half a day before its end, unless `early` moves it to 2026-11-03T12:00:00Z (27.5 days
# before the end). Stripe timestamps are unix seconds.
early_now := "2026-11-03T12:00:00Z"

early(inp) := fx.patch(inp, {"now": early_now})

t_year_ago := "1764504000" # 2025-11-30T12:00:00Z

t_nov_10 := "1794268800" # 2026-11-10T00:00:00Z

t_nov_20 := "1795132800" # 2026-11-20T00:00:00Z

t_dec_1 := "1796083200" # 2026-12-01T00:00:00Z, the window's end

t_dec_15 := "1797292800" # 2026-12-15T00:00:00Z

t_jan_1 := "1798761600" # 2027-01-01T00:00:00Z

# rp(cents, recurring): an inline usd price recurring as `recurring` ({"interval": ..., "interval_count": ...}).
rp(cents, recurring) := {"currency": "usd", "product": "prod_NWjs8kKbJWmuuc", "unit_amount": cents, "recurring": recurring}

# An inline one-time usd price.
once(cents) := {"currency": "usd", "product": "prod_setup", "unit_amount": cents}

daily(cents) := rp(cents, {"interval": "day"})

# sub(fields, items): a new subscription with these items and other fields.
sub(fields, items) := fx.subscription(object.union({"customer": "cus_123", "items": items}, fields))

# A single item of q units.
one(price, q) := [{"price_data": price, "quantity": q}]

item_create(body) := sub_update("/v1/subscription_items", {}, object.union({"subscription": "sub_1"}, body))

item_change(body) := sub_update("/v1/subscription_items/si_1", {"subscription_item_id": "si_1"}, body)

payment_link(body) := fx.stripe("POST", "/v1/payment_links", "stripe.payment_link.create", {}, body)

invoice_create(body) := fx.stripe("POST", "/v1/invoices", "stripe.invoice.create", {}, body)

# A Checkout session in payment mode with one $20 line item, and other fields.
shop(fields) := fx.checkout(object.union({"mode": "payment", "line_items": [{"price_data": once("2000"), "quantity": "1"}]}, fields))

# An inline usd shipping option.
ship(cents) := {"shipping_rate_data": {"display_name": "Shipping", "type": "fixed_amount", "fixed_amount": {"amount": cents, "currency": "usd"}}}

payment_link_update(body) := fx.stripe("POST", "/v1/payment_links/plink_1", "stripe.payment_link.update", {"payment_link_id": "plink_1"}, body)

# What the policy charges, also for a request it denies (the decision carries no charge then).
charged(inp) := c if {
	c := data.tollgate.spend.cents with input as inp
}

without_window_end(inp) := object.union(object.remove(inp, ["spend"]), {"spend": object.remove(inp.spend, ["window_end"])})

cases := {
	# --- Stripe payment intents ---
	"payment_small": {"input": usd("1999"), "outcome": "allow", "rules": [], "cents": 1999},
	"payment_leading_zeros": {"input": usd("0042"), "outcome": "allow", "rules": [], "cents": 42},
	"payment_at_threshold": {"input": usd("5000"), "outcome": "allow", "rules": [], "cents": 5000},
	"payment_60_dollars": {"input": usd("6000"), "outcome": "approve", "rules": ["spend.threshold"], "cents": 6000},
	"payment_above_cap": {"input": usd("10001"), "outcome": "deny", "rules": ["spend.cap"], "cents": null},
	"payment_upper_case_currency": {"input": fx.payment({"amount": "1000", "currency": "USD"}), "outcome": "allow", "rules": [], "cents": 1000},
	"payment_decimal_amount": {"input": usd("12.5"), "outcome": "deny", "rules": ["spend.malformed"]},
	"payment_negative_amount": {"input": usd("-3"), "outcome": "deny", "rules": ["spend.malformed"]},
	"payment_exponent_amount": {"input": usd("1e3"), "outcome": "deny", "rules": ["spend.malformed"]},
	"payment_empty_amount": {"input": usd(""), "outcome": "deny", "rules": ["spend.malformed"]},
	"payment_spaced_amount": {"input": usd(" 100"), "outcome": "deny", "rules": ["spend.malformed"]},
	"payment_json_number_amount": {"input": usd(1000), "outcome": "deny", "rules": ["spend.malformed"]},
	"payment_list_amount": {"input": usd(["1000"]), "outcome": "deny", "rules": ["spend.malformed"]},
	"payment_without_amount": {"input": fx.payment({"currency": "usd"}), "outcome": "deny", "rules": ["spend.malformed"]},
	"payment_without_currency": {"input": fx.payment({"amount": "1000"}), "outcome": "deny", "rules": ["spend.malformed"]},
	"payment_bad_currency": {"input": fx.payment({"amount": "1000", "currency": "dollars"}), "outcome": "deny", "rules": ["spend.malformed"]},
	"payment_in_eur_without_rate": {
		"input": fx.payment({"amount": "1000", "currency": "eur"}),
		"outcome": "approve", "rules": ["spend.unpriced"], "cents": null,
	},
	"payment_confirm": {
		"input": fx.stripe("POST", "/v1/payment_intents/pi_123/confirm", "stripe.payment.confirm", {"payment_intent_id": "pi_123"}, {"payment_method": "pm_card_visa"}),
		"outcome": "approve", "rules": ["spend.unpriced"], "cents": null,
	},
	"payment_capture": {
		"input": fx.stripe("POST", "/v1/payment_intents/pi_123/capture", "stripe.payment.capture", {"payment_intent_id": "pi_123"}, {"amount_to_capture": "1000"}),
		"outcome": "approve", "rules": ["spend.unpriced"], "cents": null,
	},
	# --- Stripe subscriptions ---
	"subscription_two_items": {
		"input": fx.subscription({"customer": "cus_123", "items": [{"price_data": fx.price_data("1500"), "quantity": "2"}, {"price_data": fx.price_data("500")}]}),
		"outcome": "allow", "rules": [], "cents": 3500,
	},
	"subscription_unknown_price_id": {
		"input": fx.subscription({"customer": "cus_123", "items": [{"price": "price_1PgafmB7WZ01zgkW", "quantity": "1"}]}),
		"outcome": "approve", "rules": ["spend.unpriced"], "cents": null,
	},
	"subscription_partly_priced": {
		"input": fx.subscription({"customer": "cus_123", "items": [{"price_data": fx.price_data("1000")}, {"price": "price_unknown"}]}),
		"outcome": "approve", "rules": ["spend.unpriced"], "cents": 1000,
	},
	"subscription_decimal_quantity": {
		"input": fx.subscription({"customer": "cus_123", "items": [{"price_data": fx.price_data("1500"), "quantity": "2.5"}]}),
		"outcome": "deny", "rules": ["spend.malformed"],
	},
	"subscription_bad_unit_amount": {
		"input": fx.subscription({"customer": "cus_123", "items": [{"price_data": fx.price_data("15.00")}]}),
		"outcome": "deny", "rules": ["spend.malformed"],
	},
	"subscription_unit_amount_decimal": {
		"input": fx.subscription({"customer": "cus_123", "items": [{"price_data": {"currency": "usd", "product": "prod_1", "unit_amount_decimal": "1500.5"}}]}),
		"outcome": "approve", "rules": ["spend.unpriced"], "cents": null,
	},
	"subscription_price_data_not_object": {
		"input": fx.subscription({"customer": "cus_123", "items": [{"price_data": "1500"}]}),
		"outcome": "deny", "rules": ["spend.malformed"],
	},
	"subscription_price_not_string": {
		"input": fx.subscription({"customer": "cus_123", "items": [{"price": {"id": "price_1"}}]}),
		"outcome": "deny", "rules": ["spend.malformed"],
	},
	"subscription_item_not_object": {
		"input": fx.subscription({"customer": "cus_123", "items": ["price_1"]}),
		"outcome": "deny", "rules": ["spend.malformed"],
	},
	"subscription_items_not_a_list": {
		"input": fx.subscription({"customer": "cus_123", "items": {"first": {"price_data": fx.price_data("100")}}}),
		"outcome": "deny", "rules": ["spend.malformed"],
	},
	"subscription_without_items": {
		"input": fx.subscription({"customer": "cus_123"}),
		"outcome": "deny", "rules": ["spend.malformed"],
	},
	"subscription_with_invoice_items": {
		"input": fx.subscription({"customer": "cus_123", "items": [{"price_data": fx.price_data("1000")}], "add_invoice_items": [{"price_data": {"currency": "usd", "product": "prod_setup", "unit_amount": "4500"}}]}),
		"outcome": "approve", "rules": ["spend.threshold"], "cents": 5500,
	},
	"subscription_update_without_items": {
		"input": sub_update("/v1/subscriptions/sub_1", {"subscription_id": "sub_1"}, {"billing_cycle_anchor": "now"}),
		"outcome": "approve", "rules": ["spend.unpriced"], "cents": null,
	},
	# The new item bills from now (one billing of a monthly price in what is left of November), plus one period
	# for the proration of the subscription's current period, whose end the request does not give; the
	# subscription's own tax settings are not in the request, so max_tax_rate (30%) is added: 2 x $15 x 1.3.
	# The removed item (deleted with its id) adds nothing.
	"subscription_update_swaps_items": {
		"input": sub_update("/v1/subscriptions/sub_1", {"subscription_id": "sub_1"}, {"items": [{"id": "si_old", "deleted": "true"}, {"price_data": fx.price_data("1500"), "quantity": "1"}]}),
		"outcome": "allow", "rules": [], "cents": 3900,
	},
	"subscription_update_quantity_only": {
		"input": sub_update("/v1/subscriptions/sub_1", {"subscription_id": "sub_1"}, {"items": [{"id": "si_1", "quantity": "5"}]}),
		"outcome": "approve", "rules": ["spend.unpriced"], "cents": null,
	},
	# 3 x $5, for now and the current period's proration, plus 30% tax: $39.
	"subscription_item_added": {
		"input": sub_update("/v1/subscription_items", {}, {"subscription": "sub_1", "price_data": fx.price_data("500"), "quantity": "3"}),
		"outcome": "allow", "rules": [], "cents": 3900,
	},
	"subscription_item_quantity_changed": {
		"input": sub_update("/v1/subscription_items/si_1", {"subscription_item_id": "si_1"}, {"quantity": "3"}),
		"outcome": "approve", "rules": ["spend.unpriced"], "cents": null,
	},
	# --- Stripe checkout and invoices ---
	"checkout_priced": {
		"input": fx.checkout({"mode": "payment", "success_url": "https://example.com/ok", "line_items": [{"price_data": {"currency": "usd", "product_data": {"name": "T-shirt"}, "unit_amount": "2000"}, "quantity": "1"}]}),
		"outcome": "allow", "rules": [], "cents": 2000,
	},
	"checkout_adjustable_quantity_default_max": {
		"input": fx.checkout({"mode": "payment", "line_items": [{"price_data": {"currency": "usd", "product_data": {"name": "T-shirt"}, "unit_amount": "100"}, "quantity": "1", "adjustable_quantity": {"enabled": "true"}}]}),
		"outcome": "approve", "rules": ["spend.threshold"], "cents": 9900,
	},
	"checkout_adjustable_quantity_max": {
		"input": fx.checkout({"mode": "payment", "line_items": [{"price_data": {"currency": "usd", "product_data": {"name": "T-shirt"}, "unit_amount": "100"}, "quantity": "1", "adjustable_quantity": {"enabled": "true", "maximum": "5"}}]}),
		"outcome": "allow", "rules": [], "cents": 500,
	},
	"checkout_adjustable_bad_max": {
		"input": fx.checkout({"mode": "payment", "line_items": [{"price_data": {"currency": "usd", "product_data": {"name": "T-shirt"}, "unit_amount": "100"}, "adjustable_quantity": {"enabled": "true", "maximum": "many"}}]}),
		"outcome": "deny", "rules": ["spend.malformed"],
	},
	"checkout_without_line_items": {
		"input": fx.checkout({"mode": "payment", "success_url": "https://example.com/ok"}),
		"outcome": "approve", "rules": ["spend.unpriced"], "cents": null,
	},
	"checkout_setup_mode": {
		"input": fx.checkout({"mode": "setup", "currency": "usd", "customer": "cus_123"}),
		"outcome": "allow", "rules": [], "cents": 0,
	},
	# An invoice item joins an invoice whose tax is not in the request: + 30%.
	"invoice_item_amount": {"input": invoice_item({"customer": "cus_123", "amount": "2500", "currency": "usd"}), "outcome": "allow", "rules": [], "cents": 3250},
	"invoice_item_bad_amount": {"input": invoice_item({"customer": "cus_123", "amount": "25.00", "currency": "usd"}), "outcome": "deny", "rules": ["spend.malformed"]},
	"invoice_item_price": {
		"input": invoice_item({"customer": "cus_123", "price_data": fx.price_data("1200"), "quantity": "2"}),
		"outcome": "allow", "rules": [], "cents": 3120,
	},
	"invoice_item_no_price": {
		"input": invoice_item({"customer": "cus_123", "description": "consulting"}),
		"outcome": "approve", "rules": ["spend.unpriced"], "cents": null,
	},
	"invoice_finalize": {
		"input": fx.stripe("POST", "/v1/invoices/in_1/finalize", "stripe.invoice.finalize", {"invoice_id": "in_1"}, null),
		"outcome": "approve", "rules": ["spend.unpriced"], "cents": null,
	},
	"invoice_pay": {
		"input": fx.stripe("POST", "/v1/invoices/in_1/pay", "stripe.invoice.pay", {"invoice_id": "in_1"}, null),
		"outcome": "approve", "rules": ["spend.unpriced"], "cents": null,
	},
	# --- Cloudflare plans and subscriptions ---
	"zone_plan_pro_monthly": {"input": zone_plan({"rate_plan": {"id": "pro"}, "frequency": "monthly"}), "outcome": "allow", "rules": [], "cents": 2500},
	"zone_plan_default_frequency": {"input": zone_plan({"rate_plan": {"id": "pro"}}), "outcome": "allow", "rules": [], "cents": 2500},
	"zone_plan_free": {"input": zone_plan({"rate_plan": {"id": "free"}}), "outcome": "allow", "rules": [], "cents": 0},
	"zone_plan_pro_yearly": {"input": zone_plan({"rate_plan": {"id": "pro"}, "frequency": "yearly"}), "outcome": "deny", "rules": ["spend.cap"]},
	"zone_plan_business": {"input": zone_plan({"rate_plan": {"id": "business"}, "frequency": "monthly"}), "outcome": "deny", "rules": ["spend.cap"]},
	"zone_plan_unpriced": {"input": zone_plan({"rate_plan": {"id": "enterprise"}}), "outcome": "approve", "rules": ["spend.unpriced"], "cents": null},
	"zone_plan_id_not_string": {"input": zone_plan({"rate_plan": {"id": 2}}), "outcome": "deny", "rules": ["spend.malformed"]},
	"zone_plan_without_rate_plan": {"input": zone_plan({"frequency": "monthly"}), "outcome": "deny", "rules": ["spend.malformed"]},
	"zone_plan_frequency_not_string": {"input": zone_plan({"rate_plan": {"id": "pro"}, "frequency": 12}), "outcome": "deny", "rules": ["spend.malformed"]},
	"account_subscription_workers_paid": {
		"input": account_sub({"rate_plan": {"id": "workers_paid"}, "frequency": "monthly"}),
		"outcome": "allow", "rules": [], "cents": 500,
	},
	"account_subscription_unpriced": {
		"input": account_sub({"rate_plan": {"id": "workers_paid"}, "frequency": "yearly"}),
		"outcome": "approve", "rules": ["spend.unpriced"], "cents": null,
	},
	# --- Recurring money: the most a request can bill inside the window -----------------------------------
	# The confirmed attack: $49.99 a day from Nov 3 12:00 bills 28 times before Dec 1 (27.5 days), $1,399.72.
	"attack_daily_item_from_nov_3": {
		"input": early(sub({}, one(daily("4999"), "1"))),
		"outcome": "deny", "rules": ["spend.cap"],
	},
	# Half a day before the window's end a daily price still bills once.
	"daily_at_month_end": {"input": sub({}, one(daily("4999"), "1")), "outcome": "allow", "rules": [], "cents": 4999},
	# interval_count: every 3 days from Nov 3 12:00: Nov 3, 6, ... 30: 10 billings.
	"every_three_days": {
		"input": early(sub({}, one(rp("100", {"interval": "day", "interval_count": "3"}), "2"))),
		"outcome": "allow", "rules": [], "cents": 2000,
	},
	# Weekly: Nov 3, 10, 17, 24 (4 billings); every 2 weeks: Nov 3, 17 (2).
	"weekly": {"input": early(sub({}, one(rp("500", {"interval": "week"}), "1"))), "outcome": "allow", "rules": [], "cents": 2000},
	"every_two_weeks": {
		"input": early(sub({}, one(rp("500", {"interval": "week", "interval_count": "2"}), "1"))),
		"outcome": "allow", "rules": [], "cents": 1000,
	},
	# Monthly and yearly bill once in a calendar month, whatever their interval_count.
	"monthly": {"input": early(sub({}, one(rp("1500", {"interval": "month"}), "2"))), "outcome": "allow", "rules": [], "cents": 3000},
	"quarterly": {
		"input": early(sub({}, one(rp("1500", {"interval": "month", "interval_count": "3"}), "1"))),
		"outcome": "allow", "rules": [], "cents": 1500,
	},
	"yearly": {
		"input": early(sub({}, one(rp("9000", {"interval": "year", "interval_count": "2"}), "1"))),
		"outcome": "approve", "rules": ["spend.threshold"], "cents": 9000,
	},
	# Mixed intervals: each item on its own interval.
	"daily_and_monthly_items": {
		"input": early(sub({}, [{"price_data": daily("100"), "quantity": "1"}, {"price_data": rp("1000", {"interval": "month"}), "quantity": "1"}])),
		"outcome": "allow", "rules": [], "cents": 3800,
	},
	# Backdated a year, monthly: Nov 30 2025, Dec 30, ... Nov 30 2026: 13 billings on the first invoice.
	"backdated_a_year_monthly": {
		"input": sub({"backdate_start_date": t_year_ago}, one(rp("500", {"interval": "month"}), "1")),
		"outcome": "approve", "rules": ["spend.threshold"], "cents": 6500,
	},
	# proration_behavior=none does not lower a backdated charge (the upper bound is kept).
	"backdated_a_year_no_proration": {
		"input": sub({"backdate_start_date": t_year_ago, "proration_behavior": "none"}, one(rp("500", {"interval": "month"}), "1")),
		"outcome": "approve", "rules": ["spend.threshold"], "cents": 6500,
	},
	# Backdated a year, daily: 366 billings (365.5 days to the window's end).
	"backdated_a_year_daily": {
		"input": sub({"backdate_start_date": t_year_ago}, one(daily("10"), "1")),
		"outcome": "allow", "rules": [], "cents": 3660,
	},
	# A "backdate" in the future is not a backdate: billing starts now.
	"backdate_in_the_future": {
		"input": early(sub({"backdate_start_date": t_nov_20}, one(daily("100"), "1"))),
		"outcome": "allow", "rules": [], "cents": 2800,
	},
	# A trial that ends after the window bills nothing in it (add_invoice_items still bill at once).
	"trial_beyond_window": {
		"input": early(sub({"trial_end": t_jan_1, "add_invoice_items": [{"price_data": once("1200")}]}, one(daily("4999"), "1"))),
		"outcome": "approve", "rules": ["spend.threshold"], "cents": 6199,
	},
	# A trial that ends Nov 20 00:00: daily billings Nov 20 ... Nov 30 (11).
	"trial_within_window": {
		"input": early(sub({"trial_end": t_nov_20}, one(daily("100"), "1"))),
		"outcome": "allow", "rules": [], "cents": 1100,
	},
	# trial_end=now (or in the past) is no trial.
	"trial_end_now": {"input": early(sub({"trial_end": "now"}, one(daily("100"), "1"))), "outcome": "allow", "rules": [], "cents": 2800},
	"trial_end_past": {"input": sub({"trial_end": t_nov_20}, one(daily("100"), "1")), "outcome": "allow", "rules": [], "cents": 100},
	# trial_period_days=14 from Nov 3 12:00: paid from Nov 17 12:00, 14 daily billings; 30 days: none.
	"trial_period_days": {
		"input": early(sub({"trial_period_days": "14"}, one(daily("100"), "1"))),
		"outcome": "allow", "rules": [], "cents": 1400,
	},
	"trial_period_days_beyond_window": {
		"input": early(sub({"trial_period_days": "30"}, one(rp("4000", {"interval": "month"}), "1"))),
		"outcome": "allow", "rules": [], "cents": 4000,
	},
	# The earlier of trial_end and trial_period_days counts.
	"trial_end_and_days": {
		"input": early(sub({"trial_end": t_jan_1, "trial_period_days": "14"}, one(daily("100"), "1"))),
		"outcome": "allow", "rules": [], "cents": 1400,
	},
	# trial_from_plan is not read: charging from now is the upper bound.
	"trial_from_plan": {
		"input": early(sub({"trial_from_plan": "true"}, one(daily("100"), "1"))),
		"outcome": "allow", "rules": [], "cents": 2800,
	},
	# Backdated, then a trial: the backdated year (13 monthly billings) is billed at once; the trial ends after
	# the window.
	"backdated_then_trial": {
		"input": sub({"backdate_start_date": t_year_ago, "trial_end": t_jan_1}, one(rp("500", {"interval": "month"}), "1")),
		"outcome": "approve", "rules": ["spend.threshold"], "cents": 6500,
	},
	# billing_cycle_anchor Nov 10 00:00, weekly: the proration of Nov 3 12:00 - Nov 10 counts as one period, then
	# Nov 10, 17, 24: 4 x $10. With proration_behavior=none the proration is dropped: 3 x $10.
	"anchor_with_proration": {
		"input": early(sub({"billing_cycle_anchor": t_nov_10}, one(rp("1000", {"interval": "week"}), "1"))),
		"outcome": "allow", "rules": [], "cents": 4000,
	},
	"anchor_without_proration": {
		"input": early(sub({"billing_cycle_anchor": t_nov_10, "proration_behavior": "none"}, one(rp("1000", {"interval": "week"}), "1"))),
		"outcome": "allow", "rules": [], "cents": 3000,
	},
	# Anchored on the window's end, monthly: only the proration bills in November, and with none nothing does.
	"anchor_at_window_end": {
		"input": early(sub({"billing_cycle_anchor": t_dec_1}, one(rp("3000", {"interval": "month"}), "1"))),
		"outcome": "allow", "rules": [], "cents": 3000,
	},
	"anchor_at_window_end_without_proration": {
		"input": early(sub({"billing_cycle_anchor": t_dec_1, "proration_behavior": "none"}, one(rp("3000", {"interval": "month"}), "1"))),
		"outcome": "allow", "rules": [], "cents": 3000,
	},
	# An anchor the request does not date (billing_cycle_anchor_config): one more period for the proration.
	"anchor_config": {
		"input": early(sub({"billing_cycle_anchor_config": {"day_of_month": "15"}}, one(rp("1000", {"interval": "month"}), "1"))),
		"outcome": "allow", "rules": [], "cents": 2000,
	},
	# add_invoice_items bill once, next to the recurring items.
	"add_invoice_items_once": {
		"input": early(sub({"add_invoice_items": [{"price_data": once("700"), "quantity": "2"}]}, one(daily("100"), "1"))),
		"outcome": "allow", "rules": [], "cents": 4200,
	},
	# Subscription items need recurring prices; a one-time inline price is refused.
	"interval_unknown": {"input": sub({}, one(rp("1000", {"interval": "fortnight"}), "1")), "outcome": "deny", "rules": ["spend.malformed"]},
	"interval_missing": {"input": sub({}, one(rp("1000", {"interval_count": "2"}), "1")), "outcome": "deny", "rules": ["spend.malformed"]},
	"interval_count_zero": {"input": sub({}, one(rp("1000", {"interval": "day", "interval_count": "0"}), "1")), "outcome": "deny", "rules": ["spend.malformed"]},
	"interval_count_decimal": {"input": sub({}, one(rp("1000", {"interval": "day", "interval_count": "1.5"}), "1")), "outcome": "deny", "rules": ["spend.malformed"]},
	"recurring_not_object": {"input": sub({}, one(rp("1000", "day"), "1")), "outcome": "deny", "rules": ["spend.malformed"]},
	"metered_price": {
		"input": sub({}, one(rp("1", {"interval": "month", "usage_type": "metered"}), "1")),
		"outcome": "approve", "rules": ["spend.unpriced"], "cents": null,
	},
	# Timestamps are unix seconds as digits (trial_end may also be "now"); anything else is refused.
	"trial_end_malformed": {"input": sub({"trial_end": "tomorrow"}, one(daily("100"), "1")), "outcome": "deny", "rules": ["spend.malformed"]},
	"backdate_malformed": {"input": sub({"backdate_start_date": "2025-11-30"}, one(daily("100"), "1")), "outcome": "deny", "rules": ["spend.malformed"]},
	"backdate_not_string": {"input": sub({"backdate_start_date": 1764504000}, one(daily("100"), "1")), "outcome": "deny", "rules": ["spend.malformed"]},
	"anchor_now_on_create": {"input": sub({"billing_cycle_anchor": "now"}, one(daily("100"), "1")), "outcome": "deny", "rules": ["spend.malformed"]},
	"anchor_too_far": {"input": sub({"billing_cycle_anchor": "99999999999"}, one(daily("100"), "1")), "outcome": "deny", "rules": ["spend.malformed"]},
	"trial_period_days_malformed": {"input": sub({"trial_period_days": "7.5"}, one(daily("100"), "1")), "outcome": "deny", "rules": ["spend.malformed"]},
	# A malformed schedule is refused even when the items could not be priced anyway.
	"trial_end_malformed_unknown_price": {
		"input": sub({"trial_end": "soon"}, [{"price": "price_unknown", "quantity": "1"}]),
		"outcome": "deny", "rules": ["spend.malformed"],
	},
	# Without the window's end, recurring money needs a human; one-off money is still priced.
	"window_end_missing": {
		"input": without_window_end(sub({"add_invoice_items": [{"price_data": once("700")}]}, one(daily("100"), "1"))),
		"outcome": "approve", "rules": ["spend.unpriced"], "cents": 700,
	},
	"window_end_malformed": {
		"input": fx.patch(sub({}, one(daily("100"), "1")), {"spend": {"window_end": "2026-12"}}),
		"outcome": "approve", "rules": ["spend.unpriced"], "cents": null,
	},
	"window_end_before_now": {
		"input": fx.patch(sub({}, one(daily("100"), "1")), {"spend": {"window_end": "2026-11-30T00:00:00Z"}}),
		"outcome": "approve", "rules": ["spend.unpriced"], "cents": null,
	},
	"payment_without_window_end": {"input": without_window_end(usd("1999")), "outcome": "allow", "rules": [], "cents": 1999},
	# --- Recurring money on updates -----------------------------------------------------------------------
	# /v1/subscription_items: the daily price from Nov 3 12:00 (28 billings) plus the current period's
	# proration (one more): 29 x $1, plus 30% for the subscription's tax (not in the request). proration_behavior=none
	# drops the proration.
	"subscription_item_daily": {
		"input": early(item_create({"price_data": daily("100"), "quantity": "1"})),
		"outcome": "allow", "rules": [], "cents": 3770,
	},
	"subscription_item_daily_no_proration": {
		"input": early(item_create({"price_data": daily("100"), "quantity": "1", "proration_behavior": "none"})),
		"outcome": "allow", "rules": [], "cents": 3640,
	},
	"subscription_item_daily_attack": {
		"input": early(item_create({"price_data": daily("4999"), "quantity": "1", "proration_date": t_dec_1})),
		"outcome": "deny", "rules": ["spend.cap"],
	},
	"subscription_item_without_window_end": {
		"input": without_window_end(item_create({"price_data": daily("100"), "quantity": "1"})),
		"outcome": "approve", "rules": ["spend.unpriced"], "cents": null,
	},
	"subscription_item_one_time_price": {"input": item_create({"price_data": once("100")}), "outcome": "deny", "rules": ["spend.malformed"]},
	# Changing an item's price without its quantity keeps a quantity the request does not give.
	"subscription_item_price_changed_keeps_quantity": {
		"input": item_change({"price_data": daily("100")}),
		"outcome": "approve", "rules": ["spend.unpriced"], "cents": null,
	},
	"subscription_item_price_and_quantity_changed": {
		"input": item_change({"price_data": daily("100"), "quantity": "2"}),
		"outcome": "allow", "rules": [], "cents": 520,
	},
	"subscription_update_item_keeps_quantity": {
		"input": sub_update("/v1/subscriptions/sub_1", {"subscription_id": "sub_1"}, {"items": [{"id": "si_1", "price_data": daily("100")}]}),
		"outcome": "approve", "rules": ["spend.unpriced"], "cents": null,
	},
	"subscription_update_daily_item": {
		"input": early(sub_update("/v1/subscriptions/sub_1", {"subscription_id": "sub_1"}, {"items": [{"price_data": daily("100"), "quantity": "1"}], "add_invoice_items": [{"price_data": once("500")}]})),
		"outcome": "allow", "rules": [], "cents": 4420,
	},
	# billing_cycle_anchor=now (or trial_end=now) invoices the items the request does not name too.
	"subscription_update_anchor_now_with_items": {
		"input": sub_update("/v1/subscriptions/sub_1", {"subscription_id": "sub_1"}, {"billing_cycle_anchor": "now", "items": [{"price_data": fx.price_data("1000"), "quantity": "1"}]}),
		"outcome": "approve", "rules": ["spend.unpriced"], "cents": 2600,
	},
	"subscription_update_add_invoice_items_only": {
		"input": sub_update("/v1/subscriptions/sub_1", {"subscription_id": "sub_1"}, {"add_invoice_items": [{"price_data": once("900")}]}),
		"outcome": "allow", "rules": [], "cents": 1170,
	},
	# --- Checkout in subscription mode and payment links --------------------------------------------------
	"checkout_subscription_mode": {
		"input": early(fx.checkout({"mode": "subscription", "line_items": [{"price_data": daily("100"), "quantity": "1"}, {"price_data": once("500"), "quantity": "1"}]})),
		"outcome": "allow", "rules": [], "cents": 3300,
	},
	"checkout_subscription_trial": {
		"input": early(fx.checkout({"mode": "subscription", "subscription_data": {"trial_period_days": "30"}, "line_items": [{"price_data": daily("100"), "quantity": "1"}, {"price_data": once("500"), "quantity": "1"}]})),
		"outcome": "allow", "rules": [], "cents": 600,
	},
	"checkout_subscription_anchor": {
		"input": early(fx.checkout({"mode": "subscription", "subscription_data": {"billing_cycle_anchor": t_nov_10, "proration_behavior": "none"}, "line_items": [{"price_data": rp("1000", {"interval": "week"}), "quantity": "1"}]})),
		"outcome": "allow", "rules": [], "cents": 3000,
	},
	"checkout_subscription_adjustable_quantity": {
		"input": fx.checkout({"mode": "subscription", "line_items": [{"price_data": fx.price_data("100"), "quantity": "1", "adjustable_quantity": {"enabled": "true", "maximum": "20"}}]}),
		"outcome": "allow", "rules": [], "cents": 2000,
	},
	"checkout_subscription_bad_trial": {
		"input": fx.checkout({"mode": "subscription", "subscription_data": {"trial_end": "next week"}, "line_items": [{"price_data": fx.price_data("100"), "quantity": "1"}]}),
		"outcome": "deny", "rules": ["spend.malformed"],
	},
	"checkout_subscription_without_window_end": {
		"input": without_window_end(fx.checkout({"mode": "subscription", "line_items": [{"price_data": fx.price_data("100"), "quantity": "1"}]})),
		"outcome": "approve", "rules": ["spend.unpriced"], "cents": null,
	},
	"payment_link_without_limit": {
		"input": payment_link({"line_items": [{"price_data": once("1000"), "quantity": "1"}]}),
		"outcome": "approve", "rules": ["spend.unpriced"], "cents": null,
	},
	"payment_link_limited": {
		"input": payment_link({"line_items": [{"price_data": once("1000"), "quantity": "1"}], "restrictions": {"completed_sessions": {"limit": "3"}}}),
		"outcome": "allow", "rules": [], "cents": 3000,
	},
	# Each of the 2 sessions starts a weekly subscription: 4 billings from Nov 3 12:00.
	"payment_link_limited_subscription": {
		"input": early(payment_link({"line_items": [{"price_data": rp("1000", {"interval": "week"}), "quantity": "1"}], "restrictions": {"completed_sessions": {"limit": "2"}}})),
		"outcome": "approve", "rules": ["spend.threshold"], "cents": 8000,
	},
	"payment_link_limited_trial": {
		"input": early(payment_link({"line_items": [{"price_data": rp("1000", {"interval": "week"}), "quantity": "1"}], "subscription_data": {"trial_period_days": "30"}, "restrictions": {"completed_sessions": {"limit": "2"}}})),
		"outcome": "allow", "rules": [], "cents": 2000,
	},
	"payment_link_over_the_cap": {
		"input": payment_link({"line_items": [{"price_data": once("1000"), "quantity": "1", "adjustable_quantity": {"enabled": "true"}}], "restrictions": {"completed_sessions": {"limit": "1"}}}),
		"outcome": "deny", "rules": ["spend.cap"],
	},
	"payment_link_bad_limit": {
		"input": payment_link({"line_items": [{"price_data": once("1000"), "quantity": "1"}], "restrictions": {"completed_sessions": {"limit": "0"}}}),
		"outcome": "deny", "rules": ["spend.malformed"],
	},
	"payment_link_without_line_items": {
		"input": payment_link({"restrictions": {"completed_sessions": {"limit": "3"}}}),
		"outcome": "deny", "rules": ["spend.malformed"],
	},
	"payment_link_unknown_price": {
		"input": payment_link({"line_items": [{"price": "price_unknown", "quantity": "1"}], "restrictions": {"completed_sessions": {"limit": "3"}}}),
		"outcome": "approve", "rules": ["spend.unpriced"], "cents": null,
	},
	"payment_link_deactivated": {"input": payment_link_update({"active": "false"}), "outcome": "allow", "rules": [], "cents": 0},
	"payment_link_reactivated": {"input": payment_link_update({"active": "true"}), "outcome": "approve", "rules": ["spend.unpriced"], "cents": null},
	"payment_link_deactivated_and_changed": {
		"input": payment_link_update({"active": "false", "restrictions": {"completed_sessions": {"limit": "1000"}}}),
		"outcome": "approve", "rules": ["spend.unpriced"], "cents": null,
	},
	"payment_link_without_scope": {
		"input": fx.patch(payment_link({"line_items": [{"price_data": once("1000"), "quantity": "1"}], "restrictions": {"completed_sessions": {"limit": "3"}}}), {"agent": {"scopes": ["dns:write"]}}),
		"outcome": "deny", "rules": ["scopes.missing"],
	},
	# --- Draft invoices (stripe.invoice.create) ------------------------------------------------------------
	# The red-team attack: an auto-advancing draft is finalized and charged about an hour later, for pending
	# items and shipping the request does not total; only an explicit auto_advance=false draft is free now.
	"invoice_create_auto_advance_attack": {
		"input": invoice_create({"customer": "cus_123", "auto_advance": "true", "collection_method": "charge_automatically", "shipping_cost": {"shipping_rate_data": {"display_name": "Freight", "type": "fixed_amount", "fixed_amount": {"amount": "999999", "currency": "usd"}}}}),
		"outcome": "approve", "rules": ["spend.unpriced"], "cents": null,
	},
	# Without auto_advance the default depends on the API version: it may advance.
	"invoice_create_auto_advance_absent": {
		"input": invoice_create({"customer": "cus_123"}),
		"outcome": "approve", "rules": ["spend.unpriced"], "cents": null,
	},
	"invoice_create_auto_advance_not_false": {
		"input": invoice_create({"customer": "cus_123", "auto_advance": "False"}),
		"outcome": "approve", "rules": ["spend.unpriced"], "cents": null,
	},
	"invoice_create_without_body": {
		"input": invoice_create(null),
		"outcome": "approve", "rules": ["spend.unpriced"], "cents": null,
	},
	"invoice_create_draft": {
		"input": invoice_create({"customer": "cus_123", "auto_advance": "false", "collection_method": "charge_automatically"}),
		"outcome": "allow", "rules": [], "cents": 0,
	},
	# Shipping and tax on a draft that cannot advance bill nothing until it is finalized (which needs a human).
	"invoice_create_draft_with_shipping_and_tax": {
		"input": invoice_create({"customer": "cus_123", "auto_advance": "false", "automatic_tax": {"enabled": "true"}, "shipping_cost": {"shipping_rate_data": {"display_name": "Freight", "type": "fixed_amount", "fixed_amount": {"amount": "999999", "currency": "usd"}}}}),
		"outcome": "allow", "rules": [], "cents": 0,
	},
	# A draft scheduled to finalize at a time advances by itself.
	"invoice_create_draft_finalizes_at": {
		"input": invoice_create({"customer": "cus_123", "auto_advance": "false", "automatically_finalizes_at": t_dec_1}),
		"outcome": "approve", "rules": ["spend.unpriced"], "cents": null,
	},
	# --- Checkout: shipping options and optional items -----------------------------------------------------
	# The payer picks a shipping option: the dearest is charged ($20 + $15).
	"checkout_shipping_dearest_option": {
		"input": shop({"shipping_options": [ship("0"), ship("1500"), ship("800")]}),
		"outcome": "allow", "rules": [], "cents": 3500,
	},
	"checkout_shipping_attack": {
		"input": shop({"shipping_options": [ship("0"), ship("999999")]}),
		"outcome": "deny", "rules": ["spend.cap"],
	},
	"checkout_shipping_in_eur": {
		"input": shop({"shipping_options": [{"shipping_rate_data": {"display_name": "Express", "type": "fixed_amount", "fixed_amount": {"amount": "1000", "currency": "eur"}}}]}),
		"outcome": "approve", "rules": ["spend.unpriced"], "cents": 2000,
	},
	# A shipping rate id not in prices/data.yaml needs a human; the dearest priced option is still counted.
	"checkout_shipping_rate_id_unknown": {
		"input": shop({"shipping_options": [{"shipping_rate": "shr_1QhGxpB7WZ01zgkW"}, ship("500")]}),
		"outcome": "approve", "rules": ["spend.unpriced"], "cents": 2500,
	},
	"checkout_shipping_currency_options": {
		"input": shop({"shipping_options": [{"shipping_rate_data": {"display_name": "Express", "type": "fixed_amount", "fixed_amount": {"amount": "100", "currency": "usd", "currency_options": {"eur": {"amount": "99999"}}}}}]}),
		"outcome": "approve", "rules": ["spend.unpriced"], "cents": 2000,
	},
	"checkout_shipping_bad_amount": {
		"input": shop({"shipping_options": [ship("15.00")]}),
		"outcome": "deny", "rules": ["spend.malformed"],
	},
	"checkout_shipping_without_amount": {
		"input": shop({"shipping_options": [{"shipping_rate_data": {"display_name": "Express", "type": "fixed_amount"}}]}),
		"outcome": "deny", "rules": ["spend.malformed"],
	},
	"checkout_shipping_not_a_list": {
		"input": shop({"shipping_options": {"first": ship("100")}}),
		"outcome": "deny", "rules": ["spend.malformed"],
	},
	"checkout_shipping_option_not_object": {
		"input": shop({"shipping_options": ["shr_1"]}),
		"outcome": "deny", "rules": ["spend.malformed"],
	},
	"checkout_shipping_option_empty": {
		"input": shop({"shipping_options": [{"display_name": "Express"}]}),
		"outcome": "deny", "rules": ["spend.malformed"],
	},
	"checkout_shipping_rate_not_string": {
		"input": shop({"shipping_options": [{"shipping_rate": {"id": "shr_1"}}]}),
		"outcome": "deny", "rules": ["spend.malformed"],
	},
	# Every optional item is charged as if taken, at its largest quantity: $20 + 4 x $5.
	"checkout_optional_items": {
		"input": shop({"optional_items": [{"price_data": once("500"), "quantity": "1", "adjustable_quantity": {"enabled": "true", "maximum": "4"}}]}),
		"outcome": "allow", "rules": [], "cents": 4000,
	},
	# An adjustable optional item without a maximum: Stripe's default of 99.
	"checkout_optional_items_default_max": {
		"input": shop({"optional_items": [{"price_data": once("100"), "quantity": "1", "adjustable_quantity": {"enabled": "true"}}]}),
		"outcome": "deny", "rules": ["spend.cap"],
	},
	"checkout_optional_items_quantity": {
		"input": shop({"optional_items": [{"price_data": once("500"), "quantity": "3"}, {"price_data": once("100"), "quantity": "2"}]}),
		"outcome": "allow", "rules": [], "cents": 3700,
	},
	# A price id not in prices/data.yaml needs a human, exactly as in line_items.
	"checkout_optional_items_unknown_price": {
		"input": shop({"optional_items": [{"price": "price_1PgafmB7WZ01zgkW", "quantity": "1"}]}),
		"outcome": "approve", "rules": ["spend.unpriced"], "cents": 2000,
	},
	"checkout_optional_items_not_a_list": {
		"input": shop({"optional_items": {"price": "price_1", "quantity": "1"}}),
		"outcome": "deny", "rules": ["spend.malformed"],
	},
	# In subscription mode a recurring optional item recurs: 28 daily billings from Nov 3 12:00.
	"checkout_optional_items_recurring": {
		"input": early(fx.checkout({"mode": "subscription", "line_items": [{"price_data": rp("1000", {"interval": "month"}), "quantity": "1"}], "optional_items": [{"price_data": daily("100"), "quantity": "1"}]})),
		"outcome": "allow", "rules": [], "cents": 3800,
	},
	# Payment links: line_items, every optional item and the dearest shipping option, times the session limit:
	# 2 x ($10 + $5 + $3).
	"payment_link_optional_items_and_shipping": {
		"input": payment_link({"line_items": [{"price_data": once("1000"), "quantity": "1"}], "optional_items": [{"price_data": once("500"), "quantity": "1"}], "shipping_options": [ship("300"), ship("100")], "restrictions": {"completed_sessions": {"limit": "2"}}}),
		"outcome": "allow", "rules": [], "cents": 3600,
	},
	"payment_link_shipping_attack": {
		"input": payment_link({"line_items": [{"price_data": once("1000"), "quantity": "1"}], "shipping_options": [ship("6000")], "restrictions": {"completed_sessions": {"limit": "2"}}}),
		"outcome": "deny", "rules": ["spend.cap"],
	},
	"payment_link_shipping_rate_id_unknown": {
		"input": payment_link({"line_items": [{"price_data": once("1000"), "quantity": "1"}], "shipping_options": [{"shipping_rate": "shr_1QhGxpB7WZ01zgkW"}], "restrictions": {"completed_sessions": {"limit": "2"}}}),
		"outcome": "approve", "rules": ["spend.unpriced"], "cents": 2000,
	},
	"payment_link_optional_item_adjustable": {
		"input": payment_link({"line_items": [{"price_data": once("100"), "quantity": "1"}], "optional_items": [{"price_data": once("100"), "quantity": "1", "adjustable_quantity": {"enabled": "true", "maximum": "10"}}], "restrictions": {"completed_sessions": {"limit": "3"}}}),
		"outcome": "allow", "rules": [], "cents": 3300,
	},
	"payment_link_optional_item_unknown_price": {
		"input": payment_link({"line_items": [{"price_data": once("1000"), "quantity": "1"}], "optional_items": [{"price": "price_unknown", "quantity": "1"}], "restrictions": {"completed_sessions": {"limit": "2"}}}),
		"outcome": "approve", "rules": ["spend.unpriced"], "cents": 2000,
	},
	# --- Tax: max_tax_rate (0.30) on the priced total wherever Stripe may add tax --------------------------
	# $45 a month is under the $50 threshold; with automatic tax it can bill up to $58.50.
	"subscription_automatic_tax": {
		"input": sub({"automatic_tax": {"enabled": "true"}}, one(rp("4500", {"interval": "month"}), "1")),
		"outcome": "approve", "rules": ["spend.threshold"], "cents": 5850,
	},
	"subscription_automatic_tax_off": {
		"input": sub({"automatic_tax": {"enabled": "false"}}, one(rp("4500", {"interval": "month"}), "1")),
		"outcome": "allow", "rules": [], "cents": 4500,
	},
	"subscription_default_tax_rates": {
		"input": sub({"default_tax_rates": ["txr_1"]}, one(rp("1000", {"interval": "month"}), "1")),
		"outcome": "allow", "rules": [], "cents": 1300,
	},
	# An empty default_tax_rates clears the list: no tax.
	"subscription_default_tax_rates_cleared": {
		"input": sub({"default_tax_rates": ""}, one(rp("1000", {"interval": "month"}), "1")),
		"outcome": "allow", "rules": [], "cents": 1000,
	},
	"subscription_item_tax_rates": {
		"input": sub({}, [{"price_data": rp("1000", {"interval": "month"}), "quantity": "1", "tax_rates": ["txr_1"]}]),
		"outcome": "allow", "rules": [], "cents": 1300,
	},
	# Tax on one-off items raises the whole total (rounded up): ($10 + $0.01) x 1.3.
	"subscription_add_invoice_items_tax_rates": {
		"input": sub({"add_invoice_items": [{"price_data": once("1"), "tax_rates": ["txr_1"]}]}, one(rp("1000", {"interval": "month"}), "1")),
		"outcome": "allow", "rules": [], "cents": 1302,
	},
	# Nothing priced in the window, nothing taxed.
	"subscription_taxed_trial": {
		"input": sub({"automatic_tax": {"enabled": "true"}, "trial_end": t_jan_1}, one(rp("4500", {"interval": "month"}), "1")),
		"outcome": "approve", "rules": ["spend.threshold"], "cents": 5850,
	},
	"checkout_automatic_tax": {
		"input": shop({"automatic_tax": {"enabled": "true"}}),
		"outcome": "allow", "rules": [], "cents": 2600,
	},
	"checkout_dynamic_tax_rates": {
		"input": fx.checkout({"mode": "payment", "line_items": [{"price_data": once("2000"), "quantity": "1", "dynamic_tax_rates": ["txr_1", "txr_2"]}]}),
		"outcome": "allow", "rules": [], "cents": 2600,
	},
	"checkout_subscription_default_tax_rates": {
		"input": fx.checkout({"mode": "subscription", "subscription_data": {"default_tax_rates": ["txr_1"]}, "line_items": [{"price_data": fx.price_data("2000"), "quantity": "1"}]}),
		"outcome": "allow", "rules": [], "cents": 2600,
	},
	# Tax on shipping too: ($20 + $15) x 1.3.
	"checkout_tax_and_shipping": {
		"input": shop({"automatic_tax": {"enabled": "true"}, "shipping_options": [ship("1500")]}),
		"outcome": "allow", "rules": [], "cents": 4550,
	},
	"payment_link_automatic_tax": {
		"input": payment_link({"line_items": [{"price_data": once("1000"), "quantity": "1"}], "automatic_tax": {"enabled": "true"}, "restrictions": {"completed_sessions": {"limit": "3"}}}),
		"outcome": "allow", "rules": [], "cents": 3900,
	},
	"invoice_item_tax_rates": {
		"input": invoice_item({"customer": "cus_123", "amount": "1000", "currency": "usd", "tax_rates": ["txr_1"]}),
		"outcome": "allow", "rules": [], "cents": 1300,
	},
	# A payment intent's amount is what is charged: no tax is added to it.
	"payment_not_taxed": {"input": usd("4000"), "outcome": "allow", "rules": [], "cents": 4000},
	# --- items[n][deleted] -------------------------------------------------------------------------------
	# The red-team attacks: `deleted` on a new subscription, on an update without an item id, and on
	# /v1/subscription_items removes nothing, so the item is priced: $40 a day from Nov 3 12:00.
	"deleted_on_create": {
		"input": early(sub({}, [{"deleted": "true", "price_data": daily("4000")}])),
		"outcome": "deny", "rules": ["spend.cap"],
	},
	"deleted_on_create_at_month_end": {
		"input": sub({}, [{"deleted": "true", "price_data": daily("4000"), "quantity": "1"}]),
		"outcome": "allow", "rules": [], "cents": 4000,
	},
	"deleted_on_update_without_id": {
		"input": early(sub_update("/v1/subscriptions/sub_1", {"subscription_id": "sub_1"}, {"items": [{"deleted": "true", "price_data": daily("4000")}]})),
		"outcome": "deny", "rules": ["spend.cap"],
	},
	# Half a day before the window's end: ($10 now + the current period's proration) x 1.3.
	"deleted_on_update_without_id_at_month_end": {
		"input": sub_update("/v1/subscriptions/sub_1", {"subscription_id": "sub_1"}, {"items": [{"deleted": "true", "price_data": daily("1000"), "quantity": "1"}]}),
		"outcome": "allow", "rules": [], "cents": 2600,
	},
	"deleted_on_subscription_item_create": {
		"input": item_create({"deleted": "true", "price_data": daily("4000"), "quantity": "1"}),
		"outcome": "deny", "rules": ["spend.cap"],
	},
	"deleted_on_subscription_item_change": {
		"input": item_change({"deleted": "true", "price_data": daily("1000"), "quantity": "1"}),
		"outcome": "allow", "rules": [], "cents": 2600,
	},
	# With an id but also a price, the item is priced as a change of that item: with its quantity ($10 now and
	# the current period's proration, plus 30% tax), or, without one, unpriced (the item keeps a quantity the
	# request does not give).
	"deleted_with_id_and_price": {
		"input": sub_update("/v1/subscriptions/sub_1", {"subscription_id": "sub_1"}, {"items": [{"id": "si_1", "deleted": "true", "price_data": daily("1000"), "quantity": "1"}]}),
		"outcome": "allow", "rules": [], "cents": 2600,
	},
	"deleted_with_id_and_price_keeps_quantity": {
		"input": sub_update("/v1/subscriptions/sub_1", {"subscription_id": "sub_1"}, {"items": [{"id": "si_1", "deleted": "true", "price_data": daily("1000")}]}),
		"outcome": "approve", "rules": ["spend.unpriced"], "cents": null,
	},
	"deleted_with_id_and_plan": {
		"input": sub_update("/v1/subscriptions/sub_1", {"subscription_id": "sub_1"}, {"items": [{"id": "si_1", "deleted": "true", "plan": "plan_gold", "quantity": "1"}]}),
		"outcome": "approve", "rules": ["spend.unpriced"], "cents": null,
	},
	# Removing an existing item, the only thing `deleted` means: nothing added.
	"deleted_removes_an_item": {
		"input": sub_update("/v1/subscriptions/sub_1", {"subscription_id": "sub_1"}, {"items": [{"id": "si_1", "deleted": "true", "clear_usage": "true"}]}),
		"outcome": "allow", "rules": [], "cents": 0,
	},
	"deleted_not_true": {
		"input": sub_update("/v1/subscriptions/sub_1", {"subscription_id": "sub_1"}, {"items": [{"id": "si_1", "deleted": "True"}]}),
		"outcome": "approve", "rules": ["spend.unpriced"], "cents": null,
	},
	"deleted_in_add_invoice_items": {
		"input": sub({"add_invoice_items": [{"deleted": "true", "price_data": once("4500")}]}, one(rp("1000", {"interval": "month"}), "1")),
		"outcome": "approve", "rules": ["spend.threshold"], "cents": 5500,
	},
	"deleted_in_checkout_line_items": {
		"input": fx.checkout({"mode": "payment", "line_items": [{"id": "li_1", "deleted": "true", "price_data": once("6000"), "quantity": "1"}]}),
		"outcome": "approve", "rules": ["spend.threshold"], "cents": 6000,
	},
	# --- Other money fields ---------------------------------------------------------------------------------
	# Checkout without a mode: a recurring price may recur (28 daily billings from Nov 3 12:00).
	"checkout_without_mode_recurring": {
		"input": early(fx.checkout({"line_items": [{"price_data": daily("100"), "quantity": "1"}]})),
		"outcome": "allow", "rules": [], "cents": 2800,
	},
	"checkout_without_mode_one_time": {
		"input": fx.checkout({"line_items": [{"price_data": once("2000"), "quantity": "1"}]}),
		"outcome": "allow", "rules": [], "cents": 2000,
	},
	"checkout_subscription_data_items": {
		"input": fx.checkout({"mode": "subscription", "line_items": [{"price_data": fx.price_data("1000"), "quantity": "1"}], "subscription_data": {"items": [{"plan": "plan_gold", "quantity": "1"}]}}),
		"outcome": "approve", "rules": ["spend.unpriced"], "cents": 1000,
	},
	# adjustable_quantity[enabled] is on unless it is "false".
	"checkout_adjustable_enabled_not_true": {
		"input": fx.checkout({"mode": "payment", "line_items": [{"price_data": once("100"), "quantity": "1", "adjustable_quantity": {"enabled": "1", "maximum": "30"}}]}),
		"outcome": "allow", "rules": [], "cents": 3000,
	},
	"checkout_adjustable_disabled": {
		"input": fx.checkout({"mode": "payment", "line_items": [{"price_data": once("100"), "quantity": "2", "adjustable_quantity": {"enabled": "false", "maximum": "30"}}]}),
		"outcome": "allow", "rules": [], "cents": 200,
	},
	"subscription_create_one_time_price": {"input": sub({}, one(once("1000"), "1")), "outcome": "deny", "rules": ["spend.malformed"]},
}

test_payment_small if check("payment_small")

test_payment_leading_zeros if check("payment_leading_zeros")

test_payment_at_threshold if check("payment_at_threshold")

test_payment_60_dollars if check("payment_60_dollars")

test_payment_above_cap if check("payment_above_cap")

test_payment_upper_case_currency if check("payment_upper_case_currency")

test_payment_decimal_amount if check("payment_decimal_amount")

test_payment_negative_amount if check("payment_negative_amount")

test_payment_exponent_amount if check("payment_exponent_amount")

test_payment_empty_amount if check("payment_empty_amount")

test_payment_spaced_amount if check("payment_spaced_amount")

test_payment_json_number_amount if check("payment_json_number_amount")

test_payment_list_amount if check("payment_list_amount")

test_payment_without_amount if check("payment_without_amount")

test_payment_without_currency if check("payment_without_currency")

test_payment_bad_currency if check("payment_bad_currency")

test_payment_in_eur_without_rate if check("payment_in_eur_without_rate")

test_payment_confirm if check("payment_confirm")

test_payment_capture if check("payment_capture")

test_subscription_two_items if check("subscription_two_items")

test_subscription_unknown_price_id if check("subscription_unknown_price_id")

test_subscription_partly_priced if check("subscription_partly_priced")

test_subscription_decimal_quantity if check("subscription_decimal_quantity")

test_subscription_bad_unit_amount if check("subscription_bad_unit_amount")

test_subscription_unit_amount_decimal if check("subscription_unit_amount_decimal")

test_subscription_price_data_not_object if check("subscription_price_data_not_object")

test_subscription_price_not_string if check("subscription_price_not_string")

test_subscription_item_not_object if check("subscription_item_not_object")

test_subscription_items_not_a_list if check("subscription_items_not_a_list")

test_subscription_without_items if check("subscription_without_items")

test_subscription_with_invoice_items if check("subscription_with_invoice_items")

test_subscription_update_without_items if check("subscription_update_without_items")

test_subscription_update_swaps_items if check("subscription_update_swaps_items")

test_subscription_update_quantity_only if check("subscription_update_quantity_only")

test_subscription_item_added if check("subscription_item_added")

test_subscription_item_quantity_changed if check("subscription_item_quantity_changed")

test_checkout_priced if check("checkout_priced")

test_checkout_adjustable_quantity_default_max if check("checkout_adjustable_quantity_default_max")

test_checkout_adjustable_quantity_max if check("checkout_adjustable_quantity_max")

test_checkout_adjustable_bad_max if check("checkout_adjustable_bad_max")

test_checkout_without_line_items if check("checkout_without_line_items")

test_checkout_setup_mode if check("checkout_setup_mode")

test_invoice_item_amount if check("invoice_item_amount")

test_invoice_item_bad_amount if check("invoice_item_bad_amount")

test_invoice_item_price if check("invoice_item_price")

test_invoice_item_no_price if check("invoice_item_no_price")

test_invoice_finalize if check("invoice_finalize")

test_invoice_pay if check("invoice_pay")

test_zone_plan_pro_monthly if check("zone_plan_pro_monthly")

test_zone_plan_default_frequency if check("zone_plan_default_frequency")

test_zone_plan_free if check("zone_plan_free")

test_zone_plan_pro_yearly if check("zone_plan_pro_yearly")

test_zone_plan_business if check("zone_plan_business")

test_zone_plan_unpriced if check("zone_plan_unpriced")

test_zone_plan_id_not_string if check("zone_plan_id_not_string")

test_zone_plan_without_rate_plan if check("zone_plan_without_rate_plan")

test_zone_plan_frequency_not_string if check("zone_plan_frequency_not_string")

test_account_subscription_workers_paid if check("account_subscription_workers_paid")

test_account_subscription_unpriced if check("account_subscription_unpriced")

test_attack_daily_item_from_nov_3 if check("attack_daily_item_from_nov_3")

test_daily_at_month_end if check("daily_at_month_end")

test_every_three_days if check("every_three_days")

test_weekly if check("weekly")

test_every_two_weeks if check("every_two_weeks")

test_monthly if check("monthly")

test_quarterly if check("quarterly")

test_yearly if check("yearly")

test_daily_and_monthly_items if check("daily_and_monthly_items")

test_backdated_a_year_monthly if check("backdated_a_year_monthly")

test_backdated_a_year_no_proration if check("backdated_a_year_no_proration")

test_backdated_a_year_daily if check("backdated_a_year_daily")

test_backdate_in_the_future if check("backdate_in_the_future")

test_trial_beyond_window if check("trial_beyond_window")

test_trial_within_window if check("trial_within_window")

test_trial_end_now if check("trial_end_now")

test_trial_end_past if check("trial_end_past")

test_trial_period_days if check("trial_period_days")

test_trial_period_days_beyond_window if check("trial_period_days_beyond_window")

test_trial_end_and_days if check("trial_end_and_days")

test_trial_from_plan if check("trial_from_plan")

test_backdated_then_trial if check("backdated_then_trial")

test_anchor_with_proration if check("anchor_with_proration")

test_anchor_without_proration if check("anchor_without_proration")

test_anchor_at_window_end if check("anchor_at_window_end")

test_anchor_at_window_end_without_proration if check("anchor_at_window_end_without_proration")

test_anchor_config if check("anchor_config")

test_add_invoice_items_once if check("add_invoice_items_once")

test_subscription_item_without_window_end if check("subscription_item_without_window_end")

test_interval_unknown if check("interval_unknown")

test_interval_missing if check("interval_missing")

test_interval_count_zero if check("interval_count_zero")

test_interval_count_decimal if check("interval_count_decimal")

test_recurring_not_object if check("recurring_not_object")

test_metered_price if check("metered_price")

test_trial_end_malformed if check("trial_end_malformed")

test_backdate_malformed if check("backdate_malformed")

test_backdate_not_string if check("backdate_not_string")

test_anchor_now_on_create if check("anchor_now_on_create")

test_anchor_too_far if check("anchor_too_far")

test_trial_period_days_malformed if check("trial_period_days_malformed")

test_trial_end_malformed_unknown_price if check("trial_end_malformed_unknown_price")

test_window_end_missing if check("window_end_missing")

test_window_end_malformed if check("window_end_malformed")

test_window_end_before_now if check("window_end_before_now")

test_payment_without_window_end if check("payment_without_window_end")

test_subscription_item_daily if check("subscription_item_daily")

test_subscription_item_daily_no_proration if check("subscription_item_daily_no_proration")

test_subscription_item_daily_attack if check("subscription_item_daily_attack")

test_subscription_item_without_window_end if check("subscription_item_without_window_end")

test_subscription_item_one_time_price if check("subscription_item_one_time_price")

test_subscription_item_price_changed_keeps_quantity if check("subscription_item_price_changed_keeps_quantity")

test_subscription_item_price_and_quantity_changed if check("subscription_item_price_and_quantity_changed")

test_subscription_update_item_keeps_quantity if check("subscription_update_item_keeps_quantity")

test_subscription_update_daily_item if check("subscription_update_daily_item")

test_subscription_update_anchor_now_with_items if check("subscription_update_anchor_now_with_items")

test_subscription_update_add_invoice_items_only if check("subscription_update_add_invoice_items_only")

test_checkout_subscription_mode if check("checkout_subscription_mode")

test_checkout_subscription_trial if check("checkout_subscription_trial")

test_checkout_subscription_anchor if check("checkout_subscription_anchor")

test_checkout_subscription_adjustable_quantity if check("checkout_subscription_adjustable_quantity")

test_checkout_subscription_bad_trial if check("checkout_subscription_bad_trial")

test_checkout_subscription_without_window_end if check("checkout_subscription_without_window_end")

test_payment_link_without_limit if check("payment_link_without_limit")

test_payment_link_limited if check("payment_link_limited")

test_payment_link_limited_subscription if check("payment_link_limited_subscription")

test_payment_link_limited_trial if check("payment_link_limited_trial")

test_payment_link_over_the_cap if check("payment_link_over_the_cap")

test_payment_link_bad_limit if check("payment_link_bad_limit")

test_payment_link_without_line_items if check("payment_link_without_line_items")

test_payment_link_unknown_price if check("payment_link_unknown_price")

test_payment_link_deactivated if check("payment_link_deactivated")

test_payment_link_reactivated if check("payment_link_reactivated")

test_payment_link_deactivated_and_changed if check("payment_link_deactivated_and_changed")

test_payment_link_without_scope if check("payment_link_without_scope")

test_invoice_create_auto_advance_attack if check("invoice_create_auto_advance_attack")

test_invoice_create_auto_advance_absent if check("invoice_create_auto_advance_absent")

test_invoice_create_auto_advance_not_false if check("invoice_create_auto_advance_not_false")

test_invoice_create_without_body if check("invoice_create_without_body")

test_invoice_create_draft if check("invoice_create_draft")

test_invoice_create_draft_with_shipping_and_tax if check("invoice_create_draft_with_shipping_and_tax")

test_invoice_create_draft_finalizes_at if check("invoice_create_draft_finalizes_at")

test_checkout_shipping_dearest_option if check("checkout_shipping_dearest_option")

test_checkout_shipping_attack if check("checkout_shipping_attack")

test_checkout_shipping_in_eur if check("checkout_shipping_in_eur")

test_checkout_shipping_rate_id_unknown if check("checkout_shipping_rate_id_unknown")

test_checkout_shipping_currency_options if check("checkout_shipping_currency_options")

test_checkout_shipping_bad_amount if check("checkout_shipping_bad_amount")

test_checkout_shipping_without_amount if check("checkout_shipping_without_amount")

test_checkout_shipping_not_a_list if check("checkout_shipping_not_a_list")

test_checkout_shipping_option_not_object if check("checkout_shipping_option_not_object")

test_checkout_shipping_option_empty if check("checkout_shipping_option_empty")

test_checkout_shipping_rate_not_string if check("checkout_shipping_rate_not_string")

test_checkout_optional_items if check("checkout_optional_items")

test_checkout_optional_items_default_max if check("checkout_optional_items_default_max")

test_checkout_optional_items_quantity if check("checkout_optional_items_quantity")

test_checkout_optional_items_unknown_price if check("checkout_optional_items_unknown_price")

test_checkout_optional_items_not_a_list if check("checkout_optional_items_not_a_list")

test_checkout_optional_items_recurring if check("checkout_optional_items_recurring")

test_payment_link_optional_items_and_shipping if check("payment_link_optional_items_and_shipping")

test_payment_link_shipping_attack if check("payment_link_shipping_attack")

test_payment_link_shipping_rate_id_unknown if check("payment_link_shipping_rate_id_unknown")

test_payment_link_optional_item_adjustable if check("payment_link_optional_item_adjustable")

test_payment_link_optional_item_unknown_price if check("payment_link_optional_item_unknown_price")

test_subscription_automatic_tax if check("subscription_automatic_tax")

test_subscription_automatic_tax_off if check("subscription_automatic_tax_off")

test_subscription_default_tax_rates if check("subscription_default_tax_rates")

test_subscription_default_tax_rates_cleared if check("subscription_default_tax_rates_cleared")

test_subscription_item_tax_rates if check("subscription_item_tax_rates")

test_subscription_add_invoice_items_tax_rates if check("subscription_add_invoice_items_tax_rates")

test_subscription_taxed_trial if check("subscription_taxed_trial")

test_checkout_automatic_tax if check("checkout_automatic_tax")

test_checkout_dynamic_tax_rates if check("checkout_dynamic_tax_rates")

test_checkout_subscription_default_tax_rates if check("checkout_subscription_default_tax_rates")

test_checkout_tax_and_shipping if check("checkout_tax_and_shipping")

test_payment_link_automatic_tax if check("payment_link_automatic_tax")

test_invoice_item_tax_rates if check("invoice_item_tax_rates")

test_payment_not_taxed if check("payment_not_taxed")

test_deleted_on_create if check("deleted_on_create")

test_deleted_on_create_at_month_end if check("deleted_on_create_at_month_end")

test_deleted_on_update_without_id if check("deleted_on_update_without_id")

test_deleted_on_update_without_id_at_month_end if check("deleted_on_update_without_id_at_month_end")

test_deleted_on_subscription_item_create if check("deleted_on_subscription_item_create")

test_deleted_on_subscription_item_change if check("deleted_on_subscription_item_change")

test_deleted_with_id_and_price if check("deleted_with_id_and_price")

test_deleted_with_id_and_price_keeps_quantity if check("deleted_with_id_and_price_keeps_quantity")

test_deleted_with_id_and_plan if check("deleted_with_id_and_plan")

test_deleted_removes_an_item if check("deleted_removes_an_item")

test_deleted_not_true if check("deleted_not_true")

test_deleted_in_add_invoice_items if check("deleted_in_add_invoice_items")

test_deleted_in_checkout_line_items if check("deleted_in_checkout_line_items")

test_checkout_without_mode_recurring if check("checkout_without_mode_recurring")

test_checkout_without_mode_one_time if check("checkout_without_mode_one_time")

test_checkout_subscription_data_items if check("checkout_subscription_data_items")

test_checkout_adjustable_enabled_not_true if check("checkout_adjustable_enabled_not_true")

test_checkout_adjustable_disabled if check("checkout_adjustable_disabled")

test_subscription_create_one_time_price if check("subscription_create_one_time_price")

# --- The charge states the default budget and cap ---------------------------------------------------------

test_charge_states_default_budget_and_cap if {
	d := fx.decide(usd("1999"))
	d.charge == {"cents": 1999, "budget": "agent-provider-month", "cap_cents": 10000}
}

test_approval_carries_the_charge if {
	d := fx.decide(usd("6000"))
	d.outcome == "approve"
	d.charge == {"cents": 6000, "budget": "agent-provider-month", "cap_cents": 10000}
}

test_messages_show_dollars if {
	d := fx.decide(usd("6000"))
	contains(d.reasons[0].message, "$60.00")
	contains(d.reasons[0].message, "$50.00")
}

test_malformed_message_says_what_is_allowed if {
	d := fx.decide(usd("12.5"))
	contains(d.reasons[0].message, "\"12.5\"")
	contains(d.reasons[0].message, "string of digits")
}

# --- Budgets, caps and thresholds are data: per team and per agent --------------------------------------

team_budgets := {"web": {"budget": "team-provider-month", "cap_cents": 50000}}

test_team_budget_and_cap if {
	inp := fx.patch(usd("6000"), {"agent": {"team": "web"}})
	d := fx.decide(inp) with data.budgets.teams as team_budgets
	d.outcome == "approve"
	d.charge == {"cents": 6000, "budget": "team-provider-month", "cap_cents": 50000}
}

# An agent entry applies as a whole: it does not inherit its team's budget kind.
test_agent_entry_overrides_team if {
	inp := fx.patch(usd("6000"), {"agent": {"team": "web"}})
	d := fx.decide(inp) with data.budgets.teams as team_budgets
		with data.budgets.agents as {"deployer": {"cap_cents": 20000, "approve_above_cents": 10000}}
	d.outcome == "allow"
	d.charge == {"cents": 6000, "budget": "agent-provider-month", "cap_cents": 20000}
}

test_agent_cap_below_charge_denies if {
	d := fx.decide(usd("6000")) with data.budgets.agents as {"deployer": {"cap_cents": 5000}}
	d.outcome == "deny"
	fx.rules(d) == {"spend.cap"}
}

test_team_budget_without_team_denies if {
	d := fx.decide(usd("1000")) with data.budgets.agents as {"deployer": {"budget": "team-provider-month"}}
	d.outcome == "deny"
	fx.rules(d) == {"spend.budget"}
}

test_unknown_budget_denies if {
	d := fx.decide(usd("1000")) with data.budgets.agents as {"deployer": {"budget": "forever"}}
	d.outcome == "deny"
	fx.rules(d) == {"spend.budget"}
}

test_non_integer_cap_denies if {
	d := fx.decide(usd("1000")) with data.budgets.agents as {"deployer": {"cap_cents": "10000"}}
	d.outcome == "deny"
	fx.rules(d) == {"spend.budget"}
}

# --- Prices are data ----------------------------------------------------------------------------------------

test_currency_rate_converts_and_rounds_up if {
	d := fx.decide(fx.payment({"amount": "1001", "currency": "eur"})) with data.prices.currency_rates as {"eur": 1.08}
	d.outcome == "allow"
	d.charge.cents == 1082
}

test_known_price_id_is_priced if {
	inp := fx.subscription({"customer": "cus_123", "items": [{"price": "price_team", "quantity": "3"}]})
	d := fx.decide(inp) with data.prices.stripe_prices as {"price_team": {"unit_amount_cents": 1500, "interval": "month"}}
	d.outcome == "allow"
	d.charge.cents == 4500
}

test_price_data_in_eur_uses_the_rate if {
	inp := fx.subscription({"customer": "cus_123", "items": [{"price_data": {"currency": "eur", "product": "p", "unit_amount": "1000", "recurring": {"interval": "month"}}, "quantity": "2"}]})
	d := fx.decide(inp) with data.prices.currency_rates as {"eur": 1.1}
	d.charge.cents == 2200
}

test_new_money_action_without_pricing_needs_approval if {
	inp := fx.cf("POST", concat("", ["/zones/", fx.z1, "/dns_records"]), "cloudflare.dns.create", {"zone_id": fx.z1}, {"type": "A", "name": "www.example.com", "content": "198.51.100.4"})
	d := fx.decide(inp) with data.actions["cloudflare.dns.create"] as {"scopes": ["dns:write"], "body": "required", "money": true}
	d.outcome == "approve"
	fx.rules(d) == {"spend.unpriced"}
	not d.charge
}

# --- Recurring money: exact charges, also where the decision is a deny ---------------------------------------

# The confirmed attack, exactly: 28 billings of $49.99, over the $100 cap.
test_attack_daily_item_is_charged_28_days if {
	inp := early(sub({}, one(daily("4999"), "1")))
	charged(inp) == 4999 * 28
	d := fx.decide(inp)
	d.outcome == "deny"
	some r in d.reasons
	r.rule == "spend.cap"
	contains(r.message, "$1399.72")
}

# The same price added with /v1/subscription_items: 28 billings and the current period's proration, plus 30%
# tax (the subscription's tax settings are not in the request).
test_attack_daily_subscription_item_is_charged_29_days if {
	charged(early(item_create({"price_data": daily("4999"), "quantity": "1"}))) == 188463
}

test_backdated_a_year_daily_at_a_dollar if {
	charged(sub({"backdate_start_date": t_year_ago}, one(daily("100"), "1"))) == 36600
}

# With the cap raised, a year's backdating of $49.99 a month is charged 13 months and needs approval.
test_backdated_a_year_needs_approval_under_a_large_cap if {
	inp := sub({"backdate_start_date": t_year_ago}, one(rp("4999", {"interval": "month"}), "1"))
	d := fx.decide(inp) with data.budgets.agents as {"deployer": {"cap_cents": 100000}}
	d.outcome == "approve"
	d.charge.cents == 4999 * 13
}

# Backdating with a future anchor: the proration runs from the backdated start to the anchor (Nov 30 2025 to
# Dec 1 2026: no more than the 13 monthly periods that start in it), then full periods from the anchor (none
# before the window's end). Weekly, anchored Dec 15: 55 weeks of proration (379.5 days, all on the first
# invoice), and no billing from the anchor in the window.
test_backdated_with_anchor if {
	charged(sub({"backdate_start_date": t_year_ago, "billing_cycle_anchor": t_dec_1}, one(rp("100", {"interval": "month"}), "1"))) == 1300
	charged(sub({"backdate_start_date": t_year_ago, "billing_cycle_anchor": t_dec_15}, one(rp("100", {"interval": "week"}), "1"))) == 5500
}

# A monthly price anchored within its first month: the proration counts one period (not the two calendar
# months it touches), and the anchor bills a full period when it falls in the window.
test_anchor_within_the_first_month if {
	charged(sub({"billing_cycle_anchor": t_dec_15}, one(rp("1000", {"interval": "month"}), "1"))) == 1000
	charged(early(sub({"billing_cycle_anchor": t_nov_20}, one(rp("1000", {"interval": "month"}), "1")))) == 2000
}

# The messages say what was wrong.
test_malformed_interval_message if {
	d := fx.decide(sub({}, one(rp("1000", {"interval": "fortnight"}), "1")))
	contains(d.reasons[0].message, "day, week, month or year")
	contains(d.reasons[0].message, "\"fortnight\"")
}

test_malformed_trial_end_message if {
	d := fx.decide(sub({"trial_end": "tomorrow"}, one(daily("100"), "1")))
	contains(d.reasons[0].message, "trial_end must be a unix timestamp")
	contains(d.reasons[0].message, "\"tomorrow\"")
}

test_missing_window_end_message if {
	d := fx.decide(without_window_end(sub({}, one(daily("100"), "1"))))
	contains(d.reasons[0].message, "input.spend.window_end")
}

test_payment_link_without_limit_message if {
	d := fx.decide(payment_link({"line_items": [{"price_data": once("1000"), "quantity": "1"}]}))
	contains(d.reasons[0].message, "restrictions[completed_sessions][limit]")
}

# --- Prices by id say how they recur ----------------------------------------------------------------------

stripe_prices := {
	"price_daily": {"unit_amount_cents": 100, "interval": "day"},
	"price_quarterly": {"unit_amount_cents": 3000, "interval": "month", "interval_count": 3},
	"price_setup": {"unit_amount_cents": 2500, "one_time": true},
	"price_setup_null": {"unit_amount_cents": 2500, "interval": null},
	"price_bare": {"unit_amount_cents": 1000},
}

by_id(id) := [{"price": id, "quantity": "1"}]

test_price_id_daily if {
	d := fx.decide(early(sub({}, by_id("price_daily")))) with data.prices.stripe_prices as stripe_prices
	d.outcome == "allow"
	d.charge.cents == 2800
}

test_price_id_quarterly if {
	d := fx.decide(early(sub({}, by_id("price_quarterly")))) with data.prices.stripe_prices as stripe_prices
	d.charge.cents == 3000
}

# A price id that is one-time, or does not say how it recurs, cannot be a subscription item's price.
needs_a_human(id) if {
	d := fx.decide(sub({}, by_id(id))) with data.prices.stripe_prices as stripe_prices
	d.outcome == "approve"
	fx.rules(d) == {"spend.unpriced"}
	not d.charge
}

test_price_id_one_time_in_items_needs_a_human if {
	needs_a_human("price_setup")
	needs_a_human("price_setup_null")
	needs_a_human("price_bare")
}

test_price_id_one_time_in_add_invoice_items_bills_once if {
	inp := early(sub({"add_invoice_items": by_id("price_setup")}, by_id("price_daily")))
	d := fx.decide(inp) with data.prices.stripe_prices as stripe_prices
	d.charge.cents == 2500 + 2800
}

# Checkout in subscription mode: a price id that does not say how it recurs needs a human; in payment mode it
# is billed once.
test_price_id_without_interval_in_checkout if {
	sub_mode := fx.checkout({"mode": "subscription", "line_items": by_id("price_bare")})
	d1 := fx.decide(sub_mode) with data.prices.stripe_prices as stripe_prices
	d1.outcome == "approve"
	fx.rules(d1) == {"spend.unpriced"}
	pay_mode := fx.checkout({"mode": "payment", "line_items": by_id("price_bare")})
	d2 := fx.decide(pay_mode) with data.prices.stripe_prices as stripe_prices
	d2.outcome == "allow"
	d2.charge.cents == 1000
}

test_price_id_with_bad_interval_needs_a_human if {
	d := fx.decide(sub({}, by_id("price_x"))) with data.prices.stripe_prices as {"price_x": {"unit_amount_cents": 100, "interval": "fortnight"}}
	d.outcome == "approve"
	fx.rules(d) == {"spend.unpriced"}
}

# Per connected account: the budget kind is data; the ledger keys it by the Stripe-Account header as sent.
test_account_budget if {
	d := fx.decide(usd("1000")) with data.budgets.agents as {"deployer": {"budget": "account-provider-month", "cap_cents": 20000}}
	d.outcome == "allow"
	d.charge == {"cents": 1000, "budget": "account-provider-month", "cap_cents": 20000}
}

# --- Shipping rates and the tax ceiling are data ---------------------------------------------------------

# A shipping rate id priced in prices/data.yaml: the dearest option counts ($20 + $18).
test_shipping_rate_id_priced_from_data if {
	inp := shop({"shipping_options": [{"shipping_rate": "shr_express"}, ship("500"), {"shipping_rate": "shr_free"}]})
	d := fx.decide(inp) with data.prices.stripe_shipping_rates as {"shr_express": {"amount_cents": 1800}, "shr_free": {"amount_cents": 0}}
	d.outcome == "allow"
	d.charge.cents == 3800
}

# A shipping rate entry without integer cents is not a price.
test_shipping_rate_without_cents_needs_a_human if {
	inp := shop({"shipping_options": [{"shipping_rate": "shr_express"}]})
	d := fx.decide(inp) with data.prices.stripe_shipping_rates as {"shr_express": {"amount_cents": "1800"}}
	d.outcome == "approve"
	fx.rules(d) == {"spend.unpriced"}
	d.charge.cents == 2000
}

# The ceiling is data: a higher one raises the charge, and without one (or with one that is not a number >= 0)
# tax is unpriced and only the untaxed part is counted.
test_max_tax_rate_is_data if {
	inp := sub({"automatic_tax": {"enabled": "true"}}, one(rp("1000", {"interval": "month"}), "1"))
	d := fx.decide(inp) with data.prices.max_tax_rate as 0.5
	d.charge.cents == 1500
}

tax_unpriced_with(rate) if {
	inp := sub({"automatic_tax": {"enabled": "true"}}, one(rp("1000", {"interval": "month"}), "1"))
	d := fx.decide(inp) with data.prices.max_tax_rate as rate
	d.outcome == "approve"
	fx.rules(d) == {"spend.unpriced"}
	d.charge.cents == 1000
	contains(d.reasons[0].message, "max_tax_rate")
	contains(d.reasons[0].message, "$10.00")
}

test_max_tax_rate_missing_or_bad if {
	tax_unpriced_with(null)
	tax_unpriced_with("0.3")
	tax_unpriced_with(-0.1)
}

# Without a ceiling an untaxed request is unaffected.
test_untaxed_without_max_tax_rate if {
	d := fx.decide(sub({}, one(rp("1000", {"interval": "month"}), "1"))) with data.prices.max_tax_rate as null
	d.outcome == "allow"
	d.charge.cents == 1000
}

# The deleted-item attacks, exactly: $40 a day from Nov 3 12:00, 28 billings (an update: 29, plus 30% tax).
test_deleted_items_are_charged if {
	charged(early(sub({}, [{"deleted": "true", "price_data": daily("4000")}]))) == 4000 * 28
	charged(early(sub_update("/v1/subscriptions/sub_1", {"subscription_id": "sub_1"}, {"items": [{"deleted": "true", "price_data": daily("4000")}]}))) == 150800
	charged(early(item_create({"deleted": "true", "price_data": daily("4000")}))) == 150800
}

# The draft-invoice attack's message says why a human is needed.
test_invoice_create_message if {
	d := fx.decide(invoice_create({"customer": "cus_123", "auto_advance": "true"}))
	contains(d.reasons[0].message, "auto_advance=false")
}
