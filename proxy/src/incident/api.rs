//! The admin API's incident endpoints: `GET /api/incidents/{agent}/report` (viewer) and
//! `GET /api/incidents/{agent}/rollback-plan` (operator), each with an optional `since` (RFC 3339, a date,
//! or a duration ago like `2h`). Their roles are declared in `admin::api()` with every other endpoint.
//!
//! Owns: reading the query and turning the report or plan into a response. Must not: change anything (both
//! are reads; executing a plan goes through the agent listener, not the admin API).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};

use crate::admin::{Admin, api_error, store_error};

/// `since`, the only query parameter; anything else is refused rather than silently ignored. The error is
/// the message of a 400.
fn since_of(query: &BTreeMap<String, String>) -> Result<Option<DateTime<Utc>>, String> {
    if let Some(other) = query.keys().find(|k| k.as_str() != "since") {
        return Err(format!(
            "unknown query parameter {other:?}; only since is accepted"
        ));
    }
    query
        .get("since")
        .map(|text| {
            crate::console::parse_when(text, Utc::now()).ok_or_else(|| {
                "since is neither RFC 3339, a date (YYYY-MM-DD) nor a duration like 30s, 15m, 2h, 7d"
                    .to_string()
            })
        })
        .transpose()
}

fn invalid(message: &str) -> Response {
    api_error(StatusCode::BAD_REQUEST, "invalid", message)
}

fn no_agent() -> Response {
    api_error(StatusCode::NOT_FOUND, "not_found", "no such agent")
}

pub async fn report_endpoint(
    State(admin): State<Arc<Admin>>,
    Path(agent): Path<String>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    let since = match since_of(&query) {
        Ok(since) => since,
        Err(message) => return invalid(&message),
    };
    match super::report(&admin.store, &agent, since, Utc::now()).await {
        Ok(Some(report)) => Json(report).into_response(),
        Ok(None) => no_agent(),
        Err(e) => store_error(e),
    }
}

pub async fn rollback_plan_endpoint(
    State(admin): State<Arc<Admin>>,
    Path(agent): Path<String>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    let since = match since_of(&query) {
        Ok(since) => since,
        Err(message) => return invalid(&message),
    };
    match super::rollback_plan(&admin.store, &agent, since, Utc::now()).await {
        Ok(Some(plan)) => Json(plan).into_response(),
        Ok(None) => no_agent(),
        Err(e) => store_error(e),
    }
}
