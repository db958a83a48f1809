//! The portal API's JSON shapes and its OpenAPI document, generated from these types and from
//! the `#[utoipa::path]` annotations on the handlers (never written by hand).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};

use crate::audit::Action;

/// Every refusal and error: a category and a short reason.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// `invalid_token`, `forbidden`, `mfa_required`, `bad_request`, `not_found`,
    /// `method_not_allowed`, `conflict`, `unavailable`, `internal`.
    pub error: String,
    /// What exactly went wrong, in a few words (never a token).
    pub reason: String,
}

/// A security policy.
#[derive(Debug, Serialize, ToSchema)]
pub struct PolicyView {
    /// `pol-mfa-required`, `pol-connector-scopes`, `pol-pdp-enforce`, `pol-cidr-allowlists`.
    pub id: String,
    pub name: String,
    pub description: String,
    /// `authentication`, `authorization` or `network`.
    #[serde(rename = "type")]
    pub kind: String,
    pub enabled: bool,
    /// What the policy checks, as data.
    #[schema(value_type = Object)]
    pub rules: serde_json::Value,
}

/// `PATCH /api/v1/policies/{id}` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyPatch {
    pub enabled: bool,
}

/// One connected agent tunnel.
#[derive(Debug, Serialize, ToSchema)]
pub struct AgentView {
    pub agent_id: String,
    /// Relay-local id of the tunnel (an agent_id may briefly have two while it reconnects).
    pub tunnel_id: u64,
    /// The agent_id's new streams go to this tunnel (false: superseded by a newer one, or on
    /// standby under `security.duplicate_agent: oldest_wins`).
    pub takes_new_streams: bool,
    /// Another tunnel of this agent_id is connected from a different address: a moved agent,
    /// or a copied token (see the `duplicate_agent` audit records).
    pub duplicate: bool,
    pub connectors: Vec<String>,
    /// The agent's address as the relay sees it.
    pub remote_addr: String,
    #[schema(format = DateTime)]
    pub connected_since: String,
    /// `nowconnect.v2` or `nowconnect.v1`.
    pub protocol_version: String,
    /// The agent's own version string from HELLO.
    pub agent_version: String,
    pub active_streams: u64,
    /// Client to agent.
    pub bytes_c2a: u64,
    /// Agent to client.
    pub bytes_a2c: u64,
    /// The relay holding this tunnel: this relay's `ha.replica_id` (`relay` with HA off).
    pub relay: String,
    /// This relay's claim on the agent in the HA registry (fencing token); 0 with HA off or
    /// while the registry has not answered.
    pub epoch: u64,
    /// Per connector with several target hosts, their health as the agent last reported it
    /// (STATUS frames; empty for an agent or relay that does not report, and for single-host
    /// connectors).
    pub targets: BTreeMap<String, Vec<TargetView>>,
}

/// One target host of a multi-host connector, as the agent reported it.
#[derive(Debug, Serialize, ToSchema)]
pub struct TargetView {
    /// `host:port` as the agent configured it.
    pub target: String,
    /// False from a refused, unreachable or timed-out connect until one succeeds.
    pub up: bool,
    /// When it entered that state (from the agent's report; its clock's offset is not
    /// corrected).
    #[schema(format = DateTime)]
    pub since: String,
    /// Failed connect attempts on it since the agent configured it.
    pub failures: u64,
}

/// An agent serving a connector from another relay of the service (HA), as this relay last
/// read the registry.
#[derive(Debug, Serialize, ToSchema)]
pub struct RemoteAgentView {
    pub agent_id: String,
    /// The relay holding it (`ha.replica_id`).
    pub relay: String,
    /// That relay's claim on the agent (fencing token).
    pub epoch: u64,
}

/// A relay listener of a connector.
#[derive(Debug, Serialize, ToSchema)]
pub struct ListenerView {
    pub name: String,
    /// The bound address.
    pub bind: String,
    /// Client networks this listener admits (empty: any, within `security.allow_cidrs`).
    pub allow_cidrs: Vec<String>,
    /// `connector` (every client goes to this connector) or `sni` (by the TLS server name).
    pub route_by: String,
    /// With `sni`: server name (or `*.suffix`) -> connector; empty otherwise.
    pub routes: std::collections::BTreeMap<String, String>,
    /// With `sni`: where a client without a name or with an unknown one goes (none: closed).
    pub default: Option<String>,
}

/// A connector: its listeners and the agents serving it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConnectorView {
    pub name: String,
    pub listeners: Vec<ListenerView>,
    /// agent_ids serving it now from this relay.
    pub agents: Vec<String>,
    /// Agents serving it from other relays (HA; empty with HA off).
    pub remote_agents: Vec<RemoteAgentView>,
    /// The relay whose view this is (`ha.replica_id`): `agents` and `active_streams` are its own.
    pub relay: String,
    /// Live streams on this relay.
    pub active_streams: u64,
}

/// A live session (one relayed client connection).
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionView {
    /// Relay-wide session id, `<tunnel_id>-<stream_id>`; use it with DELETE.
    pub cid: String,
    /// The stream id on the tunnel (what frames carry).
    pub stream_id: u32,
    pub tunnel_id: u64,
    pub connector: String,
    pub agent_id: String,
    pub client_addr: String,
    #[schema(format = DateTime)]
    pub started: String,
    pub bytes_c2a: u64,
    pub bytes_a2c: u64,
}

/// One audit record.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEntry {
    /// Increasing record number (continues across restarts).
    pub id: u64,
    #[schema(format = DateTime)]
    pub time: String,
    /// The same instant in Unix milliseconds.
    pub ts_ms: u64,
    /// The agent_id for tunnel events, `portal:<sub>` for operators.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    pub action: Action,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    pub success: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What decided an OPEN (`cidr`, `conn_cap`, `no_agent`, `pdp`, `scope`, `stream_cap`,
    /// `none`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// Source address of the agent, client or operator.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connector: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tunnel_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// An aggregate: this many more refusals of this action and reason from `source` (absent:
    /// from sources not tracked) went past the audit refusal limits in the window, unrecorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub more: Option<u64>,
}

/// What `DELETE /api/v1/agents/{id}` did.
#[derive(Debug, Serialize, ToSchema)]
pub struct DisconnectResult {
    pub agent_id: String,
    /// Tunnels of that agent_id that were closed.
    pub disconnected_tunnels: u64,
    /// Whether the agent_id is on the block list now.
    pub blocked: bool,
}

/// What `POST /api/v1/agents/{id}/unblock` did.
#[derive(Debug, Serialize, ToSchema)]
pub struct UnblockResult {
    pub agent_id: String,
    pub blocked: bool,
}

/// What `DELETE /api/v1/sessions/{cid}` did.
#[derive(Debug, Serialize, ToSchema)]
pub struct TerminateResult {
    pub cid: String,
    pub terminated: bool,
}

/// Filters of `GET /api/v1/audit`.
// Documentation only: handlers read the same names from the query string.
#[allow(dead_code)]
#[derive(Debug, Default, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// `false`: only refusals and failures; `true`: only successes.
    pub success: Option<bool>,
    pub action: Option<Action>,
    pub agent_id: Option<String>,
    /// Only records at or after this instant (RFC 3339).
    #[param(value_type = Option<String>, format = DateTime)]
    pub since: Option<String>,
    /// Most records returned (newest first); default 100.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// Filters of `GET /api/v1/sessions`.
// Documentation only: handlers read the same names from the query string.
#[allow(dead_code)]
#[derive(Debug, Default, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SessionQuery {
    pub connector: Option<String>,
    pub agent_id: Option<String>,
}

/// Options of `DELETE /api/v1/agents/{id}`.
// Documentation only: handlers read the same names from the query string.
#[allow(dead_code)]
#[derive(Debug, Default, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DisconnectQuery {
    /// Also refuse this agent_id's tunnels until `POST .../unblock`.
    pub block: Option<bool>,
}

/// Who the bearer token names (the dashboard asks this first).
#[derive(Debug, Serialize, ToSchema)]
pub struct MeView {
    /// The token's `sub`.
    pub subject: String,
    /// Holds `portal.admin_role`: sees and changes everything.
    pub admin: bool,
    /// For an agent-scoped token, the one agent it sees.
    pub agent_id: Option<String>,
}

/// A connector and how many agents serve it (here and on other relays).
#[derive(Debug, Serialize, ToSchema)]
pub struct ConnectorState {
    pub name: String,
    /// 0: clients of this connector are refused.
    pub agents: u64,
}

/// A policy's id and whether it is on.
#[derive(Debug, Serialize, ToSchema)]
pub struct PolicyState {
    pub id: String,
    pub enabled: bool,
}

/// The relay at a glance.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatusView {
    pub version: String,
    /// `ha.replica_id`.
    pub relay: String,
    #[schema(format = DateTime)]
    pub started: String,
    pub uptime_sec: u64,
    /// Distinct agent_ids with a tunnel to this relay.
    pub agents_connected: u64,
    pub connectors: Vec<ConnectorState>,
    pub active_sessions: u64,
    /// Refused agent and portal authentications in the last 60 minutes.
    pub auth_failures_last_hour: u64,
    pub policies: Vec<PolicyState>,
    /// agent_ids on the block list (their tunnels are refused until unblocked).
    pub blocked_agents: Vec<String>,
}

/// One minute of traffic.
#[derive(Debug, Serialize, ToSchema)]
pub struct MinuteView {
    /// Start of the minute, Unix ms.
    pub t: u64,
    /// Payload bytes client to agent in that minute.
    pub bytes_c2a: u64,
    /// Payload bytes agent to client in that minute.
    pub bytes_a2c: u64,
    /// Client connections accepted in that minute.
    pub streams: u64,
    /// Refused authentications in that minute (relay-wide buckets only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_failures: Option<u64>,
}

/// Per-minute traffic of the last hour, relay-wide and per connector (oldest first; the last
/// minute is the current one, partial: divide by `now_ms - t` for a rate).
#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryView {
    pub interval_sec: u64,
    pub now_ms: u64,
    pub buckets: Vec<MinuteView>,
    pub connectors: std::collections::BTreeMap<String, Vec<MinuteView>>,
}

/// Most audit records one request returns.
pub const MAX_AUDIT_LIMIT: u32 = 1000;
pub const DEFAULT_AUDIT_LIMIT: u32 = 100;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "NowConnect relay portal API",
        version = "1",
        description = "Agents, connectors, live sessions, the audit trail and security policies of one relay. \
                       Bearer JWT: administrators (portal.admin_role) see and change everything; a token with \
                       an agent_id claim gets a read-only view of that agent's rows."
    ),
    paths(
        super::handlers::list_policies,
        super::handlers::get_policy,
        super::handlers::patch_policy,
        super::handlers::list_agents,
        super::handlers::disconnect_agent,
        super::handlers::unblock_agent,
        super::handlers::list_connectors,
        super::handlers::list_sessions,
        super::handlers::terminate_session,
        super::handlers::query_audit,
        super::dashboard::me,
        super::dashboard::status,
        super::dashboard::history,
    ),
    components(schemas(
        ErrorBody,
        PolicyView,
        PolicyPatch,
        AgentView,
        TargetView,
        ListenerView,
        RemoteAgentView,
        ConnectorView,
        SessionView,
        AuditEntry,
        DisconnectResult,
        UnblockResult,
        TerminateResult,
        MeView,
        ConnectorState,
        PolicyState,
        StatusView,
        MinuteView,
        HistoryView,
        Action
    )),
    modifiers(&Common),
    security(("bearer" = []))
)]
pub struct PortalDoc;

/// Adds the bearer scheme and the error answers every operation can give, so each handler's
/// annotation lists only its own success and not-found cases.
struct Common;

fn error_response(description: &str, www_authenticate: bool) -> Response {
    let mut b = ResponseBuilder::new().description(description).content(
        "application/json",
        ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("ErrorBody")))
            .build(),
    );
    if www_authenticate {
        b = b.header(
            "WWW-Authenticate",
            HeaderBuilder::new()
                .schema(ObjectBuilder::new().schema_type(Type::String))
                .description(Some(
                    "Bearer error=\"invalid_token\", error_description=\"<reason>\"",
                ))
                .build(),
        );
    }
    b.build()
}

impl Modify for Common {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.security_schemes.insert(
            "bearer".to_owned(),
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        let shared = [
            ("400", "BadRequest", "Invalid query, path or body", false),
            (
                "401",
                "Unauthorized",
                "Missing or invalid bearer token",
                true,
            ),
            (
                "403",
                "Forbidden",
                "Valid token without the right (admin role, agent scope, second factor)",
                false,
            ),
            ("404", "NotFound", "No such resource", false),
            ("409", "Conflict", "The block list is full", false),
            (
                "500",
                "Internal",
                "The state file could not be written",
                false,
            ),
            (
                "503",
                "Unavailable",
                "Portal authentication not configured, or no signing keys loaded yet",
                false,
            ),
        ];
        for (_, name, description, www) in shared {
            components
                .responses
                .insert(name.to_owned(), RefOr::T(error_response(description, www)));
        }
        for (path, item) in openapi.paths.paths.iter_mut() {
            let has_param = path.contains('{');
            let ops = [
                (&mut item.get, false),
                (&mut item.patch, true),
                (&mut item.delete, true),
                (&mut item.post, true),
            ];
            for (op, writes) in ops {
                let Some(op) = op.as_mut() else { continue };
                for (status, name, _, _) in shared {
                    let wanted = match status {
                        "404" => has_param,
                        "409" => path == "/api/v1/agents/{id}",
                        "500" => writes,
                        _ => true,
                    };
                    if wanted {
                        op.responses
                            .responses
                            .entry(status.to_owned())
                            .or_insert_with(|| {
                                RefOr::Ref(Ref::new(format!("#/components/responses/{name}")))
                            });
                    }
                }
            }
        }
    }
}

/// The document as served at `/api/v1/openapi.json`.
pub fn openapi_json() -> String {
    PortalDoc::openapi()
        .to_json()
        .unwrap_or_else(|_| "{}".to_owned())
}
