# Stripe customers, products and prices: money-free creates and updates are allowed with billing:spend, no
# charge; the parameters that move or steer money need a human; legacy subscription parameters are refused;
# deletes need a human; a price is never a charge.
package tollgate_test.billing

import data.tollgate_test.fixtures as fx

check(name) if fx.check_case(cases[name])

cus := "cus_NffrFeUfNV2Hib"

prod := "prod_NWjs8kKbJWmuuc"

price := "price_1MoBy5LkdIwHu7ixZhnattbh"

# What stripe-node sends for stripe.customers.create({email, name, payment_method,
# invoice_settings: {default_payment_method}, metadata}): the customer a subscription then charges.
subscriber := {
	"email": "jenny.rosen@example.com",
	"name": "Jenny Rosen",
	"payment_method": "pm_1NtxGp2eZvKYlo2CkdqHnZ1y",
	"invoice_settings": {"default_payment_method": "pm_1NtxGp2eZvKYlo2CkdqHnZ1y"},
	"metadata": {"account": "acct-42"},
	"expand": ["invoice_settings.default_payment_method"],
}

monthly := {"currency": "usd", "unit_amount": "1500", "recurring": {"interval": "month"}, "product": prod}

customer_delete := fx.stripe("DELETE", concat("", ["/v1/customers/", cus]), "stripe.customer.delete", {"customer_id": cus}, null)

product_delete := fx.stripe("DELETE", concat("", ["/v1/products/", prod]), "stripe.product.delete", {"product_id": prod}, null)

without_billing_spend(inp) := fx.patch(inp, {"agent": {"scopes": ["dns:write"]}})

cases := {
	# --- Customers: create ---
	"customer_for_a_subscription": {"input": fx.customer_create(subscriber), "outcome": "allow", "rules": [], "cents": null},
	"customer_without_parameters": {"input": fx.customer_create(null), "outcome": "allow", "rules": [], "cents": null},
	"customer_with_address_and_tax_id": {
		"input": fx.customer_create({"email": "ap@acme.example", "address": {"line1": "1 Main St", "city": "Berlin", "postal_code": "10115", "country": "DE"}, "tax_id_data": [{"type": "eu_vat", "value": "DE123456789"}], "preferred_locales": ["de"], "tax_exempt": "none"}),
		"outcome": "allow", "rules": [], "cents": null,
	},
	"customer_needs_billing_spend": {"input": without_billing_spend(fx.customer_create(subscriber)), "outcome": "deny", "rules": ["scopes.missing"]},
	"customer_body_unreadable": {
		"input": fx.patch(fx.customer_create(null), {"request": {"headers": {"content-type": "application/json"}, "body_sha256": fx.some_sha}}),
		"outcome": "deny", "rules": ["body.unreadable"],
	},
	# A positive balance is billed on the customer's next invoice: money with no price.
	"customer_created_owing": {"input": fx.customer_create({"email": "a@example.com", "balance": "500000"}), "outcome": "approve", "rules": ["billing.balance"], "cents": null},
	"customer_created_with_credit": {"input": fx.customer_create({"email": "a@example.com", "balance": "-500000"}), "outcome": "approve", "rules": ["billing.balance"]},
	"customer_invoice_footer": {
		"input": fx.customer_create({"email": "a@example.com", "invoice_settings": {"footer": "Please pay by transfer to IBAN DE00 1234 5678 9000 0000 00"}}),
		"outcome": "approve", "rules": ["billing.invoice_settings"],
	},
	"customer_invoice_custom_fields": {
		"input": fx.customer_create({"invoice_settings": {"custom_fields": [{"name": "Pay to", "value": "DE00 1234 5678"}], "default_payment_method": "pm_1"}}),
		"outcome": "approve", "rules": ["billing.invoice_settings"],
	},
	"customer_invoice_template": {
		"input": fx.customer_create({"invoice_settings": {"rendering_options": {"template": "inrtem_1"}}}),
		"outcome": "approve", "rules": ["billing.invoice_settings"],
	},
	"customer_tax_exempt": {"input": fx.customer_create({"tax_exempt": "exempt"}), "outcome": "approve", "rules": ["billing.tax"]},
	"customer_reverse_charge": {"input": fx.customer_create({"tax_exempt": "reverse"}), "outcome": "approve", "rules": ["billing.tax"]},
	# Older API versions: a customer created with a plan is subscribed at once.
	"customer_with_legacy_plan": {"input": fx.customer_create({"email": "a@example.com", "plan": "gold", "quantity": "50"}), "outcome": "deny", "rules": ["billing.subscription"], "cents": null},
	"customer_with_coupon": {"input": fx.customer_create({"email": "a@example.com", "coupon": "FREE100"}), "outcome": "approve", "rules": ["billing.parameter"]},
	"customer_with_promotion_code": {"input": fx.customer_create({"promotion_code": "promo_1"}), "outcome": "approve", "rules": ["billing.parameter"]},
	# --- Customers: update ---
	"customer_new_email": {"input": fx.customer_update(cus, {"email": "jenny@example.com", "metadata": {"tier": "gold"}}), "outcome": "allow", "rules": [], "cents": null},
	"customer_update_without_parameters": {"input": fx.customer_update(cus, null), "outcome": "allow", "rules": []},
	"customer_update_needs_billing_spend": {"input": without_billing_spend(fx.customer_update(cus, {"email": "x@example.com"})), "outcome": "deny", "rules": ["scopes.missing"]},
	"customer_switches_default_payment_method": {
		"input": fx.customer_update(cus, {"invoice_settings": {"default_payment_method": "pm_attacker"}}),
		"outcome": "approve", "rules": ["billing.payment_method"],
	},
	"customer_switches_default_source": {"input": fx.customer_update(cus, {"default_source": "card_1"}), "outcome": "approve", "rules": ["billing.payment_method"]},
	"customer_gets_a_new_source": {"input": fx.customer_update(cus, {"source": "tok_visa"}), "outcome": "approve", "rules": ["billing.payment_method"]},
	"customer_balance_cleared": {"input": fx.customer_update(cus, {"balance": "0"}), "outcome": "approve", "rules": ["billing.balance"]},
	"customer_invoice_settings_not_an_object": {"input": fx.customer_update(cus, {"invoice_settings": ""}), "outcome": "approve", "rules": ["billing.invoice_settings"]},
	"customer_tax_exempt_cleared": {"input": fx.customer_update(cus, {"tax_exempt": ""}), "outcome": "allow", "rules": []},
	"customer_update_legacy_trial": {"input": fx.customer_update(cus, {"trial_end": "1798761600"}), "outcome": "deny", "rules": ["billing.subscription"]},
	"customer_every_lever_at_once": {
		"input": fx.customer_update(cus, {"balance": "100000", "default_source": "card_9", "invoice_settings": {"default_payment_method": "pm_9", "footer": "Wire to ..."}, "tax_exempt": "exempt", "discounts": [{"coupon": "FREE"}]}),
		"outcome": "approve", "rules": ["billing.balance", "billing.payment_method", "billing.invoice_settings", "billing.tax", "billing.parameter"],
	},
	# Deny wins: the legacy plan is refused whatever else the request holds.
	"customer_legacy_plan_and_balance": {"input": fx.customer_update(cus, {"plan": "gold", "balance": "100"}), "outcome": "deny", "rules": ["billing.subscription"]},
	# --- Customers: delete, sub-resources ---
	"customer_delete": {"input": customer_delete, "outcome": "approve", "rules": ["impact.delete"], "cents": null},
	"customer_delete_needs_billing_spend": {"input": without_billing_spend(customer_delete), "outcome": "deny", "rules": ["scopes.missing"]},
	"customer_balance_transaction_is_not_a_route": {
		"input": fx.stripe("POST", concat("", ["/v1/customers/", cus, "/balance_transactions"]), "unknown", {}, {"amount": "-10000", "currency": "usd"}),
		"outcome": "deny", "rules": ["scopes.unknown_route"],
	},
	"customer_source_attach_is_not_a_route": {
		"input": fx.stripe("POST", concat("", ["/v1/customers/", cus, "/sources"]), "unknown", {}, {"source": "tok_visa"}),
		"outcome": "deny", "rules": ["scopes.unknown_route"],
	},
	# --- Products ---
	"product_with_default_price": {
		"input": fx.product_create({"name": "Team plan", "description": "Per seat", "default_price_data": {"currency": "usd", "unit_amount": "1500", "recurring": {"interval": "month"}}, "tax_code": "txcd_10103001"}),
		"outcome": "allow", "rules": [], "cents": null,
	},
	"product_without_body": {"input": fx.product_create(null), "outcome": "deny", "rules": ["body.unreadable"]},
	"product_needs_billing_spend": {"input": without_billing_spend(fx.product_create({"name": "Team plan"})), "outcome": "deny", "rules": ["scopes.missing"]},
	"product_renamed": {"input": fx.product_update(prod, {"name": "Team plan (2027)", "images": ["https://example.com/team.png"]}), "outcome": "allow", "rules": []},
	"product_archived": {"input": fx.product_update(prod, {"active": "false"}), "outcome": "allow", "rules": []},
	"product_default_price_changed": {"input": fx.product_update(prod, {"default_price": "price_attacker"}), "outcome": "approve", "rules": ["billing.default_price"]},
	"product_tax_code_changed": {"input": fx.product_update(prod, {"tax_code": "txcd_00000000"}), "outcome": "approve", "rules": ["billing.tax"]},
	"product_update_unknown_parameter": {"input": fx.product_update(prod, {"type": "good"}), "outcome": "approve", "rules": ["billing.parameter"]},
	"product_delete": {"input": product_delete, "outcome": "approve", "rules": ["impact.delete"], "cents": null},
	# --- Prices: an amount, never a charge ---
	"price_monthly": {"input": fx.price_create(monthly), "outcome": "allow", "rules": [], "cents": null},
	"price_huge_is_not_a_charge": {
		"input": fx.price_create({"currency": "usd", "unit_amount": "99999999999", "product_data": {"name": "Gold bar"}}),
		"outcome": "allow", "rules": [], "cents": null,
	},
	"price_with_new_lookup_key": {"input": fx.price_create(object.union(monthly, {"lookup_key": "team_monthly_2027"})), "outcome": "allow", "rules": []},
	"price_without_body": {"input": fx.price_create(null), "outcome": "deny", "rules": ["body.unreadable"]},
	"price_needs_billing_spend": {"input": without_billing_spend(fx.price_create(monthly)), "outcome": "deny", "rules": ["scopes.missing"]},
	# Taking the key the signup code looks up: it would charge this price.
	"price_takes_a_lookup_key": {
		"input": fx.price_create(object.union(monthly, {"unit_amount": "150000", "lookup_key": "team_monthly", "transfer_lookup_key": "true"})),
		"outcome": "approve", "rules": ["billing.lookup_key"], "cents": null,
	},
	"price_transfer_lookup_key_false": {"input": fx.price_create(object.union(monthly, {"lookup_key": "team_monthly", "transfer_lookup_key": "false"})), "outcome": "allow", "rules": []},
	"price_renamed": {"input": fx.price_update(price, {"nickname": "Team monthly", "metadata": {"plan": "team"}}), "outcome": "allow", "rules": []},
	"price_archived": {"input": fx.price_update(price, {"active": "false"}), "outcome": "allow", "rules": []},
	"price_update_without_parameters": {"input": fx.price_update(price, null), "outcome": "allow", "rules": []},
	"price_lookup_key_renamed": {"input": fx.price_update(price, {"lookup_key": "team_monthly_old"}), "outcome": "approve", "rules": ["billing.lookup_key"]},
	"price_lookup_key_cleared": {"input": fx.price_update(price, {"lookup_key": ""}), "outcome": "approve", "rules": ["billing.lookup_key"]},
	"price_lookup_key_transferred": {"input": fx.price_update(price, {"lookup_key": "team_monthly", "transfer_lookup_key": "true"}), "outcome": "approve", "rules": ["billing.lookup_key"]},
	"price_currency_options_changed": {
		"input": fx.price_update(price, {"currency_options": {"eur": {"unit_amount": "9999900"}}}),
		"outcome": "approve", "rules": ["billing.currency_options"],
	},
	"price_tax_behavior_set": {"input": fx.price_update(price, {"tax_behavior": "exclusive"}), "outcome": "approve", "rules": ["billing.tax"]},
	# The amount of a price is fixed: Stripe refuses unit_amount on an update, and the policy does not know it.
	"price_update_amount": {"input": fx.price_update(price, {"unit_amount": "1"}), "outcome": "approve", "rules": ["billing.parameter"]},
	"price_delete_is_not_a_route": {
		"input": fx.stripe("DELETE", concat("", ["/v1/prices/", price]), "unknown", {}, null),
		"outcome": "deny", "rules": ["scopes.unknown_route"],
	},
}

test_customer_for_a_subscription if check("customer_for_a_subscription")

test_customer_without_parameters if check("customer_without_parameters")

test_customer_with_address_and_tax_id if check("customer_with_address_and_tax_id")

test_customer_needs_billing_spend if check("customer_needs_billing_spend")

test_customer_body_unreadable if check("customer_body_unreadable")

test_customer_created_owing if check("customer_created_owing")

test_customer_created_with_credit if check("customer_created_with_credit")

test_customer_invoice_footer if check("customer_invoice_footer")

test_customer_invoice_custom_fields if check("customer_invoice_custom_fields")

test_customer_invoice_template if check("customer_invoice_template")

test_customer_tax_exempt if check("customer_tax_exempt")

test_customer_reverse_charge if check("customer_reverse_charge")

test_customer_with_legacy_plan if check("customer_with_legacy_plan")

test_customer_with_coupon if check("customer_with_coupon")

test_customer_with_promotion_code if check("customer_with_promotion_code")

test_customer_new_email if check("customer_new_email")

test_customer_update_without_parameters if check("customer_update_without_parameters")

test_customer_update_needs_billing_spend if check("customer_update_needs_billing_spend")

test_customer_switches_default_payment_method if check("customer_switches_default_payment_method")

test_customer_switches_default_source if check("customer_switches_default_source")

test_customer_gets_a_new_source if check("customer_gets_a_new_source")

test_customer_balance_cleared if check("customer_balance_cleared")

test_customer_invoice_settings_not_an_object if check("customer_invoice_settings_not_an_object")

test_customer_tax_exempt_cleared if check("customer_tax_exempt_cleared")

test_customer_update_legacy_trial if check("customer_update_legacy_trial")

test_customer_every_lever_at_once if check("customer_every_lever_at_once")

test_customer_legacy_plan_and_balance if check("customer_legacy_plan_and_balance")

test_customer_delete if check("customer_delete")

test_customer_delete_needs_billing_spend if check("customer_delete_needs_billing_spend")

test_customer_balance_transaction_is_not_a_route if check("customer_balance_transaction_is_not_a_route")

test_customer_source_attach_is_not_a_route if check("customer_source_attach_is_not_a_route")

test_product_with_default_price if check("product_with_default_price")

test_product_without_body if check("product_without_body")

test_product_needs_billing_spend if check("product_needs_billing_spend")

test_product_renamed if check("product_renamed")

test_product_archived if check("product_archived")

test_product_default_price_changed if check("product_default_price_changed")

test_product_tax_code_changed if check("product_tax_code_changed")

test_product_update_unknown_parameter if check("product_update_unknown_parameter")

test_product_delete if check("product_delete")

test_price_monthly if check("price_monthly")

test_price_huge_is_not_a_charge if check("price_huge_is_not_a_charge")

test_price_with_new_lookup_key if check("price_with_new_lookup_key")

test_price_without_body if check("price_without_body")

test_price_needs_billing_spend if check("price_needs_billing_spend")

test_price_takes_a_lookup_key if check("price_takes_a_lookup_key")

test_price_transfer_lookup_key_false if check("price_transfer_lookup_key_false")

test_price_renamed if check("price_renamed")

test_price_archived if check("price_archived")

test_price_update_without_parameters if check("price_update_without_parameters")

test_price_lookup_key_renamed if check("price_lookup_key_renamed")

test_price_lookup_key_cleared if check("price_lookup_key_cleared")

test_price_lookup_key_transferred if check("price_lookup_key_transferred")

test_price_currency_options_changed if check("price_currency_options_changed")

test_price_tax_behavior_set if check("price_tax_behavior_set")

test_price_update_amount if check("price_update_amount")

test_price_delete_is_not_a_route if check("price_delete_is_not_a_route")

# --- Money: none of these is a charge ---------------------------------------------------------------------

# No customer, product or price action is priced: spend.rego does not apply, whatever the amount, and nothing
# is counted against the budget.
test_objects_are_not_money if {
	count([a | some a in billing_writes; data.actions[a].money == true]) == 0
	count([a | some a in billing_writes; data.tollgate.spend.applies with input as cases.price_monthly.input with input.action.name as a]) == 0
}

billing_writes := [
	"stripe.customer.create", "stripe.customer.update", "stripe.customer.delete", "stripe.product.create",
	"stripe.product.update", "stripe.product.delete", "stripe.price.create", "stripe.price.update",
]

# A price the agent creates is not in prices/data.yaml, so the subscription that first uses it needs a human
# (spend.unpriced): creating a price cannot make a charge look smaller.
test_a_new_price_is_unpriced_where_it_bills if {
	inp := fx.subscription({"customer": cus, "items": [{"price": "price_created_just_now", "quantity": "1"}]})
	fx.expect(inp, "approve", ["spend.unpriced"])
}

# ... and a price reviewers put in data is priced from data, not from anything the agent sent.
test_a_price_in_data_is_priced_from_data if {
	inp := fx.subscription({"customer": cus, "items": [{"price": price, "quantity": "2"}]})
	d := fx.decide(inp) with data.prices.stripe_prices as {price: {"unit_amount_cents": 1500, "interval": "month"}}
	d.outcome == "allow"
	d.charge.cents == 3000
}

# --- Messages ---------------------------------------------------------------------------------------------

reason(inp, rule) := r.message if {
	some r in fx.decide(inp).reasons
	r.rule == rule
}

test_balance_message_shows_the_amount if {
	msg := reason(cases.customer_created_owing.input, "billing.balance")
	contains(msg, "\"500000\"")
	contains(msg, "next invoices")
}

test_payment_method_message_lists_the_fields if {
	msg := reason(cases.customer_every_lever_at_once.input, "billing.payment_method")
	contains(msg, "default_source, invoice_settings[default_payment_method]")
	contains(msg, cus)
}

test_invoice_settings_message_lists_the_fields if {
	msg := reason(cases.customer_every_lever_at_once.input, "billing.invoice_settings")
	contains(msg, "invoice_settings[footer]")
	not contains(msg, "default_payment_method")
}

test_parameter_message_names_the_parameters if {
	msg := reason(fx.customer_create({"coupon": "FREE", "promotion_code": "promo_1", "email": "a@example.com"}), "billing.parameter")
	contains(msg, "coupon, promotion_code")
	not contains(msg, "email")
}

test_lookup_key_messages_say_what_moves if {
	contains(reason(cases.price_takes_a_lookup_key.input, "billing.lookup_key"), "moves lookup key \"team_monthly\"")
	contains(reason(cases.price_lookup_key_renamed.input, "billing.lookup_key"), "changes the lookup key of existing price")
	contains(reason(cases.price_lookup_key_transferred.input, "billing.lookup_key"), "transfer_lookup_key")
}

test_legacy_subscription_message_points_to_subscriptions if {
	d := fx.decide(cases.customer_with_legacy_plan.input)
	contains(d.reasons[0].message, "plan, quantity")
	contains(d.reasons[0].message, "POST /v1/subscriptions")
}

test_customer_delete_message_names_the_subscriptions if {
	contains(reason(customer_delete, "impact.delete"), "cancels the customer's active subscriptions")
	product := reason(product_delete, "impact.delete")
	not contains(product, "subscriptions")
}

# --- Data-driven settings ---------------------------------------------------------------------------------

# Reviewers open a parameter by listing it, for one action only.
test_known_parameters_are_data if {
	inp := cases.customer_with_coupon.input
	d := fx.decide(inp) with data.billing.known_parameters["stripe.customer.create"] as ["coupon", "email"]
	d.outcome == "allow"
	d2 := fx.decide(fx.customer_update(cus, {"coupon": "FREE"})) with data.billing.known_parameters["stripe.customer.create"] as ["coupon", "email"]
	d2.outcome == "approve"
}

# Listing a parameter does not open what a rule holds.
test_listing_a_held_parameter_still_holds_it if {
	d := fx.decide(cases.customer_created_owing.input) with data.billing.known_parameters["stripe.customer.create"] as ["balance", "email"]
	fx.rules(d) == {"billing.balance"}
}

# An action without a list: every parameter needs a human.
test_an_action_without_a_list_holds_every_parameter if {
	d := fx.decide(cases.price_renamed.input) with data.billing.known_parameters as {}
	d.outcome == "approve"
	fx.rules(d) == {"billing.parameter"}
}

test_legacy_subscription_parameters_are_data if {
	d := fx.decide(fx.customer_create({"plan": "gold"})) with data.billing.legacy_subscription_parameters as []
	fx.rules(d) == {"billing.parameter"}
}
