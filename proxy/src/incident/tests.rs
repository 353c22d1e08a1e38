use chrono::TimeZone;
use serde_json::json;

use super::*;

fn row(kind: ResourceKind, id: &str, minute: u32, detail: Value) -> ResourceRow {
    let provider = if kind.as_str().starts_with("dns")
        || matches!(
            kind,
            ResourceKind::Zone
                | ResourceKind::WorkersScript
                | ResourceKind::CustomCertificate
                | ResourceKind::DomainRegistration
        ) {
        "cloudflare"
    } else {
        "stripe"
    };
    ResourceRow {
        id: Uuid::now_v7(),
        provider: provider.to_string(),
        kind,
        resource_id: id.to_string(),
        scope: String::new(),
        zone_id: Some("z1".to_string()),
        account_id: Some("a1".to_string()),
        stripe_account: None,
        detail,
        agent_id: Uuid::nil(),
        agent_name: "deployer".to_string(),
        run_id: None,
        decision_id: Uuid::nil(),
        action: if kind == ResourceKind::WorkersScript {
            "cloudflare.worker.deploy".to_string()
        } else {
            "x".to_string()
        },
        created_at: Utc.with_ymd_and_hms(2026, 12, 1, 10, minute, 0).unwrap(),
        status: ResourceStatus::Live,
        deleted_at: None,
        deleted_by_decision: None,
        updated_at: None,
        updated_by_decision: None,
    }
}

fn check(kind: ResourceKind, detail: Value, expected: Option<(&str, &str, &str)>) {
    let plan = plan_for(
        "deployer",
        vec![],
        None,
        Utc::now(),
        &[row(kind, "r 1", 0, detail)],
        &[],
        &LaterPayments::default(),
    );
    match expected {
        Some((method, path, action)) => {
            assert_eq!(plan.steps.len(), 1, "{kind}: {plan:?}");
            let step = &plan.steps[0];
            assert_eq!(
                (
                    step.call.method.as_str(),
                    step.call.path.as_str(),
                    step.action.as_str()
                ),
                (method, path, action),
                "{kind}"
            );
            assert!(plan.irreversible.is_empty());
        }
        None => {
            assert!(plan.steps.is_empty(), "{kind}: {plan:?}");
        }
    }
}

#[test]
fn each_kind_has_its_inverse_call() {
    use ResourceKind::*;
    let none = json!({});
    check(
        DnsRecord,
        none.clone(),
        Some((
            "DELETE",
            "/client/v4/zones/z1/dns_records/r%201",
            "cloudflare.dns.delete",
        )),
    );
    check(
        Zone,
        none.clone(),
        Some(("DELETE", "/client/v4/zones/r%201", "cloudflare.zone.delete")),
    );
    check(
        WorkersScript,
        none.clone(),
        Some((
            "DELETE",
            "/client/v4/accounts/a1/workers/scripts/r%201",
            "cloudflare.worker.delete",
        )),
    );
    check(
        CustomCertificate,
        none.clone(),
        Some((
            "DELETE",
            "/client/v4/zones/z1/custom_certificates/r%201",
            "cloudflare.cert.custom.change",
        )),
    );
    check(
        StripeCustomer,
        none.clone(),
        Some(("DELETE", "/v1/customers/r%201", "stripe.customer.delete")),
    );
    check(
        Subscription,
        none.clone(),
        Some((
            "DELETE",
            "/v1/subscriptions/r%201",
            "stripe.subscription.cancel",
        )),
    );
    check(
        PaymentIntent,
        json!({"status": "requires_capture"}),
        Some((
            "POST",
            "/v1/payment_intents/r%201/cancel",
            "stripe.payment.cancel",
        )),
    );
    check(
        Product,
        none.clone(),
        Some(("DELETE", "/v1/products/r%201", "stripe.product.delete")),
    );
    check(
        Price,
        none.clone(),
        Some(("POST", "/v1/prices/r%201", "stripe.price.update")),
    );
    // Nothing left to undo, or nothing a call can undo.
    check(PaymentIntent, json!({"status": "canceled"}), None);
    check(PaymentIntent, json!({"status": "succeeded"}), None);
    check(DomainRegistration, none.clone(), None);
    // An upload that replaced a script that was there before is not undone by deleting it.
    check(
        WorkersScript,
        json!({"created_on": "2020-01-01T00:00:00Z"}),
        None,
    );
    check(
        WorkersScript,
        json!({"created_on": "2026-12-01T10:00:00Z"}),
        Some((
            "DELETE",
            "/client/v4/accounts/a1/workers/scripts/r%201",
            "cloudflare.worker.delete",
        )),
    );
}

#[test]
fn irreversible_things_say_what_a_person_must_do() {
    let plan = plan_for(
        "deployer",
        vec![],
        None,
        Utc::now(),
        &[
            row(
                ResourceKind::DomainRegistration,
                "example.dev",
                0,
                json!({}),
            ),
            row(
                ResourceKind::PaymentIntent,
                "pi_1",
                1,
                json!({"status": "succeeded"}),
            ),
        ],
        &[],
        &LaterPayments::default(),
    );
    assert!(plan.steps.is_empty());
    let kinds: Vec<&str> = plan
        .irreversible
        .iter()
        .map(|i| i.resource.kind.as_str())
        .collect();
    assert_eq!(kinds, ["payment_intent", "domain_registration"]);
    assert!(plan.irreversible[0].human.contains("refund"));
    assert!(plan.irreversible[1].human.contains("auto_renew"));
}

#[test]
fn dependents_go_first_and_deleted_resources_are_left_out() {
    let mut gone = row(ResourceKind::DnsRecord, "old", 5, json!({}));
    gone.status = ResourceStatus::Deleted;
    let mut price = row(ResourceKind::Price, "price_1", 3, json!({}));
    price.stripe_account = Some("acct_9".to_string());
    let plan = plan_for(
        "deployer",
        vec![],
        None,
        Utc::now(),
        &[
            row(ResourceKind::Zone, "z9", 0, json!({})),
            row(ResourceKind::DnsRecord, "rec1", 1, json!({})),
            row(ResourceKind::DnsRecord, "rec2", 2, json!({})),
            row(ResourceKind::StripeCustomer, "cus_1", 0, json!({})),
            row(ResourceKind::Subscription, "sub_1", 1, json!({})),
            price,
            gone,
        ],
        &[],
        &LaterPayments::default(),
    );
    let order: Vec<&str> = plan.steps.iter().map(|s| s.resource.id.as_str()).collect();
    assert_eq!(order, ["sub_1", "price_1", "cus_1", "rec2", "rec1", "z9"]);
    assert_eq!(
        plan.steps[1]
            .call
            .headers
            .get("Stripe-Account")
            .map(String::as_str),
        Some("acct_9")
    );
    assert_eq!(
        plan.steps[1].call.form.get("active").map(String::as_str),
        Some("false")
    );
}

#[test]
fn a_plan_file_reads_back_and_other_versions_are_refused() {
    let plan = plan_for(
        "deployer",
        vec![Uuid::nil()],
        None,
        Utc::now(),
        &[row(
            ResourceKind::DnsRecord,
            "rec1",
            1,
            json!({"name": "www"}),
        )],
        &[],
        &LaterPayments::default(),
    );
    let text = serde_json::to_string_pretty(&plan).unwrap();
    assert_eq!(RollbackPlan::parse(&text).unwrap(), plan);
    let mut other: Value = serde_json::from_str(&text).unwrap();
    other["version"] = json!(2);
    assert!(matches!(
        RollbackPlan::parse(&other.to_string()),
        Err(PlanError::Version { .. })
    ));
    assert!(matches!(
        RollbackPlan::parse("{}"),
        Err(PlanError::Unreadable(_))
    ));
}

#[test]
fn a_payment_intent_captured_later_is_irreversible_and_one_confirmed_later_says_so() {
    let intent = row(
        ResourceKind::PaymentIntent,
        "pi_1",
        0,
        json!({"status": "requires_confirmation"}),
    );
    let mut later = LaterPayments::default();
    let confirm = Uuid::now_v7();
    later.add("pi_1", "stripe.payment.confirm", confirm);
    let plan = plan_for(
        "deployer",
        vec![],
        None,
        Utc::now(),
        std::slice::from_ref(&intent),
        &[],
        &later,
    );
    assert_eq!(plan.steps.len(), 1);
    assert!(
        plan.steps[0]
            .caution
            .as_deref()
            .unwrap()
            .contains(&confirm.to_string())
    );
    later.add("pi_1", "stripe.payment.capture", Uuid::now_v7());
    let plan = plan_for("deployer", vec![], None, Utc::now(), &[intent], &[], &later);
    assert!(plan.steps.is_empty());
    assert!(
        plan.irreversible[0]
            .why
            .contains("captured after it was created")
    );
}

#[test]
fn a_resource_another_agent_also_uploaded_to_is_left_to_a_person_and_planned_once() {
    let mine = row(ResourceKind::WorkersScript, "blog", 0, json!({}));
    let mut handle_upload = row(ResourceKind::WorkersScript, "blog", 2, json!({}));
    handle_upload.agent_name = "deployer~tok-1".to_string();
    let mut theirs = row(ResourceKind::WorkersScript, "blog", 5, json!({}));
    theirs.agent_name = "publisher".to_string();
    theirs.action = "cloudflare.worker.version".to_string();
    let record = row(ResourceKind::DnsRecord, "rec1", 1, json!({}));
    let plan = plan_for(
        "deployer",
        vec![],
        None,
        Utc::now(),
        &[mine.clone(), record.clone(), handle_upload],
        &[],
        &LaterPayments::default(),
    );
    let ids: Vec<&str> = plan.steps.iter().map(|s| s.resource.id.as_str()).collect();
    assert_eq!(ids, ["rec1", "blog"], "one step per resource");
    assert_eq!(
        plan.steps[1].id,
        mine.id.to_string(),
        "the first upload's row"
    );
    let plan = plan_for(
        "deployer",
        vec![],
        None,
        Utc::now(),
        &[mine, record],
        std::slice::from_ref(&theirs),
        &LaterPayments::default(),
    );
    let ids: Vec<&str> = plan.steps.iter().map(|s| s.resource.id.as_str()).collect();
    assert_eq!(ids, ["rec1"], "never deletes the other agent's upload");
    assert_eq!(plan.irreversible.len(), 1);
    let why = &plan.irreversible[0].why;
    assert!(
        why.contains("publisher") && why.contains("cloudflare.worker.version"),
        "{why}"
    );
}
