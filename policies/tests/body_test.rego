# body.unreadable: a write whose body the policy must inspect is denied when the proxy could not read it.
package tollgate_test.body

import data.tollgate_test.fixtures as fx

check(name) if fx.check_case(cases[name])

narrow := fx.token([fx.dns_write], fx.zone_resource(fx.z1), "2026-12-01T00:00:00Z")

# A body sent with a content type the proxy does not parse: null, with the hash of non-empty bytes.
opaque(inp) := fx.patch(inp, {"request": {"body": null, "body_sha256": fx.some_sha, "headers": {"content-type": "text/plain"}}})

cases := {
	"token_readable": {"input": fx.token_create(narrow), "outcome": "allow", "rules": []},
	"token_unreadable": {"input": opaque(fx.token_create(narrow)), "outcome": "deny", "rules": ["body.unreadable"]},
	"token_without_body": {"input": fx.token_create(null), "outcome": "deny", "rules": ["body.unreadable"]},
	"token_body_not_object": {"input": fx.token_create([narrow]), "outcome": "deny", "rules": ["body.unreadable"]},
	"payment_unreadable": {
		"input": opaque(fx.payment({"amount": "1000", "currency": "usd"})),
		"outcome": "deny", "rules": ["body.unreadable"],
	},
	"register_unreadable": {
		"input": opaque(fx.register("example.com", {})),
		"outcome": "deny", "rules": ["body.unreadable"],
	},
	# readable: an empty body is fine (confirm then needs a human for its unknown amount) ...
	"confirm_empty": {
		"input": fx.stripe("POST", "/v1/payment_intents/pi_123/confirm", "stripe.payment.confirm", {"payment_intent_id": "pi_123"}, null),
		"outcome": "approve", "rules": ["spend.unpriced"], "cents": null,
	},
	# ... an unreadable one is not.
	"confirm_unreadable": {
		"input": opaque(fx.stripe("POST", "/v1/payment_intents/pi_123/confirm", "stripe.payment.confirm", {"payment_intent_id": "pi_123"}, null)),
		"outcome": "deny", "rules": ["body.unreadable"],
	},
	"dnssec_body_not_object": {
		"input": fx.cf("PATCH", concat("", ["/zones/", fx.z1, "/dnssec"]), "cloudflare.dnssec.change", {"zone_id": fx.z1}, "disabled"),
		"outcome": "deny", "rules": ["body.unreadable"],
	},
	# A DELETE of a required-body action may be empty ...
	"subscription_cancel_empty": {
		"input": fx.cf("DELETE", concat("", ["/accounts/", fx.acc, "/subscriptions/sub_1"]), "cloudflare.account.subscription", {"account_id": fx.acc, "subscription_id": "sub_1"}, null),
		"outcome": "approve", "rules": ["impact.subscription_cancel"], "cents": null,
	},
	# ... but not unreadable.
	"subscription_cancel_unreadable": {
		"input": opaque(fx.cf("DELETE", concat("", ["/accounts/", fx.acc, "/subscriptions/sub_1"]), "cloudflare.account.subscription", {"account_id": fx.acc, "subscription_id": "sub_1"}, null)),
		"outcome": "deny", "rules": ["body.unreadable"],
	},
	# Actions whose body is not inspected (a Worker uploaded as plain JavaScript) are judged without it.
	"worker_deploy_opaque_body": {
		"input": opaque(fx.cf("PUT", concat("", ["/accounts/", fx.acc, "/workers/scripts/blog"]), "cloudflare.worker.deploy", {"account_id": fx.acc, "script_name": "blog"}, null)),
		"outcome": "allow", "rules": [],
	},
	# Multipart bodies are readable: {"metadata", "parts"}.
	"dns_import_multipart": {
		"input": fx.cf("POST", concat("", ["/zones/", fx.z1, "/dns_records/import"]), "cloudflare.dns.import", {"zone_id": fx.z1}, {"metadata": null, "parts": [{"name": "file", "filename": "zone.txt", "content_type": "text/plain", "size": 812}]}),
		"outcome": "approve", "rules": ["impact.dns_bulk"],
	},
}

test_token_readable if check("token_readable")

test_token_unreadable if check("token_unreadable")

test_token_without_body if check("token_without_body")

test_token_body_not_object if check("token_body_not_object")

test_payment_unreadable if check("payment_unreadable")

test_register_unreadable if check("register_unreadable")

test_confirm_empty if check("confirm_empty")

test_confirm_unreadable if check("confirm_unreadable")

test_dnssec_body_not_object if check("dnssec_body_not_object")

test_subscription_cancel_empty if check("subscription_cancel_empty")

test_subscription_cancel_unreadable if check("subscription_cancel_unreadable")

test_worker_deploy_opaque_body if check("worker_deploy_opaque_body")

test_dns_import_multipart if check("dns_import_multipart")

test_unreadable_message_names_the_content_type if {
	d := fx.decide(cases.token_unreadable.input)
	contains(d.reasons[0].message, "text/plain")
	contains(d.reasons[0].message, "application/json")
}
