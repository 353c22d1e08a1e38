//! Running a rollback plan through the gate: `tollgate incident rollback-plan --execute PLAN --proxy URL
//! --agent-key-env VAR`.
//!
//! Owns: sending each step's inverse call to tollgate's agent listener (`{proxy}/{provider}{path}`) with the
//! key of an operator-owned agent, so the call is identified, judged by the policy, recorded as a decision
//! and forwarded with the provider credential exactly like an agent's; reading what came back (done, already
//! gone, waiting for an approval, failed, with the decision id); and the progress file beside the plan
//! (`PLAN.progress`, JSON lines), so a second run skips what the first one finished.
//! Must not: reach a provider any other way, hold a provider credential, print or log the agent key (it
//! comes from the environment variable the operator names, and goes out only as a sensitive header).

use std::collections::BTreeSet;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use http::{HeaderValue, Method, Request, Uri, header};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use secrecy::{ExposeSecret as _, SecretString};
use serde_json::{Value, json};

use super::{RollbackPlan, Step};

/// How long one step may take: the gate's own hold for a reviewer is at most 300 s.
const STEP_TIMEOUT: Duration = Duration::from_secs(330);
/// The most of an answer read (its status and the refusal's message are near the start).
const ANSWER_LIMIT: usize = 1024 * 1024;
/// The headers a plan's step may carry.
const STEP_HEADERS: &[&str] = &["Stripe-Account", "Stripe-Context"];
/// Where and as which agent the steps are sent.
pub struct Gateway {
    proxy: Uri,
    key: SecretString,
    key_env: String,
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

/// Why the steps cannot be sent at all.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(
        "--proxy {0:?} is not a URL like https://tollgate.internal:8080 (tollgate's agent listener)"
    )]
    BadUrl(String),
    #[error(
        "refusing to send an agent key over plain http to {0} (not a loopback address): use https://, or \
         --insecure-http if the network path is protected otherwise"
    )]
    Plaintext(String),
    #[error(
        "no agent key in ${0}: put the key of an operator-owned agent (e.g. `tollgate agents create \
         incident-operator --scope …`) in that variable"
    )]
    NoKey(String),
}

/// What happened to one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepOutcome {
    /// The provider answered 2xx: undone now.
    Done {
        status: u16,
        decision_id: Option<String>,
    },
    /// The provider answered 404: nothing left to undo.
    AlreadyGone {
        status: u16,
        decision_id: Option<String>,
    },
    /// The progress file says an earlier run finished it; not sent again.
    DoneEarlier { decision_id: Option<String> },
    /// The policy wants a human: approve `approval_id`, then run the plan again.
    AwaitingApproval {
        approval_id: String,
        decision_id: Option<String>,
    },
    /// Refused by tollgate or the provider, or not answered.
    Failed {
        status: Option<u16>,
        decision_id: Option<String>,
        message: String,
    },
}

impl StepOutcome {
    /// Whether nothing is left to do for the step.
    pub fn finished(&self) -> bool {
        matches!(
            self,
            StepOutcome::Done { .. }
                | StepOutcome::AlreadyGone { .. }
                | StepOutcome::DoneEarlier { .. }
        )
    }

    /// The outcome as the `--json` output and the progress file write it.
    pub fn to_json(&self, step: &Step) -> Value {
        let (outcome, status, decision, extra) = match self {
            StepOutcome::Done {
                status,
                decision_id,
            } => ("done", Some(*status), decision_id, json!({})),
            StepOutcome::AlreadyGone {
                status,
                decision_id,
            } => ("gone", Some(*status), decision_id, json!({})),
            StepOutcome::DoneEarlier { decision_id } => {
                ("done_earlier", None, decision_id, json!({}))
            }
            StepOutcome::AwaitingApproval {
                approval_id,
                decision_id,
            } => (
                "awaiting_approval",
                Some(403),
                decision_id,
                json!({"approval_id": approval_id}),
            ),
            StepOutcome::Failed {
                status,
                decision_id,
                message,
            } => ("failed", *status, decision_id, json!({"message": message})),
        };
        let mut value = json!({
            "step": step.id, "action": step.action, "method": step.call.method,
            "path": format!("/{}{}", step.call.provider, step.call.path),
            "outcome": outcome, "http_status": status, "decision_id": decision,
        });
        if let (Some(map), Value::Object(extra)) = (value.as_object_mut(), extra) {
            map.extend(extra);
        }
        value
    }
}

impl Gateway {
    /// Checks the URL (https, or http to a loopback host unless `insecure_http`) and reads the key from
    /// `key_env`, before any connection.
    pub fn from_env(
        proxy: &str,
        key_env: &str,
        insecure_http: bool,
    ) -> Result<Gateway, GatewayError> {
        let trimmed = proxy.trim().trim_end_matches('/');
        let uri: Uri = trimmed
            .parse()
            .map_err(|_| GatewayError::BadUrl(proxy.to_string()))?;
        let host = uri
            .host()
            .ok_or_else(|| GatewayError::BadUrl(proxy.to_string()))?;
        let loopback = {
            let h = host.trim_start_matches('[').trim_end_matches(']');
            h.eq_ignore_ascii_case("localhost")
                || h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
        };
        match uri.scheme_str() {
            Some("https") => {}
            Some("http") if loopback || insecure_http => {}
            Some("http") => return Err(GatewayError::Plaintext(host.to_string())),
            _ => return Err(GatewayError::BadUrl(proxy.to_string())),
        }
        if uri.query().is_some() || uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err(GatewayError::BadUrl(proxy.to_string()));
        }
        let key = std::env::var(key_env)
            .ok()
            .map(|k| k.trim().to_string())
            .filter(|k| !k.is_empty())
            .map(SecretString::from)
            .ok_or_else(|| GatewayError::NoKey(key_env.to_string()))?;
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Gateway {
            proxy: uri,
            key,
            key_env: key_env.to_string(),
            client: Client::builder(TokioExecutor::new()).build(https),
        })
    }

    /// Sends one step through the gate (again with `Tollgate-Approval` when its approval is granted).
    async fn send(&self, plan: &RollbackPlan, step: &Step, recorded: bool) -> StepOutcome {
        let first = self.exchange(plan, step, recorded, None).await;
        match first {
            // An approval a reviewer already granted (`Tollgate-Approval-Status: approved`): the step is sent
            // again with `Tollgate-Approval`.
            Answer::Refused {
                code,
                approval_id: Some(approval_id),
                approved: true,
                ..
            } if code == "approval_required" => self
                .exchange(plan, step, recorded, Some(&approval_id))
                .await
                .outcome(),
            other => other.outcome(),
        }
    }

    /// `recorded`: whether the step is one tollgate's records vouch for; checked after the plan's own shape,
    /// just before the call would be built.
    async fn exchange(
        &self,
        plan: &RollbackPlan,
        step: &Step,
        recorded: bool,
        approval: Option<&str>,
    ) -> Answer {
        let failed = |message: String| Answer::Unanswered(message);
        let Ok(method) = Method::from_bytes(step.call.method.as_bytes()) else {
            return failed(format!(
                "the plan's method {:?} is not an HTTP method",
                step.call.method
            ));
        };
        // A plan's path is a path: what follows a `?` or `#` would be cut off or sent as a query, so the call
        // made would not be the call the reviewer read (a plan writes those characters percent-encoded).
        if !step.call.path.starts_with('/') || step.call.path.contains(['?', '#']) {
            return failed(format!(
                "the plan's path {:?} is not a plain path ('/…' without '?' or '#'; ids are percent-encoded)",
                step.call.path
            ));
        }
        let prefix = self.proxy.path().trim_end_matches('/');
        let path = format!("{prefix}/{}{}", step.call.provider, step.call.path);
        let mut parts = self.proxy.clone().into_parts();
        parts.path_and_query = match path.parse() {
            Ok(p) => Some(p),
            Err(_) => {
                return failed(format!(
                    "the plan's path {:?} is not a valid path",
                    step.call.path
                ));
            }
        };
        let Ok(uri) = Uri::from_parts(parts) else {
            return failed(format!(
                "the plan's path {:?} is not a valid path",
                step.call.path
            ));
        };
        let Ok(mut auth) = HeaderValue::from_str(&format!("Bearer {}", self.key.expose_secret()))
        else {
            return failed(format!(
                "the key in ${} has characters no HTTP header may carry",
                self.key_env
            ));
        };
        auth.set_sensitive(true);
        let mut builder = Request::builder()
            .method(method.clone())
            .uri(uri)
            .header(header::AUTHORIZATION, auth)
            .header(
                header::USER_AGENT,
                concat!("tollgate-rollback/", env!("CARGO_PKG_VERSION")),
            )
            // Attribution in the decision log: which plan's run this call belongs to.
            .header(
                "tollgate-run",
                format!("rollback:{}:{}", plan.agent, plan.generated_at.timestamp()),
            );
        for (name, value) in &step.call.headers {
            // A plan addresses a connected account, nothing else: a header that could stand for someone
            // (Authorization, Tollgate-*) is not taken from a file.
            if !STEP_HEADERS.iter().any(|h| name.eq_ignore_ascii_case(h)) {
                return failed(format!(
                    "the plan's header {name:?} is not one a rollback step may set ({})",
                    STEP_HEADERS.join(", ")
                ));
            }
            builder = builder.header(name.as_str(), value.as_str());
        }
        if !recorded {
            return failed(format!(
                "not sent: step {:?} is not, as written, the inverse of anything tollgate recorded agent {:?} \
                 creating that is still live (the plan was edited, or the resource is gone since): make a new plan",
                step.id, plan.agent
            ));
        }
        if step.call.provider == "stripe" && method != Method::GET {
            // A retry after an unknown outcome is the same call at Stripe (the gate namespaces the key per
            // agent).
            builder = builder.header("idempotency-key", format!("tollgate-rollback-{}", step.id));
        }
        if let Some(id) = approval {
            builder = builder.header("tollgate-approval", id);
        }
        let body = if step.call.form.is_empty() {
            Bytes::new()
        } else {
            builder = builder.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
            let mut form = form_urlencoded::Serializer::new(String::new());
            for (k, v) in &step.call.form {
                form.append_pair(k, v);
            }
            Bytes::from(form.finish())
        };
        let request = match builder.body(Full::new(body)) {
            Ok(r) => r,
            Err(e) => return failed(format!("cannot build the request: {e}")),
        };
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| {
                let mut why = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    why = format!("{why}: {s}");
                    source = s.source();
                }
                why
            })?;
            let status = response.status().as_u16();
            let header = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            let decision_id = header("tollgate-decision");
            let approval_header = header("tollgate-approval-id");
            // Only tollgate's own refusals carry this header (the gate strips `Tollgate-*` from provider
            // answers), so a body's `tollgate` object is believed only beside it.
            let refusal = header(crate::REFUSAL_HEADER.as_str());
            let approved = header("tollgate-approval-status").as_deref() == Some("approved");
            let bytes = http_body_util::Limited::new(response.into_body(), ANSWER_LIMIT)
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            Ok::<_, String>((
                status,
                decision_id,
                approval_header,
                refusal,
                approved,
                bytes,
            ))
        };
        let (status, decision_id, approval_header, refusal, approved, bytes) =
            match tokio::time::timeout(STEP_TIMEOUT, exchange).await {
                Err(_) => return failed(format!("no answer within {} s", STEP_TIMEOUT.as_secs())),
                Ok(Err(why)) => {
                    return failed(format!(
                        "tollgate at {} could not be reached: {why}",
                        self.proxy
                    ));
                }
                Ok(Ok(answer)) => answer,
            };
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let message = error_message(&body).unwrap_or_else(|| format!("HTTP {status}"));
        if (200..300).contains(&status) {
            return Answer::Done {
                status,
                decision_id,
            };
        }
        match refusal {
            Some(code) => Answer::Refused {
                status,
                code,
                approval_id: approval_header,
                approved,
                decision_id,
                message,
            },
            None => Answer::Provider {
                status,
                decision_id,
                message,
            },
        }
    }
}

/// What tollgate answered one call.
enum Answer {
    Done {
        status: u16,
        decision_id: Option<String>,
    },
    /// Tollgate refused it (its `Tollgate-Refusal` header says so).
    Refused {
        status: u16,
        code: String,
        approval_id: Option<String>,
        /// The approval is already granted (`Tollgate-Approval-Status: approved`).
        approved: bool,
        decision_id: Option<String>,
        message: String,
    },
    /// The provider answered with an error.
    Provider {
        status: u16,
        decision_id: Option<String>,
        message: String,
    },
    Unanswered(String),
}

impl Answer {
    fn outcome(self) -> StepOutcome {
        match self {
            Answer::Done {
                status,
                decision_id,
            } => StepOutcome::Done {
                status,
                decision_id,
            },
            Answer::Provider {
                status: 404,
                decision_id,
                ..
            } => StepOutcome::AlreadyGone {
                status: 404,
                decision_id,
            },
            Answer::Refused {
                code,
                approval_id: Some(approval_id),
                decision_id,
                ..
            } if code == "approval_required" => StepOutcome::AwaitingApproval {
                approval_id,
                decision_id,
            },
            Answer::Refused {
                status,
                code,
                decision_id,
                message,
                ..
            } => StepOutcome::Failed {
                status: Some(status),
                decision_id,
                message: format!("{code}: {message}"),
            },
            Answer::Provider {
                status,
                decision_id,
                message,
            } => StepOutcome::Failed {
                status: Some(status),
                decision_id,
                message,
            },
            Answer::Unanswered(message) => StepOutcome::Failed {
                status: None,
                decision_id: None,
                message,
            },
        }
    }
}

/// The message of an error envelope: Cloudflare's `errors[0].message`, Stripe's (and tollgate's plain)
/// `error.message`.
fn error_message(body: &Value) -> Option<String> {
    body.pointer("/errors/0/message")
        .or_else(|| body.pointer("/error/message"))
        .and_then(Value::as_str)
        .map(|m| m.chars().take(2000).collect())
}

/// The progress file of a plan: `PLAN.progress` beside it.
pub fn progress_path(plan: &Path) -> PathBuf {
    let mut name = plan.file_name().unwrap_or_default().to_os_string();
    name.push(".progress");
    plan.with_file_name(name)
}

/// The steps an earlier run finished, with the decision that did it.
fn finished_earlier(progress: &Path) -> anyhow::Result<Vec<(String, Option<String>)>> {
    let text = match std::fs::read_to_string(progress) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => anyhow::bail!("cannot read the progress file {}: {e}", progress.display()),
    };
    let mut done = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let entry: Value = serde_json::from_str(line).map_err(|e| {
            anyhow::anyhow!(
                "the progress file {} line {} is not JSON: {e}",
                progress.display(),
                n + 1
            )
        })?;
        if matches!(entry["outcome"].as_str(), Some("done" | "gone"))
            && let Some(step) = entry["step"].as_str()
        {
            done.push((
                step.to_string(),
                entry["decision_id"].as_str().map(str::to_string),
            ));
        }
    }
    Ok(done)
}

/// Runs every step not finished earlier, in the plan's order, telling `each` as it goes; a step that fails
/// does not stop the others (each undoes something else). Finished steps are appended to the progress file
/// as they finish.
pub async fn run(
    plan: &RollbackPlan,
    recorded: &RollbackPlan,
    gateway: &Gateway,
    progress: &Path,
    mut each: impl FnMut(&Step, &StepOutcome),
) -> anyhow::Result<Vec<StepOutcome>> {
    let earlier = finished_earlier(progress)?;
    let seen: BTreeSet<&str> = earlier.iter().map(|(s, _)| s.as_str()).collect();
    let mut journal = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(progress)
        .map_err(|e| {
            anyhow::anyhow!("cannot write the progress file {}: {e}", progress.display())
        })?;
    let mut outcomes = Vec::with_capacity(plan.steps.len());
    for step in &plan.steps {
        let outcome = if seen.contains(step.id.as_str()) {
            let decision_id = earlier
                .iter()
                .find(|(s, _)| *s == step.id)
                .and_then(|(_, d)| d.clone());
            StepOutcome::DoneEarlier { decision_id }
        } else {
            gateway.send(plan, step, recorded.vouches_for(step)).await
        };
        if matches!(
            outcome,
            StepOutcome::Done { .. } | StepOutcome::AlreadyGone { .. }
        ) {
            let mut entry = outcome.to_json(step);
            entry["at"] = json!(Utc::now());
            writeln!(journal, "{entry}")
                .and_then(|_| journal.sync_data())
                .map_err(|e| {
                    anyhow::anyhow!("cannot write the progress file {}: {e}", progress.display())
                })?;
        }
        each(step, &outcome);
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_progress_file_sits_beside_the_plan() {
        assert_eq!(
            progress_path(Path::new("/tmp/x/plan.json")),
            PathBuf::from("/tmp/x/plan.json.progress")
        );
    }

    #[test]
    fn error_messages_come_from_either_envelope() {
        let cf = json!({"success": false, "errors": [{"code": 7003, "message": "not found"}]});
        assert_eq!(error_message(&cf).as_deref(), Some("not found"));
        let stripe =
            json!({"error": {"type": "invalid_request_error", "message": "No such customer"}});
        assert_eq!(error_message(&stripe).as_deref(), Some("No such customer"));
        assert_eq!(error_message(&Value::Null), None);
    }

    #[test]
    fn an_agent_key_goes_only_to_https_or_loopback() {
        // SAFETY of the test: the variable is this test's own.
        unsafe { std::env::set_var("TOLLGATE_TEST_ROLLBACK_KEY", "tg_x") };
        let key = "TOLLGATE_TEST_ROLLBACK_KEY";
        assert!(Gateway::from_env("http://127.0.0.1:8080", key, false).is_ok());
        assert!(Gateway::from_env("https://tollgate.internal", key, false).is_ok());
        assert!(matches!(
            Gateway::from_env("http://tollgate.internal", key, false),
            Err(GatewayError::Plaintext(_))
        ));
        assert!(Gateway::from_env("http://tollgate.internal", key, true).is_ok());
        assert!(matches!(
            Gateway::from_env("http://u:p@127.0.0.1", key, false),
            Err(GatewayError::BadUrl(_))
        ));
        assert!(matches!(
            Gateway::from_env("http://127.0.0.1", "TOLLGATE_TEST_NO_SUCH_VAR", false),
            Err(GatewayError::NoKey(_))
        ));
    }
}
