# High impact: NS/MX/CAA records, the zone apex, deletes, bulk DNS, DNSSEC, certificates, whole-thing deletes,
# subscription cancellations and production Workers need a human.
package tollgate_test.impact

import data.tollgate_test.fixtures as fx

check(name) if fx.check_case(cases[name])

record(type, name, content) := {"type": type, "name": name, "content": content, "ttl": 3600}

zone_path(rest) := concat("", ["/zones/", fx.z1, rest])

cert(method, rest, action, params, body) := fx.cf(method, zone_path(rest), action, object.union({"zone_id": fx.z1}, params), body)

worker(method, script, rest, action, body) := fx.cf(method, concat("", ["/accounts/", fx.acc, "/workers/scripts/", script, rest]), action, {"account_id": fx.acc, "script_name": script}, body)

cases := {
	# --- Record types ---
	"a_record": {"input": fx.dns_create(fx.z1, record("A", "www.example.com", "198.51.100.4")), "outcome": "allow", "rules": []},
	"ns_record": {"input": fx.dns_create(fx.z1, record("NS", "sub.example.com", "ns1.example.net")), "outcome": "approve", "rules": ["impact.dns_record_type"]},
	"ns_record_lower_case": {"input": fx.dns_create(fx.z1, record("ns", "sub.example.com", "ns1.example.net")), "outcome": "approve", "rules": ["impact.dns_record_type"]},
	"mx_record": {"input": fx.dns_create(fx.z1, object.union(record("MX", "mail.example.com", "mx1.example.net"), {"priority": 10})), "outcome": "approve", "rules": ["impact.dns_record_type"]},
	"caa_record": {"input": fx.dns_create(fx.z1, {"type": "CAA", "name": "www.example.com", "data": {"flags": 0, "tag": "issue", "value": "letsencrypt.org"}}), "outcome": "approve", "rules": ["impact.dns_record_type"]},
	"type_not_string": {"input": fx.dns_create(fx.z1, record(1, "www.example.com", "198.51.100.4")), "outcome": "deny", "rules": ["impact.dns_record"]},
	"ns_update": {
		"input": fx.cf("PUT", zone_path("/dns_records/rec1"), "cloudflare.dns.update", {"zone_id": fx.z1, "dns_record_id": "rec1"}, record("NS", "sub.example.com", "ns2.example.net")),
		"outcome": "approve", "rules": ["impact.dns_record_type"],
	},
	"patch_content_only": {"input": fx.dns_patch({"content": "198.51.100.5"}), "outcome": "approve", "rules": ["impact.dns_record_type", "impact.dns_apex"]},
	"patch_with_type_and_name": {"input": fx.dns_patch({"type": "A", "name": "www.example.com", "content": "198.51.100.5"}), "outcome": "allow", "rules": []},
	# --- The apex ---
	"apex_at": {"input": fx.dns_create(fx.z1, record("A", "@", "198.51.100.4")), "outcome": "approve", "rules": ["impact.dns_apex"]},
	"apex_two_labels": {"input": fx.dns_create(fx.z1, record("A", "example.com", "198.51.100.4")), "outcome": "approve", "rules": ["impact.dns_apex"]},
	"apex_trailing_dot": {"input": fx.dns_create(fx.z1, record("AAAA", "Example.COM.", "2001:db8::1")), "outcome": "approve", "rules": ["impact.dns_apex"]},
	"name_not_string": {"input": fx.dns_create(fx.z1, record("A", ["www"], "198.51.100.4")), "outcome": "deny", "rules": ["impact.dns_record"]},
	# --- Deletes, bulk, DNSSEC ---
	"dns_delete": {
		"input": fx.cf("DELETE", zone_path("/dns_records/rec1"), "cloudflare.dns.delete", {"zone_id": fx.z1, "dns_record_id": "rec1"}, null),
		"outcome": "approve", "rules": ["impact.dns_delete"],
	},
	"dns_batch": {
		"input": fx.cf("POST", zone_path("/dns_records/batch"), "cloudflare.dns.batch", {"zone_id": fx.z1}, {"posts": [record("A", "a.example.com", "198.51.100.1")], "deletes": [{"id": "rec9"}]}),
		"outcome": "approve", "rules": ["impact.dns_bulk"],
	},
	"dnssec_disable": {
		"input": fx.cf("PATCH", zone_path("/dnssec"), "cloudflare.dnssec.change", {"zone_id": fx.z1}, {"status": "disabled"}),
		"outcome": "approve", "rules": ["impact.dnssec"],
	},
	# --- Certificates ---
	"custom_certificate_upload": {
		"input": cert("POST", "/custom_certificates", "cloudflare.cert.custom.upload", {}, {"certificate": "-----BEGIN CERTIFICATE-----\nMIIDtTCCAp2gAwIBAgIJAM15n7fdxhRtMA0GCSqGSIb3DQEBCwUAMEUxCzAJBgNV\n-----END CERTIFICATE-----\n", "private_key": "[redacted]", "bundle_method": "ubiquitous", "type": "sni_custom"}),
		"outcome": "approve", "rules": ["impact.certificates"],
	},
	"custom_certificate_delete": {
		"input": cert("DELETE", "/custom_certificates/cert1", "cloudflare.cert.custom.change", {"custom_certificate_id": "cert1"}, null),
		"outcome": "approve", "rules": ["impact.certificates"],
	},
	"certificate_pack_order": {
		"input": cert("POST", "/ssl/certificate_packs/order", "cloudflare.cert.pack.order", {}, {"type": "advanced", "hosts": ["example.com", "*.example.com"], "validation_method": "txt", "validity_days": 90, "certificate_authority": "lets_encrypt"}),
		"outcome": "approve", "rules": ["impact.certificates"],
	},
	"origin_certificate_create": {
		"input": fx.cf("POST", "/certificates", "cloudflare.cert.origin.create", {}, {"csr": "-----BEGIN CERTIFICATE REQUEST-----\n...", "hostnames": ["example.com"], "request_type": "origin-rsa", "requested_validity": 5475}),
		"outcome": "allow", "rules": [],
	},
	"origin_certificate_revoke": {
		"input": fx.cf("DELETE", "/certificates/328578533902268680", "cloudflare.cert.origin.revoke", {"certificate_id": "328578533902268680"}, null),
		"outcome": "approve", "rules": ["impact.certificates"],
	},
	# --- Deletes of whole things ---
	"zone_delete": {"input": fx.cf("DELETE", zone_path(""), "cloudflare.zone.delete", {"zone_id": fx.z1}, null), "outcome": "approve", "rules": ["impact.delete"]},
	"worker_delete": {"input": worker("DELETE", "blog", "", "cloudflare.worker.delete", null), "outcome": "approve", "rules": ["impact.delete"]},
	"payment_cancel": {
		"input": fx.stripe("POST", "/v1/payment_intents/pi_1/cancel", "stripe.payment.cancel", {"payment_intent_id": "pi_1"}, {}),
		"outcome": "approve", "rules": ["impact.delete"],
	},
	"subscription_cancel_stripe": {
		"input": fx.stripe("DELETE", "/v1/subscriptions/sub_1", "stripe.subscription.cancel", {"subscription_id": "sub_1"}, null),
		"outcome": "approve", "rules": ["impact.subscription_cancel"],
	},
	"account_delete": {
		"input": fx.cf("DELETE", concat("", ["/accounts/", fx.acc]), "cloudflare.account.delete", {"account_id": fx.acc}, null),
		"outcome": "approve", "rules": ["impact.delete"],
	},
	# --- Workers ---
	"worker_deploy_not_production": {
		"input": worker("PUT", "blog-preview", "", "cloudflare.worker.deploy", {"metadata": {"main_module": "index.js", "compatibility_date": "2026-11-01"}, "parts": [{"name": "index.js", "filename": "index.js", "content_type": "application/javascript+module", "size": 2048}]}),
		"outcome": "allow", "rules": [],
	},
	"worker_rollout_not_production": {
		"input": worker("POST", "blog-preview", "/deployments", "cloudflare.worker.rollout", {"strategy": "percentage", "versions": [{"version_id": "v2", "percentage": 100}]}),
		"outcome": "allow", "rules": [],
	},
}

test_a_record if check("a_record")

test_ns_record if check("ns_record")

test_ns_record_lower_case if check("ns_record_lower_case")

test_mx_record if check("mx_record")

test_caa_record if check("caa_record")

test_type_not_string if check("type_not_string")

test_ns_update if check("ns_update")

test_patch_content_only if check("patch_content_only")

test_patch_with_type_and_name if check("patch_with_type_and_name")

test_apex_at if check("apex_at")

test_apex_two_labels if check("apex_two_labels")

test_apex_trailing_dot if check("apex_trailing_dot")

test_name_not_string if check("name_not_string")

test_dns_delete if check("dns_delete")

test_dns_batch if check("dns_batch")

test_dnssec_disable if check("dnssec_disable")

test_custom_certificate_upload if check("custom_certificate_upload")

test_custom_certificate_delete if check("custom_certificate_delete")

test_certificate_pack_order if check("certificate_pack_order")

test_origin_certificate_create if check("origin_certificate_create")

test_origin_certificate_revoke if check("origin_certificate_revoke")

test_zone_delete if check("zone_delete")

test_worker_delete if check("worker_delete")

test_account_delete if check("account_delete")

test_payment_cancel if check("payment_cancel")

test_subscription_cancel_stripe if check("subscription_cancel_stripe")

test_worker_deploy_not_production if check("worker_deploy_not_production")

test_worker_rollout_not_production if check("worker_rollout_not_production")

# --- Data-driven settings ----------------------------------------------------------------------------------

production := {"labels": {"api-gateway": "production", "blog-preview": "staging"}}

deploy_body := {"metadata": {"main_module": "index.js"}, "parts": []}

# The fixture: a Workers deploy to a script labelled production.
test_production_deploy_needs_a_human if {
	d := fx.decide(worker("PUT", "api-gateway", "", "cloudflare.worker.deploy", deploy_body)) with data.impact.workers as production
	d.outcome == "approve"
	fx.rules(d) == {"impact.production_worker"}
}

test_production_rollout_needs_a_human if {
	inp := worker("POST", "api-gateway", "/deployments", "cloudflare.worker.rollout", {"versions": [{"version_id": "v2", "percentage": 10}]})
	d := fx.decide(inp) with data.impact.workers as production
	d.outcome == "approve"
}

test_staging_label_is_not_production if {
	d := fx.decide(worker("PUT", "blog-preview", "", "cloudflare.worker.deploy", deploy_body)) with data.impact.workers as production
	d.outcome == "allow"
}

test_production_label_per_account if {
	labels := {"labels": {concat("/", [fx.acc, "checkout"]): "production"}}
	d := fx.decide(worker("PUT", "checkout", "", "cloudflare.worker.deploy", deploy_body)) with data.impact.workers as labels
	d.outcome == "approve"
}

test_known_zone_name_marks_the_apex if {
	inp := fx.dns_create(fx.z1, record("A", "example.co.uk", "198.51.100.4"))
	d := fx.decide(inp) with data.impact.dns.zone_names as {fx.z1: "example.co.uk"}
	d.outcome == "approve"
	fx.rules(d) == {"impact.dns_apex"}
}

test_known_zone_name_spares_subdomains if {
	inp := fx.dns_create(fx.z1, record("A", "shop.example.co.uk", "198.51.100.4"))
	d := fx.decide(inp) with data.impact.dns.zone_names as {fx.z1: "example.co.uk"}
	d.outcome == "allow"
}

test_record_types_are_data if {
	inp := fx.dns_create(fx.z1, record("TXT", "www.example.com", "v=spf1 -all"))
	fx.decide(inp).outcome == "allow"
	d := fx.decide(inp) with data.impact.dns.approve_types as {"TXT": true}
	d.outcome == "approve"
}

test_record_type_message_lists_the_types if {
	d := fx.decide(cases.ns_record.input)
	contains(d.reasons[0].message, "CAA, MX, NS")
}
