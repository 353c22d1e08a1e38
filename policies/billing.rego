# Stripe customers, products and prices (stripe.customer.*, stripe.product.*, stripe.price.*): the objects a
# subscription flow creates before the request that bills (a subscription needs a customer and a price).
#
# They charge nothing themselves. A price carries an amount, but it bills only when a subscription, invoice,
# Checkout session or payment link uses it, and that request is judged and priced by spend.rego (from the
# request's price_data, or a price id in prices/data.yaml: a new price's id is not there, so its first use
# needs a human). So creating and changing them needs only billing:spend (scopes.rego), except the parameters
# that move money by another road or steer it to other amounts, accounts or cards, which a human approves:
#   billing.balance           a customer balance is added to (or credits) the customer's next invoices
#   billing.payment_method    on an existing customer: which card or account pays its invoices and running
#                             subscriptions (source, default_source, invoice_settings[default_payment_method])
#   billing.invoice_settings  what every invoice of the customer says (footer, custom fields, template): room
#                             for payment instructions that send the customer's money elsewhere
#   billing.tax               tax Stripe stops collecting (tax_exempt), or a tax change for everything already
#                             sold (an existing product's tax code, an existing price's tax behavior)
#   billing.lookup_key        moving a lookup key to another price: code that looks prices up by key charges it
#   billing.currency_options  what an existing price charges in other currencies
#   billing.default_price     which price an existing product sells at by default
#   billing.parameter         a parameter billing/data.yaml does not list: whether it moves money is unknown
# and denies one thing:
#   billing.subscription      older API versions' customer parameters that subscribe the customer (plan):
#                             a subscription nothing prices; POST /v1/subscriptions is priced
# Deleting a customer or a product cannot be undone: impact.rego (impact.delete). Prices cannot be deleted.
#
# Creates are judged like updates only where an existing object matters: a new customer has no invoices or
# subscriptions yet, so the payment method it is created with is allowed (the subscription that charges it is
# judged), while its balance and invoice text are held.
#
# Bodies are Stripe forms (every value a string), the query string merged in. Data: billing/data.yaml.
package tollgate.billing

import data.tollgate.lib

# The actions this file judges.
applies if input.action.name in {
	"stripe.customer.create", "stripe.customer.update",
	"stripe.product.create", "stripe.product.update",
	"stripe.price.create", "stripe.price.update",
}

customers := {"stripe.customer.create", "stripe.customer.update"}

# given(field): the request sets a top-level parameter (any value: "" unsets it, which changes it too).
given(field) if lib.get(data.tollgate.lib.body, field) != null

# ---------------------------------------------------------------------------------------------------------
# Customers
# ---------------------------------------------------------------------------------------------------------

# "A positive amount increases the amount due on an invoice", a negative one credits the next invoices: money
# billed (or given away) with no price in any request, on the customer's next invoice.
approve contains {"rule": "billing.balance", "message": msg} if {
	input.action.name in customers
	given("balance")
	msg := sprintf("%s sets the customer's balance to %s: Stripe adds a positive balance to the customer's next invoices and credits a negative one, money no request prices; a human must approve it (leave balance out)", [data.tollgate.lib.action_name, lib.show(data.tollgate.lib.body.balance)])
}

# On an existing customer, invoices and running subscriptions are charged by Stripe's scheduler to the default
# payment method without another request: changing it changes which card or account pays them.
approve contains {"rule": "billing.payment_method", "message": msg} if {
	input.action.name == "stripe.customer.update"
	fields := payment_fields
	count(fields) > 0
	msg := sprintf("%s changes which payment method pays customer %v (%s): Stripe charges the customer's invoices and running subscriptions to it with no further request; a human must approve it", [data.tollgate.lib.action_name, object.get(data.tollgate.lib.params, "customer_id", "?"), concat(", ", sort(fields))])
}

payment_fields contains field if {
	some field in ["default_source", "source"]
	given(field)
}

payment_fields contains "invoice_settings[default_payment_method]" if {
	lib.get(lib.get(data.tollgate.lib.body, "invoice_settings"), "default_payment_method") != null
}

# invoice_settings: what every invoice the customer gets says and how it looks. A footer, custom fields or a
# rendering template can carry payment instructions ("pay by transfer to ...") that send the customer's money
# to another account, so a human reads them. default_payment_method is judged above (allowed on a create).
approve contains {"rule": "billing.invoice_settings", "message": msg} if {
	input.action.name in customers
	fields := invoice_text_fields
	count(fields) > 0
	msg := sprintf("%s sets what the customer's invoices say (%s): a footer, custom fields or a template can carry payment instructions that send the customer's money elsewhere; a human must read and approve it", [data.tollgate.lib.action_name, concat(", ", sort(fields))])
}

invoice_text_fields contains sprintf("invoice_settings[%s]", [field]) if {
	settings := lib.get(data.tollgate.lib.body, "invoice_settings")
	is_object(settings)
	some field, _ in settings
	field != "default_payment_method"
}

# invoice_settings that is not an object (Stripe takes only invoice_settings[...] keys): held whole.
invoice_text_fields contains "invoice_settings" if {
	settings := lib.get(data.tollgate.lib.body, "invoice_settings")
	settings != null
	not is_object(settings)
}

# tax_exempt=exempt or reverse: Stripe collects no tax from the customer, tax the company may still owe.
# none (or "", which unsets it) is the default.
approve contains {"rule": "billing.tax", "message": msg} if {
	input.action.name in customers
	exempt := lib.get(data.tollgate.lib.body, "tax_exempt")
	exempt != null
	not exempt in {"none", ""}
	msg := sprintf("%s sets tax_exempt to %s: Stripe then collects no tax from the customer (exempt, or a reverse charge), tax the company may still owe; a human must approve it", [data.tollgate.lib.action_name, lib.show(exempt)])
}

# Older API versions take `plan` (with quantity, trial_end) on a customer, subscribing it in the same request:
# money that spend.rego never sees. Refused, so that subscriptions go through the priced route.
deny contains {"rule": "billing.subscription", "message": msg} if {
	input.action.name in customers
	fields := [field | some field in data.billing.legacy_subscription_parameters; given(field)]
	count(fields) > 0
	msg := sprintf("%s sets %s, which older Stripe API versions read as a subscription for the customer, billed with no price the policy can check; create subscriptions with POST /v1/subscriptions instead", [data.tollgate.lib.action_name, concat(", ", fields)])
}

# ---------------------------------------------------------------------------------------------------------
# Products
# ---------------------------------------------------------------------------------------------------------

# Pricing tables and the company's own code may sell a product at its default price: pointing it at another
# price changes what they charge. (A new product's default_price_data creates its first price: allowed.)
approve contains {"rule": "billing.default_price", "message": msg} if {
	input.action.name == "stripe.product.update"
	given("default_price")
	msg := sprintf("%s makes %s the default price of product %v: whatever sells the product at its default price (pricing tables, checkout code) would charge that price instead; a human must approve it", [data.tollgate.lib.action_name, lib.show(data.tollgate.lib.body.default_price), object.get(data.tollgate.lib.params, "product_id", "?")])
}

# The tax code of an existing product decides the tax Stripe Tax adds to every subscription and invoice
# already selling it: more for the customers, or less collected than the company owes.
approve contains {"rule": "billing.tax", "message": msg} if {
	input.action.name == "stripe.product.update"
	fields := [field | some field in ["tax_code", "tax_details"]; given(field)]
	count(fields) > 0
	msg := sprintf("%s changes the tax category of an existing product (%s), and with it the tax Stripe adds to every subscription and invoice that sells it; a human must approve it", [data.tollgate.lib.action_name, concat(", ", fields)])
}

# ---------------------------------------------------------------------------------------------------------
# Prices
# ---------------------------------------------------------------------------------------------------------

# A lookup key names a price for code that looks prices up by key (checkout and signup code, pricing pages):
# transfer_lookup_key moves the key from the price that holds it to this one, so that code then charges this
# price. On an existing price any lookup_key change counts too: it frees the old key, which a new price can
# then take without a transfer.
approve contains {"rule": "billing.lookup_key", "message": msg} if {
	input.action.name in {"stripe.price.create", "stripe.price.update"}
	msg := lookup_key_problem
	is_string(msg)
}

lookup_key_problem := sprintf("%s moves lookup key %s to this price (transfer_lookup_key): code that looks prices up by that key then charges this price instead of the one that held it; a human must approve it", [data.tollgate.lib.action_name, lib.show(lib.get(data.tollgate.lib.body, "lookup_key"))]) if {
	t := lib.get(data.tollgate.lib.body, "transfer_lookup_key")
	t != null
	t != "false"
} else := sprintf("%s changes the lookup key of existing price %v to %s: code that looks the old key up stops finding this price, and a new price, at any amount, can take the freed key; a human must approve it", [data.tollgate.lib.action_name, object.get(data.tollgate.lib.params, "price_id", "?"), lib.show(data.tollgate.lib.body.lookup_key)]) if {
	input.action.name == "stripe.price.update"
	given("lookup_key")
}

# currency_options of an existing price: what it charges in other currencies, wherever it is used in them
# (subscriptions, Checkout, payment links; *unverified* whether running subscriptions take a changed amount
# at their next billing). prices/data.yaml prices a price id in US cents only, so a changed option would
# also bill more than the policy counts for it.
approve contains {"rule": "billing.currency_options", "message": msg} if {
	input.action.name == "stripe.price.update"
	given("currency_options")
	msg := sprintf("%s changes what existing price %v charges in other currencies (currency_options), for everything that sells it in them; a human must approve it", [data.tollgate.lib.action_name, object.get(data.tollgate.lib.params, "price_id", "?")])
}

# tax_behavior of an existing price: exclusive adds tax on top of the price for everything already using it,
# and once inclusive or exclusive it cannot be changed back.
approve contains {"rule": "billing.tax", "message": msg} if {
	input.action.name == "stripe.price.update"
	given("tax_behavior")
	msg := sprintf("%s sets the tax behavior of existing price %v to %s (exclusive adds tax on top of the price for everything that uses it, and inclusive or exclusive cannot be changed back); a human must approve it", [data.tollgate.lib.action_name, object.get(data.tollgate.lib.params, "price_id", "?"), lib.show(data.tollgate.lib.body.tax_behavior)])
}

# ---------------------------------------------------------------------------------------------------------
# Parameters the policy does not know
# ---------------------------------------------------------------------------------------------------------

approve contains {"rule": "billing.parameter", "message": msg} if {
	count(unknown_parameters) > 0
	msg := sprintf("%s sets %s, which billing/data.yaml does not list for this action; the policy cannot tell whether it moves money (older API versions take coupon and promotion_code on a customer, which discount its invoices), so a human must approve it", [data.tollgate.lib.action_name, concat(", ", sort(unknown_parameters))])
}

unknown_parameters contains field if {
	known := object.get(data.billing.known_parameters, input.action.name, [])
	some field, _ in data.tollgate.lib.body
	not field in known
}
