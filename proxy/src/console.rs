//! The reviewer console: server-rendered HTML on the admin listener at `/`, for the people who approve held
//! requests, read the decision log and operate tollgate without curl or database access.
//!
//! Owns: console sign-in (a reviewer token, or the bootstrap token, exchanged for a session cookie —
//! HttpOnly, SameSite=Strict, `Secure` and `__Host-` prefixed when served over TLS, expiring; only its SHA-256
//! is stored, and it is bound to the credential it was opened with, so rotating or revoking a reviewer ends
//! their sessions at once on every replica), CSRF tokens on every form, the security headers of every page (a
//! strict Content-Security-Policy with no inline script or style, no framing, no caching, no referrer leaving the console), the
//! page templates (`console/templates`, MiniJinja, HTML-escaped by default) and the two static files.
//! Must not: decide anything itself. Every action a form posts runs the admin API's own handler (the same
//! validation, separation of duties, records and metrics) as the signed-in reviewer, and is allowed only to
//! the role that [`crate::admin::endpoints`] gives its API endpoint: what a role may not do is neither offered
//! on the page nor accepted by the server. No secret is ever rendered, except an agent key once, on the
//! page that answers the form that created it.

use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Form};
use chrono::{DateTime, Duration, Utc};
use rand::Rng;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::admin::{self, Admin};
use crate::reviewers::{self, Authenticated, Reviewer, Role};
use crate::store::{ConsoleSessionRow, DecisionFilter, StoreError};

/// The session cookie's name over plain HTTP, and over TLS (where the `__Host-` prefix makes the browser
/// refuse it unless it is Secure, host-only and for `/`).
const SESSION_COOKIE: &str = "tollgate_session";
const SESSION_COOKIE_TLS: &str = "__Host-tollgate_session";
/// The login form's double-submit cookie (there is no session yet to bind a CSRF token to).
const LOGIN_COOKIE: &str = "tollgate_login";
const LOGIN_COOKIE_TLS: &str = "__Host-tollgate_login";
/// Every console page: scripts and styles only from the console's own static files, nothing inline, no
/// framing, forms only back to the console.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
    connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
const STATIC_CSS: &str = include_str!("console/static/console.css");
const STATIC_JS: &str = include_str!("console/static/console.js");
const PAGE: i64 = 50;

/// The compiled templates, built once.
fn templates() -> &'static minijinja::Environment<'static> {
    static ENV: std::sync::OnceLock<minijinja::Environment<'static>> = std::sync::OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = minijinja::Environment::new();
        for (name, source) in TEMPLATES {
            // The templates are part of the binary and compiled in a unit test; a broken one is a build defect.
            if let Err(e) = env.add_template(name, source) {
                tracing::error!(template = name, error = %e, "console template does not compile");
            }
        }
        env.add_filter("money", money);
        env.add_filter("ago", ago);
        env.add_filter("pretty", pretty);
        env
    })
}

const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("console/templates/base.html")),
    ("login.html", include_str!("console/templates/login.html")),
    ("error.html", include_str!("console/templates/error.html")),
    (
        "approvals.html",
        include_str!("console/templates/approvals.html"),
    ),
    (
        "approval.html",
        include_str!("console/templates/approval.html"),
    ),
    (
        "decisions.html",
        include_str!("console/templates/decisions.html"),
    ),
    (
        "decision.html",
        include_str!("console/templates/decision.html"),
    ),
    ("audit.html", include_str!("console/templates/audit.html")),
    ("spend.html", include_str!("console/templates/spend.html")),
    ("agents.html", include_str!("console/templates/agents.html")),
    (
        "agent_created.html",
        include_str!("console/templates/agent_created.html"),
    ),
    (
        "operations.html",
        include_str!("console/templates/operations.html"),
    ),
    (
        "contained.html",
        include_str!("console/templates/contained.html"),
    ),
];

/// Cents as dollars: `12345` → `$123.45`.
fn money(cents: Option<i64>) -> String {
    match cents {
        Some(c) => {
            let sign = if c < 0 { "-" } else { "" };
            let c = c.unsigned_abs();
            format!("{sign}${}.{:02}", c / 100, c % 100)
        }
        None => "—".to_string(),
    }
}

/// An RFC 3339 time as an age: `3m ago`, `in 2h`.
fn ago(at: Option<String>) -> String {
    let Some(at) = at.and_then(|a| DateTime::parse_from_rfc3339(&a).ok()) else {
        return "—".to_string();
    };
    let secs = (Utc::now() - at.with_timezone(&Utc)).num_seconds();
    let (n, future) = (secs.unsigned_abs(), secs < 0);
    let text = match n {
        0..60 => format!("{n}s"),
        60..3600 => format!("{}m", n / 60),
        3600..86_400 => format!("{}h {}m", n / 3600, n % 3600 / 60),
        _ => format!("{}d {}h", n / 86_400, n % 86_400 / 3600),
    };
    if future {
        format!("in {text}")
    } else {
        format!("{text} ago")
    }
}

/// A value as indented JSON (escaped by the template like any text).
fn pretty(value: minijinja::Value) -> String {
    serde_json::to_value(&value)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_default()
}

/// The console's routes, merged into the admin router. Pages are guarded by a session; the role each form
/// needs is the role of the API endpoint it acts through.
pub fn router(admin: Arc<Admin>) -> Router<Arc<Admin>> {
    let session = middleware::from_fn_with_state(admin.clone(), require_session);
    let pages = Router::new()
        .route("/", get(|| async { Redirect::to("/approvals") }))
        .route("/approvals", get(approvals_page))
        .route("/approvals/{id}", get(approval_page))
        .route("/approvals/{id}/approve", post(approve_form))
        .route("/approvals/{id}/deny", post(deny_form))
        .route("/decisions", get(decisions_page))
        .route("/decisions/{id}", get(decision_page))
        .route("/audit", get(audit_page))
        .route("/spend", get(spend_page))
        .route("/agents", get(agents_page).post(create_agent_form))
        .route("/agents/{name}/revoke", post(revoke_agent_form))
        .route("/incidents/contain", post(contain_form))
        .route("/operations", get(operations_page))
        .route("/operations/freeze", post(freeze_form))
        .route("/operations/unfreeze", post(unfreeze_form))
        .route("/operations/reload", post(reload_form))
        .route("/operations/reservations/{id}/settle", post(settle_form))
        .route("/logout", post(logout))
        .route_layer(session);
    Router::new()
        .route("/login", get(login_page).post(login))
        .route("/static/console.css", get(css))
        .route("/static/console.js", get(js))
        .merge(pages)
        .layer(middleware::from_fn(security_headers))
}

/// Which API endpoint each console form acts through: its role is the form's role.
const FORMS: &[(&str, &str, &str)] = &[
    (
        "/approvals/{id}/approve",
        "POST",
        "/api/approvals/{id}/approve",
    ),
    ("/approvals/{id}/deny", "POST", "/api/approvals/{id}/deny"),
    ("/agents", "POST", "/api/agents"),
    ("/agents/{name}/revoke", "POST", "/api/agents/{name}/revoke"),
    (
        "/incidents/contain",
        "POST",
        "/api/incidents/{agent}/contain",
    ),
    ("/operations/freeze", "POST", "/api/freeze"),
    ("/operations/unfreeze", "DELETE", "/api/freeze"),
    ("/operations/reload", "POST", "/api/policy/reload"),
    (
        "/operations/reservations/{id}/settle",
        "POST",
        "/api/spend/reservations/{id}/settle",
    ),
];

/// The role the admin API requires for `method path`; an endpoint the table lacks is admin-only (closed).
pub fn api_role(method: &str, path: &str) -> Role {
    admin::endpoints()
        .into_iter()
        .find(|e| e.method == method && e.path == path)
        .map(|e| e.role)
        .unwrap_or(Role::Admin)
}

/// The role a console form needs (that of the API endpoint it acts through).
fn form_role(form: &str) -> Role {
    FORMS
        .iter()
        .find(|(f, _, _)| *f == form)
        .map(|(_, m, p)| api_role(m, p))
        .unwrap_or(Role::Admin)
}

/// The signed-in reviewer of a console request, with their session's CSRF token.
#[derive(Debug, Clone)]
struct Signed {
    reviewer: Reviewer,
    csrf: String,
    session_hash: String,
}

impl Signed {
    fn may(&self, form: &str) -> bool {
        self.reviewer.role.allows(form_role(form))
    }

    /// What every page's layout reads: who, their role, the CSRF token and what they may do.
    fn context(&self, nav: &str) -> Value {
        json!({
            "me": {"name": self.reviewer.name, "role": self.reviewer.role.as_str()},
            "csrf": self.csrf,
            "nav": nav,
            "can": {
                "approve": self.may("/approvals/{id}/approve"),
                "create_agent": self.may("/agents"),
                "revoke_agent": self.may("/agents/{name}/revoke"),
                "contain": self.may("/incidents/contain"),
                "freeze": self.may("/operations/freeze"),
                "reload": self.may("/operations/reload"),
                "settle": self.may("/operations/reservations/{id}/settle"),
            },
        })
    }
}

async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // `same-origin`, not `no-referrer`: with no referrer at all a browser sends `Origin: null` on the
    // console's own form posts, and the origin check below could not tell them from a sandboxed frame's.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    response
}

async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        STATIC_CSS,
    )
        .into_response()
}

async fn js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        STATIC_JS,
    )
        .into_response()
}

fn render(status: StatusCode, template: &str, context: &Value) -> Response {
    // What an agent chose is shown as its bytes are: no invisible or direction-changing characters.
    let mut context = context.clone();
    crate::display::reveal_all(&mut context);
    let rendered = templates()
        .get_template(template)
        .and_then(|t| t.render(minijinja::Value::from_serialize(&context)));
    match rendered {
        Ok(html) => (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            html,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(template, error = %e, "console page did not render");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                "the console could not render this page; the log says why",
            )
                .into_response()
        }
    }
}

fn error_page(signed: Option<&Signed>, status: StatusCode, title: &str, message: &str) -> Response {
    let mut context = signed.map(|s| s.context("")).unwrap_or_else(|| json!({}));
    context["title"] = json!(title);
    context["message"] = json!(message);
    context["status"] = json!(status.as_u16());
    render(status, "error.html", &context)
}

fn store_failed(signed: &Signed, e: StoreError) -> Response {
    tracing::error!(error = %e, "console store call failed");
    error_page(
        Some(signed),
        StatusCode::SERVICE_UNAVAILABLE,
        "Store unavailable",
        "The store did not answer; nothing was changed. Try again in a moment.",
    )
}

// ---- sessions ----

/// Whether the browser reached the console over TLS: a trusted proxy says so (`X-Forwarded-Proto: https`),
/// or the configured public URL is `https://`.
fn over_tls(admin: &Admin, headers: &HeaderMap, peer: Option<std::net::IpAddr>) -> bool {
    if admin.config.console.public_url_is_https {
        return true;
    }
    peer.is_some_and(|ip| admin.config.admin.trusted_proxies.contains(&ip))
        && single(headers, &http::HeaderName::from_static("x-forwarded-proto"))
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
}

/// A header's value when it appears exactly once.
fn single<'a>(headers: &'a HeaderMap, name: &http::HeaderName) -> Option<&'a HeaderValue> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (Some(v), None) => Some(v),
        _ => None,
    }
}

fn peer_ip(request: &Request) -> Option<std::net::IpAddr> {
    request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip())
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

fn set_cookie(name: &str, value: &str, max_age: i64, tls: bool, path: &str) -> HeaderValue {
    let secure = if tls { "; Secure" } else { "" };
    let text = format!(
        "{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}"
    );
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("invalid=; Max-Age=0"))
}

fn random_token(bytes: usize) -> String {
    let mut raw = vec![0u8; bytes];
    rand::rng().fill(&mut raw[..]);
    hex::encode(raw)
}

/// The identity a trusted authenticating proxy vouches for on this request, if any.
fn vouched_email(
    admin: &Admin,
    headers: &HeaderMap,
    peer: Option<std::net::IpAddr>,
) -> Option<String> {
    peer.filter(|ip| admin.config.admin.trusted_proxies.contains(ip))
        // More than one (a proxy appending its own to one the client sent) vouches for no one.
        .and_then(|_| single(headers, &admin.config.admin.identity_header))
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase())
        .filter(|v| !v.is_empty())
}

/// The session a request's cookie names, checked against the reviewer's current state: the reviewer
/// exists, is not revoked, still holds the credential the session was opened with (a rotated token ends
/// it), and, for a single-sign-on session, the trusted proxy still vouches for the same person.
async fn resume(
    admin: &Admin,
    headers: &HeaderMap,
    peer: Option<std::net::IpAddr>,
    tls: bool,
) -> Result<Option<Signed>, StoreError> {
    let name = if tls {
        SESSION_COOKIE_TLS
    } else {
        SESSION_COOKIE
    };
    let Some(value) = cookie(headers, name) else {
        return Ok(None);
    };
    let session_hash = crate::identity::hash_key(value);
    let Some(session) = admin.store.console_session(&session_hash).await? else {
        return Ok(None);
    };
    let reviewer = match session.reviewer_id {
        None => {
            let holds = session.reviewer_name == reviewers::BOOTSTRAP_ADMIN
                && admin.config.admin.token.as_ref().is_some_and(|t| {
                    use secrecy::ExposeSecret;
                    reviewers::constant_time_eq(
                        crate::identity::hash_key(t.expose_secret()).as_bytes(),
                        session.credential_hash.as_bytes(),
                    )
                });
            if !holds {
                return Ok(None);
            }
            Reviewer::bootstrap()
        }
        Some(id) => {
            let Some(row) = admin.store.reviewer_by_id(id).await? else {
                return Ok(None);
            };
            let Some(role) = Role::parse(&row.role) else {
                return Ok(None);
            };
            let holds = match session.credential_hash.strip_prefix("sso:") {
                Some(email) => {
                    row.email.as_deref().map(str::to_ascii_lowercase).as_deref() == Some(email)
                        && vouched_email(admin, headers, peer).as_deref() == Some(email)
                }
                None => reviewers::constant_time_eq(
                    row.token_hash.as_bytes(),
                    session.credential_hash.as_bytes(),
                ),
            };
            if row.revoked_at.is_some() || !holds {
                return Ok(None);
            }
            Reviewer {
                id: Some(row.id),
                name: row.name,
                email: row.email,
                role,
            }
        }
    };
    Ok(Some(Signed {
        reviewer,
        csrf: session.csrf_token,
        session_hash,
    }))
}

/// Opens a session for `reviewer` (bound to `credential_hash`): the cookie that carries it, and the session.
async fn open_session(
    admin: &Admin,
    reviewer: &Reviewer,
    credential_hash: String,
    tls: bool,
) -> Result<(HeaderValue, Signed), StoreError> {
    let value = random_token(32);
    let now = Utc::now();
    let lifetime = admin.config.console.session_lifetime;
    let row = ConsoleSessionRow {
        id_hash: crate::identity::hash_key(&value),
        reviewer_id: reviewer.id,
        reviewer_name: reviewer.name.clone(),
        credential_hash,
        csrf_token: random_token(32),
        created_at: now,
        expires_at: now + lifetime,
    };
    admin.store.insert_console_session(&row).await?;
    let name = if tls {
        SESSION_COOKIE_TLS
    } else {
        SESSION_COOKIE
    };
    let signed = Signed {
        reviewer: reviewer.clone(),
        csrf: row.csrf_token,
        session_hash: row.id_hash,
    };
    Ok((
        set_cookie(name, &value, lifetime.num_seconds(), tls, "/"),
        signed,
    ))
}

/// Guards every console page: a valid session, else (for a page) the sign-in form, else 401. A request from
/// a trusted single-sign-on proxy without a session gets one opened for the person it vouches for. Every
/// state-changing request must also carry the session's CSRF token and must not come from another site.
async fn require_session(
    State(admin): State<Arc<Admin>>,
    request: Request,
    next: Next,
) -> Response {
    let peer = peer_ip(&request);
    let tls = over_tls(&admin, request.headers(), peer);
    let signed = match resume(&admin, request.headers(), peer, tls).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "console session lookup failed");
            return error_page(
                None,
                StatusCode::SERVICE_UNAVAILABLE,
                "Store unavailable",
                "The store did not answer, so your session could not be checked.",
            );
        }
    };
    let mut new_cookie = None;
    let signed = match signed {
        Some(s) => s,
        None => {
            let sso = match vouched_email(&admin, request.headers(), peer) {
                Some(email) => match reviewers::authenticate_email(&admin.store, &email).await {
                    Ok(Authenticated::Reviewer(r)) => Some((r, email)),
                    Ok(Authenticated::Unknown) => None,
                    Err(e) => {
                        tracing::error!(error = %e, "console single sign-on lookup failed");
                        None
                    }
                },
                None => None,
            };
            match sso {
                Some((reviewer, email)) if request.method() == http::Method::GET => {
                    match open_session(&admin, &reviewer, format!("sso:{email}"), tls).await {
                        Ok((c, signed)) => {
                            admin::audit_action(
                                &admin,
                                &reviewer.name,
                                "console.sign_in",
                                None,
                                json!({"via": "trusted proxy"}),
                            )
                            .await;
                            new_cookie = Some(c);
                            signed
                        }
                        Err(e) => return store_failed_plain(e),
                    }
                }
                _ => return to_login(&request),
            }
        }
    };
    // A state-changing request must not come from another site. (Its CSRF token is checked where its form
    // is parsed: a form without it never acts.)
    let changes_state =
        request.method() != http::Method::GET && request.method() != http::Method::HEAD;
    if changes_state && let Some(refusal) = cross_site(&admin, request.headers(), tls) {
        return refusal;
    }
    let mut request = request;
    request.extensions_mut().insert(signed);
    let mut response = next.run(request).await;
    if let Some(c) = new_cookie {
        response.headers_mut().append(header::SET_COOKIE, c);
    }
    response
}

fn store_failed_plain(e: StoreError) -> Response {
    tracing::error!(error = %e, "console store call failed");
    error_page(
        None,
        StatusCode::SERVICE_UNAVAILABLE,
        "Store unavailable",
        "The store did not answer; try again in a moment.",
    )
}

/// A page asks for sign-in; a form post without a session is refused.
fn to_login(request: &Request) -> Response {
    if request.method() == http::Method::GET {
        let next = request
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let encoded: String = form_urlencoded::byte_serialize(next.as_bytes()).collect();
        Redirect::to(&format!("/login?next={encoded}")).into_response()
    } else {
        error_page(
            None,
            StatusCode::UNAUTHORIZED,
            "Not signed in",
            "Your session has ended (signed out, expired, or your token was rotated or revoked). Sign in again.",
        )
    }
}

/// A post from another site is refused: the browser's `Sec-Fetch-Site`, else `Origin`, must name this
/// console. (SameSite=Strict cookies and the CSRF token already stop such a post; this refuses it early.)
fn cross_site(admin: &Admin, headers: &HeaderMap, tls: bool) -> Option<Response> {
    let refuse = || {
        Some(error_page(
            None,
            StatusCode::FORBIDDEN,
            "Refused",
            "This form was posted from another site.",
        ))
    };
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && !matches!(site, "same-origin" | "none")
    {
        return refuse();
    }
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let scheme = if tls { "https" } else { "http" };
        let ours = format!("{scheme}://{host}");
        let public = admin.config.console.public_origin.as_deref();
        if origin != ours && Some(origin) != public {
            return refuse();
        }
    }
    None
}

/// A form's CSRF token matches the session's.
fn csrf_ok(signed: &Signed, presented: Option<&str>) -> bool {
    !signed.csrf.is_empty()
        && presented
            .is_some_and(|p| reviewers::constant_time_eq(p.as_bytes(), signed.csrf.as_bytes()))
}

fn csrf_refused(signed: &Signed) -> Response {
    error_page(
        Some(signed),
        StatusCode::FORBIDDEN,
        "Refused",
        "The form's CSRF token is missing or does not belong to your session; nothing was changed. Reload the page and try again.",
    )
}

/// The form's role check: what the page does not offer, the server does not accept.
fn role_refused(signed: &Signed, form: &str) -> Option<Response> {
    let needed = form_role(form);
    (!signed.reviewer.role.allows(needed)).then(|| {
        tracing::warn!(reviewer = %signed.reviewer.name, form, "console form refused: role too low");
        error_page(
            Some(signed),
            StatusCode::FORBIDDEN,
            "Not allowed",
            &format!(
                "This needs the {needed} role; you ({}) have the {} role.",
                signed.reviewer.name, signed.reviewer.role
            ),
        )
    })
}

#[derive(Debug, Deserialize)]
struct LoginQuery {
    next: Option<String>,
}

/// Only a path on this console may be the page to return to after sign-in (no other host, no scheme).
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n.starts_with("/\\")
                && !n.starts_with("/login")
                && n.bytes().all(|b| (0x21..0x7f).contains(&b)) =>
        {
            n.to_string()
        }
        _ => "/approvals".to_string(),
    }
}

async fn login_page(
    State(admin): State<Arc<Admin>>,
    Query(q): Query<LoginQuery>,
    request: Request,
) -> Response {
    let peer = peer_ip(&request);
    let tls = over_tls(&admin, request.headers(), peer);
    if let Ok(Some(_)) = resume(&admin, request.headers(), peer, tls).await {
        return Redirect::to(&safe_next(q.next.as_deref())).into_response();
    }
    login_form(tls, q.next.as_deref(), None, StatusCode::OK)
}

fn login_form(
    tls: bool,
    next: Option<&str>,
    problem: Option<&str>,
    status: StatusCode,
) -> Response {
    let nonce = random_token(16);
    let mut response = render(
        status,
        "login.html",
        &json!({"login_csrf": nonce, "next": safe_next(next), "problem": problem}),
    );
    let name = if tls { LOGIN_COOKIE_TLS } else { LOGIN_COOKIE };
    response
        .headers_mut()
        .append(header::SET_COOKIE, set_cookie(name, &nonce, 600, tls, "/"));
    response
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
    login_csrf: String,
    next: Option<String>,
}

impl std::fmt::Debug for LoginForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginForm").finish_non_exhaustive()
    }
}

async fn login(State(admin): State<Arc<Admin>>, request: Request) -> Response {
    let peer = peer_ip(&request);
    let headers = request.headers().clone();
    let tls = over_tls(&admin, &headers, peer);
    if let Some(refused) = cross_site(&admin, &headers, tls) {
        return refused;
    }
    let Ok(Form(form)) = Form::<LoginForm>::from_request(request, &()).await else {
        return login_form(
            tls,
            None,
            Some("The sign-in form was incomplete."),
            StatusCode::BAD_REQUEST,
        );
    };
    let name = if tls { LOGIN_COOKIE_TLS } else { LOGIN_COOKIE };
    let double_submitted = cookie(&headers, name)
        .is_some_and(|c| reviewers::constant_time_eq(c.as_bytes(), form.login_csrf.as_bytes()));
    if !double_submitted {
        return login_form(
            tls,
            form.next.as_deref(),
            Some("The sign-in form expired or was not sent from this console; try again."),
            StatusCode::FORBIDDEN,
        );
    }
    let token = form.token.trim();
    let found =
        reviewers::authenticate(&admin.store, admin.config.admin.token.as_ref(), token).await;
    let reviewer = match found {
        Ok(Authenticated::Reviewer(r)) => r,
        Ok(Authenticated::Unknown) => {
            tracing::warn!("console sign-in refused: unknown, revoked or rotated token");
            return login_form(
                tls,
                form.next.as_deref(),
                Some("That token is not valid (unknown, revoked or rotated)."),
                StatusCode::UNAUTHORIZED,
            );
        }
        Err(e) => return store_failed_plain(e),
    };
    let credential = crate::identity::hash_key(token);
    let session_cookie = match open_session(&admin, &reviewer, credential, tls).await {
        Ok((c, _)) => c,
        Err(e) => return store_failed_plain(e),
    };
    tracing::info!(reviewer = %reviewer.name, role = %reviewer.role, "console sign-in");
    admin::audit_action(
        &admin,
        &reviewer.name,
        "console.sign_in",
        None,
        json!({"via": "token"}),
    )
    .await;
    let mut response = Redirect::to(&safe_next(form.next.as_deref())).into_response();
    let h = response.headers_mut();
    h.append(header::SET_COOKIE, session_cookie);
    h.append(header::SET_COOKIE, set_cookie(name, "", 0, tls, "/"));
    response
}

#[derive(Deserialize)]
struct CsrfOnly {
    csrf: Option<String>,
}

async fn logout(
    State(admin): State<Arc<Admin>>,
    Extension(signed): Extension<Signed>,
    headers: HeaderMap,
    Form(form): Form<CsrfOnly>,
) -> Response {
    if !csrf_ok(&signed, form.csrf.as_deref()) {
        return csrf_refused(&signed);
    }
    if let Err(e) = admin.store.end_console_session(&signed.session_hash).await {
        return store_failed(&signed, e);
    }
    admin::audit_action(
        &admin,
        &signed.reviewer.name,
        "console.sign_out",
        None,
        json!({}),
    )
    .await;
    let tls = over_tls(&admin, &headers, None) || cookie(&headers, SESSION_COOKIE_TLS).is_some();
    let name = if tls {
        SESSION_COOKIE_TLS
    } else {
        SESSION_COOKIE
    };
    let mut response = Redirect::to("/login").into_response();
    response
        .headers_mut()
        .append(header::SET_COOKIE, set_cookie(name, "", 0, tls, "/"));
    response
}

// ---- running an admin API handler as the signed-in reviewer ----

/// The JSON an admin API handler answered: `Ok(body)` for a 2xx, else `Err((status, message))`.
async fn api_answer(response: Response) -> Result<Value, (StatusCode, String)> {
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20).await;
    // The status says whether the action happened; an answer too large to read does not undo it.
    let value: Value = match body {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        Err(_) => Value::Null,
    };
    if status.is_success() {
        Ok(value)
    } else {
        let message = value["error"]["message"]
            .as_str()
            .unwrap_or("the request was refused")
            .to_string();
        Err((status, message))
    }
}

fn refused_page(signed: &Signed, (status, message): (StatusCode, String)) -> Response {
    let title = match status {
        StatusCode::FORBIDDEN => "Not allowed",
        StatusCode::NOT_FOUND => "Not found",
        StatusCode::CONFLICT => "Already decided",
        StatusCode::SERVICE_UNAVAILABLE => "Store unavailable",
        _ => "Refused",
    };
    error_page(Some(signed), status, title, &message)
}

fn see_other(location: &str) -> Response {
    (
        StatusCode::SEE_OTHER,
        [(header::LOCATION, location.to_string())],
    )
        .into_response()
}

// ---- approvals ----

#[derive(Debug, Deserialize)]
struct ApprovalsQuery {
    status: Option<String>,
    /// Only this agent's pending approvals.
    agent: Option<String>,
}

/// How many pending approvals the queue shows at once; the page says how many there are in all and which
/// agents they come from, so a flood from one agent cannot hide another's request.
const QUEUE_PAGE: i64 = 200;

async fn approvals_page(
    State(admin): State<Arc<Admin>>,
    Extension(signed): Extension<Signed>,
    Query(q): Query<ApprovalsQuery>,
) -> Response {
    let agent = non_empty(&q.agent);
    // Oldest first: the one waiting longest is the one to look at.
    let pending = match admin
        .store
        .pending_queue(agent.as_deref(), QUEUE_PAGE)
        .await
    {
        Ok(rows) => rows,
        Err(e) => return store_failed(&signed, e),
    };
    let by_agent = match admin.store.pending_by_agent().await {
        Ok(rows) => rows,
        Err(e) => return store_failed(&signed, e),
    };
    let total: i64 = by_agent.iter().map(|(_, n)| n).sum();
    let shown = q
        .status
        .as_deref()
        .filter(|s| ["approved", "denied", "consumed", "expired"].contains(s));
    let decided = match admin.store.list_approvals(shown, 100).await {
        Ok(rows) => rows
            .iter()
            .map(admin::approval_json)
            .filter(|a| a["status"] != "pending")
            .collect::<Vec<_>>(),
        Err(e) => return store_failed(&signed, e),
    };
    let mut context = signed.context("approvals");
    context["pending"] = json!(pending.iter().map(admin::approval_json).collect::<Vec<_>>());
    context["pending_total"] = json!(total);
    context["by_agent"] = json!(
        by_agent
            .iter()
            .map(|(name, n)| json!({"agent": name, "pending": n}))
            .collect::<Vec<_>>()
    );
    context["agent_filter"] = json!(agent);
    context["decided"] = json!(decided);
    context["status_filter"] = json!(shown);
    render(StatusCode::OK, "approvals.html", &context)
}

#[derive(Debug, Deserialize)]
struct Done {
    done: Option<String>,
}

/// What a redirect after a successful form says, by a fixed code (no text travels in the URL).
fn done_message(done: Option<&str>) -> Option<&'static str> {
    Some(match done? {
        "approved" => "Approved. The agent's retry of this exact request will be forwarded once.",
        "denied" => "Denied. The agent's retry of this request will be refused.",
        "revoked" => "Agent revoked: its key no longer works on any replica.",
        "frozen" => "Agent traffic is frozen on every replica (within a control poll).",
        "unfrozen" => "Agent traffic flows again.",
        "reloaded" => "Policy reloaded.",
        "settled" => "Reservation settled.",
        _ => return None,
    })
}

async fn approval_page(
    State(admin): State<Arc<Admin>>,
    Extension(signed): Extension<Signed>,
    Path(id): Path<String>,
    Query(done): Query<Done>,
) -> Response {
    let Ok(id) = id.parse::<Uuid>() else {
        return error_page(
            Some(&signed),
            StatusCode::NOT_FOUND,
            "Not found",
            "No such approval.",
        );
    };
    let approval = match admin.store.approval(id).await {
        Ok(Some(a)) => a,
        Ok(None) => {
            return error_page(
                Some(&signed),
                StatusCode::NOT_FOUND,
                "Not found",
                "No such approval.",
            );
        }
        Err(e) => return store_failed(&signed, e),
    };
    let decision = match admin.store.decision(approval.requested_by_decision).await {
        Ok(d) => d,
        Err(e) => return store_failed(&signed, e),
    };
    let input = decision
        .as_ref()
        .and_then(|(d, _)| d.input.as_deref())
        .and_then(|i| serde_json::from_str::<Value>(i).ok())
        .unwrap_or(Value::Null);
    // The budget this approval would spend from, with what is already spent this month.
    let period = crate::ledger::period(Utc::now());
    let windows = match admin.store.spend(&period).await {
        Ok(rows) => rows,
        Err(e) => return store_failed(&signed, e),
    };
    // The agent's own window, and the team's and account's, which every agent of theirs spends from.
    let own = format!("agent:{}/", approval.agent_id);
    let budget = windows
        .iter()
        .filter(|w| w.provider == approval.provider)
        .filter(|w| w.subject.starts_with(&own) || !w.subject.starts_with("agent:"))
        .map(|w| serde_json::to_value(w).unwrap_or(Value::Null))
        .collect::<Vec<_>>();
    let body = &input["request"]["body"];
    let mut redacted = Vec::new();
    collect_redacted(body, "", &mut redacted);
    let separation = if admin.config.approvals.allow_self_approval {
        None
    } else {
        let created_by = admin
            .store
            .agent_created_by(approval.agent_id)
            .await
            .ok()
            .flatten();
        reviewers::may_not_approve(
            &signed.reviewer,
            approval.on_behalf_of.as_deref(),
            created_by.as_deref(),
        )
        .map(|w| w.message())
    };
    let mut context = signed.context("approvals");
    context["a"] = admin::approval_json(&approval);
    context["decision"] = decision
        .as_ref()
        .map(|(d, o)| admin::decision_json(d, o.as_ref(), false))
        .unwrap_or(Value::Null);
    context["run_id"] = input["run"]["id"].clone();
    context["body"] = body.clone();
    context["params"] = input["action"]["params"].clone();
    context["redacted"] = json!(redacted);
    context["budget"] = json!(budget);
    context["period"] = json!(period);
    context["separation"] = json!(separation);
    context["unreviewable"] = json!(admin::unreviewable(Some(&input).filter(|i| !i.is_null())));
    context["done"] = json!(done_message(done.done.as_deref()));
    render(StatusCode::OK, "approval.html", &context)
}

/// The paths of the body's values that tollgate redacted before recording it (`[redacted …]`).
fn collect_redacted(value: &Value, at: &str, out: &mut Vec<String>) {
    match value {
        Value::String(s) if s.starts_with("[redacted") => out.push(at.to_string()),
        Value::Object(map) => {
            for (k, v) in map {
                collect_redacted(v, &format!("{at}.{k}"), out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                collect_redacted(v, &format!("{at}[{i}]"), out);
            }
        }
        _ => {}
    }
}

#[derive(Deserialize)]
struct VerdictForm {
    csrf: Option<String>,
    note: Option<String>,
}

async fn approve_form(
    State(admin): State<Arc<Admin>>,
    Extension(signed): Extension<Signed>,
    Path(id): Path<String>,
    Form(form): Form<VerdictForm>,
) -> Response {
    verdict(admin, signed, id, true, form).await
}

async fn deny_form(
    State(admin): State<Arc<Admin>>,
    Extension(signed): Extension<Signed>,
    Path(id): Path<String>,
    Form(form): Form<VerdictForm>,
) -> Response {
    verdict(admin, signed, id, false, form).await
}

/// Approve or deny through the admin API's own handler, as the signed-in reviewer, with a required note.
async fn verdict(
    admin: Arc<Admin>,
    signed: Signed,
    id: String,
    approve: bool,
    form: VerdictForm,
) -> Response {
    if !csrf_ok(&signed, form.csrf.as_deref()) {
        return csrf_refused(&signed);
    }
    let which = if approve {
        "/approvals/{id}/approve"
    } else {
        "/approvals/{id}/deny"
    };
    if let Some(refused) = role_refused(&signed, which) {
        return refused;
    }
    let Ok(uuid) = id.parse::<Uuid>() else {
        return error_page(
            Some(&signed),
            StatusCode::NOT_FOUND,
            "Not found",
            "No such approval.",
        );
    };
    let note = form.note.as_deref().map(str::trim).unwrap_or("");
    if note.is_empty() {
        return error_page(
            Some(&signed),
            StatusCode::BAD_REQUEST,
            "A note is required",
            "Say why: the note is kept with the decision for whoever reads the record later. Nothing was changed.",
        );
    }
    let answer = admin::decide_as(admin, &signed.reviewer, uuid, approve, note).await;
    match api_answer(answer).await {
        Ok(_) => see_other(&format!(
            "/approvals/{uuid}?done={}",
            if approve { "approved" } else { "denied" }
        )),
        Err(refusal) => refused_page(&signed, refusal),
    }
}

// ---- decisions ----

#[derive(Debug, Default, Deserialize)]
struct DecisionsQuery {
    agent: Option<String>,
    action: Option<String>,
    outcome: Option<String>,
    provider: Option<String>,
    /// `1h`, `7d`, or an RFC 3339 time.
    since: Option<String>,
    until: Option<String>,
    cursor: Option<String>,
}

fn non_empty(v: &Option<String>) -> Option<String> {
    v.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// `30m`, `2h`, `7d` back from now, or an RFC 3339 time, or a date (`2026-12-01`).
pub fn parse_when(text: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Some(d.and_time(chrono::NaiveTime::MIN).and_utc());
    }
    let (n, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit())?);
    let n: i64 = n.parse().ok()?;
    let back = match unit {
        "s" => Duration::try_seconds(n)?,
        "m" => Duration::try_minutes(n)?,
        "h" => Duration::try_hours(n)?,
        "d" => Duration::try_days(n)?,
        _ => return None,
    };
    now.checked_sub_signed(back)
}

async fn decisions_page(
    State(admin): State<Arc<Admin>>,
    Extension(signed): Extension<Signed>,
    Query(q): Query<DecisionsQuery>,
) -> Response {
    let now = Utc::now();
    let mut problems = Vec::new();
    let mut when = |field: &str, v: &Option<String>| {
        let text = non_empty(v)?;
        let t = parse_when(&text, now);
        if t.is_none() {
            problems.push(format!(
                "{field}: '{text}' is not a time (try 1h, 7d, 2026-12-01 or RFC 3339)"
            ));
        }
        t
    };
    let since = when("since", &q.since);
    let until = when("until", &q.until);
    let before = non_empty(&q.cursor).and_then(|c| admin::parse_cursor(&c));
    let filter = DecisionFilter {
        agent: non_empty(&q.agent),
        action: non_empty(&q.action),
        outcome: non_empty(&q.outcome),
        provider: non_empty(&q.provider),
        since,
        until,
        before,
        limit: PAGE,
    };
    let rows = if problems.is_empty() {
        match admin.store.list_decisions(&filter).await {
            Ok(rows) => rows,
            Err(e) => return store_failed(&signed, e),
        }
    } else {
        Vec::new()
    };
    let next = (rows.len() as i64 == PAGE)
        .then(|| {
            rows.last()
                .map(|(d, _)| format!("{}_{}", d.at.timestamp_micros(), d.id))
        })
        .flatten()
        .map(|cursor| {
            let mut query = form_urlencoded::Serializer::new(String::new());
            for (k, v) in [
                ("agent", &q.agent),
                ("action", &q.action),
                ("outcome", &q.outcome),
                ("provider", &q.provider),
                ("since", &q.since),
                ("until", &q.until),
            ] {
                if let Some(v) = non_empty(v) {
                    query.append_pair(k, &v);
                }
            }
            query.append_pair("cursor", &cursor);
            format!("/decisions?{}", query.finish())
        });
    let mut context = signed.context("decisions");
    context["decisions"] = json!(
        rows.iter()
            .map(|(d, o)| admin::decision_json(d, o.as_ref(), false))
            .collect::<Vec<_>>()
    );
    context["q"] = json!({
        "agent": q.agent, "action": q.action, "outcome": q.outcome, "provider": q.provider,
        "since": q.since, "until": q.until,
    });
    context["providers"] = json!(admin.config.providers.keys().collect::<Vec<_>>());
    context["problems"] = json!(problems);
    context["next"] = json!(next);
    render(StatusCode::OK, "decisions.html", &context)
}

async fn decision_page(
    State(admin): State<Arc<Admin>>,
    Extension(signed): Extension<Signed>,
    Path(id): Path<String>,
) -> Response {
    let Ok(id) = id.parse::<Uuid>() else {
        return error_page(
            Some(&signed),
            StatusCode::NOT_FOUND,
            "Not found",
            "No such decision.",
        );
    };
    match admin.store.decision(id).await {
        Ok(Some((d, o))) => {
            let mut context = signed.context("decisions");
            context["d"] = admin::decision_json(&d, o.as_ref(), true);
            render(StatusCode::OK, "decision.html", &context)
        }
        Ok(None) => error_page(
            Some(&signed),
            StatusCode::NOT_FOUND,
            "Not found",
            "No such decision.",
        ),
        Err(e) => store_failed(&signed, e),
    }
}

/// `audit verify` on demand: every writer's hash chain against its checkpoints (and the configured anchor
/// file, when there is one).
async fn audit_page(
    State(admin): State<Arc<Admin>>,
    Extension(signed): Extension<Signed>,
) -> Response {
    let mut anchor_problem = None;
    let anchors = match admin.config.audit.anchor_file.as_ref() {
        Some(path) => match crate::audit::Anchors::read(path) {
            Ok(a) => Some(a),
            Err(e) => {
                anchor_problem = Some(e.to_string());
                None
            }
        },
        None => None,
    };
    let reports = match crate::audit::verify(&admin.store, anchors.as_deref()).await {
        Ok(r) => r,
        Err(e) => return store_failed(&signed, e),
    };
    let broken = reports
        .iter()
        .filter(|r| r.status == crate::audit::ChainStatus::Broken)
        .count();
    let mut context = signed.context("decisions");
    context["reports"] = serde_json::to_value(&reports).unwrap_or(Value::Null);
    context["broken"] = json!(broken);
    context["anchored"] = json!(anchors.is_some());
    context["anchor_problem"] = json!(anchor_problem);
    context["checked_at"] = json!(Utc::now());
    render(StatusCode::OK, "audit.html", &context)
}

// ---- spend ----

#[derive(Debug, Deserialize)]
struct SpendQuery {
    period: Option<String>,
}

/// One window as the page draws it: the bar's segments as percentages of the larger of cap and total.
fn spend_bar(w: &crate::store::SpendRow) -> Value {
    let total = w.committed_cents + w.reserved_cents + w.flagged_cents;
    let scale = w.cap_cents.max(total).max(1) as f64;
    let pct = |c: i64| ((c as f64) * 100.0 / scale * 10.0).round() / 10.0;
    let used = if w.cap_cents > 0 {
        (total as f64) * 100.0 / (w.cap_cents as f64)
    } else {
        0.0
    };
    json!({
        "budget": w.budget, "subject": w.subject, "provider": w.provider, "period": w.period,
        "cap_cents": w.cap_cents, "committed_cents": w.committed_cents, "reserved_cents": w.reserved_cents,
        "flagged_cents": w.flagged_cents, "total_cents": total,
        "committed_pct": pct(w.committed_cents), "reserved_pct": pct(w.reserved_cents),
        "flagged_pct": pct(w.flagged_cents), "cap_pct": pct(w.cap_cents),
        "used_pct": (used * 10.0).round() / 10.0,
        "level": if used >= 100.0 { "over" } else if used >= 80.0 { "high" } else { "ok" },
    })
}

/// The `n` calendar months before `period` (`YYYY-MM`), newest first.
fn months_before(period: &str, n: usize) -> Vec<String> {
    let Some((y, m)) = period
        .split_once('-')
        .and_then(|(y, m)| Some((y.parse::<i32>().ok()?, m.parse::<u32>().ok()?)))
    else {
        return Vec::new();
    };
    let (mut y, mut m) = (y, m);
    let mut out = Vec::new();
    for _ in 0..n {
        if m == 1 {
            y -= 1;
            m = 12;
        } else {
            m -= 1;
        }
        out.push(format!("{y:04}-{m:02}"));
    }
    out
}

async fn spend_page(
    State(admin): State<Arc<Admin>>,
    Extension(signed): Extension<Signed>,
    Query(q): Query<SpendQuery>,
) -> Response {
    let current = crate::ledger::period(Utc::now());
    let period = q
        .period
        .filter(|p| p.len() == 7 && months_before(p, 1).len() == 1)
        .unwrap_or_else(|| current.clone());
    let windows = match admin.store.spend(&period).await {
        Ok(rows) => rows,
        Err(e) => return store_failed(&signed, e),
    };
    let mut history = Vec::new();
    for month in months_before(&period, 6) {
        match admin.store.spend(&month).await {
            Ok(rows) => {
                let committed: i64 = rows.iter().map(|w| w.committed_cents).sum();
                history.push(
                    json!({"period": month, "committed_cents": committed, "windows": rows.len()}),
                );
            }
            Err(e) => return store_failed(&signed, e),
        }
    }
    let peak = history
        .iter()
        .filter_map(|h| h["committed_cents"].as_i64())
        .max()
        .unwrap_or(0)
        .max(1);
    for h in &mut history {
        let c = h["committed_cents"].as_i64().unwrap_or(0);
        h["pct"] = json!(((c as f64) * 1000.0 / (peak as f64)).round() / 10.0);
    }
    // Budget subjects name agents by id (`agent:<id>/<provider>`); the page names them.
    let names: std::collections::HashMap<String, String> = match admin.store.list_agents().await {
        Ok(rows) => rows
            .into_iter()
            .map(|a| (a.id.to_string(), a.name))
            .collect(),
        Err(e) => return store_failed(&signed, e),
    };
    let mut bars: Vec<Value> = windows.iter().map(spend_bar).collect();
    for bar in &mut bars {
        let who = bar["subject"]
            .as_str()
            .and_then(|s| s.strip_prefix("agent:"))
            .and_then(|s| s.split('/').next())
            .and_then(|id| names.get(id));
        bar["agent"] = json!(who);
    }
    let mut context = signed.context("spend");
    context["period"] = json!(period);
    context["current"] = json!(period == current);
    context["windows"] = json!(bars);
    context["history"] = json!(history);
    render(StatusCode::OK, "spend.html", &context)
}

// ---- agents ----

async fn agents_page(
    State(admin): State<Arc<Admin>>,
    Extension(signed): Extension<Signed>,
    Query(done): Query<Done>,
) -> Response {
    let agents = match admin.store.list_agents().await {
        Ok(rows) => rows,
        Err(e) => return store_failed(&signed, e),
    };
    let seen: std::collections::HashMap<String, DateTime<Utc>> =
        match admin.store.agents_last_seen().await {
            Ok(rows) => rows.into_iter().collect(),
            Err(e) => return store_failed(&signed, e),
        };
    let items: Vec<Value> = agents
        .iter()
        .map(|a| {
            let mut v = admin::agent_json(a);
            v["last_seen"] = json!(seen.get(&a.name));
            v["created_by"] = json!(a.created_by);
            v["handle"] = json!(a.minted_by.is_some());
            v
        })
        .collect();
    let mut context = signed.context("agents");
    // Containing an agent contains the handles of the tokens it minted: only minters are offered.
    context["containable"] = json!(
        agents
            .iter()
            .filter(|a| a.minted_by.is_none())
            .map(|a| a.name.as_str())
            .collect::<Vec<_>>()
    );
    context["agents"] = json!(items);
    context["done"] = json!(done_message(done.done.as_deref()));
    render(StatusCode::OK, "agents.html", &context)
}

#[derive(Deserialize)]
struct CreateAgentForm {
    csrf: Option<String>,
    name: String,
    team: Option<String>,
    /// Comma- or space-separated.
    scopes: Option<String>,
    /// `key=value`, one per line or comma-separated.
    labels: Option<String>,
    expires: Option<String>,
}

async fn create_agent_form(
    State(admin): State<Arc<Admin>>,
    Extension(signed): Extension<Signed>,
    Form(form): Form<CreateAgentForm>,
) -> Response {
    if !csrf_ok(&signed, form.csrf.as_deref()) {
        return csrf_refused(&signed);
    }
    if let Some(refused) = role_refused(&signed, "/agents") {
        return refused;
    }
    let scopes: Vec<String> = form
        .scopes
        .as_deref()
        .unwrap_or("")
        .split([',', ' ', '\n'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    let mut labels = serde_json::Map::new();
    for pair in form
        .labels
        .as_deref()
        .unwrap_or("")
        .split([',', '\n'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let Some((k, v)) = pair.split_once('=') else {
            return error_page(
                Some(&signed),
                StatusCode::BAD_REQUEST,
                "Invalid labels",
                "Labels are key=value pairs, one per line or comma-separated. Nothing was created.",
            );
        };
        labels.insert(k.trim().to_string(), json!(v.trim()));
    }
    let body = json!({
        "name": form.name.trim(), "team": non_empty(&form.team), "scopes": scopes, "labels": labels,
        "expires": non_empty(&form.expires),
    });
    let answer = admin::create_agent_as(&admin, &signed.reviewer, body).await;
    match api_answer(answer).await {
        Ok(created) => {
            let mut context = signed.context("agents");
            context["agent"] = created;
            render(StatusCode::CREATED, "agent_created.html", &context)
        }
        Err(refusal) => refused_page(&signed, refusal),
    }
}

async fn revoke_agent_form(
    State(admin): State<Arc<Admin>>,
    Extension(signed): Extension<Signed>,
    Path(name): Path<String>,
    Form(form): Form<CsrfOnly>,
) -> Response {
    if !csrf_ok(&signed, form.csrf.as_deref()) {
        return csrf_refused(&signed);
    }
    if let Some(refused) = role_refused(&signed, "/agents/{name}/revoke") {
        return refused;
    }
    let answer = admin::revoke_agent_as(&admin, &signed.reviewer, &name).await;
    match api_answer(answer).await {
        Ok(_) => see_other("/agents?done=revoked"),
        Err(refusal) => refused_page(&signed, refusal),
    }
}

#[derive(Deserialize)]
struct ContainForm {
    csrf: Option<String>,
    agent: String,
    reason: String,
}

/// `tollgate incident contain` from the Agents page: the admin API's handler as the signed-in reviewer, and
/// a page of what was done and what failed, with the same form again when something is left to finish.
async fn contain_form(
    State(admin): State<Arc<Admin>>,
    Extension(signed): Extension<Signed>,
    Form(form): Form<ContainForm>,
) -> Response {
    if !csrf_ok(&signed, form.csrf.as_deref()) {
        return csrf_refused(&signed);
    }
    if let Some(refused) = role_refused(&signed, "/incidents/contain") {
        return refused;
    }
    let reason = form.reason.trim();
    if reason.is_empty() {
        return error_page(
            Some(&signed),
            StatusCode::BAD_REQUEST,
            "A reason is required",
            "Say why the agent is contained: it is recorded with what was done. Nothing was changed.",
        );
    }
    let answer = admin::contain_agent_as(&admin, &signed.reviewer, &form.agent, reason).await;
    match api_answer(answer).await {
        Ok(report) => {
            let mut context = signed.context("agents");
            context["report"] = report;
            render(StatusCode::OK, "contained.html", &context)
        }
        Err(refusal) => refused_page(&signed, refusal),
    }
}

// ---- operations ----

async fn operations_page(
    State(admin): State<Arc<Admin>>,
    Extension(signed): Extension<Signed>,
    Query(done): Query<Done>,
) -> Response {
    let frozen = match admin.store.frozen().await {
        Ok(f) => f,
        Err(e) => return store_failed(&signed, e),
    };
    let flagged = match admin.store.flagged_reservations().await {
        Ok(rows) => rows,
        Err(e) => return store_failed(&signed, e),
    };
    let mut context = signed.context("operations");
    context["frozen"] = json!(frozen);
    context["policy"] = admin::policy_json(&admin.policy);
    context["freeze"] = admin::freeze_state_json(&admin).await;
    context["flagged"] = serde_json::to_value(&flagged).unwrap_or(Value::Null);
    context["notifications"] = match admin.store.list_notifications(50).await {
        Ok(rows) => serde_json::to_value(&rows).unwrap_or(Value::Null),
        Err(e) => return store_failed(&signed, e),
    };
    context["webhooks"] = json!(
        admin
            .config
            .notifications
            .webhooks
            .iter()
            .map(|w| &w.name)
            .collect::<Vec<_>>()
    );
    context["done"] = json!(done_message(done.done.as_deref()));
    render(StatusCode::OK, "operations.html", &context)
}

#[derive(Deserialize)]
struct FreezeForm {
    csrf: Option<String>,
    reason: Option<String>,
}

async fn freeze_form(
    State(admin): State<Arc<Admin>>,
    Extension(signed): Extension<Signed>,
    Form(form): Form<FreezeForm>,
) -> Response {
    set_frozen(admin, signed, form, true).await
}

async fn unfreeze_form(
    State(admin): State<Arc<Admin>>,
    Extension(signed): Extension<Signed>,
    Form(form): Form<FreezeForm>,
) -> Response {
    set_frozen(admin, signed, form, false).await
}

async fn set_frozen(admin: Arc<Admin>, signed: Signed, form: FreezeForm, frozen: bool) -> Response {
    if !csrf_ok(&signed, form.csrf.as_deref()) {
        return csrf_refused(&signed);
    }
    let which = if frozen {
        "/operations/freeze"
    } else {
        "/operations/unfreeze"
    };
    if let Some(refused) = role_refused(&signed, which) {
        return refused;
    }
    let reason = form.reason.as_deref().map(str::trim).unwrap_or("");
    if reason.is_empty() {
        return error_page(
            Some(&signed),
            StatusCode::BAD_REQUEST,
            "A reason is required",
            "Say why: the reason is recorded with who changed the freeze. Nothing was changed.",
        );
    }
    let answer = admin::set_frozen_as(&admin, &signed.reviewer, frozen, Some(reason)).await;
    match api_answer(answer).await {
        Ok(_) => see_other(&format!(
            "/operations?done={}",
            if frozen { "frozen" } else { "unfrozen" }
        )),
        Err(refusal) => refused_page(&signed, refusal),
    }
}

async fn reload_form(
    State(admin): State<Arc<Admin>>,
    Extension(signed): Extension<Signed>,
    Form(form): Form<CsrfOnly>,
) -> Response {
    if !csrf_ok(&signed, form.csrf.as_deref()) {
        return csrf_refused(&signed);
    }
    if let Some(refused) = role_refused(&signed, "/operations/reload") {
        return refused;
    }
    let answer = admin::reload_policy_as(&admin, &signed.reviewer).await;
    match api_answer(answer).await {
        Ok(_) => see_other("/operations?done=reloaded"),
        Err(refusal) => refused_page(&signed, refusal),
    }
}

#[derive(Deserialize)]
struct SettleForm {
    csrf: Option<String>,
    outcome: String,
    note: Option<String>,
}

async fn settle_form(
    State(admin): State<Arc<Admin>>,
    Extension(signed): Extension<Signed>,
    Path(id): Path<String>,
    Form(form): Form<SettleForm>,
) -> Response {
    if !csrf_ok(&signed, form.csrf.as_deref()) {
        return csrf_refused(&signed);
    }
    if let Some(refused) = role_refused(&signed, "/operations/reservations/{id}/settle") {
        return refused;
    }
    let Ok(id) = id.parse::<Uuid>() else {
        return error_page(
            Some(&signed),
            StatusCode::NOT_FOUND,
            "Not found",
            "No such reservation.",
        );
    };
    let body = json!({"outcome": form.outcome, "note": form.note.unwrap_or_default()});
    let answer = admin::settle_as(&admin, &signed.reviewer, id, body).await;
    match api_answer(answer).await {
        Ok(_) => see_other("/operations?done=settled"),
        Err(refusal) => refused_page(&signed, refusal),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_compiles_and_renders() {
        for (name, _) in TEMPLATES {
            assert!(
                templates().get_template(name).is_ok(),
                "{name} does not compile"
            );
        }
        let html = render(
            StatusCode::OK,
            "login.html",
            &json!({"login_csrf": "n", "next": "/x", "problem": "<script>alert(1)</script>"}),
        );
        assert_eq!(html.status(), StatusCode::OK);
    }

    #[test]
    fn every_form_acts_through_an_api_endpoint_with_its_role() {
        let endpoints = admin::endpoints();
        for (form, method, path) in FORMS {
            let endpoint = endpoints
                .iter()
                .find(|e| e.method == *method && e.path == *path)
                .unwrap_or_else(|| panic!("{form}: no API endpoint {method} {path}"));
            assert_eq!(form_role(form), endpoint.role, "{form}");
            assert!(endpoint.role > Role::Viewer, "{form} changes state");
        }
        assert_eq!(form_role("/approvals/{id}/approve"), Role::Approver);
        assert_eq!(form_role("/agents"), Role::Admin);
        assert_eq!(form_role("/operations/freeze"), Role::Operator);
        assert_eq!(
            form_role("/not-a-form"),
            Role::Admin,
            "unknown forms are closed"
        );
    }

    #[test]
    fn only_local_paths_are_returned_to_after_sign_in() {
        assert_eq!(safe_next(Some("/decisions?agent=a")), "/decisions?agent=a");
        for bad in [
            "//evil.example",
            "/\\evil.example",
            "https://evil.example",
            "evil",
            "/login",
            "/a b",
        ] {
            assert_eq!(safe_next(Some(bad)), "/approvals", "{bad}");
        }
        assert_eq!(safe_next(None), "/approvals");
    }

    #[test]
    fn filters_and_helpers() {
        let now = Utc::now();
        assert_eq!(parse_when("2h", now), Some(now - Duration::hours(2)));
        assert_eq!(parse_when("7d", now), Some(now - Duration::days(7)));
        assert!(parse_when("2026-12-01", now).is_some());
        assert!(parse_when("2026-12-01T10:00:00Z", now).is_some());
        assert_eq!(parse_when("yesterday", now), None);
        assert_eq!(parse_when("99999999999999999d", now), None);
        assert_eq!(money(Some(12345)), "$123.45");
        assert_eq!(money(Some(-5)), "-$0.05");
        assert_eq!(money(None), "—");
        assert_eq!(months_before("2026-01", 2), vec!["2025-12", "2025-11"]);
        assert!(months_before("garbage", 2).is_empty());
        let mut out = Vec::new();
        collect_redacted(
            &json!({"a": {"secret": "[redacted sha256:ab]"}, "b": ["x", "[redacted hmac-sha256:cd]"]}),
            "",
            &mut out,
        );
        assert_eq!(out, vec![".a.secret", ".b[1]"]);
    }

    #[test]
    fn cookies_are_read_by_exact_name() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("x_tollgate_session=bad; tollgate_session=good; other=1"),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("good"));
        assert_eq!(cookie(&h, LOGIN_COOKIE), None);
        let c = set_cookie(SESSION_COOKIE_TLS, "v", 60, true, "/");
        let c = c.to_str().unwrap();
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.contains("Secure"));
    }
}
