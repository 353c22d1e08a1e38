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
	"subscription_update_swaps_items": {
		"input": sub_update("/v1/subscriptions/sub_1", {"subscription_id": "sub_1"}, {"items": [{"id": "si_old", "deleted": "true"}, {"price_data": fx.price_data("2500"), "quantity": "1"}]}),
		"outcome": "allow", "rules": [], "cents": 2500,
	},
	"subscription_update_quantity_only": {
		"input": sub_update("/v1/subscriptions/sub_1", {"subscription_id": "sub_1"}, {"items": [{"id": "si_1", "quantity": "5"}]}),
		"outcome": "approve", "rules": ["spend.unpriced"], "cents": null,
	},
	"subscription_item_added": {
		"input": sub_update("/v1/subscription_items", {}, {"subscription": "sub_1", "price_data": fx.price_data("700"), "quantity": "3"}),
		"outcome": "allow", "rules": [], "cents": 2100,
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
	"invoice_item_amount": {"input": invoice_item({"customer": "cus_123", "amount": "2500", "currency": "usd"}), "outcome": "allow", "rules": [], "cents": 2500},
	"invoice_item_bad_amount": {"input": invoice_item({"customer": "cus_123", "amount": "25.00", "currency": "usd"}), "outcome": "deny", "rules": ["spend.malformed"]},
	"invoice_item_price": {
		"input": invoice_item({"customer": "cus_123", "price_data": fx.price_data("1200"), "quantity": "2"}),
		"outcome": "allow", "rules": [], "cents": 2400,
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
	d := fx.decide(inp) with data.prices.stripe_prices as {"price_team": {"unit_amount_cents": 1500}}
	d.outcome == "allow"
	d.charge.cents == 4500
}

test_price_data_in_eur_uses_the_rate if {
	inp := fx.subscription({"customer": "cus_123", "items": [{"price_data": {"currency": "eur", "product": "p", "unit_amount": "1000"}, "quantity": "2"}]})
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
